"""Planned against measured, per component, for a user's job: the rows, the table, the logged scalars.

The plan and the error convention are :mod:`quantlab.validate`'s (``predict``, ``error``, the CPU and GPU
targets): this module only lays them out. An error is ``(planned - measured) / measured``; negative is an
under-prediction. Bytes are integers; the table shows MiB (2**20 bytes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quantlab.lab.measure import COMPONENTS


@dataclass(frozen=True)
class Row:
    component: str
    planned_bytes: int | None
    measured_bytes: int | None
    error: float | None
    target: float | None
    ok: bool | None


def rows(pc, m) -> list[Row]:
    """One :class:`Row` per component the measurement has, then the totals (``pc``: the derived PlanConfig,
    ``m``: a :class:`quantlab.lab.measure.Measurement`)."""
    from quantlab.specs import DeviceMode
    from quantlab.validate import CPU_TARGETS, CPU_TOTALS, GPU_TARGETS, GPU_TOTALS, error, predict

    pred = predict(dataclasses.replace(pc, device=DeviceMode(m.device)))
    totals = GPU_TOTALS if m.device == "cuda" else CPU_TOTALS
    targets = GPU_TARGETS if m.device == "cuda" else CPU_TARGETS
    out = []
    for k in COMPONENTS + totals:
        meas = getattr(m, f"{k}_bytes")
        if meas is None:
            continue
        p = pred.get(f"pred_{k}_bytes")
        e = error(p, meas)
        tol = targets.get(k, CPU_TARGETS["tensor"]) if k in totals else CPU_TARGETS["tensor"]
        out.append(Row(k, p, meas, e, tol, None if e is None else abs(e) <= tol))
    return out


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.2f}"


def table(rs: list[Row], *, title: str) -> str:
    """The comparison as text, at most 80 columns."""
    lines = [title, f"{'component':<16}{'planned MiB':>13}{'measured MiB':>14}{'error':>12}  within"]
    for r in rs:
        err = "-" if r.error is None else f"{r.error * 100:+.2f}%"
        ok = "-" if r.ok is None else ("yes" if r.ok else "NO") + f" ({r.target * 100:.0f}%)"
        lines.append(f"{r.component:<16}{_mib(r.planned_bytes):>13}{_mib(r.measured_bytes):>14}{err:>12}  {ok}")
    return "\n".join(lines)


def scalars(rs: list[Row], prefix: str = "quantlab") -> dict:
    """Flat numeric logs for the user's trackers: ``quantlab/<component>_planned_mib``, ``..._measured_mib``,
    ``..._error`` (MiB at display only; the bytes stay in the printed report)."""
    out = {}
    for r in rs:
        if r.planned_bytes is not None:
            out[f"{prefix}/{r.component}_planned_mib"] = r.planned_bytes / 2**20
        out[f"{prefix}/{r.component}_measured_mib"] = r.measured_bytes / 2**20
        if r.error is not None:
            out[f"{prefix}/{r.component}_error"] = r.error
    return out


def describe(pc) -> str:
    """One line: what the plan is of."""
    c = pc
    s = f"{c.model.name}: {c.method.value}, {c.precision.value} weights, {c.training_precision.value} " \
        f"{c.compute_dtype.value}, {c.optimizer.value}, batch {c.batch} x seq {c.seq}"
    if c.method.value in ("lora", "qlora"):
        s += f", r {c.lora_r} on {','.join(c.lora_targets)}"
    if c.grad_checkpointing:
        s += ", checkpointing"
    if c.grad_accum > 1:
        s += f", grad accum {c.grad_accum}"
    return s


@dataclass(frozen=True)
class Check:
    """One checked step: the derived plan (:class:`quantlab.integrations.derive.Derived`), the measurement, the
    rows and the printed text."""

    derived: object
    measurement: object
    rows: tuple
    text: str

    @property
    def ok(self) -> bool | None:
        oks = [r.ok for r in self.rows if r.ok is not None]
        return all(oks) if oks else None


def check(derived, m, *, where: str) -> Check:
    """Set the derived plan beside the measurement ``m`` and lay out the text (``where``: how it was measured)."""
    notes = list(derived.underived) + list(m.notes)
    if derived.config is None:
        import textwrap

        text = "\n".join([f"quantlab: measured {where}; no plan to compare:"]
                         + [textwrap.fill(n, 80, initial_indent="  - ", subsequent_indent="    ") for n in notes])
        return Check(derived, m, (), text)
    import textwrap

    cfg = derived.config
    if getattr(cfg, "eval_batch", None):  # memory.py assumption 20: evaluation is a phase of its own
        import dataclasses

        from quantlab.planner import plan as _plan

        full = _plan(cfg)
        cfg = dataclasses.replace(cfg, eval_batch=None)
        notes.append(f"evaluation during training (eval_batch {derived.config.eval_batch}) is planned as its own "
                     f"phase, {full.components.get('eval_forward', 0) / 2**20:.2f} MiB of no-grad forward (plan "
                     f"peak with it: {full.peak_allocated_bytes / 2**20:.2f} MiB); the measured step is a training "
                     "step, so it is set beside the training step's plan")
    rs = rows(cfg, m)
    plan = textwrap.fill(f"plan: {describe(cfg)}", 80, initial_indent="  ", subsequent_indent="    ")
    lines = [table(rs, title=f"quantlab: planned vs measured, {where}\n{plan}")]
    if notes:
        lines.append("notes:")
        lines += [textwrap.fill(n, 80, initial_indent="  - ", subsequent_indent="    ") for n in notes]
    return Check(derived, m, tuple(rs), "\n".join(lines))
