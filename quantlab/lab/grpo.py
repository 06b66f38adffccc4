"""GRPO in the lab: TRL 1.16's ``GRPOTrainer`` (transformers ``generate``, no vLLM) with reward *functions* on a
CPU, fp32, a LoRA or a full policy; both phases of the measured step measured per component. A frozen config
(:class:`GRPORun`) and one runner (:func:`run_grpo`), as every lab method.

What it does, and why (G1, G2, ...):

G1. Data: prompts of a shipped task (default json-extract: a sentence in, a JSON object out), as one user turn
    when the tokenizer has a chat template (TRL applies it, ``_tokenize_prompts``), with the task's reference
    ``response`` kept as a column (TRL passes every dataset column to the reward functions as keyword arguments).
    The first ``train_prompts`` records train; held-out prompts come from the end of the file, never trained on.
    ``synthetic_prompt_tokens`` replaces the task with plain-text prompts of exactly that many tokens (the word
    " the" repeated, checked by the tokenizer), so a validation step has one prompt width and no padding.
G2. Rewards (:func:`json_valid`, :func:`json_fields`): 1.0 when the completion parses as a JSON object (code
    fences stripped), and the fraction of the reference's key/value pairs the object reproduces exactly (the task's
    schema ``first_name``, ``age_years``, ``home_city``). TRL sums them (``reward_weights`` None) and logs each as
    ``rewards/<name>/mean``. No reward model.
G3. Training is ``GRPOTrainer`` with TRL's defaults unless given: ``beta`` 0.0 (no reference model), ``loss_type``
    dapo, ``num_iterations`` 1, ``steps_per_generation`` = gradient accumulation (1 here), ``top_k`` 0, temperature
    1.0, gradient checkpointing on (``GRPOConfig``: "Defaults to True"). ``per_device_train_batch_size`` counts
    *completions*: each step generates ``batch`` completions, ``batch / num_generations`` prompts x
    ``num_generations``, at once (``grpo_config.py`` ``generation_batch_size``; ``RepeatSampler``). LoRA through
    ``peft_config`` (``policy="lora"``: with ``beta`` > 0 the reference is the disabled adapter, ``use_adapter``),
    or the whole policy (``policy="full"``: with ``beta`` > 0 TRL loads a second model from the policy's path,
    ``create_model_from_path``). ``ignore_eos`` passes ``eos_token_id=None`` to generate
    (``GRPOConfig.generation_kwargs`` update ``generation_kwargs``, ``grpo_trainer.py`` line 1172), so every
    sequence runs ``max_completion_length`` steps (TRL still cuts each completion at its first EOS afterwards).
G4. Reward before / after: ``trainer.evaluate()`` on the held-out prompts (TRL generates ``num_generations``
    completions each and logs the mean reward), before and after training.
G5. Memory of optimizer step ``measure_step`` (default 2: AdamW's states exist), in two phases, with the lab's
    instruments (:mod:`quantlab.lab.measure`, :func:`quantlab.validate.cpu_peak`):

    - generation (``_generate_and_score_completions``, under ``no_grad``): a CPU allocator window around the
      policy's ``generate`` call (``_generate_single_turn``, ``grpo_trainer.py`` line 1873), with a
      ``record_function`` range around every model forward (``validate._forward_marks``), so the window's peak
      splits into the prefill phase (before the second forward) and the decode phase, as ``quantlab validate``
      measures serving (its assumption 9): ``kv_cache`` is the cache's key and value storages at the end,
      ``prefill_transient`` the prefill phase's peak less the cache after the first forward, ``decode_transient``
      the decode phase's peak less the cache at the end. Then one window per scoring forward TRL runs under
      ``no_grad`` (``_get_per_token_logps_and_entropies``: the old policy's log-probs when ``num_iterations`` > 1
      or generation is not aligned with the optimizer step, lines 2642-2657; the reference's when ``beta`` > 0,
      lines 2709-2737). A window's total is the bytes live at its start (policy and reference storages, AdamW's
      states, gradients, TRL's buffered inputs of the previous generation, the call's tensor arguments; a scoring
      forward's ids and mask twice: ``torch.cat([prompt_ids, completion_ids])`` keeps its inputs bound, line
      2501) plus the allocator's peak growth over the window; the phase's total is the largest window.
    - training (``_compute_loss``, the policy forward with TRL's fused LM head and its backward, then the AdamW
      step): :class:`quantlab.lab.measure.StepProbe`, started when ``_prepare_inputs`` returns (generation done),
      with TRL's buffered generation batch and a reference model's storages (which the probe does not hook)
      added to the bytes live at its start. ``activations`` is what the
      policy's forward saved for backward (backbone and fused head: StepProbe's ``activations`` + ``logits_loss``).
      The window's start also counts the forward's input ids, mask and labels, which ``_compute_loss`` builds
      inside the window: those few int64 bytes (3 x 8 x batch x tokens) are counted twice.

    The step's shapes are recorded (generation rows, prompt width and padding, completion width, training
    sequences and tokens), so the planner can be asked about the same step (the lab does not import the planner:
    :mod:`quantlab.validate_grpo` and :mod:`quantlab.commands.lab_grpo` put both side by side).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError

TASKS = Path(__file__).resolve().parent.parent.parent / "tasks"
SYNTHETIC_WORD = " the"


@dataclass(frozen=True)
class GRPORun:
    """One GRPO run. Defaults: a short CPU run on the embedded SmolLM2-135M (fp32, LoRA) and json-extract."""

    model: str = "smollm2-135m"
    task: str | None = "json-extract"
    train_prompts: int = 64
    eval_prompts: int = 8
    synthetic_prompt_tokens: int | None = None  # G1: plain-text prompts of exactly this many tokens (no task)
    max_steps: int = 8
    batch: int = 8  # completions per step (GRPOConfig.per_device_train_batch_size)
    num_generations: int = 4
    max_completion_length: int = 48
    lr: float = 1e-4
    beta: float = 0.0
    num_iterations: int = 1
    steps_per_generation: int | None = None  # None: TRL's default (= gradient accumulation, 1)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    policy: str = "lora"  # "lora" or "full"
    grad_checkpointing: bool | None = None  # None: GRPOConfig's default (on)
    ignore_eos: bool = False  # G3: every completion runs max_completion_length steps
    evaluate: bool = True  # G4: reward on the held-out prompts before and after
    measure_step: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.eval_prompts, bool) or not isinstance(self.eval_prompts, int) or self.eval_prompts < 0:
            raise QuantlabError(f"eval-prompts must be a non-negative integer, got {self.eval_prompts!r}")
        for k in ("train_prompts", "max_steps", "batch", "num_generations", "max_completion_length",
                  "num_iterations", "lora_r", "lora_alpha", "measure_step"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise QuantlabError(f"{k.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.num_generations < 2:
            raise QuantlabError("num-generations must be at least 2 (GRPO's advantages compare completions of a "
                                "prompt)")
        spg = self.steps_per_generation or 1
        if (self.batch * spg) % self.num_generations:
            raise QuantlabError(f"the generation batch (batch {self.batch} x steps-per-generation {spg}) must hold "
                                f"whole groups of num-generations {self.num_generations} (TRL grpo_config.py)")
        if self.evaluate and self.batch % self.num_generations:
            raise QuantlabError(f"batch {self.batch} must be a multiple of num-generations {self.num_generations} "
                                "for the held-out evaluation (TRL's eval batch)")
        every = self.num_iterations * spg  # TRL generates every steps_per_generation x num_iterations steps
        if (self.measure_step - 1) % every:
            raise QuantlabError(f"measure-step {self.measure_step} reuses an earlier generation (TRL generates every "
                                f"{every} steps: num-iterations x steps-per-generation); measure a step that "
                                f"generates: 1 + a multiple of {every}")
        if self.measure_step > self.max_steps:
            raise QuantlabError(f"measure-step {self.measure_step} is after the last step ({self.max_steps})")
        if not self.lr > 0:
            raise QuantlabError(f"lr must be positive, got {self.lr!r}")
        if self.beta < 0:
            raise QuantlabError(f"beta must be non-negative, got {self.beta!r}")
        if self.policy not in ("lora", "full"):
            raise QuantlabError(f"policy must be lora or full, got {self.policy!r}")
        if self.synthetic_prompt_tokens is not None and self.synthetic_prompt_tokens < 1:
            raise QuantlabError(f"synthetic-prompt-tokens must be positive, got {self.synthetic_prompt_tokens!r}")
        if self.task is None and self.synthetic_prompt_tokens is None:
            raise QuantlabError("give a task (json-extract) or synthetic-prompt-tokens")


# ---- rewards (G2) -----------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def parse_object(text: str):
    """The JSON object ``text`` holds (surrounding whitespace and a code fence allowed), or None."""
    s = _FENCE.sub("", text.strip()).strip()
    try:
        v = json.loads(s)
    except (ValueError, RecursionError):
        return None
    return v if isinstance(v, dict) else None


def json_valid(completions, **kwargs) -> list[float]:
    """1.0 for a completion that parses as a JSON object, else 0.0 (G2)."""
    return [1.0 if parse_object(_text(c)) is not None else 0.0 for c in completions]


def json_fields(completions, response=None, **kwargs) -> list[float]:
    """The fraction of the reference object's key/value pairs the completion's object reproduces (G2); 0.0
    where it is not JSON or there is no reference."""
    out = []
    refs = response if response is not None else [None] * len(completions)
    for c, ref in zip(completions, refs):
        obj, want = parse_object(_text(c)), parse_object(ref) if isinstance(ref, str) else None
        if obj is None or not want:
            out.append(0.0)
            continue
        out.append(sum(1 for k, v in want.items() if obj.get(k) == v) / len(want))
    return out


# ---- data (G1) --------------------------------------------------------------------------------------------

def prompt_rows(cfg: GRPORun, tokenizer) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): ``{"prompt": ..., "response": ...}`` as TRL reads them (G1)."""
    n_train, n_eval = cfg.train_prompts, cfg.eval_prompts
    if cfg.synthetic_prompt_tokens is not None:
        text = SYNTHETIC_WORD * cfg.synthetic_prompt_tokens
        got = len(tokenizer(text=[text])["input_ids"][0])
        if got != cfg.synthetic_prompt_tokens:
            raise QuantlabError(f"the tokenizer makes {got} tokens of {cfg.synthetic_prompt_tokens} x "
                                f"{SYNTHETIC_WORD!r}; synthetic prompts need one token per word")
        rows = [{"prompt": text, "response": "{}"} for _ in range(n_train + n_eval)]
        return rows[:n_train], rows[n_train:]
    path = TASKS / str(cfg.task) / "data.jsonl"
    if not path.is_file():
        known = sorted(d.name for d in TASKS.iterdir() if (d / "data.jsonl").is_file()) if TASKS.is_dir() else []
        raise QuantlabError(f"unknown task {cfg.task!r} (shipped tasks: {', '.join(known)})")
    from quantlab.lab.data import read_jsonl

    recs = [r for r in read_jsonl(path) if r.kind == "prompt"]
    if len(recs) < n_train + n_eval:
        raise QuantlabError(f"{path} has {len(recs)} prompt records; {n_train} training + {n_eval} held-out asked")
    chat = bool(getattr(tokenizer, "chat_template", None))

    def row(r):
        return {"prompt": [{"role": "user", "content": r.prompt}] if chat else r.prompt, "response": r.response}

    return [row(r) for r in recs[:n_train]], [row(r) for r in recs[len(recs) - n_eval:]]


