"""Validation of the encoder planner: the lab's encoder step measured beside :func:`plan_encoder`, per component.

One :class:`EncoderCase` is an encoder plan (the flags of ``quantlab plan --model ENCODER``: ``head``,
``num-labels``, ``train-last-k``, ``batch``, ``seq``, with that command's defaults; plus ``precision`` and
``padded``) on an encoder profile
(``profiles/encoders/``), optionally scaled down by config.json overrides (``scale``). The planner
(:func:`quantlab.planner.encoder.plan_encoder`) is given the *same* scaled config the lab builds, so the comparison
is like with like. The rows have :mod:`quantlab.validate`'s schema (``pred_<component>_bytes``,
``meas_<component>_bytes``, ``err_<component>``, ``diff_<component>_bytes``, ``ok``), so ``quantlab validate``'s
report renders and summarises them with the decoder rows.

Numbered assumptions:

1. Measured by the lab's own encoder code, not re-implemented here: :func:`quantlab.lab.classify.random_classifier`
   builds ``AutoModelFor{Sequence,Token}Classification`` from the scaled config with random weights in the case's
   dtype (fp32, or bf16 weights and compute); :func:`quantlab.lab.classify.measure_classifier_step` freezes it
   with :func:`~quantlab.lab.classify.freeze_all_but_last_k` and measures optimizer step 2 of transformers'
   ``Trainer`` (AdamW) on one synthetic ``batch x seq`` batch with :class:`quantlab.lab.measure.StepProbe`
   (``padded``: the first row's last two positions are padding).
2. Components compared: ``weights``, ``gradients``, ``optimizer``, ``activations``, ``logits_loss`` (the encoder
   planner's five; StepProbe's boundaries: activations are what the backbone saves, logits_loss what the head and
   the loss save plus the logits). Quantization constants and adapters are measured and are 0 (no PEFT, float
   weights); the planner has no such components, so they are set beside a prediction of 0.
3. The allocator peak is not planned (encoder planner assumption 8: it is not the sum of the components). The
   measured peak is kept in the row (``meas_allocated_peak_bytes``, with the matmul workspace
   ``meas_allocated_with_workspace_bytes``), ``pred_allocated_bytes`` and ``err_allocated`` are None, and it is
   neither a pass nor a fail, as :mod:`quantlab.validate` treats a total it has no figure for: no error, not in
   ``ok`` and not in the summary (a ``meas_allocated_bytes`` key is deliberately not written: the summary, the
   plot and ``--append-measurements`` read that key as a planned total).
4. CPU only: the planner's dropout masks and SDPA paths are the CPU's (encoder assumptions 5, 5a); a case is
   refused where torch sees a GPU.

Targets: :data:`quantlab.validate.CPU_TARGETS` (every tensor component within 2%); errors are
``(predicted - measured) / measured`` (:func:`quantlab.validate.error`). ``expect: {component: error}`` marks a
known miss as in the decoder matrix: the target is unchanged and the row reports the miss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from quantlab.errors import QuantlabError

COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits_loss")
PRECISIONS = {"fp32": 4, "bf16": 2}
HEADS = ("seq-cls", "tok-cls")
# entry key (a quantlab plan flag without the dashes, or its underscore form) -> EncoderCase field
KEYS = {"id": "id", "model": "model", "scale": "scale", "head": "head", "num-labels": "num_labels",
        "train-last-k": "train_last_k", "batch": "batch", "seq": "seq", "precision": "precision",
        "padded": "padded", "expect": "expect"}


@dataclass(frozen=True)
class EncoderCase:
    """One encoder configuration to validate (assumption 1)."""

    id: str
    model: str  # the encoder profile's name
    head: str
    num_labels: int
    train_last_k: int
    batch: int
    seq: int
    precision: str = "fp32"
    padded: bool = False
    overrides: tuple = ()  # ((config.json key, value), ...) applied to the profile's config
    hf_config: dict = field(default_factory=dict, hash=False, compare=False)  # the profile config, overrides applied
    expect: tuple = ()  # ((component, error), ...): a known miss, as measured

    @property
    def spec(self):
        from quantlab.planner.encoder import EncoderSpec

        return EncoderSpec.from_config(self.hf_config, name=self.model)

    def plan_config(self):
        from quantlab.planner.encoder import EncoderPlanConfig, Head

        return EncoderPlanConfig(head=Head(self.head), num_labels=self.num_labels, train_last_k=self.train_last_k,
                                 batch=self.batch, seq=self.seq, param_bytes=PRECISIONS[self.precision],
                                 padded=self.padded)


def _int(where: str, key: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        what = "a positive" if low > 0 else "a non-negative"
        raise QuantlabError(f"{where}: {key} must be {what} integer, got {v!r}")
    return v


def _expect(where: str, v) -> tuple:
    if v is None:
        return ()
    if not isinstance(v, dict) or not v:
        raise QuantlabError(f"{where}: expect must be a mapping of component: error, e.g. {{activations: -0.05}}")
    for k, e in v.items():
        if k not in COMPONENTS:
            raise QuantlabError(f"{where}: expect names an unknown component {k!r} (known: {', '.join(COMPONENTS)})")
        if isinstance(e, bool) or not isinstance(e, (int, float)):
            raise QuantlabError(f"{where}: expect {k} must be a number (the error as a fraction), got {e!r}")
    return tuple(sorted((str(k), float(e)) for k, e in v.items()))


def case_from_mapping(entry: dict, *, scales: dict | None = None, defaults: dict | None = None,
                      index: int = 1) -> EncoderCase:
    """One :class:`EncoderCase` from a matrix entry (keys: :data:`KEYS`); bad input is a one-line QuantlabError
    naming the entry."""
    from quantlab.commands.encoder_plan import DEFAULTS  # quantlab plan's encoder defaults: one place
    from quantlab.encoder_profiles import encoder_doc

    if not isinstance(entry, dict):
        raise QuantlabError(f"encoder configuration {index} is not a mapping")
    raw = {**(defaults or {}), **entry}
    where = f"encoder configuration {raw.get('id', index)}"
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        name = KEYS.get(str(k).replace("_", "-"))
        if name is None:
            raise QuantlabError(f"{where}: unknown key {k!r} (an encoder entry takes {', '.join(KEYS)})")
        kw[name] = v
    kw["id"] = str(kw.get("id", f"encoder-{index}"))
    model = kw.get("model")
    if not isinstance(model, str) or not model:
        raise QuantlabError(f"{where}: give model: an encoder profile name")
    try:
        doc = encoder_doc(model)  # unknown: one line listing the known encoders
    except QuantlabError as e:
        raise QuantlabError(f"{where}: {e}") from None
    scale = kw.pop("scale", None) or {}
    if isinstance(scale, str):
        if scale not in (scales or {}):
            raise QuantlabError(f"{where}: unknown scale {scale!r} (known: {', '.join(scales or {}) or 'none'})")
        scale = scales[scale]
    if not isinstance(scale, dict):
        raise QuantlabError(f"{where}: scale must be a mapping of config.json keys or a scale's name")
    head = kw.get("head", DEFAULTS["head"])
    if head not in HEADS:
        raise QuantlabError(f"{where}: unknown head {head!r} (known: {', '.join(HEADS)})")
    precision = kw.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise QuantlabError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    padded = kw.get("padded", False)
    if not isinstance(padded, bool):
        raise QuantlabError(f"{where}: padded must be true or false, got {padded!r}")
    hf = dict(doc["config"])
    hf.update(scale)
    out = EncoderCase(id=kw["id"], model=doc["name"], head=head,
                      num_labels=_int(where, "num-labels", kw.get("num_labels", DEFAULTS["num_labels"]), 1),
                      train_last_k=_int(where, "train-last-k", kw.get("train_last_k", DEFAULTS["train_last_k"]), 0),
                      batch=_int(where, "batch", kw.get("batch", DEFAULTS["batch"]), 1),
                      seq=_int(where, "seq", kw.get("seq", DEFAULTS["seq"]), 1),
                      precision=precision, padded=padded, overrides=tuple(sorted(scale.items())), hf_config=hf,
                      expect=_expect(where, kw.get("expect")))
    try:
        spec = out.spec
    except (ValueError, KeyError, TypeError) as e:
        raise QuantlabError(f"{where}: {doc['name']} at this scale: {e}") from None
    if out.train_last_k > spec.num_hidden_layers:
        raise QuantlabError(f"{where}: train-last-k {out.train_last_k} exceeds {doc['name']}'s "
                            f"{spec.num_hidden_layers} layers")
    if out.padded and out.seq < 3:
        raise QuantlabError(f"{where}: padded needs seq >= 3 (the first row's last two positions are padding)")
    if spec.family.learned_positions and out.seq + _position_offset(hf) > spec.max_position_embeddings:
        raise QuantlabError(f"{where}: seq {out.seq} is beyond {doc['name']}'s {spec.max_position_embeddings} "
                            "position embeddings")
    return out


def _position_offset(hf: dict) -> int:
    """RoBERTa's position ids start after its padding index (``create_position_ids_from_input_ids``)."""
    return int(hf.get("pad_token_id", 0)) + 1 if hf.get("model_type") == "roberta" else 0


