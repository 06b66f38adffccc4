"""Resumable fine-tune checkpoints: trainable tensors as safetensors, optimizer, scheduler, gradient-scaler and
random-number-generator state (dropout) through ``torch.save`` / ``torch.load(weights_only=True)``, the loop's state (step, best validation loss, patience count,
loss history, config) as JSON. Each file is written to a temporary name and renamed, the JSON last, so an
interrupted save leaves the previous checkpoint readable (``state.json`` names a complete set)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from quantlab.errors import QuantlabError


def _atomic(dirpath: Path, name: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=dirpath, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dirpath / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(dirpath: str | Path, model, opt, sched, state: dict, scaler=None) -> None:
    import torch
    from safetensors.torch import save_file

    from quantlab.fileio import atomic_write_text

    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    _atomic(dirpath, "trainable.safetensors", lambda f: save_file(tensors, f))
    extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        extra["rng_cuda"] = torch.cuda.get_rng_state_all()
    if scaler is not None:
        extra["scaler"] = scaler.state_dict()
    _atomic(dirpath, "optimizer.pt", lambda f: torch.save(extra, f))
    atomic_write_text(dirpath / "state.json", json.dumps(state, indent=2))


def has_checkpoint(dirpath: str | Path | None) -> bool:
    return dirpath is not None and (Path(dirpath) / "state.json").is_file()


def load_checkpoint(dirpath: str | Path, model, opt, sched, scaler=None) -> dict:
    """Restore trainable tensors, optimizer, scheduler (and gradient scaler); return the loop state."""
    import torch
    from safetensors.torch import load_file

    dirpath = Path(dirpath)
    try:
        state = json.loads((dirpath / "state.json").read_text())
        tensors = load_file(dirpath / "trainable.safetensors")
        extra = torch.load(dirpath / "optimizer.pt", weights_only=True, map_location="cpu")
        step = int(state["step"])
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise QuantlabError(f"cannot resume from {dirpath}: corrupt or incomplete checkpoint ({msg})") from e
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        odd = sorted(set(tensors) ^ set(params))[0]
        raise QuantlabError(f"checkpoint {dirpath} does not match this model/method (e.g. {odd}): use another "
                            "--checkpoint-dir or delete it")
    with torch.no_grad():
        for n, t in tensors.items():
            if params[n].shape != t.shape:
                raise QuantlabError(f"checkpoint {dirpath}: {n} has shape {tuple(t.shape)}, the model "
                                    f"{tuple(params[n].shape)}")
            params[n].copy_(t)
    try:
        opt.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        if scaler is not None and "scaler" in extra:
            scaler.load_state_dict(extra["scaler"])
        if "rng_cpu" in extra:  # dropout masks after the resume are those the uninterrupted run draws
            torch.set_rng_state(extra["rng_cpu"])
        if "rng_cuda" in extra and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["rng_cuda"])
    except (KeyError, ValueError) as e:
        raise QuantlabError(f"checkpoint {dirpath}: optimizer state does not match this run ({str(e)[:100]})") from e
    state["step"] = step
    return state