# ---- measurement (G5) -------------------------------------------------------------------------------------

def _tensors(values):
    from quantlab.lab.measure import _tensors_in

    return list(_tensors_in(values))


class GRPOProbe:
    """The measured step's two phases (G5). Installed on a trainer before ``train()``; after the step,
    ``generation`` / ``scoring`` / ``training`` hold the readings."""

    def __init__(self, trainer, step: int):
        self.trainer = trainer
        self.step = step
        self.generation: dict | None = None
        self.scoring: list[dict] = []
        self.training = None  # the StepProbe's Measurement
        self.train_padded = None
        self.train_shape = None
        self._probe = None
        self._armed = False
        self._orig_prepare = trainer._prepare_inputs
        self._orig_logps = trainer._get_per_token_logps_and_entropies
        trainer._prepare_inputs = self._prepare_inputs
        trainer._get_per_token_logps_and_entropies = self._logps

    # -- what is live outside a window --
    def _live(self) -> int:
        from quantlab.lab.measure import model_bytes, tensor_bytes
        from quantlab.lab.saved_tensors import grad_bytes, optimizer_bytes

        t = self.trainer
        n = model_bytes(t.model).total + grad_bytes(t.model)
        if t.optimizer is not None:
            n += optimizer_bytes(t.optimizer)
        if getattr(t, "ref_model", None) is not None:
            n += model_bytes(t.ref_model).total
        return n + tensor_bytes(_tensors(t._buffered_inputs or [])).total

    def _policy(self):
        t = self.trainer
        return t.accelerator.unwrap_model(t.model_wrapped)

    # -- phases --
    def _prepare_inputs(self, batch):
        t = self.trainer
        measuring = (t.model.training and self._probe is None and self.training is None
                     and t.state.global_step + 1 == self.step)
        if not measuring:
            return self._orig_prepare(batch)
        policy = self._policy()
        orig_generate = policy.generate
        policy.generate = lambda *a, **kw: self._generate(orig_generate, *a, **kw)
        self._armed = True
        try:
            out = self._orig_prepare(batch)
        finally:
            self._armed = False
            del policy.generate  # the instance attribute; the class's generate again
        from quantlab.lab.measure import StepProbe, tensor_bytes

        self._probe = StepProbe(t.model).start(t.optimizer)
        # G5: what the probe does not see is live too: TRL's buffered generation batch and a reference model
        self._probe._base += tensor_bytes(_tensors(t._buffered_inputs or [])).total
        if getattr(t, "ref_model", None) is not None:
            from quantlab.lab.measure import model_bytes

            self._probe._base += model_bytes(t.ref_model).total
        return out

    def _generate(self, orig, *args, **kwargs):
        import torch

        from quantlab.lab.measure import tensor_bytes
        from quantlab.validate import _cache_tensors, _forward_marks, cpu_peak

        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        base = self._live() + tensor_bytes(_tensors(list(args) + list(kwargs.values()))).total
        policy = self._policy()
        lm = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        with torch.no_grad(), _forward_marks(lm) as (kv, last), cpu_peak() as pk:
            out = orig(*args, **kwargs)
        kv_end = tensor_bytes(_cache_tensors(last[0])).total if last[0] is not None else 0
        last[0] = None  # the cache is not kept past generate
        pre, dec = pk.phase_peaks or (pk.peak, 0)
        self.generation = {
            "rows": int(ids.shape[0]), "prompt_tokens": int(ids.shape[1]),
            "prompt_padded": bool(mask is not None and (mask == 0).any()), "forwards": len(kv),
            "new_tokens": int(out.shape[1] - ids.shape[1]),
            "meas_kv_cache_bytes": kv_end, "meas_prefill_transient_bytes": pre - kv[0],
            "meas_decode_transient_bytes": dec - kv_end if len(kv) > 1 else None,
            "live_at_start_bytes": base, "meas_allocated_bytes": base + pk.peak,
            "meas_allocated_with_workspace_bytes": base + pk.raw_peak,
            "meas_matmul_workspace_max_bytes": pk.workspace_max}
        return out

    def _logps(self, model, input_ids, attention_mask, *args, **kwargs):
        import torch

        if not self._armed or torch.is_grad_enabled():
            return self._orig_logps(model, input_ids, attention_mask, *args, **kwargs)
        from quantlab.lab.measure import tensor_bytes
        from quantlab.validate import cpu_peak

        earlier = [s.pop("_out") for s in self.scoring if "_out" in s]  # an earlier scoring's log-probs stay bound
        # the ids and mask twice: torch.cat's inputs stay bound in _generate_and_score_completions (G5)
        base = (self._live() + 2 * tensor_bytes([input_ids, attention_mask]).total
                + tensor_bytes(_tensors(earlier)).total)
        which = "old_policy" if self._old_pending() else "reference"
        with cpu_peak() as pk:
            out = self._orig_logps(model, input_ids, attention_mask, *args, **kwargs)
        self.scoring.append({"what": which, "rows": int(input_ids.shape[0]), "tokens": int(input_ids.shape[1]),
                             "live_at_start_bytes": base, "meas_transient_bytes": pk.peak,
                             "meas_allocated_bytes": base + pk.peak,
                             "meas_allocated_with_workspace_bytes": base + pk.raw_peak, "_out": out[0]})
        return out

    def _old_pending(self) -> bool:
        """Whether the old policy's forward is still to come (TRL runs it first, then the reference's: G5)."""
        t = self.trainer
        old = t.args.gradient_accumulation_steps % (t.args.steps_per_generation * t.num_iterations) != 0
        return old and not any(s["what"] == "old_policy" for s in self.scoring)

    # -- the training step (TrainerCallback events, through :meth:`callback`) --
    def after_backward(self):
        if self._probe is not None:
            self._probe.after_backward()

    def after_optimizer_step(self, optimizer):
        if self._probe is not None and optimizer is not None:
            self._probe.after_optimizer_step(optimizer)

    def step_end(self):
        if self._probe is not None:
            probe, self._probe = self._probe, None
            self.training = probe.stop()
            self.train_padded = probe.attention_mask_has_padding
            self.train_shape = (probe.batch, probe.seq)
            for s in self.scoring:
                s.pop("_out", None)

    def callback(self):
        from transformers import TrainerCallback

        probe = self

        class GRPOMeasure(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kw):
                probe.after_backward()

            def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
                probe.after_optimizer_step(optimizer)

            def on_step_end(self, args, state, control, **kw):
                probe.step_end()

        return GRPOMeasure()

    def phases(self) -> dict:
        """The readings as one flat dict (G5): ``meas_generation_*`` and ``meas_training_*`` keys."""
        if self.generation is None or self.training is None:
            raise QuantlabError(f"optimizer step {self.step} was not measured (the run ended before it)")
        g = self.generation
        m = self.training.meas()
        gen_total = max([g["meas_allocated_bytes"]] + [s["meas_allocated_bytes"] for s in self.scoring])
        out = {"generation": dict(g), "scoring": [dict(s) for s in self.scoring], "training": m,
               "training_notes": list(self.training.notes),
               "meas_generation_allocated_bytes": gen_total,
               "meas_training_allocated_bytes": m.get("meas_allocated_bytes"),
               "train_sequences": self.train_shape[0], "train_tokens": self.train_shape[1],
               "train_padded": bool(self.train_padded)}
        out["meas_allocated_bytes"] = max(gen_total, m.get("meas_allocated_bytes") or 0)
        return out


