"""Adapters: saved as safetensors, reloaded onto a base model, merged for serving, and checked.

Merging folds ``W' = W + (alpha / r) * B A`` into each target linear (PEFT ``merge_and_unload``). The check
reloads the saved adapter onto an fp32 copy of the base model and compares the logits of base-plus-adapter with
those of the merged model on a probe input: they must agree to float rounding (the QLoRA adapter is merged into
the fp32 base this way too, since merging into 4-bit weights would requantize them).
"""

from __future__ import annotations

from pathlib import Path


def save_adapter(peft_model, path: str | Path) -> Path:
    path = Path(path)
    peft_model.save_pretrained(path, safe_serialization=True)
    if not any(path.glob("*.safetensors")):
        raise RuntimeError(f"no safetensors written to {path}")
    return path


def merge_check(src, adapter_dir: str | Path, tokenizer, text: str = "Sentence: Maria is 34 and lives in Lisbon."):
    """(max |logit difference| between base+adapter and merged, merged model)."""
    import torch
    from peft import PeftModel

    from quantlab.lab.model import load_model

    base = load_model(src, dtype=torch.float32, progress=False)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    x = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = model(x).logits
        merged = model.merge_and_unload()
        b = merged(x).logits
    return float((a - b).abs().max()), merged
