"""Preference tuning (TRL 1.16.0): DPO, ORPO, SimPO, KTO, reward models and GRPO as a mode of the one memory model.

:func:`preference_plan` composes :func:`quantlab.planner.memory.plan` on derived configurations (the policy at
2B sequences for paired objectives), the inference rules of the same model for a reference copy, the serving
planner's generate phase for GRPO, and :mod:`quantlab.planner.trl_head` where the trainer uses TRL's fused LM
head. Pure: standard library only. Files read: ``trl/trainer/{dpo,kto,grpo,reward}_trainer.py``,
``trl/experimental/{orpo,cpo}/*_trainer.py`` (TRL 1.16.0, this project's ``.venv``).

Assumptions (P1, P2, ...):

P1. Paired objectives (DPO, ORPO, SimPO/CPO, reward) run chosen and rejected as one concatenated batch of 2B
    sequences of ``seq`` tokens (``dpo_trainer.py`` ``_compute_loss``: ``logps.chunk(2)``; ORPO/CPO
    ``concatenated_forward``; ``reward_trainer.py``: ``torch.chunk(outputs.logits, 2)``). KTO and GRPO run B.
P2. DPO, KTO and GRPO patch the policy with the fused LM head (``add_fused_lm_head``, outputs per trainer:
    :data:`trl_head.TRAINER_OUTPUTS`): memory.py's ``logits_loss`` (the HF loss, its assumption 6) is replaced by
    the fused head's peak (larger of its forward and backward transients, plus the per-token outputs kept), and its
    saved rows join ``activations`` (replacing the lm_head input memory.py counts when the head trains).
    ORPO and CPO/SimPO (``trl/experimental/{orpo,cpo}/*_trainer.py`` ``concatenated_forward``) still build every
    logit: memory.py's HF loss rule is replaced by :func:`trl_head.logits_head` (H7-H9): the 2B x S x V logits
    kept, what their loss saves outside the model (``selective_log_softmax``'s per-token terms; ORPO's NLL term
    the chosen half's ``log_softmax`` in the logits' dtype, no fp32 upcast; :func:`logits_loss_saved`) and the
    backward's two 2B x (S-1) x V gradient buffers, together ``logits_both_sequences``. Measured exact on this CPU in fp32
    (reports/preference-cpu); the half-precision branch of ``selective_log_softmax`` is planned, not measured.
P3. The reference (DPO, KTO; GRPO with ``beta > 0``): ``auto`` is PEFT's disabled adapter for a PEFT policy
    (``use_adapter``; no second copy), else a second model built with the policy's dtype and quantization config
    (``create_model_from_path``): weights and quantization constants of an inference plan of the same model and
    precision (fp32 under AMP: the policy's ``model.dtype``). ``precomputed`` (``precompute_ref_log_probs``) keeps
    no reference and runs no reference forward during training. The reference forward runs under ``no_grad`` while
    the policy's graph is alive (DPO ``_compute_loss``): its transient (one block over the batch, or the fused
    head's forward beside the last hidden state) sits above every saved activation. Gradients are counted live
    through it, as memory.py assumption 3 counts them through every phase (the safe reading: Trainer's
    ``model.zero_grad()`` sets them to None, so with one micro-batch a step's forward and the head's backward run
    without them, and the true peak is lower by the gradient bytes: measured +8% for a full policy,
    reports/dpo-cpu/matrix.md).
P4. GRPO (``grpo_trainer.py``, ``grpo_config.py``): ``generate`` (transformers, not vLLM) produces the generation
    batch at once: ``batch x steps_per_generation`` completions per device (``steps_per_generation`` defaults to the
    accumulation steps, ``grpo_config.py`` ``__post_init__`` lines 1098-1100), which must hold whole groups of
    ``num_generations`` (line 1131); prompt = ``seq - max_completion_length``. Its KV cache and transients are the
    serving planner's generate phase (serving S1, S3) with no logits processor: TRL samples with top_k 0, top_p 1.0,
    temperature 1.0 (``grpo_config.py`` lines 532-580, ``grpo_trainer.py`` lines 1156-1173; serving S1b's
    ``logits_warpers=False``); with ``padded`` the prompts are planned left-padded (serving S1d: SDPA's bool mask),
    the safe reading of one padding flag for both phases. Then ``_generate_and_score_completions`` scores the
    completions under ``no_grad`` (``grpo_trainer.py`` line 2634), before any training forward: the old policy's
    log-probs when ``gradient_accumulation_steps % (steps_per_generation x num_iterations) != 0`` (lines 2642-2657;
    TRL's defaults, ``num_iterations`` 1 and ``steps_per_generation`` = the accumulation steps, skip it) and the
    reference's when ``beta > 0`` (lines 2709-2737), each in chunks of ``per_device_train_batch_size`` rows
    (``_get_per_token_logps_and_entropies``, ``batch_size`` line 2505). Each is the no-grad forward P3 sizes (one
    block over the batch, or the fused head's forward beside the last hidden state; the old policy's own LoRA terms,
    batch x seq x r per adapted linear, are below the fused head's chunk and not counted); no policy activations are
    alive beside them (``_compute_loss`` only reads the stored log-probs), so they belong to the generation phase
    (``generation_scoring``), not beside the activations as in DPO. The kept log-probs (rows x completion x 4 bytes)
    are left out. Generation ends before training starts: peak = the larger phase. A reward model (``reward_model``)
    is loaded with ``AutoModelForSequenceClassification`` and kept for the run. TRL 1.16 has no PPO trainer (and no
    value head).
P5. Reward models (``reward_trainer.py``): a sequence-classification head (``num_labels=1``, H x 1,
    ``AutoModelForSequenceClassification``; transformers 5.24 ``LlamaForSequenceClassification.score``) replaces
    lm_head: no vocabulary logits, the (2B, S, 1) scores only. The head's weight is counted (and lm_head's removed
    where it was not tied); under PEFT the trainer's recommended ``modules_to_save=["score"]`` (``task_type``
    SEQ_CLS) trains a copy of it: H more adapter parameters with their gradients and AdamW states; the head saves
    its input (the last hidden state) where memory.py did not count lm_head's. With no logits, the step's peak is
    the backbone's backward (:func:`reward_backward`) beside the saved tensors; under checkpointing, one
    block's recompute with its own backward (:func:`block_recompute`: memory.py assumptions 5 and 5b, whose
    backward points hold the same MLP backward buffers, so reward_backward is not added again); at the end of backward a trainable embedding (a full policy)
    produces its V x H gradient beside the incoming T x H gradient (the classifier's embedding is untied: with the
    gradients freed, P8, no other copy). Measured on this CPU in fp32: every component to the byte and the peak
    within 0.1% on tiny Llama and GPT-2 (profiles/validation/matrix.yaml ``*-reward-*``).
P6. The reference and GRPO's generate phase are inference plans without the policy's ZeRO / FSDP / offload,
    checkpointing and accumulation (training-only settings); a
    sharded job's reference is planned whole on each GPU (an over-estimate: TRL's ``prepare_deepspeed`` shards a
    ZeRO-3 reference).
P7. DPO, ORPO, SimPO (CPO), KTO and reward training default to ``disable_dropout=True`` (``dpo_config.py``,
    ``kto_config.py``, ``reward_config.py``, ``experimental/{orpo,cpo}/*_config.py``; GRPO's default is False):
    ``disable_dropout_in_model`` sets every ``nn.Dropout`` to p=0, LoRA's included, so no dropout mask is saved:
    the model's dropout fields and ``lora_dropout`` are planned as 0. Measured: GPT-2 (resid/embd/attn dropout 0.1)
    under DPOTrainer (reports/dpo-cpu/matrix.md).
P9. Every TRL config inherits transformers 5.24's default ``optim="adamw_torch_fused"`` (``training_args.py``:
    torch >= 2.8): the fused kernel updates each parameter in place, so the CPU step's two largest-parameter
    temporaries of memory.py assumption 8 (``_single_tensor_adamw``) do not occur: ``optimizer_step`` is 0 for
    ``--optimizer adamw`` (GRPO is left as memory.py plans it until its own measurement). Measured: a full-policy reward model's step peaks at weights + states + gradients + the
    embedding backward's incoming T x H gradient (reports/preference-cpu).
P8. Gradients follow memory.py assumption 3: with Trainer's ``zero_grad(set_to_none=True)``, one micro-batch and no
    ZeRO/FSDP, the forwards (the policy's, the reference's, GRPO's generation) run without the previous step's
    gradients; the end of backward and the optimizer step hold them (``--keep-grads``, gradient accumulation and
    ZeRO/FSDP keep them through the forwards).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from quantlab.planner import memory as M
from quantlab.planner import trl_head
from quantlab.planner.allocator import allocator
from quantlab.specs import (DeviceMode, Method, ModelSpec, Offload, Optimizer, PlanConfig, Precision, SpecError,
                            TrainingPrecision)


class Objective(str, Enum):
    DPO = "dpo"
    ORPO = "orpo"
    SIMPO = "simpo"
    KTO = "kto"
    REWARD = "reward"
    GRPO = "grpo"


class Reference(str, Enum):
    AUTO = "auto"
    COPY = "copy"
    ADAPTER = "adapter"
    PRECOMPUTED = "precomputed"


PAIRED = frozenset((Objective.DPO, Objective.ORPO, Objective.SIMPO, Objective.REWARD))
FUSED = {Objective.DPO: "dpo", Objective.KTO: "kto", Objective.GRPO: "grpo"}  # P2
HAS_REFERENCE = frozenset((Objective.DPO, Objective.KTO, Objective.GRPO))
NO_DROPOUT = frozenset((Objective.DPO, Objective.ORPO, Objective.SIMPO, Objective.KTO, Objective.REWARD))  # P7


def objective(name: str) -> Objective:
    """The objective a name gives, or a one-line SpecError (PPO: P4)."""
    if name == "ppo":
        raise SpecError("TRL 1.16 has no PPO trainer (removed from trl/trainer); plan --method grpo instead")
    try:
        return Objective(name)
    except ValueError:
        raise SpecError(f"unknown preference objective {name!r} (known: {', '.join(o.value for o in Objective)})") \
            from None


@dataclass(frozen=True)
class PreferenceConfig:
    """The preference setup beside the policy's PlanConfig: the objective (TRL's trainer), its reference (P3),
    GRPO's generation settings (P4) and the reward head's labels (P5). (A docstring also keeps ``dataclasses``
    from calling ``inspect.signature``, which ``quantlab plan`` does not load at start: cli.py.)"""

    objective: Objective
    reference: Reference = Reference.AUTO
    num_generations: int | None = None  # GRPO: completions per prompt (required, >= 2)
    max_completion_length: int = 512  # GRPOConfig default
    beta: float | None = None  # None: the trainer's default (DPO/KTO 0.1; GRPO 0.0: no reference model)
    num_labels: int = 1  # reward head
    reward_model: ModelSpec | None = None  # GRPO: a sequence-classification reward model kept for the run
    num_iterations: int = 1  # GRPO: optimizer steps per generation batch (GRPOConfig default; > 1: old-policy forward)
    steps_per_generation: int | None = None  # GRPO: None = the accumulation steps (GRPOConfig default)

    def __post_init__(self) -> None:
        if not isinstance(self.objective, Objective):
            raise SpecError(f"objective must be an Objective, got {self.objective!r}")
        if not isinstance(self.reference, Reference):
            raise SpecError(f"reference must be one of {', '.join(r.value for r in Reference)}")
        if self.objective is Objective.GRPO:
            if self.num_generations is None:
                raise SpecError("--method grpo needs --num-generations (completions per prompt, at least 2)")
            if not isinstance(self.num_generations, int) or self.num_generations < 2:
                raise SpecError(f"num-generations must be an integer >= 2 (GRPO's advantages), got "
                                f"{self.num_generations!r}")
        elif self.num_generations is not None:
            raise SpecError(f"--num-generations applies to grpo, not {self.objective.value}")
        for k in ("num_iterations", "steps_per_generation"):
            v = getattr(self, k)
            if v is None and k == "steps_per_generation":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"{k.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.objective is not Objective.GRPO and (self.num_iterations != 1 or self.steps_per_generation is not None):
            raise SpecError(f"--num-iterations / --steps-per-generation apply to grpo, not {self.objective.value}")
        if not isinstance(self.max_completion_length, int) or self.max_completion_length < 1:
            raise SpecError(f"max-completion-length must be a positive integer, got {self.max_completion_length!r}")
        if self.beta is not None and self.beta < 0:
            raise SpecError(f"beta must be non-negative, got {self.beta!r}")
        if self.objective is Objective.REWARD and self.num_labels != 1:
            raise SpecError("a reward model needs a classification head with one label (RewardTrainer's pairwise "
                            f"loss scores each sequence), got num-labels {self.num_labels!r}")
        if self.objective not in HAS_REFERENCE and self.reference not in (Reference.AUTO,):
            raise SpecError(f"{self.objective.value} has no reference model; leave --reference at auto")

    def to_dict(self) -> dict:
        """The fields as JSON values (enums by value, the reward model as its ModelSpec dict); from_dict reads it."""
        return {"objective": self.objective.value, "reference": self.reference.value,
                "num_generations": self.num_generations, "max_completion_length": self.max_completion_length,
                "beta": self.beta, "num_labels": self.num_labels,
                "reward_model": None if self.reward_model is None else self.reward_model.to_dict(),
                "num_iterations": self.num_iterations, "steps_per_generation": self.steps_per_generation}

    @classmethod
    def from_dict(cls, d) -> "PreferenceConfig":
        """The config :meth:`to_dict` wrote; an unknown key or a bad value is a one-line SpecError."""
        if not isinstance(d, dict):
            raise SpecError(f"preference must be a mapping, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            raise SpecError(f"unknown preference field {unknown[0]!r} (fields: {', '.join(names)})")
        kw = dict(d)
        kw["objective"] = objective(str(kw.get("objective")))
        if "reference" in kw:
            try:
                kw["reference"] = Reference(kw["reference"])
            except ValueError:
                raise SpecError(f"reference must be one of {', '.join(r.value for r in Reference)}") from None
        if kw.get("reward_model") is not None:
            kw["reward_model"] = ModelSpec.from_dict(kw["reward_model"])
        for k in ("num_generations", "max_completion_length", "num_labels", "num_iterations", "steps_per_generation"):
            if kw.get(k) is not None and (isinstance(kw[k], bool) or not isinstance(kw[k], int)):
                raise SpecError(f"preference {k} must be an integer, got {kw[k]!r}")
        if kw.get("beta") is not None and (isinstance(kw["beta"], bool) or not isinstance(kw["beta"], (int, float))):
            raise SpecError(f"preference beta must be a number, got {kw['beta']!r}")
        return cls(**kw)

    def resolved_reference(self, cfg: PlanConfig) -> Reference | None:
        """The reference that runs (P3), or None."""
        if self.objective not in HAS_REFERENCE or (self.objective is Objective.GRPO and not self.beta):
            return None
        if self.reference is Reference.AUTO:
            return Reference.ADAPTER if cfg.method.is_peft else Reference.COPY
        if self.reference is Reference.ADAPTER and not cfg.method.is_peft:
            raise SpecError("--reference adapter needs a PEFT policy (lora, qlora, ...); a full fine-tune copies it")
        return self.reference

    def generation_steps(self, cfg: PlanConfig) -> int:
        """GRPO's ``steps_per_generation`` as TRL resolves it (P4): given, else the accumulation steps."""
        return self.steps_per_generation or cfg.grad_accum

    def scores_old_policy(self, cfg: PlanConfig) -> bool:
        """Whether TRL runs the old policy's no-grad scoring forward (P4, ``grpo_trainer.py`` line 2642)."""
        return (self.objective is Objective.GRPO
                and cfg.grad_accum % (self.generation_steps(cfg) * self.num_iterations) != 0)


