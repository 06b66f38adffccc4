"""Preference tuning in the lab: TRL 1.16's DPO, ORPO, SimPO (CPO), KTO and reward-model trainers with a PEFT LoRA
(or full) policy on a real model, one measured step and held-out scores. One frozen config
(:class:`PreferenceRun`), one runner (:func:`run_preference`) and a table of objectives (:data:`OBJECTIVES`: the
trainer, its config and its data layout), as every lab method.

What it does, and why (D1, D2, ...):

D1. Data: :func:`quantlab.data.preference.read_pairs` (TRL's explicit-prompt or implicit-prompt layout, one-line
    errors naming the line). Standard-format pairs are given to TRL as one-turn conversations (the prompt a user
    message, chosen / rejected an assistant message) when the tokenizer has a chat template, so the policy is
    scored on the text it writes at inference (the json-extract lab renders prompts the same way,
    ``lab/data.py`` assumption 6); TRL applies the template (``maybe_apply_chat_template``). KTO is unpaired
    (``kto_trainer.py``: ``prompt``, ``completion``, ``label``): each pair gives two rows, chosen -> True, rejected
    -> False, in the pairs' order (:func:`quantlab.data.preference.unpaired`), so that KTOConfig's default
    ``train_sampling_strategy="sequential"`` (required for its KL term, ``kto_trainer.py``) puts one desirable and
    one undesirable completion in every batch of 2.
D2. Training is the objective's TRL trainer (:data:`OBJECTIVES`) with ``peft_config`` (LoRA) or a full policy:
    ``DPOTrainer`` (``trl/trainer/dpo_trainer.py``, sigmoid loss), ``ORPOTrainer``
    (``trl/experimental/orpo/orpo_trainer.py``, ``beta`` = the paper's lambda), ``CPOTrainer`` with
    ``loss_type="simpo"`` and ``cpo_alpha=0`` (SimPO: ``trl/experimental/cpo/cpo_trainer.py``; no NLL term),
    ``KTOTrainer`` (``trl/trainer/kto_trainer.py``) and ``RewardTrainer`` (``trl/trainer/reward_trainer.py``) on
    ``AutoModelForSequenceClassification`` with ``num_labels=1`` (pairwise ``-logsigmoid(r_chosen -
    r_rejected)``); a LoRA reward model trains its ``score`` head too (PEFT ``modules_to_save``, as the trainer's
    docstring recommends). DPO and KTO have a reference: the policy with the adapter disabled (``use_adapter``) for
    a LoRA policy, a second model from the policy's path for a full one. ``beta`` None: the trainer's default.
    AdamW; fp32 on a CPU. Every TRL config defaults to gradient checkpointing on (``trainer/base_config.py``); the
    run keeps TRL's default unless told and records it. DPO and KTO patch the model with TRL's fused LM head
    (``add_fused_lm_head``): no logits tensor; ORPO and CPO build the full logits.
D3. Scores: ``trainer.evaluate()`` on the held-out pairs before and after training, with each trainer's own metrics
    (:data:`OBJECTIVES` ``metrics``). DPO: implicit rewards ``beta * (log p_policy - log p_ref)`` summed over the
    completion; ``rewards/accuracies`` (chosen strictly above rejected), ``rewards/margins``. ORPO: rewards
    ``beta * mean log p`` (length-normalised) and ``log_odds_ratio``; SimPO: ``beta * mean log p``. KTO (unpaired):
    mean reward of the desirable and of the undesirable completions and their difference (``rewards/margins``); no
    accuracy (the trainer reports none). Reward model: ``accuracy`` (chosen score > rejected score) and ``margin``
    (mean chosen - rejected score). Before training a LoRA's B matrices are zero (PEFT's init): DPO/KTO rewards are
    exactly 0 then.
D4. Memory: one optimizer step (``measure_step``, default the second, after AdamW's states exist) is measured with
    :class:`quantlab.lab.measure.StepProbe`, the lab's instrument: weights, adapters, gradients, optimizer states,
    what the policy's forward saves for backward (backbone and head), and the CPU allocator's peak over the step
    (the reference's and KTO's KL no-grad forwards included). What the loss saves outside the model's forward
    (ORPO/CPO's cross-entropy and log-softmax on the returned logits, the reward's logsigmoid) is counted by a
    second saved-tensors counter around the trainer's ``compute_loss`` (``loss_saved``: saved tensors not already
    counted by the probe). The step's shape (sequences x padded tokens) and whether it was padded are recorded, so
    the planner can be asked about the same step (the lab does not import the planner:
    :mod:`quantlab.commands.lab_preference` puts both side by side).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError

TASKS = Path(__file__).resolve().parent.parent.parent / "tasks"


@dataclass(frozen=True)
class Objective:
    """One TRL trainer in the table (D2, D3): where its classes live, the data layout, the default beta (None: the
    objective has none), whether it has a reference model, the metrics it reports and fixed config fields."""

    name: str
    module: str  # the TRL module holding the trainer and its config
    trainer: str
    config: str
    rows: str  # "paired" (prompt, chosen, rejected) or "unpaired" (prompt, completion, label)
    beta: float | None
    reference: bool
    metrics: tuple[str, ...]
    fixed: tuple = ()  # ((config field, value), ...)
    reward_head: bool = False  # AutoModelForSequenceClassification, num_labels=1


PAIRED_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                  "logps/chosen", "logps/rejected")
OBJECTIVES = {
    "dpo": Objective("dpo", "trl", "DPOTrainer", "DPOConfig", "paired", 0.1, True, PAIRED_METRICS),
    "orpo": Objective("orpo", "trl.experimental.orpo", "ORPOTrainer", "ORPOConfig", "paired", 0.1, False,
                      PAIRED_METRICS + ("log_odds_ratio", "nll_loss")),
    "simpo": Objective("simpo", "trl.experimental.cpo", "CPOTrainer", "CPOConfig", "paired", 0.1, False,
                       PAIRED_METRICS, fixed=(("loss_type", "simpo"), ("cpo_alpha", 0.0))),
    "kto": Objective("kto", "trl", "KTOTrainer", "KTOConfig", "unpaired", 0.1, True,
                     ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                      "logps/rejected", "kl")),
    "reward": Objective("reward", "trl", "RewardTrainer", "RewardConfig", "paired", None, False,
                        ("loss", "accuracy", "margin", "mean_reward")),
}
OBJECTIVES["reward"] = dataclasses.replace(OBJECTIVES["reward"], reward_head=True)
DPO_METRICS = OBJECTIVES["dpo"].metrics


@dataclass(frozen=True)
class PreferenceRun:
    """One preference run. Defaults: a short CPU DPO run on the embedded SmolLM2-135M (fp32) and the shipped
    json-prefs task."""

    model: str = "smollm2-135m"
    task: str | None = "json-prefs"
    data: str | None = None  # a preference JSONL (overrides the task's data.jsonl)
    test_file: str | None = None  # held-out pairs (default: the task's test.jsonl)
    max_steps: int = 30
    batch: int = 2  # pairs per step (2 x batch sequences); KTO: completions per step (unpaired rows)
    eval_batch: int = 4
    max_length: int = 128  # the config's max_length (prompt + completion tokens)
    train_pairs: int | None = None  # the first N training pairs (None: all)
    eval_pairs: int | None = None  # the first N held-out pairs (None: all)
    lr: float = 5e-4
    beta: float | None = 0.1  # None: the trainer's default (OBJECTIVES); reward models have none
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    measure_step: int = 2
    seed: int = 0
    policy: str = "lora"  # "lora" (reference: the disabled adapter) or "full" (reference: a second model)
    grad_checkpointing: bool | None = None  # None: TRL's default (on)
    objective: str = "dpo"

    def __post_init__(self) -> None:
        for k in ("max_steps", "batch", "eval_batch", "max_length", "lora_r", "lora_alpha", "measure_step"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise QuantlabError(f"{k.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.measure_step > self.max_steps:
            raise QuantlabError(f"measure-step {self.measure_step} is after the last step ({self.max_steps})")
        if not self.lr > 0:
            raise QuantlabError(f"lr must be positive, got {self.lr!r}")
        if self.objective not in OBJECTIVES:
            raise QuantlabError(f"unknown preference objective {self.objective!r} (the lab runs: "
                                f"{', '.join(OBJECTIVES)})")
        if self.beta is not None and self.beta <= 0:
            raise QuantlabError(f"beta must be positive (the {self.objective} loss's coefficient), got {self.beta!r}")
        if self.policy not in ("lora", "full"):
            raise QuantlabError(f"policy must be lora or full, got {self.policy!r}")
        if self.task is None and self.data is None:
            raise QuantlabError("give a task (json-prefs) or a preference data file")
        if self.objective == "kto" and self.batch < 2:
            raise QuantlabError("kto needs a batch of at least 2 completions (KTOTrainer's KL term, kto_trainer.py)")

    @property
    def spec(self) -> Objective:
        return OBJECTIVES[self.objective]

    @property
    def resolved_beta(self) -> float | None:
        """The beta the trainer runs with: None for a reward model (no beta), else the given one or the default."""
        if self.spec.beta is None:
            return None
        return self.spec.beta if self.beta is None else self.beta

    def paths(self) -> tuple[Path, Path]:
        """(training pairs, held-out pairs)."""
        train = Path(self.data) if self.data else TASKS / str(self.task) / "data.jsonl"
        test = Path(self.test_file) if self.test_file else (TASKS / str(self.task) / "test.jsonl" if self.task
                                                            else None)
        if self.task and not self.data and not train.is_file():
            known = sorted(d.name for d in TASKS.iterdir() if (d / "test.jsonl").is_file()) if TASKS.is_dir() else []
            raise QuantlabError(f"unknown task {self.task!r} (shipped tasks with held-out pairs: {', '.join(known)})")
        if test is None:
            raise QuantlabError(f"give held-out pairs (--test-file): {self.objective} is scored on pairs it did not "
                                "train on")
        return train, test


DPORun = PreferenceRun  # the DPO run's name (its defaults are the DPO run's)


def trl_rows(pairs, tokenizer, rows: str = "paired") -> list[dict]:
    """TRL rows of :class:`quantlab.data.preference.Pair` records (D1): preference rows, or KTO's unpaired rows."""
    from quantlab.data.preference import unpaired

    chat = bool(getattr(tokenizer, "chat_template", None))

    def user(p, conv):
        return [{"role": "user", "content": p}] if chat and not conv else p

    def assistant(c, conv):
        return [{"role": "assistant", "content": c}] if chat and not conv else c

    out = []
    if rows == "unpaired":
        for u in unpaired(pairs):
            out.append({"prompt": user(u.prompt, u.conversational),
                        "completion": assistant(u.completion, u.conversational), "label": u.label})
        return out
    for p in pairs:
        prompt, chosen, rejected = p.split()
        out.append({"prompt": user(prompt, p.conversational), "chosen": assistant(chosen, p.conversational),
                    "rejected": assistant(rejected, p.conversational)})
    return out


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
            self.active = False  # inside the measured step (the loss counter reads it)

        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
            if self.measurement is None and state.global_step + 1 == step and model is not None:
                self.probe = StepProbe(model).start(optimizer)
                self.active = True

        def on_pre_optimizer_step(self, args, state, control, **kw):
            if self.probe is not None:
                self.probe.after_backward()
                self.active = False

        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            if self.probe is not None and optimizer is not None:
                self.probe.after_optimizer_step(optimizer)

        def on_step_end(self, args, state, control, **kw):
            if self.probe is not None:
                probe, self.probe = self.probe, None
                self.active = False
                self.measurement = probe.stop()
                self.padded = probe.attention_mask_has_padding
                self.shape = (probe.batch, probe.seq)

    return MeasureStep()


