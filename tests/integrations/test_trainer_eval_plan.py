"""eval_batch (memory.py assumption 20) against a real transformers Trainer evaluating during training (CPU).

A tiny random Llama (fp32 or bf16 weights, vocab 256) trains with AdamW at batch 2 x 32 tokens and evaluates after every step
(``eval_strategy="steps"``, ``eval_steps=1``) over an eval set of EVAL_BATCH rows, one eval batch. EvalProbe opens
the lab's CPU instrument (:func:`quantlab.validate.cpu_peak`, the allocator's events under torch.profiler) in
``on_step_end`` of step 1, after ``optimizer.step()`` and ``model.zero_grad()``, and closes it in ``on_evaluate``,
which ``evaluate`` calls after its loop: the evaluation's peak of live tensor bytes is the bytes live at the start
(the model's storages, any gradients, the optimizer states: the lab's ``model_bytes``, ``grad_bytes``,
``optimizer_bytes``) plus the peak growth inside the window. The plan is derived from the same TrainingArguments
(derive assumption 8: ``eval_batch = per_device_eval_batch_size``) at the batch and sequence of the job. What the
plan does not count: the eval batch's input tensors (int64 ids and labels, 2 x 8 x EVAL_BATCH x 32 bytes, as memory
assumption 19 leaves the training inputs out) and the loss's 0-d scalars.
"""

import pytest

pytest.importorskip("torch")

from integ_fixtures import token_dataset, trainer_args  # noqa: E402

BATCH, SEQ, VOCAB, EVAL_BATCH = 2, 32, 256, 64


def _run(tmp_path, eval_batch=EVAL_BATCH, dtype="fp32"):
    import torch
    from transformers import Trainer, TrainerCallback

    from quantlab.integrations.derive import derive
    from quantlab.lab.measure import model_bytes
    from quantlab.lab.model import tiny_model
    from quantlab.lab.saved_tensors import grad_bytes, optimizer_bytes
    from quantlab.validate import cpu_peak

    class EvalProbe(TrainerCallback):
        def __init__(self):
            self.base = self.cm = self.pk = self.measured = self.grads_at_eval = None

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            if state.global_step == 1 and self.cm is None:
                self.grads_at_eval = grad_bytes(model)
                self.base = model_bytes(model).total + self.grads_at_eval + optimizer_bytes(optimizer)
                self.cm = cpu_peak()
                self.pk = self.cm.__enter__()

        def on_evaluate(self, args, state, control, **kw):
            if self.cm is not None and self.measured is None:
                self.cm.__exit__(None, None, None)
                self.measured = self.base + self.pk.peak

    probe = EvalProbe()
    model = tiny_model("llama", dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    args = trainer_args(tmp_path, per_device_train_batch_size=BATCH, per_device_eval_batch_size=eval_batch,
                        eval_strategy="steps", eval_steps=1, max_steps=1)
    Trainer(model=model, args=args, train_dataset=token_dataset(n=8, seq=SEQ, vocab=VOCAB),
            eval_dataset=token_dataset(n=eval_batch, seq=SEQ, vocab=VOCAB, seed=1), callbacks=[probe]).train()
    assert probe.measured is not None, "evaluation did not run inside training"
    d = derive(model, args=args, batch=BATCH, seq=SEQ)
    assert d.config is not None, d.underived
    return probe, d


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_trainer_evaluation_peak_is_the_eval_phase_of_the_plan(tmp_path, dtype):
    """fp32: the loss's upcast is a no-op; bf16 weights (pure bf16, no autocast): logits.float() is a new tensor.
    Measured here (2-core CPU, torch 2.13, transformers 5.24): fp32 planned 6,524,820 B vs 6,561,944 B (-0.57%),
    bf16 6,179,348 B vs 6,212,128 B (-0.53%); the gap is mostly the eval inputs (32,768 B)."""
    from quantlab.planner.memory import plan, plan_direct, replace
    from quantlab.specs import Loop

    probe, d = _run(tmp_path, dtype=dtype)
    cfg = d.config
    assert (cfg.loop, cfg.eval_batch, cfg.batch, cfg.seq, cfg.method.value) == (Loop.TRAINER, EVAL_BATCH, BATCH, SEQ,
                                                                               "full")
    assert cfg.precision.value == dtype and cfg.training_precision.value == "pure"
    assert any("per_device_eval_batch_size" in n for n in d.underived)  # derive says what it derived
    assert probe.grads_at_eval == 0  # zero_grad(set_to_none=True) ran before the evaluation
    p = plan(cfg)
    assert p == plan_direct(cfg)
    c = p.components
    static = c["weights"] + c["optimizer"]  # full fine-tune: gradients freed (assumption 3)
    planned_eval = static + c["eval_forward"]
    step = plan(replace(cfg, eval_batch=None))
    assert p.peak_allocated_bytes == max(step.peak_allocated_bytes, planned_eval)
    assert planned_eval > step.peak_allocated_bytes  # the eval batch makes the evaluation the peak
    assert any("evaluation forward is the peak" in n for n in p.notes)
    err = (planned_eval - probe.measured) / probe.measured
    assert abs(err) <= 0.03, (planned_eval, probe.measured, f"{err:+.2%}")


def test_small_eval_batch_leaves_the_step_as_the_peak(tmp_path):
    from quantlab.planner.memory import plan, replace

    _, d = _run(tmp_path, eval_batch=1)
    p = plan(d.config)
    step = plan(replace(d.config, eval_batch=None))
    assert p.peak_allocated_bytes == step.peak_allocated_bytes
    assert any("training step is the peak" in n for n in p.notes)