# ---- the runner -------------------------------------------------------------------------------------------

def run_grpo(cfg: GRPORun, out: str | Path | None = None, *, log=print, model=None, tokenizer=None) -> dict:
    """Train and measure one GRPO run (G1-G5); returns a flat result dict (rewards, the measured phases, shapes,
    environment). ``model`` / ``tokenizer``: objects to use instead of loading ``cfg.model`` (a policy given as an
    object needs a path of its own for a reference copy: ``policy="full"`` with ``beta`` > 0). With ``out``, the
    per-step log history is written there as ``grpo-history.csv``."""
    import tempfile

    import torch
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    import datasets
    from quantlab.lab import model as M
    from quantlab.lab.preference import _write_history, environment

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    if model is None or tokenizer is None:
        src = M.resolve(cfg.model)
        tokenizer = tokenizer or M.load_tokenizer(src, progress=False)
        model = model or M.load_model(src, dtype=torch.float32, progress=False)
    load_s = time.perf_counter() - t0
    train_rows, eval_rows = prompt_rows(cfg, tokenizer)
    work = tempfile.mkdtemp(prefix="quantlab-grpo-")  # the trainer's output_dir: nothing is saved there
    kw = {}
    if cfg.steps_per_generation is not None:
        kw["steps_per_generation"] = cfg.steps_per_generation
    if cfg.ignore_eos:
        kw["generation_kwargs"] = {"eos_token_id": None}
    args = GRPOConfig(output_dir=work, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch,
                      per_device_eval_batch_size=cfg.batch, num_generations=cfg.num_generations,
                      max_completion_length=cfg.max_completion_length, learning_rate=cfg.lr, beta=cfg.beta,
                      num_iterations=cfg.num_iterations, bf16=False, fp16=False, use_cpu=True, report_to="none",
                      save_strategy="no", disable_tqdm=True, logging_steps=1, seed=cfg.seed, data_seed=cfg.seed,
                      lr_scheduler_type="constant", warmup_steps=0, dataloader_num_workers=0,
                      # transformers 5.24's name for gradient checkpointing (lab/preference.py D2), TRL's default on
                      activation_checkpointing=True if cfg.grad_checkpointing is None else cfg.grad_checkpointing,
                      **kw)
    peft = None
    if cfg.policy == "lora":
        from peft import LoraConfig

        peft = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                          lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[json_valid, json_fields], args=args,
                          train_dataset=datasets.Dataset.from_list(train_rows),
                          eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
                          processing_class=tokenizer, peft_config=peft)
    probe = GRPOProbe(trainer, cfg.measure_step)
    trainer.add_callback(probe.callback())
    log(f"grpo: {len(train_rows)} training prompts, {len(eval_rows)} held-out; {cfg.max_steps} steps of {cfg.batch} "
        f"completions ({cfg.batch // cfg.num_generations} prompts x {cfg.num_generations}); reference: "
        + ("none (beta 0)" if not cfg.beta else "a second model" if trainer.ref_model is not None
           else "the disabled adapter"))
    before = after = {}
    eval_s = 0.0
    if cfg.evaluate and eval_rows:
        t = time.perf_counter()
        before = trainer.evaluate()
        eval_s = time.perf_counter() - t
        log(f"before: reward {before.get('eval_reward', float('nan')):.4f}")
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    if cfg.evaluate and eval_rows:
        after = trainer.evaluate()
        log(f"after:  reward {after.get('eval_reward', float('nan')):.4f}")
    ph = probe.phases()
    from quantlab.lab.measure import model_bytes

    ref_bytes = model_bytes(trainer.ref_model).total if trainer.ref_model is not None else 0
    history = [h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h]
    if out is not None:
        _write_history(Path(out) / "grpo-history.csv", history)
    res = {"config": dataclasses.asdict(cfg), "train_prompts": len(train_rows), "eval_prompts": len(eval_rows),
           "reference": "none" if not cfg.beta else ("copy" if trainer.ref_model is not None else "adapter"),
           "reference_bytes": ref_bytes, "grad_checkpointing": bool(trainer.args.gradient_checkpointing),
           "load_s": load_s, "eval_s": eval_s, "train_s": train_s, "s_per_step": train_s / cfg.max_steps,
           "measured_step": cfg.measure_step, **ph,
           "trainable_params": ph["training"].get("meas_trainable_params"),
           "train_rewards": [h.get("reward") for h in history],
           "train_clipped_ratio": [h.get("completions/clipped_ratio") for h in history]}
    for k in ("reward", "rewards/json_valid/mean", "rewards/json_fields/mean", "completions/mean_length"):
        res[f"before_{k}"] = before.get(f"eval_{k}")
        res[f"after_{k}"] = after.get(f"eval_{k}")
    res["env"] = environment()
    return res
