"""Measured memory figures (published ones, and the lab's own) and the planner's error against them.

Rows follow ``shared/ground-truth/published.jsonl``: the exact conditions of a run (model, method, weights,
compute dtype, training precision, optimizer, LoRA, checkpointing, batch, seq, attention, GPU, stack) and
one metric (``allocated``, ``reserved``, ``process`` in bytes, or ``fits``). The lab appends its own rows
to ``reports/measurements.jsonl`` in the same format, so one check covers both.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError
from quantlab.specs import (Attention, DeviceMode, DType, Method, Offload, Optimizer, PlanConfig, Precision,
                            TrainingPrecision)

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO.parent / "shared" / "ground-truth" / "published.jsonl"
MEASUREMENTS = REPO / "reports" / "measurements.jsonl"
TARGETS = {("transformers", "allocated"): 0.05, ("transformers", "reserved"): 0.10,
           ("transformers", "process"): 0.10, ("litgpt", "allocated"): 0.15, ("litgpt", "reserved"): 0.15,
           ("litgpt", "process"): 0.15}


def load_rows(path: str | Path) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise QuantlabError(f"{p}:{i}: not valid JSON ({e.msg})") from e
    return rows


def row_to_config(row: dict) -> PlanConfig:
    """The PlanConfig that describes a measured row's exact conditions (a bad field: one-line QuantlabError)."""
    try:
        return _row_to_config(row)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, QuantlabError):
            raise
        raise QuantlabError(f"measurement row {row.get('id', '?')}: bad or missing field ({type(e).__name__}: {e})") \
            from e


def model_spec(name: str, overrides: dict | None = None):
    """The profile's spec, or with ``overrides`` (HF config keys, e.g. a scaled-down ``num_hidden_layers``) applied
    to its config first: the architecture ``quantlab validate`` measures with random weights."""
    from quantlab.profiles import load_model
    from quantlab.specs import ModelSpec

    resolved = load_model(name)
    if not overrides:
        return resolved.spec
    if not isinstance(overrides, dict):
        raise QuantlabError(f"model_overrides of {name} must be a mapping of config.json keys, got {overrides!r}")
    cfg = dict(resolved.config)
    cfg.update(overrides)
    return ModelSpec.from_hf_config(cfg, name=resolved.name, hf_id=resolved.spec.hf_id, source=resolved.source)


def _row_to_config(row: dict) -> PlanConfig:
    tp = row.get("training_precision") or "pure"
    weights = Precision(row.get("weights", "bf16"))
    method = Method(row.get("method", "inference"))
    kw = dict(model=model_spec(row["model"], row.get("model_overrides")), method=method, precision=weights,
              compute_dtype=DType(row.get("compute_dtype", "bf16")),
              training_precision=TrainingPrecision.AMP if tp.startswith("amp") else TrainingPrecision.PURE,
              double_quant=bool(row.get("double_quant")), batch=int(row["batch"]), seq=int(row["seq"]),
              attn=Attention(row.get("attn", "sdpa")), grad_checkpointing=bool(row.get("grad_checkpointing")),
              padding_mask=bool(row.get("padding_mask")),
              stack=row.get("stack") or "transformers",
              device=DeviceMode(row.get("device", "cuda")))
    if row.get("optimizer"):
        kw["optimizer"] = Optimizer(row["optimizer"])
    if row.get("lora_r"):
        kw["lora_r"] = int(row["lora_r"])
    if row.get("lora_targets"):
        kw["lora_targets"] = tuple(row["lora_targets"])
    for k in ("grad_accum", "num_gpus", "zero", "tp", "freeze_last_layers", "num_virtual_tokens", "group_size",
              "lora_alpha", "adapter_size"):
        if row.get(k) is not None:
            kw[k] = int(row[k])
    if row.get("freeze_modules"):
        kw["freeze_modules"] = tuple(row["freeze_modules"])
    if row.get("kv_dtype"):
        kw["kv_dtype"] = DType(row["kv_dtype"])
    if row.get("fsdp"):
        kw["fsdp"] = row["fsdp"]
    if row.get("offload"):
        kw["offload"] = Offload(row["offload"])
    if row.get("kbit_upcast") is not None:
        kw["kbit_upcast"] = bool(row["kbit_upcast"])
    if row.get("lora_dropout") is not None:
        kw["lora_dropout"] = float(row["lora_dropout"])
    if row.get("flash_attention") is not None:
        kw["flash_attention"] = bool(row["flash_attention"])
    elif row.get("gpu"):
        from quantlab.profiles import load_gpu

        kw["flash_attention"] = load_gpu(row["gpu"]).bf16_supported  # fit.for_gpu's rule
    return PlanConfig(**kw)


@dataclass(frozen=True)
class Check:
    id: str
    metric: str
    stack: str
    measured: float
    predicted: float
    error: float | None  # (predicted - measured) / measured; None for fits rows
    ok: bool


def check_row(row: dict) -> Check:
    from quantlab.planner import fit, plan
    from quantlab.profiles import load_gpu

    cfg = row_to_config(row)
    stack = row.get("stack") or "transformers"
    metric = row["metric"]
    if metric == "fits":
        f = fit(cfg, load_gpu(row["gpu"]), suggest=False)
        return Check(row["id"], metric, stack, float(bool(row["fits"])), float(f.fits), None, f.fits == row["fits"])
    p = plan(cfg)
    pred = {"allocated": p.peak_allocated_bytes, "reserved": p.peak_reserved_bytes, "process": p.process_bytes}[metric]
    err = (pred - row["value_bytes"]) / row["value_bytes"]
    tol = row.get("tolerance") or TARGETS.get((stack, metric), 0.10)
    return Check(row["id"], metric, stack, row["value_bytes"], pred, err, abs(err) <= tol)


def summarize(checks: list[Check]) -> list[dict]:
    """Per (stack, metric): rows, mean |error|, worst error, worst under-prediction, all within target."""
    out = []
    groups: dict[tuple[str, str], list[Check]] = {}
    for c in checks:
        groups.setdefault((c.stack, c.metric), []).append(c)
    for (stack, metric), cs in sorted(groups.items()):
        if metric == "fits":
            out.append(dict(stack=stack, metric=metric, rows=len(cs), right=sum(c.ok for c in cs),
                            mean_abs_error=None, worst_error=None, worst_under=None, ok=all(c.ok for c in cs)))
            continue
        errs = [c.error for c in cs]
        worst = max(errs, key=abs)
        under = min(errs)
        out.append(dict(stack=stack, metric=metric, rows=len(cs), right=sum(c.ok for c in cs),
                        mean_abs_error=statistics.fmean(abs(e) for e in errs), worst_error=worst,
                        worst_under=under if under < 0 else 0.0, target=TARGETS.get((stack, metric)),
                        ok=all(c.ok for c in cs)))
    return out