# P6: the inference configurations of the reference and of GRPO's generation drop ZeRO / FSDP / offload (a
# training job's state sharding; an inference plan refuses them): a ZeRO-3 reference is planned whole on every GPU,
# above what TRL's prepare_deepspeed would shard (the safe direction).
# Training-only settings go too (an inference plan refuses them): checkpointing (the k-bit recipe turns it on for
# the policy; a no_grad forward keeps nothing to recompute) and gradient accumulation.
_UNSHARDED = {"zero": 0, "fsdp": None, "offload": Offload.NONE, "grad_checkpointing": False, "grad_accum": 1}


def _dtypes(cfg: PlanConfig) -> tuple[int, int, int]:
    """(hidden, compute, lm_head weight) bytes of the policy (memory.py assumptions 1, 4)."""
    c = cfg.compute_dtype.nbytes
    amp = cfg.training_precision is TrainingPrecision.AMP
    upcast = cfg.precision.is_kbit and cfg.kbit_upcast
    r = 4 if (amp or upcast) else (c if cfg.precision.is_kbit else {"fp32": 4}.get(cfg.precision.value, 2))
    w = 4 if (amp or upcast) else r
    return r, (c if amp else r), w


def logits_loss_saved(cfg: PlanConfig, pref: PreferenceConfig) -> int | None:
    """The part of ORPO's / SimPO's ``logits_both_sequences`` held to the end of backward (P2, trl_head H7-H8: the
    logits and what the loss saves outside the model), the part the lab measures as saved; None for the other
    objectives."""
    if pref.objective not in (Objective.ORPO, Objective.SIMPO):
        return None
    kept, saved, _ = trl_head.logits_head(pairs=cfg.batch, seq=cfg.seq, vocab=cfg.model.vocab_size,
                                          logits_bytes=_dtypes(cfg)[1], nll=pref.objective is Objective.ORPO)
    return kept + saved