def load_encoder_cases(entries, only: tuple[str, ...] = ()) -> list[EncoderCase]:
    """The cases of an encoder matrix: a list of entries, or a document with ``configurations:`` and optional
    ``scales:`` and ``defaults:`` (the style of profiles/validation/matrix.yaml)."""
    scales, defaults = {}, {}
    if isinstance(entries, dict):
        scales, defaults = entries.get("scales") or {}, entries.get("defaults") or {}
        entries = entries.get("configurations")
    if not isinstance(entries, list) or not entries:
        raise QuantlabError("expected a list of encoder configurations (or a mapping with 'configurations:')")
    cases, seen = [], set()
    for i, e in enumerate(entries, 1):
        c = case_from_mapping(e, scales=scales, defaults=defaults, index=i)
        if c.id in seen:
            raise QuantlabError(f"encoder configuration {c.id}: duplicate id")
        seen.add(c.id)
        if not only or c.id in only:
            cases.append(c)
    missing = [x for x in only if x not in seen]
    if missing:
        raise QuantlabError(f"no encoder configuration with id {', '.join(missing)}")
    return cases


def load_encoder_matrix(path, only: tuple[str, ...] = ()) -> list[EncoderCase]:
    """The cases of an encoder matrix file (YAML, safe loading)."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise QuantlabError(f"encoder matrix file {p} does not exist")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise QuantlabError(f"{p}: not valid YAML ({str(e).splitlines()[0][:160]})") from None
    try:
        return load_encoder_cases(doc, only)
    except QuantlabError as e:
        raise QuantlabError(f"{p}: {e}") from None


# ---- one row -----------------------------------------------------------------------------------------------

def predict(case: EncoderCase):
    """(``pred_`` fields, the plan) of :func:`plan_encoder` for the case (assumption 2)."""
    from quantlab.planner.encoder import plan_encoder

    try:
        p = plan_encoder(case.spec, case.plan_config())
    except ValueError as e:
        raise QuantlabError(f"{case.id}: {e}") from None
    out = {f"pred_{k}_bytes": getattr(p, f"{k}_bytes") for k in COMPONENTS}
    out.update(pred_quant_constants_bytes=0, pred_adapters_bytes=0, pred_allocated_bytes=None,
               pred_sum_of_components_bytes=p.total_bytes, pred_trainable_params=p.trainable_params,
               pred_params=p.params)
    return out, p


def measure(case: EncoderCase) -> dict:
    """``meas_`` fields of the lab's measured step (assumption 1)."""
    from quantlab.lab.classify import measure_classifier_step, random_classifier
    from quantlab.lab.measure import cuda_available

    if cuda_available():
        raise QuantlabError(f"{case.id}: encoder rows are measured on a CPU (quantlab/validate_encoder.py "
                            "assumption 4)")
    t0 = time.perf_counter()
    model = random_classifier(case.hf_config, case.head, case.num_labels, case.precision)
    r = measure_classifier_step(model, head=case.head, num_labels=case.num_labels, train_last_k=case.train_last_k,
                                batch=case.batch, seq=case.seq, padded=case.padded)
    m = r.measurement
    out = {f"meas_{k}_bytes": getattr(m, f"{k}_bytes") for k in COMPONENTS + ("quant_constants", "adapters")}
    out.update(meas_allocated_peak_bytes=m.allocated_bytes,
               meas_allocated_with_workspace_bytes=m.allocated_with_workspace_bytes,
               meas_trainable_params=r.trainable_params, meas_params=r.total_params, meas_batch=m.batch,
               meas_seq=m.seq, meas_padded=r.padded, meas_layers=r.num_layers, meas_notes=list(m.notes),
               device=m.device, meas_s=time.perf_counter() - t0)
    return out