def _loss_counter(trainer, cb):
    """Wrap ``trainer.compute_loss``: in the measured step, count the tensors saved for backward by the loss outside
    the model's forward (D4), deduplicated by storage, without the parameters' storages and the returned logits'
    (StepProbe counts those). Inside the model's forward the probe's own saved-tensors context is the innermost
    one, so a tensor saved there is not seen here. Returns a dict that holds ``bytes`` once the step ran."""
    import torch

    from quantlab.lab.measure import storage_key, storage_nbytes

    model = trainer.model
    params = {storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    seen: dict = {}
    logits: set = set()
    box = {"bytes": None}
    inner = trainer.compute_loss

    def pack(t):
        seen[storage_key(t)] = storage_nbytes(t)
        return t

    def post(mod, args, out):
        lg = out.get("logits") if hasattr(out, "get") else None
        if isinstance(lg, torch.Tensor):
            logits.add(storage_key(lg))

    def compute_loss(*a, **kw):
        if not cb.active or box["bytes"] is not None or not torch.is_grad_enabled():
            return inner(*a, **kw)
        seen.clear()
        h = model.register_forward_hook(post)
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = inner(*a, **kw)
        finally:
            h.remove()
        box["bytes"] = sum(n for k, n in seen.items() if k not in params and k not in logits)
        return out

    trainer.compute_loss = compute_loss
    return box


def _trainer(spec: Objective):
    """(trainer class, config class) of an objective, imported where it runs (heavy imports stay in the runner)."""
    import importlib
    import warnings

    with warnings.catch_warnings():  # trl.experimental warns on import that its API may change
        warnings.simplefilter("ignore")
        mod = importlib.import_module(spec.module)
    return getattr(mod, spec.trainer), getattr(mod, spec.config)


def _load_policy(src, spec: Objective, tok):
    """The policy model: a causal LM, or a 1-label sequence classifier for a reward model (D2)."""
    import torch

    from quantlab.lab import model as M

    if not spec.reward_head:
        return M.load_model(src, dtype=torch.float32, progress=False)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(M.model_path(src, False), num_labels=1,
                                                               dtype=torch.float32, use_safetensors=True)
    model.config.pad_token_id = tok.pad_token_id  # the classifier pools the last non-pad token
    return model


def run_preference(cfg: PreferenceRun, out: str | Path | None = None, *, log=print) -> dict:
    """Train and score one preference run (D1-D4); returns a flat result dict (figures, the measured step,
    environment). With ``out``, the per-step log history is written there as ``<objective>-history.csv``."""
    import tempfile

    import torch
    from peft import LoraConfig
    from transformers.utils import logging as hf_logging

    import datasets
    from quantlab.data.preference import read_pairs
    from quantlab.lab import model as M

    spec = cfg.spec
    Trainer, Config = _trainer(spec)
    train_path, test_path = cfg.paths()
    train_pairs = read_pairs(train_path)[:cfg.train_pairs]
    test_pairs = read_pairs(test_path)[:cfg.eval_pairs]
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(cfg.seed)
    src = M.resolve(cfg.model)
    t0 = time.perf_counter()
    tok = M.load_tokenizer(src, progress=False)
    model = _load_policy(src, spec, tok)
    load_s = time.perf_counter() - t0
    train_ds = datasets.Dataset.from_list(trl_rows(train_pairs, tok, spec.rows))
    test_ds = datasets.Dataset.from_list(trl_rows(test_pairs, tok, spec.rows))
    work = tempfile.mkdtemp(prefix=f"quantlab-{spec.name}-")  # the trainer's output_dir: nothing is saved there
    kw = dict(spec.fixed)
    if cfg.resolved_beta is not None:
        kw["beta"] = cfg.resolved_beta
    args = Config(output_dir=work, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch,
                  per_device_eval_batch_size=cfg.eval_batch, learning_rate=cfg.lr, max_length=cfg.max_length,
                  bf16=False, fp16=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                  logging_steps=1, seed=cfg.seed, data_seed=cfg.seed, lr_scheduler_type="constant", warmup_steps=0,
                  dataloader_num_workers=0,
                  # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing (training_args.py
                  # warns when only the old name is set, which TRL 1.16's _BaseConfig does by default): the new
                  # name, at TRL's default (True) unless the run says otherwise
                  activation_checkpointing=True if cfg.grad_checkpointing is None else cfg.grad_checkpointing, **kw)
    peft = None
    if cfg.policy == "lora":
        peft = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                          lora_dropout=0.0, task_type="SEQ_CLS" if spec.reward_head else "CAUSAL_LM")
    cb = _measure_callback(cfg.measure_step)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=test_ds, processing_class=tok,
                      peft_config=peft, callbacks=[cb])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the log history keeps every logged step; stdout stays the report's
    loss_box = _loss_counter(trainer, cb)
    ref_model = getattr(trainer, "ref_model", None)
    ref_kind = None if not spec.reference else ("copy" if ref_model is not None else "adapter")
    log(f"{spec.name}: {len(train_pairs)} training pairs ({len(train_ds)} rows), {len(test_pairs)} held-out; "
        f"{cfg.max_steps} steps of {cfg.batch} {'completions' if spec.rows == 'unpaired' else 'pairs'}; reference: "
        f"{ {None: 'none', 'copy': 'a second model', 'adapter': 'the disabled adapter'}[ref_kind]}")
    t = time.perf_counter()
    before = trainer.evaluate()
    eval_s = time.perf_counter() - t
    log(f"before: {_fmt(before, spec)}")
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    after = trainer.evaluate()
    log(f"after:  {_fmt(after, spec)}")
    m = cb.measurement
    if m is None:
        raise QuantlabError(f"optimizer step {cfg.measure_step} was not measured (the run ended before it)")
    ref_bytes = 0
    if ref_model is not None:  # a second model (D2): its storages, live through every step
        from quantlab.lab.measure import model_bytes

        ref_bytes = model_bytes(ref_model).total
    history = [h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h]
    if out is not None:
        _write_history(Path(out) / f"{spec.name}-history.csv", history)
    res = {"objective": spec.name, "config": dataclasses.asdict(cfg), "beta": cfg.resolved_beta,
           "train_pairs": len(train_pairs), "train_rows": len(train_ds), "test_pairs": len(test_pairs),
           "reference": ref_kind, "reference_bytes": ref_bytes,
           "load_s": load_s, "eval_s": eval_s, "train_s": train_s, "s_per_step": train_s / cfg.max_steps,
           "measured_step": cfg.measure_step, "step_sequences": cb.shape[0], "step_seq": cb.shape[1],
           "step_padded": bool(cb.padded), "grad_checkpointing": bool(trainer.args.gradient_checkpointing),
           "measurement": m.meas(), "loss_saved_bytes": loss_box["bytes"], "measurement_notes": list(m.notes),
           "trainable_params": m.trainable_params, "final_train_loss": history[-1]["loss"] if history else None}
    if res["reference"] is None:  # the DPO-only reports read "adapter"/"copy"
        res["reference"] = "none"
    for k in spec.metrics:
        res[f"before_{k}"] = before.get(f"eval_{k}")
        res[f"after_{k}"] = after.get(f"eval_{k}")
    res["env"] = environment()
    return res


def run_dpo(cfg: PreferenceRun, out: str | Path | None = None, *, log=print) -> dict:
    """:func:`run_preference` of a DPO run (the DPO lab's entry point)."""
    return run_preference(dataclasses.replace(cfg, objective="dpo"), out, log=log)


def _fmt(metrics: dict, spec: Objective) -> str:
    keys = [k for k in spec.metrics if k in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen",
                                             "logps/rejected", "accuracy", "margin")]
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