def _optimizer_bytes(cfg: PlanConfig, n: int, nbytes: int) -> int:
    """Optimizer state of one more trainable tensor of ``n`` elements in ``nbytes``-byte elements (P5's score head):
    AdamW's two moments in the parameter's dtype and its fp32 ``step`` scalar (torch 2.13 ``adamw.py``, memory.py's
    rule); other optimizers: memory.py's plan of the same tensor is not separable, so their state per element is
    taken as AdamW's (an approximation, not measured)."""
    return 2 * n * nbytes + 4


def reward_backward(cfg: PlanConfig, sequences: int) -> int:
    """The reward model's backward transient above its saved tensors (P5): the last block's MLP backward over
    ``sequences x seq`` tokens holds three T x I gradient buffers in the compute dtype (a gated MLP: the gradients
    of ``down_proj``'s input, of ``up`` and of ``act(gate)``; a two-linear MLP: of ``fc2``'s input, of the
    activation's input and its own temporary), less one T x H saved tensor freed by then (the score head's input
    after its backward). Measured on this CPU in fp32 (tiny Llama with intermediate 1024 and 2048, batch 2 and 4
    pairs, tiny GPT-2; reports/preference-cpu) within 0.1% of the step's peak."""
    m = cfg.model
    T = sequences * cfg.seq
    a = 4 if cfg.training_precision is TrainingPrecision.AMP else cfg.compute_dtype.nbytes
    I = m.intermediate_size * (m.num_experts_per_tok if m.is_moe else 1)
    return max(0, T * a * (3 * I - m.hidden_size))