def compare(case: EncoderCase, meas: dict) -> dict:
    """One row in :mod:`quantlab.validate`'s schema: conditions, ``pred_``/``meas_`` side by side, ``err_``,
    ``diff_``, ``ok`` over the tensor components (the allocator peak is not planned: assumption 3)."""
    from quantlab.validate import error, score, target

    pred, plan = predict(case)
    spec = case.spec
    row: dict[str, Any] = dict(id=case.id, model=case.model, weights_init="random",
                               overrides=dict(case.overrides) or None, method=f"encoder-{case.head}",
                               family=spec.model_type, head=case.head, num_labels=case.num_labels,
                               train_last_k=case.train_last_k, layers=spec.num_hidden_layers,
                               precision=case.precision, double_quant=False, compute_dtype=case.precision,
                               training_precision="pure", optimizer="adamw", batch=case.batch, seq=case.seq,
                               attn="sdpa", grad_checkpointing=False, padding_mask=case.padded,
                               device=meas.get("device", "cpu"), loop="transformers Trainer")
    row.update(pred)
    row.update(meas)
    # a component the planner models and the lab did not measure is not a pass (missing_fails)
    ok = score(row, COMPONENTS + ("quant_constants", "adapters"), lambda k: target(k, row["device"]),
               missing_fails=True)
    row["err_allocated"] = None  # assumption 3: not planned, neither a pass nor a fail
    row["allocated_planned"] = False
    if row.get("meas_allocated_peak_bytes") is not None:
        row["err_sum_of_components_vs_peak"] = error(plan.total_bytes, row["meas_allocated_peak_bytes"])
    row["ok"] = ok
    row["notes"] = list(plan.notes) + [
        "allocated: the encoder planner does not model the allocator peak (quantlab/planner/encoder.py assumption "
        "8); the measured peak is meas_allocated_peak_bytes, shown, not a target"]
    if case.expect:
        row["expected_errors"] = dict(case.expect)
    return row


