"""Measured memory figures (published ones, and the lab's own) and the planner's error against them.

Rows follow ``shared/ground-truth/published.jsonl``: the exact conditions of a run (model, method, weights,
compute dtype, training precision, optimizer, LoRA, checkpointing, batch, seq, attention, GPU, stack) and
one metric (``allocated``, ``reserved``, ``process`` in bytes, or ``fits``). The lab appends its own rows
to ``reports/measurements.jsonl`` in the same format, so one check covers both. A row a TRL preference trainer
measured carries ``preference`` (its objective, reference and beta) and is re-planned through
:func:`quantlab.validate.method_plan`, as ``quantlab validate`` planned it; a PEFT variant's row (bitfit, DoRA,
P-tuning, distillation) carries ``variant`` (its name and settings; a distillation teacher as its architecture) and is
re-planned the same way.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError
from quantlab.specs import PlanConfig

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO.parent / "shared" / "ground-truth" / "published.jsonl"
MEASUREMENTS = REPO / "reports" / "measurements.jsonl"
# issue #12's targets (tighter than issue #2's 5% / 10% / 15%): transformers stacks (either version) allocated 3%,
# reserved and process 6%; LitGPT 10%. A row's own ``tolerance`` wins.
TARGETS = {("transformers", "allocated"): 0.03, ("transformers", "reserved"): 0.06,
           ("transformers", "process"): 0.06, ("litgpt", "allocated"): 0.10, ("litgpt", "reserved"): 0.10,
           ("litgpt", "process"): 0.10}


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


# The published row format (shared/ground-truth/README.md, external: read, never changed) against the one
# configuration vocabulary (PlanConfig.from_dict). Keys not listed here are PlanConfig field names already.
ROW_KEYS = {"weights": "precision"}  # row key -> PlanConfig field
ROW_VALUES = {"training_precision": {"amp": "amp", "amp-bf16": "amp", "amp-fp16": "amp", "pure": "pure",
                                     "pure-bf16": "pure", "pure-fp16": "pure", "pure-fp32": "pure"}}
# Keys that describe the row, not the configuration (model is resolved from its profile with model_overrides;
# ``validation``: what ``quantlab validate`` found when it measured a lab row, pass or fail).
ROW_ONLY = ("id", "source", "model", "model_overrides", "gpu", "metric", "value_bytes", "unit_published", "fits",
            "tolerance", "notes", "url", "date", "serve", "validation", "preference", "variant")


def row_config_dict(row: dict) -> dict:
    """The :meth:`PlanConfig.from_dict` dict of a row's conditions (null values are absent: the defaults)."""
    missing = [k for k in ("model", "batch", "seq") if row.get(k) is None]
    if missing:
        raise QuantlabError(f"measurement row {row.get('id', '?')}: missing {', '.join(missing)}")
    d = {}
    for k, v in row.items():
        if k in ROW_ONLY or v is None:
            continue
        k = ROW_KEYS.get(k, k)
        if k in ROW_VALUES:
            if v not in ROW_VALUES[k]:
                raise QuantlabError(f"measurement row {row.get('id', '?')}: {k} {v!r} is not one of "
                                    f"{', '.join(ROW_VALUES[k])}")
            v = ROW_VALUES[k][v]
        d[k] = v
    if "keep_grads" not in d and d.get("method", "inference") != "inference":
        d.update(keep_grads_of_source(row.get("source") or ""))
    if d.get("stack") is None:  # the transformers version the row's source names (vramcalc: 4.57.6)
        d.update(stack_of_source(row.get("source") or ""))
    if "flash_attention" not in d and row.get("gpu"):
        from quantlab.profiles import load_gpu

        d["flash_attention"] = load_gpu(row["gpu"]).bf16_supported  # fit.for_gpu's rule
    return d


def keep_grads_of_source(source: str) -> dict:
    """``{"keep_grads": True}`` for a training row whose source's loop zeroes with ``set_to_none=False`` (memory.py
    assumption 3), else ``{}`` (the default: ``set_to_none=True``, as Trainer's ``model.zero_grad()`` and LitGPT's
    ``optimizer.zero_grad()`` do). vramcalc 0.1.2 ``bench.py`` (its measured table): ``opt.zero_grad(
    set_to_none=False)`` after each step; ``quantlab validate`` rows written before the row carried ``keep_grads``
    were measured by the same loop (validate.py then zeroed with ``set_to_none=False``)."""
    if "vramcalc" in source or source.startswith("quantlab validate"):
        return {"keep_grads": True}
    return {}


def stack_of_source(source: str) -> dict:
    """``{"stack": "transformers==X.Y"}`` for the first ``transformers X.Y.Z`` a row's source text names (the
    version it was measured with; PlanConfig.from_dict maps it onto the modelled line), else ``{}`` (the alias:
    the installed version)."""
    words = source.replace(",", " ").replace(";", " ").replace("(", " ").replace(")", " ").split()
    for w, v in zip(words, words[1:]):
        if w == "transformers" and v[:1].isdigit():
            return {"stack": "transformers==" + v}
    return {}