def block_recompute(cfg: PlanConfig) -> int:
    """Under gradient checkpointing, the recompute of one block (memory.py assumption 5) as memory.py plans it
    beside a logits term: planned on the same model with a one-entry vocabulary, so that no vocabulary-wide loss
    is the larger term (serving's ``block_transient`` uses the same device); the few T-sized loss bytes left are
    an over-estimate of under 0.1% (P5)."""
    one = M.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=1))
    return M.plan(one).components["logits_loss"]


def inference_config(cfg: PlanConfig, rows: int) -> PlanConfig:
    """The no-grad inference configuration of a reference or scoring forward over ``rows`` sequences (P3, P6)."""
    return M.replace(cfg, method=Method.INFERENCE, batch=rows, padding_mask=False, **_UNSHARDED,
                     training_precision=TrainingPrecision.PURE,
                     precision=Precision.FP32 if cfg.training_precision is TrainingPrecision.AMP else cfg.precision)


def no_grad_forward(cfg: PlanConfig, rcfg: PlanConfig) -> int:
    """The transient of TRL's no-grad scoring forward over ``rcfg.batch`` rows of ``cfg.seq`` tokens (P3, P4): one
    block's inference transient, or the fused head's no-grad forward beside the last hidden state."""
    from quantlab.planner.serving import block_transient

    r, c, w = _dtypes(cfg)
    B, S, H, V = rcfg.batch, cfg.seq, cfg.model.hidden_size, cfg.model.vocab_size
    rfh = trl_head.fused_head(batch=B, seq=S, hidden=H, vocab=V, hidden_bytes=r, compute_bytes=c, weight_bytes=w,
                              head_trains=False, triton=cfg.device is DeviceMode.CUDA, no_grad=True)
    return max(block_transient(rcfg, S, []), rfh.forward_transient + B * S * H * r)