def run_encoder_case(case: EncoderCase) -> dict:
    """Measure the case with the lab's encoder step and set the plan beside it: one row."""
    return compare(case, measure(case))


def main(argv: list[str] | None = None) -> int:
    """``python -m quantlab.validate_encoder [MATRIX] [--only ID,...] [--format ...] [--out DIR]``: run the encoder
    matrix and print ``quantlab validate``'s report of its rows (until ``quantlab validate --matrix`` reads it).
    Exit 0 when every row meets its targets, 1 when one misses, 2 for bad input."""
    import argparse
    import contextlib
    import sys
    from pathlib import Path

    from quantlab.commands.validate import FORMATS, report

    p = argparse.ArgumentParser(prog="python -m quantlab.validate_encoder")
    p.add_argument("matrix", nargs="?", default=str(Path(__file__).resolve().parent.parent / "profiles" /
                                                    "validation" / "encoder-matrix.yaml"))
    p.add_argument("--only", default="", metavar="ID,...")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--out", default=None, metavar="DIR")
    a = p.parse_args(argv)
    try:
        cases = load_encoder_matrix(a.matrix, tuple(x.strip() for x in a.only.split(",") if x.strip()))
        with contextlib.redirect_stdout(sys.stderr):
            rows = [run_encoder_case(c) for c in cases]
    except QuantlabError as e:
        print(f"quantlab: error: {e}", file=sys.stderr)
        return 2
    return report(rows, fmt=a.format, out=a.out)


if __name__ == "__main__":
    raise SystemExit(main())
