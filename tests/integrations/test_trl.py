"""PlanCheckCallback on TRL's SFTTrainer (skipped where trl is not installed: add trl to the environment)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from integ_fixtures import trainer_args  # noqa: E402,F401


def test_sft_trainer_components_and_the_fused_loss_to_the_byte(tmp_path):
    """Tiny llama (vocab 49152, the embedded tokenizer's), LoRA, pre-tokenized rows of 32 tokens, batch 4.
    Every component but the loss matches the plan. TRL's fused LM head saves, for N = 4 x 31 positions and h = 64:
    the fp32 copy of hidden[:, :-1] (N·h·4), int64 targets (8N), fp32 log_z and entropy (4N each), two bool
    ~mask of masked_fill (N each) and the int64 divisor (8): the measured logits_loss, to the byte."""
    import datasets
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from quantlab.errors import QuantlabError
    from quantlab.integrations.transformers import PlanCheckCallback
    from quantlab.lab.model import ensure_embedded, tiny_model

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ensure_embedded(progress=False))
    except QuantlabError as e:
        pytest.skip(str(e))
    model = tiny_model("llama", vocab_size=49152)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (16, 32), generator=g).tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids})
    args = SFTConfig(output_dir=str(tmp_path / "o"), max_steps=2, per_device_train_batch_size=4, max_length=64,
                     bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no", use_cpu=True,
                     disable_tqdm=True, logging_steps=1)
    cb = PlanCheckCallback(print_fn=lambda s: None)
    SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb],
               peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM")).train()
    rows = {r.component: r for r in cb.check.rows}
    for k in ("weights", "adapters", "gradients", "optimizer", "activations"):
        assert rows[k].ok, cb.check.text
    n, h = 4 * 31, 64
    assert rows["logits_loss"].measured_bytes == n * h * 4 + 8 * n + 4 * n + 4 * n + 2 * n + 8
    assert any("fused LM head" in x for x in cb.check.measurement.notes)