def grpo_generate_config(cfg: PlanConfig, pref: PreferenceConfig):
    """The serving configuration of GRPO's generate phase (P4, P6): the policy's inference plan, ``batch x
    steps_per_generation`` sequences of ``seq - max_completion_length`` prompt tokens, no logits processor
    (serving S1b), the LoRA adapter unmerged; a padded policy batch plans left-padded prompts (serving S1d, the safe
    reading: TRL pads the prompts of different lengths, ``grpo_trainer.py`` lines 1814-1827)."""
    from quantlab.planner.serving import serve_config

    icfg = M.replace(cfg, method=Method.INFERENCE, padding_mask=False, training_precision=TrainingPrecision.PURE,
                     **_UNSHARDED)
    return serve_config(icfg, prompt_tokens=cfg.seq - pref.max_completion_length,
                        new_tokens=pref.max_completion_length, concurrency=cfg.batch * pref.generation_steps(cfg),
                        logits_warpers=False, padded_prompts=cfg.padding_mask,
                        adapters=1 if cfg.method in (Method.LORA, Method.QLORA) else 0)


def _head_trains(cfg: PlanConfig) -> bool:
    return cfg.method is Method.FULL or (cfg.method is Method.FREEZE and "lm_head" in cfg.freeze_modules)


def preference_plan(cfg: PlanConfig, pref: PreferenceConfig) -> M.Plan:
    """The plan of a preference-tuning step (P1-P5); components per GPU, peak = the larger phase."""
    obj = pref.objective
    asked = cfg
    dropout = (cfg.model.attention_dropout or cfg.model.hidden_dropout or cfg.model.embd_dropout
               or cfg.lora_dropout)
    if obj in NO_DROPOUT and dropout:  # P7
        cfg = M.replace(cfg, model=dataclasses.replace(cfg.model, attention_dropout=0.0, hidden_dropout=0.0,
                                                       embd_dropout=0.0), lora_dropout=0.0)
    B, S = cfg.batch, cfg.seq
    m = cfg.model
    if obj is Objective.GRPO:
        if pref.max_completion_length >= S:
            raise SpecError(f"max-completion-length {pref.max_completion_length} leaves no prompt in seq {S}")
        spg = pref.generation_steps(cfg)  # P4
        gen = B * spg
        if (gen * cfg.dp) % pref.num_generations:
            what = "steps-per-generation" if pref.steps_per_generation else "grad-accum"
            raise SpecError(f"grpo: the generation batch ({B} x {what} {spg} x {cfg.dp} GPU(s) = "
                            f"{gen * cfg.dp}) must hold whole groups of --num-generations {pref.num_generations} "
                            f"(TRL grpo_config.py); raise --batch or --{what}")
    Bp = 2 * B if obj in PAIRED else B  # P1
    extra_trainable = 0
    pcfg = M.replace(cfg, batch=Bp)
    p = M.plan(pcfg)
    comps = dict(p.components)
    notes = list(p.notes)
    static_names = ("weights", "quant_constants", "adapters", "gradients", "optimizer", "ddp_buckets")
    static = sum(comps.get(k, 0) for k in static_names)
    r, c, w = _dtypes(cfg)
    H, V = m.hidden_size, m.vocab_size
    activations = comps["activations"]
    logits_name = "logits_both_sequences" if obj in PAIRED else "logits"
    comps.pop("logits_loss")
    cuda = cfg.device is DeviceMode.CUDA
    if obj in FUSED:  # P2
        fh = trl_head.fused_head(batch=Bp, seq=S, hidden=H, vocab=V, hidden_bytes=r, compute_bytes=c,
                                 weight_bytes=w, head_trains=_head_trains(cfg), triton=cuda,
                                 outputs=trl_head.TRAINER_OUTPUTS[FUSED[obj]])
        hf_saved = r * Bp * S * H if _head_trains(cfg) else 0
        activations += fh.saved - hf_saved
        head = max(fh.forward_transient, fh.backward_peak) + fh.outputs_kept
        comps[logits_name] = head
        notes.append(f"TRL fused LM head (trl_head H1-H5): no {Bp} x {S} x vocab logits; chunk buffer "
                     f"{min(fh.tokens, trl_head.TOKEN_CHUNK_SIZE)} x {trl_head.CHUNK_SIZE} (P2)")
        policy_dyn = activations + head
    elif obj is Objective.REWARD:  # P5
        wb = 4 if r == 4 else c  # the policy's weight bytes (memory.py assumption 1)
        n = H * pref.num_labels  # the score head (nn.Linear(H, num_labels, bias=False))
        lm = 0 if m.tie_word_embeddings else V * H  # lm_head is gone (a tied one was the embedding)
        delta = {"weights": (n - lm) * wb}
        if cfg.method.is_peft:  # PEFT's modules_to_save copy of the score head trains (fp32 under LoRA's upcast)
            delta.update(adapters=4 * n, gradients=4 * n, optimizer=_optimizer_bytes(cfg, n, 4))
            extra_trainable = n
        elif _head_trains(cfg):  # a full policy trains the score head, and no lm_head
            delta.update(gradients=(n - lm) * wb, optimizer=_optimizer_bytes(cfg, n, wb)
                         - (_optimizer_bytes(cfg, lm, wb) if lm else 0))
            extra_trainable = n - lm
        for k, v in delta.items():
            comps[k] = comps.get(k, 0) + v
            static += v
        # the score head saves its input (the last hidden state) when it trains; memory.py counts lm_head's input
        # only where lm_head trains (a full policy), so a PEFT reward model adds it
        if not _head_trains(cfg):
            activations += r * Bp * S * H
        head = Bp * S * c  # the (2B, S, 1) scores
        comps["reward_scores"] = head
        # P5: no vocabulary logits, so the backbone's own backward is the peak: the last block's MLP backward
        # (measured, reports/preference-cpu)
        if cfg.grad_checkpointing:  # one block's recompute beside the kept inputs, with that block's own
            # backward buffers (memory.py assumptions 5, 5b: its MLP backward is the peak there)
            comps["block_recompute"] = block_recompute(pcfg)
            policy_dyn = activations + head + comps["block_recompute"]
        else:
            comps["backward_transient"] = reward_backward(cfg, Bp)
            policy_dyn = activations + head + comps["backward_transient"]
        if "embedding_grad_tail" in comps:  # the classifier has no lm_head: its embedding is untied (P5)
            comps["embedding_grad_tail"] = (V * H * wb if M.keeps_grads(cfg) else 0) + Bp * S * H * r
        notes.append("reward model: a 1-label classification head replaces lm_head, no vocabulary logits (P5)")
    else:  # ORPO / SimPO: the logits of both sequences and the loss's own buffers (P2, trl_head H7-H9)
        kept, saved, transient = trl_head.logits_head(pairs=B, seq=S, vocab=V, logits_bytes=c,
                                                      nll=obj is Objective.ORPO)
        head = kept + saved + transient
        comps[logits_name] = head
        policy_dyn = activations + head
        notes.append(f"{obj.value}: TRL's experimental trainer builds the logits of both sequences "
                     f"({Bp} x {S} x vocab) and its loss saves "
                     f"{'the chosen log-softmax and ' if obj is Objective.ORPO else ''}per-token terms "
                     "(trl_head H7-H9, P2)")
    comps["activations"] = activations
    if cfg.optimizer is Optimizer.ADAMW and "optimizer_step" in comps and obj is not Objective.GRPO:  # P9
        comps["optimizer_step"] = 0
    # P8 (memory.py assumption 3): where the loop frees gradients before the forward (Trainer's zero_grad, one
    # micro-batch, no ZeRO/FSDP), they are not beside the forwards (the policy's, the reference's); they are beside
    # the end of backward (a trainable embedding's tail, 3b) and the optimizer step
    G = 0 if M.keeps_grads(cfg) or cfg.optimizer_in_backward else comps.get("gradients", 0)
    static -= G
    dynamic = max(policy_dyn, G + comps.get("optimizer_step", 0), G + comps.get("embedding_grad_tail", 0))
    kept = max(policy_dyn, comps.get("optimizer_step", 0), comps.get("embedding_grad_tail", 0))  # G counted static
    ref = pref.resolved_reference(cfg)
    scoring = 0  # GRPO: TRL's no-grad scoring forwards, in the generation phase (P4)
    if ref is not None and ref is not Reference.PRECOMPUTED:  # P3
        rcfg = inference_config(cfg, Bp)
        if ref is Reference.COPY:
            rp = M.plan(rcfg)
            refw = rp.components["weights"] + rp.components.get("quant_constants", 0)
            comps["reference_weights"] = refw
            static += refw
        ref_fwd = no_grad_forward(cfg, rcfg)
        comps["reference_forward"] = ref_fwd
        if obj is Objective.GRPO:  # P4: scored in _generate_and_score_completions, no activations beside it
            scoring = ref_fwd
        else:
            dynamic = max(dynamic, activations + ref_fwd)  # without freed gradients (P8)
            kept = max(kept, activations + ref_fwd)
        notes.append(f"reference: {ref.value} (P3)")
    elif ref is Reference.PRECOMPUTED:
        notes.append("reference log-probs precomputed: no reference model in training (P3)")
    if obj is Objective.GRPO:  # P4
        from quantlab.planner.serving import transformers_plan
        sp = transformers_plan(grpo_generate_config(cfg, pref))
        kv = sp.components["kv_cache"]
        gen_dyn = sp.peak_allocated_bytes - sum(sp.components.get(k, 0) for k in ("weights", "quant_constants",
                                                                                   "adapters"))
        comps["generation_kv_cache"] = kv
        comps["generation_transient"] = gen_dyn - kv
        if pref.scores_old_policy(cfg):  # P4: the policy itself, no_grad, over the same rows
            comps["old_policy_forward"] = no_grad_forward(cfg, inference_config(cfg, Bp))
            scoring = max(scoring, comps["old_policy_forward"])
            notes.append(f"grpo: grad-accum {cfg.grad_accum} is not a multiple of steps-per-generation "
                         f"{pref.generation_steps(cfg)} x num-iterations {pref.num_iterations}: TRL scores the old "
                         "policy under no_grad after generate (P4)")
        if scoring:
            comps["generation_scoring"] = scoring
        gen_dyn = max(gen_dyn, scoring)
        dynamic = max(dynamic, gen_dyn)
        kept = max(kept, gen_dyn)
        notes.append(f"grpo: generate {B * pref.generation_steps(cfg)} completions ({S - pref.max_completion_length} "
                     f"prompt + {pref.max_completion_length} new tokens, no logits processor), score them, then "
                     "train; peak = the larger phase (P4)")
        if pref.reward_model is not None:
            rw = M.plan(PlanConfig(model=pref.reward_model, precision=cfg.precision, compute_dtype=cfg.compute_dtype,
                                   device=cfg.device)).components["weights"]
            comps["reward_model"] = rw
            static += rw
    allocated = static + dynamic
    reserve, context = allocator(cfg, kept, comps)
    if cuda:  # freed gradient blocks stay cached (memory.py assumption 3): reserved as with the gradients kept
        reserve += static + G + kept - allocated
    comps.pop("cuda_context", None)
    comps.pop("allocator_reserve", None)
    comps["cuda_context"] = context
    comps["allocator_reserve"] = reserve
    if obj in NO_DROPOUT and dropout:
        notes.append(f"{obj.value}: TRL's disable_dropout=True (its default) sets every dropout to 0: no dropout "
                     "masks (P7)")
    # the plan carries the user's configuration (batch B); the policy ran at Bp sequences (P1)
    return M.Plan(asked, p.params, p.active_params, p.trainable_params + extra_trainable, comps, allocated,
                  allocated + reserve,
                  allocated + reserve + context, tuple(notes))


