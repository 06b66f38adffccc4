"""Adapters: saved as safetensors, reloaded onto a base model, merged for serving, and checked.

Merging folds ``W' = W + (alpha / r) * B A`` into each target linear (PEFT ``merge_and_unload``). The check
reloads the saved adapter onto an fp32 copy of the base model, then compares

1. each merged weight with ``W + (alpha/r) B A`` computed here from the reloaded tensors (the formula itself), and
2. the logits of base-plus-adapter with those of the merged model on a probe input: they must agree to float
   rounding (max |difference|, and the share of positions whose argmax token agrees).

A QLoRA adapter is merged into the fp32 base the same way (merging into 4-bit weights would requantize them and
lose the update); the merged model then differs from the NF4 model it was trained on by the NF4 rounding of W.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROBE = "Extract the person's name, age and city from the sentence as a JSON object.\nSentence: Maria is 34 and lives in Lisbon."


@dataclass
class MergeCheck:
    max_abs_diff: float  # logits: merged vs base + adapter
    argmax_agreement: float
    weight_formula_max_diff: float  # max |W_merged - (W + alpha/r B A)| over the adapted linears
    adapted_linears: int
    adapter_bytes: int  # size of the saved safetensors
    merged: object = None


def save_adapter(peft_model, path: str | Path) -> Path:
    """PEFT's ``save_pretrained`` (adapter_config.json + adapter_model.safetensors); the folder is returned."""
    path = Path(path)
    peft_model.save_pretrained(path, safe_serialization=True)
    if not any(path.glob("*.safetensors")):
        raise RuntimeError(f"no safetensors written to {path}")
    return path


def load_adapter(base_model, adapter_dir: str | Path, trainable: bool = False):
    """Reload a saved adapter onto ``base_model`` (a transformers model); safetensors only."""
    from peft import PeftModel

    from quantlab.errors import QuantlabError

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise QuantlabError(f"{adapter_dir} holds no adapter_model.safetensors")
    try:
        return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable)
    except Exception as e:
        raise QuantlabError(f"cannot load the adapter in {adapter_dir}: {str(e).splitlines()[0][:160]}") from e


def _lora_updates(model) -> dict:
    """{module name: W + (alpha/r) B A} for every LoRA linear of ``model`` (adapter 'default')."""
    import torch
    from peft.tuners.lora import LoraLayer

    out = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
                W = mod.get_base_layer().weight.float()
                A, B = mod.lora_A["default"].weight.float(), mod.lora_B["default"].weight.float()
                out[name.replace("base_model.model.", "", 1)] = W + mod.scaling["default"] * (B @ A)
    return out


def merge_check(src, adapter_dir: str | Path, tokenizer, text: str = PROBE) -> MergeCheck:
    """Reload ``adapter_dir`` onto the fp32 base of ``src``, merge, and compare (assumptions 1, 2)."""
    import torch

    from quantlab.lab.model import load_model

    base = load_model(src, dtype=torch.float32, progress=False)
    model = load_adapter(base, adapter_dir)
    model.eval()
    expected = _lora_updates(model)
    x = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = model(x).logits
        merged = model.merge_and_unload()
        b = merged(x).logits
        mods = dict(merged.named_modules())
        wdiff = max((float((mods[n].weight.float() - w).abs().max()) for n, w in expected.items()), default=0.0)
    size = sum(f.stat().st_size for f in Path(adapter_dir).glob("*.safetensors"))
    return MergeCheck(float((a - b).abs().max()), float((a.argmax(-1) == b.argmax(-1)).float().mean()), wdiff,
                      len(expected), size, merged)
