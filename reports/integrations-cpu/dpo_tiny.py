"""DPOTrainer + LoRA on a tiny random llama (vocab 49152, the embedded tokenizer) with the callback, CPU.

    PYTHONPATH=$PWD python reports/integrations-cpu/dpo_tiny.py > reports/integrations-cpu/dpo-tiny.txt
"""
import datasets
from transformers import AutoTokenizer
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer
from quantlab.lab.model import ensure_embedded, tiny_model
from quantlab.integrations.transformers import PlanCheckCallback
tok = AutoTokenizer.from_pretrained(ensure_embedded(progress=False))
model = tiny_model("llama", vocab_size=49152)
ds = datasets.Dataset.from_dict({"prompt": ["Say hi to Ana.", "Name a city."] * 4,
                                 "chosen": [" Hi Ana!", " Paris."] * 4, "rejected": [" No.", " Blue."] * 4})
args = DPOConfig(output_dir="/tmp/quantlab-dpo-tiny", max_steps=2, per_device_train_batch_size=2, bf16=False,
                 report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1)
cb = PlanCheckCallback()
DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb],
           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).train()
