"""``PlanCheckCallback``: planned against measured, per component, inside a user's Trainer / TRL job.

    trainer = SFTTrainer(model=..., args=..., train_dataset=..., callbacks=[PlanCheckCallback()])

At optimizer step ``step`` (default 2: the optimizer states exist from its start, as in the lab's measured step)
the callback measures the step with :class:`quantlab.lab.measure.StepProbe` (the lab's instrument), derives the
:class:`~quantlab.specs.PlanConfig` of the job from the live model, the TrainingArguments and the batch it saw
(:func:`quantlab.integrations.derive.derive`), prints planned against measured per component with what it could
not derive, and keeps the result on ``callback.check``.

Assumptions (transformers 5.24 ``trainer.py`` / ``trainer_callback.py``):

1. Trainer calls ``on_step_begin`` before the first micro-batch of an optimizer step, ``on_pre_optimizer_step``
   after the last backward and gradient clipping, ``on_optimizer_step`` after ``optimizer.step()`` and
   ``on_step_end`` after ``model.zero_grad()``: the window is the whole optimizer step, every micro-batch of it.
2. The scalars (``quantlab/<component>_planned_mib``, ``_measured_mib``, ``_error``) go to the user's
   ``report_to`` integrations (TensorBoard, W&B, MLflow callbacks) through the ``logs`` dict of the next log
   event, which this callback makes happen at the measured step (``control.should_log``). Callbacks receive
   events in list order and Trainer appends user callbacks after the integrations, so at ``on_train_begin``
   this callback moves itself in front of the first integration callback of the handler (transformers gives a
   callback no handle on its handler: it is the caller's ``self`` one frame up, checked to be a
   ``CallbackHandler``; where it is not, the scalars reach only the callbacks after this one and a note says so).
   Without a ``report_to`` integration nothing is added to the logs (the table is printed either way).
3. The job is planned with ``loop=trainer`` (derive assumption 7; memory.py assumption 19: ``compute_loss`` drops
   the model output, so the logits are freed before backward). StepProbe sees whether the logits were alive when
   backward began; a note says so only where that disagrees with the plan (a subclass whose ``compute_loss``
   keeps the outputs, or a plan the caller forced to ``manual``).
"""

from __future__ import annotations

import sys

from transformers import TrainerCallback


class PlanCheckCallback(TrainerCallback):
    """Measure optimizer step ``step`` (1-based) and print it against the plan. No argument is needed."""

    def __init__(self, step: int = 2, *, print_fn=print, cuda=None):
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            from quantlab.errors import QuantlabError

            raise QuantlabError(f"step must be a positive integer, got {step!r}")
        self.step = step
        self.print_fn = print_fn
        self.cuda = cuda  # injected CUDA readings (tests); default torch.cuda where it is available
        self.check = None
        self._probe = None
        self._pending = None
        self._notes: list[str] = []
        self._inject = False  # whether a report_to integration receives the scalars (assumption 2)

    # assumption 2
    def on_train_begin(self, args, state, control, **kwargs):
        from transformers.trainer_callback import CallbackHandler

        handler = sys._getframe(1).f_locals.get("self")
        if not isinstance(handler, CallbackHandler):
            self._notes.append("the callback handler was not found: the scalars reach only later callbacks")
            return
        try:
            from transformers.integrations import INTEGRATION_TO_CALLBACK

            kinds = tuple(c for c in INTEGRATION_TO_CALLBACK.values() if isinstance(c, type))
        except ImportError:  # pragma: no cover
            kinds = ()
        cbs = handler.callbacks
        first = next((i for i, c in enumerate(cbs) if kinds and isinstance(c, kinds)), None)
        if first is None:
            return  # no report_to integration: the table is printed, no scalars are logged
        self._inject = True
        if cbs.index(self) > first:
            cbs.remove(self)
            cbs.insert(first, self)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.check is None and self._probe is None and state.global_step + 1 == self.step and model is not None:
            from quantlab.lab.measure import StepProbe

            self._probe = StepProbe(model, cuda=self.cuda).start(optimizer)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._probe is not None:
            self._probe.after_backward()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self._probe is not None and optimizer is not None:
            self._probe.after_optimizer_step(optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._probe is None:
            return
        probe, self._probe = self._probe, None
        m = probe.stop()
        self._finish(model, args, optimizer, probe, m)
        control.should_log = True

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._probe is not None:  # training ended inside the measured step
            probe, self._probe = self._probe, None
            probe.stop()
        if self.check is None:
            self.print_fn(f"quantlab: training ended before optimizer step {self.step}; nothing was measured")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None:
            logs.update(self._pending)
            self._pending = None

    def _finish(self, model, args, optimizer, probe, m):
        from quantlab.integrations.derive import derive
        from quantlab.integrations.report import check, scalars

        d = derive(model, args=args, optimizer=optimizer, batch=probe.batch, seq=probe.seq,
                   padded=probe.attention_mask_has_padding)
        m = _loop_note(d, m, probe.logits_alive_at_backward)
        notes = list(self._notes)
        kind = type(args).__name__
        if kind in ("DPOConfig", "KTOConfig", "ORPOConfig", "CPOConfig", "GRPOConfig", "RLOOConfig"):
            notes.append(f"{kind}: the planner has no preference mode yet; planned as one training forward over "
                         "the batch the model saw (chosen and rejected concatenated), without the reference "
                         "model's no-grad forward")
        d = _with_underived(d, notes)
        where = f"optimizer step {self.step} on {m.device} ({'CUDA allocator' if m.device == 'cuda' else 'tensor bytes'})"
        self.check = check(d, m, where=where)
        self.print_fn(self.check.text)
        self._pending = scalars(list(self.check.rows)) if self.check.rows and self._inject else None


def _loop_note(d, m, alive):
    """``m`` with a note where the plan and the measurement disagree about the logits at backward (assumption 3):
    a ``loop=trainer`` plan frees them (memory.py assumption 19), a ``manual`` one keeps them (6)."""
    from quantlab.specs import Loop, Loss

    pc = d.config
    if pc is None or alive is None or pc.loss is not Loss.HF:
        return m
    planned_freed = pc.loop is Loop.TRAINER
    if alive is False and not planned_freed:
        return _with_note(m, "the logits were freed before backward (Trainer.compute_loss drops the model output); "
                             "the plan (loop=manual) keeps them live through backward (memory assumption 6), so its "
                             "total is high by the logits")
    if alive is True and planned_freed:
        return _with_note(m, "the logits were alive at backward (a compute_loss that keeps the model output); the "
                             "plan (loop=trainer) frees them before backward (memory assumption 19), so its total is "
                             "low by the logits")
    return m


def _with_note(m, note: str):
    import dataclasses

    return dataclasses.replace(m, notes=tuple(m.notes) + (note,))


def _with_underived(d, notes):
    import dataclasses

    return dataclasses.replace(d, underived=tuple(d.underived) + tuple(notes)) if notes else d
