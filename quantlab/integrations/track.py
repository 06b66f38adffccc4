"""``quantlab.track(model, optimizer)``: planned against measured in a plain PyTorch or accelerate loop.

    with quantlab.track(model, optimizer) as t:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    print(t.check.ok)

The same instrument and comparison as :class:`quantlab.integrations.transformers.PlanCheckCallback`, with the
step boundaries taken from the optimizer (assumptions; torch 2.13 ``torch/optim/optimizer.py``):

1. ``Optimizer.register_step_pre_hook`` / ``register_step_post_hook`` run around every real ``step()``. An
   accelerate ``AcceleratedOptimizer`` is looked through to the optimizer it wraps, whose ``step`` it calls only
   on a step that syncs gradients (``accumulate``), so each hook marks one optimizer step.
2. Measured optimizer step ``step`` (default 2) runs from the end of step ``step - 1`` (from the ``with`` when
   ``step`` is 1) to the end of its own ``optimizer.step()``; the gradients are read in the pre-hook, the states
   in the post-hook. Gradient accumulation is the number of forwards with autograd on inside that window; the
   autocast dtype is the one the measured forward ran under (``torch.is_autocast_enabled``).
3. Nothing is known of a collator or TrainingArguments here: what the plan needs is read from the model, the
   optimizer and the measured batch, and what cannot be read is listed with the result.
"""

from __future__ import annotations

from contextlib import contextmanager

from quantlab.errors import QuantlabError


class Tracker:
    """What ``track`` yields: ``check`` (a :class:`quantlab.integrations.report.Check`) once the step is measured."""

    def __init__(self, model, optimizer, step: int, print_fn, cuda):
        self.model, self.step, self.print_fn, self.cuda = model, step, print_fn, cuda
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper (assumption 1)
        self.check = None
        self._steps = 0
        self._probe = None
        self._handles: list = []

    def _open(self):
        from quantlab.lab.measure import StepProbe

        self._probe = StepProbe(self.model, cuda=self.cuda).start(self.optimizer)

    def _pre(self, opt, args, kwargs):
        if self._probe is not None:
            self._probe.after_backward()

    def _post(self, opt, args, kwargs):
        self._steps += 1
        if self._probe is not None:
            self._probe.after_optimizer_step(self.optimizer)
            self._finish()
        elif self.check is None and self._steps + 1 == self.step:
            self._open()

    def _finish(self):
        from quantlab.integrations.derive import derive
        from quantlab.integrations.report import check

        probe, self._probe = self._probe, None
        m = probe.stop()
        d = derive(self.model, optimizer=self.optimizer, batch=probe.batch, seq=probe.seq,
                   padded=probe.attention_mask_has_padding, amp=probe.autocast,
                   grad_accum=max(1, probe.grad_forwards))
        self.check = check(d, m, where=f"optimizer step {self.step} on {m.device} "
                                       f"({'CUDA allocator' if m.device == 'cuda' else 'tensor bytes'})")
        self.print_fn(self.check.text)

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        if self.check is None:
            self.print_fn(f"quantlab: the loop ended before optimizer step {self.step}; nothing was measured")


@contextmanager
def track(model, optimizer, *, step: int = 2, print_fn=print, cuda=None):
    """Measure optimizer step ``step`` of the loop inside the block and print it against the plan (assumptions
    1-3). ``cuda``: injected CUDA readings (tests); default torch.cuda where it is available."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise QuantlabError(f"step must be a positive integer, got {step!r}")
    inner = getattr(optimizer, "optimizer", optimizer)
    if not hasattr(inner, "register_step_post_hook"):
        raise QuantlabError(f"track needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    t = Tracker(model, optimizer, step, print_fn, cuda)
    t._handles = [inner.register_step_pre_hook(t._pre), inner.register_step_post_hook(t._post)]
    if step == 1:
        t._open()
    try:
        yield t
    finally:
        t.close()
