"""Shared pieces of the fine-tune tests (imported by tests/lab/test_finetune*.py and test_qat.py)."""

import json
import shutil
from pathlib import Path

TASK = Path(__file__).resolve().parents[2] / "tasks" / "json-extract" / "data.jsonl"


def small_jsonl(dirpath: Path, n: int = 40) -> str:
    """The first ``n`` json-extract records (they fit in 128 tokens)."""
    src = [json.loads(l) for l in TASK.read_text().splitlines()][:n]
    p = Path(dirpath) / "small.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in src))
    return str(p)


def tiny_folder(dirpath: Path) -> str:
    """A tiny random Llama (2 blocks, hidden 64) with the embedded model's tokenizer, saved as safetensors: the
    training loop, checkpoints, precisions and optimizers are tested on it in seconds (never quality figures)."""
    from quantlab.lab.model import ensure_embedded, tiny_model

    d = Path(dirpath)
    tiny_model("llama", vocab_size=49152).save_pretrained(d, safe_serialization=True)
    for f in ensure_embedded(progress=False).iterdir():
        if f.name.startswith(("tokenizer", "special", "chat_template")):
            shutil.copy(f, d / f.name)
    return str(d)


def fast(**kw):
    """A fine-tune config small enough for a test: batch 2, seq 128, 4 steps, 2 test items, 4 answer tokens; flat
    keyword arguments, the plan's and the lab's (``quantlab.lab.finetune_plan.finetune_config``)."""
    from quantlab.lab.finetune_plan import finetune_config

    base = dict(batch=2, seq=128, eval_items=2, max_new_tokens=4, eval_every=2, max_steps=4, task=None)
    if "max_len" in kw:
        base.pop("seq")
    base.update(kw)
    return finetune_config(**base)


def quiet(cfg, **kw):
    from quantlab.lab.finetune import run_finetune

    kw.setdefault("evaluate_before", False)
    return run_finetune(cfg, progress=False, log=lambda s: None, **kw)