# ---- fit (fit.py's verdict and searches, over preference_plan) ----------------------------------------------------
def _batch_step(cfg: PlanConfig, pref: PreferenceConfig) -> int:
    """The batch granularity: GRPO's generation batch must hold whole groups (P4), so the batch moves in steps of
    ``num_generations / gcd(num_generations, steps_per_generation x GPUs)``; 1 otherwise."""
    if pref.objective is not Objective.GRPO:
        return 1
    import math

    g = pref.num_generations
    return g // math.gcd(g, pref.generation_steps(cfg) * cfg.dp)


def _largest(ok, cap: int, step: int = 1, low: int = 1) -> int:
    """The largest multiple of ``step`` in low..cap for which the monotone ``ok`` holds, or 0 (doubling, then
    bisection: fit.py assumption 2's reference search, in units of ``step``; ``low``: the smallest valid value)."""
    if not ok(max(low, step)):
        return 0
    lo, hi = 0, 1
    while hi * step <= cap and ok(hi * step):
        lo, hi = hi, hi * 2
    hi = min(hi, cap // step + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid * step):
            lo = mid
        else:
            hi = mid
    return lo * step


def preference_fit(cfg: PlanConfig, pref: PreferenceConfig, gpu) -> "Fit":
    """:func:`quantlab.planner.fit.fit` for a preference plan: the verdict (process bytes against the GPU with its
    own CUDA context, fit.py assumptions 1 and 7), the largest batch (GRPO: whole groups, P4) and sequence that
    fit, and the fewest GPUs (fit.py assumption 3). Suggestions are single changes of the preference setup
    (a precomputed reference, checkpointing, QLoRA), each planned and kept only when it fits."""
    import sys

    import quantlab.planner.fit  # noqa: F401  (the package exports the function ``fit`` under the module's name)
    F = sys.modules["quantlab.planner.fit"]

    cfg = F.for_gpu(cfg, gpu)
    p = F.on_gpu(preference_plan(cfg, pref), gpu)
    ok = p.process_bytes <= gpu.memory_bytes

    def fits(c: PlanConfig, pr: PreferenceConfig = pref) -> bool:
        try:
            return preference_plan(c, pr).process_bytes <= F.budget(c, gpu)
        except (SpecError, ValueError):  # an invalid shape (trl_head: seq < 2) does not fit
            return False

    max_batch = _largest(lambda b: fits(dataclasses.replace(cfg, batch=b)), 1 << 16, _batch_step(cfg, pref))
    # the shortest valid sequence: trl_head needs 2 tokens; GRPO a prompt before max_completion_length (P4)
    low = pref.max_completion_length + 1 if pref.objective is Objective.GRPO else 2
    max_seq = _largest(lambda s: s < low or fits(dataclasses.replace(cfg, seq=s)),
                       max(cfg.model.max_position_embeddings, cfg.seq), low=low)
    n, how = None, ""
    for k in F.GPU_COUNTS:
        try:
            c, how = F._scaled(cfg, k)
        except SpecError:
            continue
        if fits(c):
            n = k
            break
    sugg = []
    if not ok:
        d = F.context_delta(cfg, gpu)
        cands = []
        if pref.resolved_reference(cfg) is Reference.COPY:
            cands.append(("a precomputed reference (precompute_ref_log_probs: no reference model in training)",
                          cfg, dataclasses.replace(pref, reference=Reference.PRECOMPUTED)))
        if cfg.method is Method.FULL:
            cands.append(("a LoRA policy (the reference is its disabled adapter, no second copy)",
                          dataclasses.replace(cfg, method=Method.LORA), pref))
        if not cfg.grad_checkpointing:
            cands.append(("gradient checkpointing on", dataclasses.replace(cfg, grad_checkpointing=True), pref))
        if cfg.method is Method.LORA:
            cands.append(("a QLoRA policy (nf4 base, checkpointing on)",
                          dataclasses.replace(cfg, method=Method.QLORA, precision=Precision.NF4,
                                              grad_checkpointing=True), pref))
        for text, c, pr in cands:
            try:
                if fits(c, pr):
                    sugg.append((text, preference_plan(c, pr).process_bytes + d))
            except SpecError:
                continue
    return F.Fit(gpu=gpu, plan=p, fits=ok, margin_bytes=gpu.memory_bytes - p.process_bytes, max_batch=max_batch,
                 max_seq=max_seq, min_gpus=n, min_gpus_sharding=how, suggestions=tuple(sugg))
