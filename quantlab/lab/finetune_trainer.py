"""The lab's fine-tunes on transformers' ``Trainer``, with quantlab's measurement attached as callbacks.

Why ``Trainer`` and not TRL's ``SFTTrainer``: the lab's data path (:mod:`quantlab.lab.data`: reading, quality
filters, dedup, decontamination, per-token prompt weights, packing into rows of exactly ``seq`` tokens) already
produces the token rows; ``SFTTrainer`` would prepare the dataset again (its own tokenization, chat template and
packing) and, in trl 1.16 ``SFTTrainer.compute_loss``, computes entropy and token accuracy from the logits of every
training step, which changes what the measured step holds. ``Trainer`` is the loop ``SFTTrainer`` subclasses, run on
the lab's rows; a user's ``SFTTrainer`` job is measured by :class:`quantlab.integrations.transformers.PlanCheckCallback`
with the same instrument (:class:`quantlab.lab.measure.StepProbe`).

Assumptions (transformers 5.24 ``trainer.py``, ``trainer_callback.py``, ``loss/loss_utils.py``):

1. Loss. With a prompt-loss weight of 0 or 1 the collator gives ``labels`` (-100 where a target's weight is 0:
   the prompt at weight 0, and padding) and the model computes transformers' ``ForCausalLMLoss`` inside its forward
   (fp32 upcast of the logits, cross-entropy over every position, the last one ignored). ``Trainer`` divides the
   summed loss by the target tokens of the whole optimizer step (``num_items_in_batch``, counted over all
   micro-batches of a gradient-accumulation step), so with accumulation the loss is the token-weighted mean over
   the step. A fractional weight has no library loss (transformers' losses take integer labels): the collator
   gives ``loss_weights`` and :meth:`LabTrainer.compute_loss` computes the lab's token-weighted cross-entropy
   (:func:`quantlab.lab.finetune.loss_from_logits`) outside the model's forward, averaged over micro-batches.
2. Memory per component is measured on the second optimizer step of the run (the first after a resume, when only
   one is left) by :class:`MeasureCallback`: ``StepProbe`` from ``on_step_begin`` to ``on_step_end``, gradients at
   ``on_pre_optimizer_step`` (after the last backward), optimizer states at ``on_optimizer_step``.
3. Early stopping: transformers' ``EarlyStoppingCallback`` on ``eval_loss`` (threshold 1e-4, the lab's
   ``patience``), its counter restored from a checkpoint (``restore_callback_states_from_checkpoint``).
   Evaluation every ``eval_every`` steps and at the last step (:class:`_FinalStep`); the validation loss is
   ``Trainer.evaluate``'s: the mean of the per-batch losses, weighted by batch size.
4. Resume: ``Trainer``'s checkpoints (``checkpoint-<step>/`` under ``checkpoint_dir``, saved at each evaluation,
   the latest kept): weights or PEFT adapters as safetensors, optimizer / scheduler / RNG states read back by
   ``Trainer`` with ``torch.load(weights_only=True)`` (``_load_optimizer_and_scheduler``, ``_load_rng_state``).
   Two are kept, the latest and the best by validation loss (Trainer protects the best from rotation, and with a
   limit of 1 ``Trainer.train`` deletes the latest at the end when it is not the best);
   :func:`quantlab.lab.finetune_ckpt.check_checkpoint` reads every file the same way first, so a corrupt
   checkpoint is a one-line error. Batches: ``Trainer``'s seeded ``RandomSampler``, skipped forward on resume.
5. No gradient clipping (``max_grad_norm=0``): the lab's recipe never clipped, and clipping is not a component.
   The optimizer is the lab's (:func:`quantlab.lab.finetune.make_optimizer`), the schedule ``Trainer``'s
   (``get_scheduler``: linear warm-up from 0, then cosine / linear decay, or constant).
"""

from __future__ import annotations

import math
import time

from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from quantlab.errors import QuantlabError

SCHEDULER_NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def fractional_weight(cfg) -> bool:
    """Whether the prompt-loss weight needs the lab's own loss (assumption 1)."""
    return cfg.prompt_loss_weight not in (0.0, 1.0)


class LabCollator:
    """Pads a list of :class:`quantlab.lab.data.Example` (:func:`quantlab.lab.data.collate`) into the dict Trainer
    feeds the model: ``labels`` for weights 0 / 1, ``loss_weights`` for a fractional weight (assumption 1)."""

    def __init__(self, pad_id: int, width: int | None, fractional: bool):
        self.pad_id, self.width, self.fractional = pad_id, width, fractional

    def __call__(self, batch):
        from quantlab.lab.data import collate

        ids, mask, w = collate(batch, self.pad_id, self.width)
        out = {"input_ids": ids, "attention_mask": mask}
        if self.fractional:
            out["loss_weights"] = w
        else:
            out["labels"] = ids.masked_fill(w == 0, -100)
        return out


class LabTrainer(Trainer):
    """``Trainer`` plus the trained-token count and the fractional prompt-loss weight (assumption 1)."""

    trained_tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.trained_tokens += int(inputs["attention_mask"].sum())
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = inputs.pop("loss_weights", None)
        if w is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from quantlab.lab.finetune import loss_from_logits

        out = model(**inputs)
        ids = inputs["input_ids"]
        loss = loss_from_logits(out.logits[:, -ids.shape[1]:], ids, w)  # prompt tuning prepends virtual tokens
        return (loss, out) if return_outputs else loss


