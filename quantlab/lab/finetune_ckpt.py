"""Resumable fine-tunes on Trainer's checkpoints (``checkpoint-<step>/`` under ``--checkpoint-dir``).

Trainer (transformers 5.24 ``trainer.py``) writes the weights or PEFT adapter as safetensors and the optimizer,
scheduler, gradient-scaler and RNG states with ``torch.save``, and reads them back with ``torch.load(...,
weights_only=True)``. Before Trainer resumes, :func:`check_checkpoint` reads every file of the checkpoint the same
safe way (safetensors headers, ``weights_only=True``, ``trainer_state.json``) and compares the run configuration
stored beside the checkpoints (``quantlab-run.json``): a corrupt, incomplete or foreign checkpoint is one line,
before any model loads. ``training_args.bin`` (a pickled TrainingArguments, which Trainer never reads back) is not
read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from quantlab.errors import QuantlabError

RUN_CONFIG = "quantlab-run.json"
# the fields a resumed run must share with the run that wrote the checkpoint (what the trained tensors mean)
MATCH = ("model", "method", "precision", "lora_r", "lora_targets", "freeze_last_layers", "freeze_modules",
         "num_virtual_tokens", "optimizer", "batch", "grad_accum")


def last_checkpoint(dirpath) -> Path | None:
    """The highest ``checkpoint-<step>`` folder in ``dirpath``, or None."""
    if dirpath is None or not Path(dirpath).is_dir():
        return None
    found = [(int(m.group(1)), p) for p in Path(dirpath).iterdir()
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return max(found)[1] if found else None


def write_run_config(dirpath, cfg) -> None:
    from quantlab.fileio import atomic_write_text

    Path(dirpath).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(dirpath) / RUN_CONFIG, json.dumps(cfg.to_dict(), indent=2, default=str))


def check_checkpoint(ckpt: Path, cfg) -> dict:
    """Read every file of ``ckpt`` safely; {"global_step", "stopped_early"} of its trainer state."""
    import torch
    from safetensors import safe_open
    from transformers.trainer_pt_utils import safe_globals

    ckpt = Path(ckpt)
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        step = int(state["global_step"])
        weights = sorted(ckpt.glob("*.safetensors"))
        if not weights:
            raise FileNotFoundError("no safetensors weights")
        for f in weights:
            with safe_open(str(f), framework="pt") as h:
                list(h.keys())
        with safe_globals():  # Trainer's allowlist for the numpy RNG state in rng_state.pth, as _load_rng_state
            for f in sorted(ckpt.glob("*.pt")) + sorted(ckpt.glob("*.pth")):
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise QuantlabError(f"cannot resume from {ckpt}: corrupt or incomplete checkpoint ({msg})") from e
    rc = ckpt.parent / RUN_CONFIG
    if rc.is_file():
        old, new = json.loads(rc.read_text()), json.loads(json.dumps(cfg.to_dict(), default=str))
        diff = [k for k in MATCH if old.get(k) != new.get(k)]
        if diff:
            raise QuantlabError(f"checkpoint {ckpt} does not match this model/method ({diff[0]}: {old.get(diff[0])!r} "
                                f"there, {new.get(diff[0])!r} here): use another --checkpoint-dir or delete it")
    stopped = False
    for cb in (state.get("stateful_callbacks") or {}).values():
        for c in (cb if isinstance(cb, list) else [cb]):
            a = (c or {}).get("attributes", {})
            if "early_stopping_patience_counter" in a:
                stopped = a["early_stopping_patience_counter"] >= (c.get("args", {}).get("early_stopping_patience")
                                                                   or cfg.patience)
    return {"global_step": step, "stopped_early": stopped}