def row_to_config(row: dict) -> PlanConfig:
    """The PlanConfig that describes a measured row's exact conditions (a bad field: one-line QuantlabError)."""
    try:
        d = row_config_dict(row)
        return PlanConfig.from_dict(d, model=model_spec(row["model"], row.get("model_overrides")))
    except QuantlabError as e:
        if str(e).startswith("measurement row"):
            raise
        raise QuantlabError(f"measurement row {row.get('id', '?')}: {e}") from e


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
    stack = cfg.stack  # resolved (row_config_dict: the source's transformers version)
    metric = row["metric"]
    if metric == "fits":
        f = fit(cfg, load_gpu(row["gpu"]), suggest=False)
        return Check(row["id"], metric, stack, float(bool(row["fits"])), float(f.fits), None, f.fits == row["fits"])
    if row.get("serve") is not None:
        p = serve_row_plan(row, cfg)
    elif row.get("preference") is not None:  # a preference objective the lab measured (validate.method_plan)
        p = preference_row_plan(row, cfg)
    elif row.get("variant") is not None:  # a PEFT variant or distillation the lab measured (the same)
        p = variant_row_plan(row, cfg)
    else:  # where the plan meets the row's GPU, its measured CUDA context replaces the default (fit.on_gpu)
        p = plan(cfg)
        if row.get("gpu"):
            from quantlab.planner.fit import on_gpu

            p = on_gpu(p, load_gpu(row["gpu"]))
    pred = {"allocated": p.peak_allocated_bytes, "reserved": p.peak_reserved_bytes, "process": p.process_bytes}[metric]
    err = (pred - row["value_bytes"]) / row["value_bytes"]
    tol = row.get("tolerance") or TARGETS.get((cfg.library, metric), 0.10)
    return Check(row["id"], metric, stack, row["value_bytes"], pred, err, abs(err) <= tol)


def variant_row_plan(row: dict, cfg: PlanConfig):
    """The plan of a row measured by an issue #13 variant's lab code (``variant``: the
    :meth:`quantlab.commands.variant_flags.Variant.to_dict` it was planned with, a distillation teacher as its
    full architecture; the row's ``method`` is the base method), through :func:`quantlab.validate.method_plan`."""
    from quantlab.commands.variant_flags import Variant
    from quantlab.specs import SpecError
    from quantlab.validate import method_plan

    try:
        return method_plan(cfg, Variant.from_dict(row["variant"]))
    except SpecError as e:
        raise QuantlabError(f"measurement row {row.get('id', '?')}: variant: {e}") from None


def preference_row_plan(row: dict, cfg: PlanConfig):
    """The plan of a row measured by a TRL preference trainer (``preference``: the
    :meth:`quantlab.planner.preference.PreferenceConfig.to_dict` fields it was planned with; the row's ``method`` is
    the policy's), through :func:`quantlab.validate.method_plan`, the composition ``quantlab validate`` compared."""
    from quantlab.planner.preference import PreferenceConfig
    from quantlab.specs import SpecError
    from quantlab.validate import method_plan

    try:
        pref = PreferenceConfig.from_dict(row["preference"])
        return method_plan(cfg, pref)
    except SpecError as e:
        raise QuantlabError(f"measurement row {row.get('id', '?')}: preference: {e}") from None


def serve_row_plan(row: dict, cfg: PlanConfig):
    """The serving plan of a row measured through ``model.generate`` / a scoring forward (``serve``: the settings
    ``quantlab validate`` ran, ``quantlab.validate.SERVE_ROW_KEYS``): the serving planner, not a bare forward."""
    from quantlab.planner import serving as S

    sv = row["serve"]
    try:
        if not isinstance(sv, dict):
            raise QuantlabError("serve must be a mapping of serving settings")
        s = S.serve_config(cfg, prompt_tokens=sv["prompt_tokens"], new_tokens=sv["new_tokens"] or None,
                           concurrency=sv["concurrency"], mode=S.Mode(sv["mode"]), engine=S.Engine(sv["engine"]),
                           cache=S.Cache(sv["cache"]), do_sample=bool(sv["do_sample"]), adapters=int(sv["adapters"]),
                           merged=bool(sv["merged"]))
    except (KeyError, ValueError, TypeError, QuantlabError) as e:
        raise QuantlabError(f"measurement row {row.get('id', '?')}: serve: {e}") from None
    return S.serve_plan(s)


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
                        worst_under=under if under < 0 else 0.0, target=TARGETS.get((stack.partition("==")[0], metric)),
                        ok=all(c.ok for c in cs)))
    return out