class MeasureCallback(TrainerCallback):
    """Assumption 2: one optimizer step measured with ``StepProbe``, the step times (evaluation excluded) and a
    non-finite training loss stopped with a one-line error."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.metrics: dict = {}
        self.notes: list[str] = []
        self.step_times: list[float] = []
        self._first = self._probe = self._scope = None
        self._pad: list = []
        self._handle = None

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self._t = time.perf_counter()
        if self._first is None:
            self._first = state.global_step
        at = self._first + 1 if self.max_steps - self._first > 1 else self._first
        if state.global_step == at and not self.metrics and model is not None:
            from quantlab.lab import measure

            self._pad = []

            def first_mask(mod, a, kwargs):
                m = kwargs.get("attention_mask")
                if m is not None and not self._pad:
                    self._pad.append(int(m.numel() - m.sum()))

            self._handle = model.register_forward_pre_hook(first_mask, with_kwargs=True)
            self._scope = measure.measure_memory().__enter__()
            self._probe = measure.StepProbe(model).start(optimizer)

    def on_pre_optimizer_step(self, args, state, control, **kw):
        if self._probe is not None:
            self._probe.after_backward()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
        if self._probe is not None and optimizer is not None:
            self._probe.after_optimizer_step(optimizer)

    def on_step_end(self, args, state, control, **kw):
        self.step_times.append(time.perf_counter() - self._t)
        if self._probe is None:
            return
        probe, self._probe = self._probe, None
        m = probe.stop()
        self._scope.__exit__(None, None, None)
        self._handle.remove()
        s = self._scope.reading
        cuda = m.device == "cuda"
        self.metrics = {
            "meas_weights_bytes": m.weights_bytes, "meas_quant_constants_bytes": m.quant_constants_bytes,
            "meas_adapters_bytes": m.adapters_bytes, "meas_gradients_bytes": m.gradients_bytes,
            "meas_optimizer_bytes": m.optimizer_bytes, "meas_activations_bytes": m.activations_bytes,
            "meas_logits_loss_bytes": m.logits_loss_bytes, "meas_step_batch": m.batch, "meas_step_seq": m.seq,
            "meas_step_pad_tokens": self._pad[0] if self._pad else 0,
            "meas_step_rss_delta_bytes": s.rss_delta_bytes,
            "meas_step_peak_allocated_bytes": m.allocated_bytes if cuda else None,
            "meas_step_peak_reserved_bytes": m.reserved_bytes if cuda else None,
            "meas_step_nvml_process_bytes": m.process_bytes if cuda else None,
            "meas_step_cpu_allocated_bytes": None if cuda else m.allocated_bytes,
            "meas_step_logits_alive_at_backward": probe.logits_alive_at_backward,
            "meas_step_micro_batches": probe.grad_forwards}
        self.notes.extend(m.notes)

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise QuantlabError(f"the training loss became {loss} at step {state.global_step} (lower --lr, or use "
                                "fp32 / amp instead of pure fp16)")


class _FinalStep(TrainerCallback):
    """Evaluate (and, with checkpoints, save) at the last step too, as at every ``eval_every`` (assumption 3);
    ``interrupt_after``: stop after that many steps of this run (the tests of resume)."""

    def __init__(self, max_steps: int, save: bool, interrupt_after: int | None):
        self.max_steps, self.save, self.interrupt_after = max_steps, save, interrupt_after
        self._first = None

    def on_step_begin(self, args, state, control, **kw):
        if self._first is None:
            self._first = state.global_step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.max_steps:
            control.should_evaluate = True
            control.should_save = self.save
        if self.interrupt_after is not None and state.global_step - self._first >= self.interrupt_after:
            control.should_training_stop = True


class _Progress(ProgressCallback):
    """Trainer's progress bar, printing the evaluations only (not a dict per step)."""

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and self.training_bar is not None and logs and "eval_loss" in logs:
            self.training_bar.write(f"step {state.global_step}: validation loss {logs['eval_loss']:.4f}")


def training_args(cfg, output_dir: str, *, save: bool, progress: bool, max_steps: int):
    """The TrainingArguments of a lab fine-tune (the flags' one mapping). ``label_names``: what makes
    ``Trainer.prediction_step`` compute an evaluation loss (``loss_weights`` for a fractional prompt weight)."""
    import torch
    from transformers import TrainingArguments

    from quantlab.lab import measure

    amp = cfg.amp_dtype
    return TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=cfg.batch,
        per_device_eval_batch_size=cfg.batch, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=SCHEDULER_NAMES[cfg.schedule],
        warmup_steps=cfg.warmup_steps, weight_decay=0.0, max_grad_norm=0.0, seed=cfg.seed, data_seed=cfg.seed,
        bf16=amp is torch.bfloat16, fp16=amp is torch.float16, use_cpu=not measure.cuda_available(),
        eval_strategy="steps", eval_steps=cfg.eval_every, prediction_loss_only=True,
        save_strategy="steps" if save else "no", save_steps=cfg.eval_every, save_total_limit=2 if save else None,
        restore_callback_states_from_checkpoint=True,
        metric_for_best_model="eval_loss", greater_is_better=False, load_best_model_at_end=False,
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=not progress,
        label_names=["loss_weights" if fractional_weight(cfg) else "labels"],
        log_level="error", remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False
    )  # gradient checkpointing: the lab's builder turns it on, non-reentrant (finetune.build_model)
