"""DPO in the lab: TRL 1.16's ``DPOTrainer`` with a PEFT LoRA policy on a real model, measured step and scored
pairs. A frozen config (:class:`DPORun`) and one runner (:func:`run_dpo`), as every lab method.

What it does, and why (D1, D2, ...):

D1. Data: :func:`quantlab.data.preference.read_pairs` (TRL's explicit-prompt or implicit-prompt layout, one-line
    errors naming the line). Standard-format pairs are given to TRL as one-turn conversations (the prompt a user
    message, chosen / rejected an assistant message) when the tokenizer has a chat template, so the policy is
    scored on the text it writes at inference (the json-extract lab renders prompts the same way,
    ``lab/data.py`` assumption 6); TRL applies the template (``maybe_apply_chat_template``).
D2. Training is ``DPOTrainer`` with ``peft_config`` (LoRA): the reference is the policy with the adapter disabled
    (``use_adapter``, ``dpo_trainer.py``), so no second model is loaded (``policy="full"``: no adapter, and TRL
    loads the reference as a second model from the policy's path, ``create_model_from_path``); sigmoid loss, ``beta`` as given; AdamW;
    fp32 on a CPU. DPOConfig turns gradient checkpointing on by default (``dpo_config.py``: "Defaults to True
    instead of False"); the run keeps TRL's default and records it. The trainer patches the model with its fused LM head (``add_fused_lm_head``): no logits tensor.
D3. Scores: ``trainer.evaluate()`` on the held-out pairs before and after training. TRL's metrics are the DPO
    implicit rewards ``beta * (log p_policy(y|x) - log p_ref(y|x))`` summed over completion tokens:
    ``rewards/accuracies`` (the fraction of pairs whose chosen reward is strictly above the rejected one),
    ``rewards/margins`` (mean chosen minus rejected reward), ``rewards/chosen`` / ``rewards/rejected``, and the
    policy's ``logps/chosen`` / ``logps/rejected`` (mean summed log-probabilities). Before training the LoRA B
    matrices are zero (PEFT's init), so policy = reference: every reward is exactly 0 and the accuracy is 0 (ties
    are not wins); the log-prob margin then says what the base model itself prefers.
D4. Memory: one optimizer step (``measure_step``, default the second, after AdamW's states exist) is measured with
    :class:`quantlab.lab.measure.StepProbe`, the lab's instrument: weights, adapters, gradients, optimizer states,
    what the policy's forward saves for backward (backbone and fused head), and the CPU allocator's peak over the
    step (the reference's no-grad forward included). The step's shape (sequences x padded tokens) and whether it
    was padded are recorded, so the planner can be asked about the same step (the lab does not import the
    planner: :mod:`quantlab.commands.lab_preference` puts both side by side).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError

TASKS = Path(__file__).resolve().parent.parent.parent / "tasks"
DPO_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
               "logps/rejected")


@dataclass(frozen=True)
class DPORun:
    """One DPO run. Defaults: a short CPU run on the embedded SmolLM2-135M (fp32) and the shipped json-prefs task."""

    model: str = "smollm2-135m"
    task: str | None = "json-prefs"
    data: str | None = None  # a preference JSONL (overrides the task's data.jsonl)
    test_file: str | None = None  # held-out pairs (default: the task's test.jsonl)
    max_steps: int = 30
    batch: int = 2  # pairs per step: 2 x batch sequences (chosen and rejected concatenated)
    eval_batch: int = 4
    max_length: int = 128  # DPOConfig.max_length (prompt + completion tokens)
    train_pairs: int | None = None  # the first N training pairs (None: all)
    eval_pairs: int | None = None  # the first N held-out pairs (None: all)
    lr: float = 5e-4
    beta: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    measure_step: int = 2
    seed: int = 0
    policy: str = "lora"  # "lora" (reference: the disabled adapter) or "full" (reference: a second model)
    grad_checkpointing: bool | None = None  # None: DPOConfig's default (on)

    def __post_init__(self) -> None:
        for k in ("max_steps", "batch", "eval_batch", "max_length", "lora_r", "lora_alpha", "measure_step"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise QuantlabError(f"{k.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.measure_step > self.max_steps:
            raise QuantlabError(f"measure-step {self.measure_step} is after the last step ({self.max_steps})")
        if not self.lr > 0:
            raise QuantlabError(f"lr must be positive, got {self.lr!r}")
        if self.beta <= 0:
            raise QuantlabError(f"beta must be positive (DPO's KL coefficient), got {self.beta!r}")
        if self.policy not in ("lora", "full"):
            raise QuantlabError(f"policy must be lora or full, got {self.policy!r}")
        if self.task is None and self.data is None:
            raise QuantlabError("give a task (json-prefs) or a preference data file")

    def paths(self) -> tuple[Path, Path]:
        """(training pairs, held-out pairs)."""
        train = Path(self.data) if self.data else TASKS / str(self.task) / "data.jsonl"
        test = Path(self.test_file) if self.test_file else (TASKS / str(self.task) / "test.jsonl" if self.task
                                                            else None)
        if self.task and not self.data and not train.is_file():
            known = sorted(d.name for d in TASKS.iterdir() if (d / "test.jsonl").is_file()) if TASKS.is_dir() else []
            raise QuantlabError(f"unknown task {self.task!r} (shipped tasks with held-out pairs: {', '.join(known)})")
        if test is None:
            raise QuantlabError("give held-out pairs (--test-file): DPO is scored on pairs it did not train on")
        return train, test


def trl_rows(pairs, tokenizer) -> list[dict]:
    """TRL preference rows of :class:`quantlab.data.preference.Pair` records (D1)."""
    rows = []
    chat = bool(getattr(tokenizer, "chat_template", None))
    for p in pairs:
        prompt, chosen, rejected = p.split()
        if chat and not p.conversational:
            prompt = [{"role": "user", "content": prompt}]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def _measure_callback(step: int):
    """A TrainerCallback that measures optimizer step ``step`` with StepProbe (D4)."""
    from transformers import TrainerCallback

    from quantlab.lab.measure import StepProbe

    class MeasureStep(TrainerCallback):
        def __init__(self):
            self.probe = None
            self.measurement = None
            self.padded = None
            self.shape = None

        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
            if self.measurement is None and state.global_step + 1 == step and model is not None:
                self.probe = StepProbe(model).start(optimizer)

        def on_pre_optimizer_step(self, args, state, control, **kw):
            if self.probe is not None:
                self.probe.after_backward()

        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            if self.probe is not None and optimizer is not None:
                self.probe.after_optimizer_step(optimizer)

        def on_step_end(self, args, state, control, **kw):
            if self.probe is not None:
                probe, self.probe = self.probe, None
                self.measurement = probe.stop()
                self.padded = probe.attention_mask_has_padding
                self.shape = (probe.batch, probe.seq)

    return MeasureStep()


def run_dpo(cfg: DPORun, out: str | Path | None = None, *, log=print) -> dict:
    """Train and score one DPO run (D1-D4); returns a flat result dict (figures, the measured step, environment).
    With ``out``, the per-step log history is written there as ``dpo-history.csv``."""
    import torch
    from peft import LoraConfig
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer

    import datasets
    from quantlab.data.preference import read_pairs
    from quantlab.lab import model as M

    train_path, test_path = cfg.paths()
    train_pairs = read_pairs(train_path)[:cfg.train_pairs]
    test_pairs = read_pairs(test_path)[:cfg.eval_pairs]
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(cfg.seed)
    src = M.resolve(cfg.model)
    t0 = time.perf_counter()
    tok = M.load_tokenizer(src, progress=False)
    model = M.load_model(src, dtype=torch.float32, progress=False)
    load_s = time.perf_counter() - t0
    train_ds = datasets.Dataset.from_list(trl_rows(train_pairs, tok))
    test_ds = datasets.Dataset.from_list(trl_rows(test_pairs, tok))
    import tempfile

    work = tempfile.mkdtemp(prefix="quantlab-dpo-")  # the trainer's output_dir: nothing is saved there (no ckpts)
    args = DPOConfig(output_dir=work, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch,
                     per_device_eval_batch_size=cfg.eval_batch, learning_rate=cfg.lr, beta=cfg.beta,
                     max_length=cfg.max_length, bf16=False, fp16=False, use_cpu=True, report_to="none",
                     save_strategy="no", disable_tqdm=True, logging_steps=1, seed=cfg.seed, data_seed=cfg.seed,
                     lr_scheduler_type="constant", warmup_steps=0, dataloader_num_workers=0,
                     # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing (training_args.py
                     # warns when only the old name is set, which TRL 1.16's _BaseConfig does by default): the new
                     # name, at TRL's default (True) unless the run says otherwise
                     activation_checkpointing=True if cfg.grad_checkpointing is None else cfg.grad_checkpointing)
    peft = None if cfg.policy == "full" else LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    cb = _measure_callback(cfg.measure_step)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=test_ds, processing_class=tok,
                         peft_config=peft, callbacks=[cb])
    log(f"dpo: {len(train_pairs)} training pairs, {len(test_pairs)} held-out; {cfg.max_steps} steps of {cfg.batch} "
        f"pairs; reference: {'a second model' if trainer.ref_model is not None else 'the disabled adapter'}")
    t = time.perf_counter()
    before = trainer.evaluate()
    eval_s = time.perf_counter() - t
    log(f"before: {_fmt(before)}")
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    after = trainer.evaluate()
    log(f"after:  {_fmt(after)}")
    m = cb.measurement
    if m is None:
        raise QuantlabError(f"optimizer step {cfg.measure_step} was not measured (the run ended before it)")
    ref_bytes = 0
    if trainer.ref_model is not None:  # a second model (D2): its storages, live through every step
        from quantlab.lab.measure import model_bytes

        ref_bytes = model_bytes(trainer.ref_model).total
    history = [h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h]
    if out is not None:
        _write_history(Path(out) / "dpo-history.csv", history)
    res = {"config": dataclasses.asdict(cfg), "train_pairs": len(train_pairs), "test_pairs": len(test_pairs),
           "reference": "copy" if trainer.ref_model is not None else "adapter", "reference_bytes": ref_bytes,
           "load_s": load_s, "eval_s": eval_s, "train_s": train_s, "s_per_step": train_s / cfg.max_steps,
           "measured_step": cfg.measure_step, "step_sequences": cb.shape[0], "step_seq": cb.shape[1],
           "step_padded": bool(cb.padded), "grad_checkpointing": bool(trainer.args.gradient_checkpointing), "measurement": m.meas(), "measurement_notes": list(m.notes),
           "trainable_params": m.trainable_params, "final_train_loss": history[-1]["loss"] if history else None}
    for k in DPO_METRICS:
        res[f"before_{k}"] = before.get(f"eval_{k}")
        res[f"after_{k}"] = after.get(f"eval_{k}")
    res["env"] = environment()
    return res


def _fmt(metrics: dict) -> str:
    keys = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
    return ", ".join(f"{k} {metrics.get('eval_' + k, float('nan')):.4f}" for k in keys)


def _write_history(path: Path, history: list[dict]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(history)


def environment() -> dict:
    import os
    import platform

    import peft
    import torch
    import transformers
    import trl

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__, "python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0], "torch_threads": torch.get_num_threads()}
