"""Fine-tunes, measured: every method is a frozen config plus a registered model builder, and all go through
:func:`run_finetune` (one training loop: transformers' ``Trainer``, :mod:`quantlab.lab.finetune_trainer`; one
evaluation; one measurement, :class:`quantlab.lab.measure.StepProbe` in a Trainer callback).

Methods: ``full``; ``freeze`` (the last k blocks, and/or named modules, train); ``lora``; ``qlora``
(bitsandbytes NF4/FP4 base, optional double quantization, PEFT ``prepare_model_for_kbit_training``, LoRA
adapters); ``ia3``, ``prefix`` and ``prompt`` (PEFT IA3 / prefix tuning / prompt tuning); ``qat`` (full fine-tune
with torchao int4 fake quantization of the block linears, converted afterwards and compared with PTQ of a plain
fine-tune at the same bit width: :mod:`quantlab.lab.qat`, :mod:`quantlab.lab.qat_compare`).

Precision: the plan's own fields (``FinetuneConfig.plan``): ``precision`` (the weights: fp32 / bf16 / fp16, or
nf4 / fp4 for QLoRA), ``compute_dtype`` and ``training_precision`` (``pure``: weights, gradients and optimizer
states in the weights' dtype; ``amp``: fp32 master weights, autocast to the compute dtype, fp16 with gradient
scaling). BF16/FP16 matmuls are emulated on many CPUs: on a CPU the lab computes in fp32 unless told otherwise
(:mod:`quantlab.lab.finetune_plan` assumption 2), and the other paths are exercised on tiny models in the tests.
Optimizers: AdamW (torch), 8-bit / paged AdamW and Lion (bitsandbytes), Adafactor (transformers), SGD.

Assumptions:

1. The loss is the token-weighted mean cross-entropy of next-token prediction; prompt tokens carry
   ``prompt_loss_weight`` (see :mod:`quantlab.lab.data`): labels for the model's own loss at 0 / 1, the lab's
   weighted loss otherwise (:mod:`quantlab.lab.finetune_trainer` assumption 1, which also says how gradient
   accumulation weighs micro-batches).
2. Batches come from Trainer's seeded sampler, and a run resumed from a Trainer checkpoint skips the batches it
   has seen, so it reaches the same losses as an uninterrupted one (:mod:`quantlab.lab.finetune_trainer` assumption 4).
3. Memory per component is measured on one training step (the second, after the optimizer states exist), with the
   planner's component names (:mod:`quantlab.planner.memory`), integer bytes of distinct tensor storages:
   ``weights`` (parameters and buffers that are not adapters, quantization constants excluded),
   ``quant_constants`` (bitsandbytes absmax / code tables), ``adapters`` (the trainable parameters of a PEFT
   method), ``gradients``, ``optimizer`` (states after the step), ``activations`` (tensors the model's backbone saves
   for backward, StepProbe's definition), ``logits_loss`` (the logits plus what the head and the loss save: under
   Trainer the fp32 log-softmax of every position and the labels; the planner's figure also holds the two fp32
   T x vocab gradient buffers backward allocates, which are not saved tensors, and keeps the logits live through
   backward, which Trainer's ``compute_loss`` does not: ``meas_step_logits_alive_at_backward``). Beside them: the process RSS (peak over the run, and the
   growth over the measured step), and on a GPU ``max_memory_allocated`` / ``max_memory_reserved`` of that step and
   the NVML process figure. The planner's prediction for the same step (batch x padded width) is stored beside it
   as ``pred_*`` where the planner knows the architecture.
4. Speed: the median seconds of the optimizer steps (Trainer's ``on_step_begin`` to ``on_step_end``: evaluation
   and checkpoint saving excluded) and trained tokens (padding excluded)
   per second of training.
5. Task quality before and after: :mod:`quantlab.lab.finetune_eval` (greedy answers; exact match, token F1).
6. Continued pre-training (``text`` records, :mod:`quantlab.lab.data` assumptions 1, 6, 7): the rows are packed
   (required), every token is a target (no prompt mask), and quality is perplexity before and after: on the
   held-out domain text (the test records, packed into rows of ``seq`` tokens, each row scored from its own start:
   :mod:`quantlab.lab.quality` assumption 1) and, to show what the model forgets, on the first 4,096 tokens of the
   lab's licence text (``quantlab/lab/texts/heldout.txt``) in windows of the same width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantlab.errors import QuantlabError
from quantlab.lab import measure
from quantlab.lab.finetune_eval import exact_match, generate_answers, token_f1  # noqa: F401 (re-export)
from quantlab.lab.model import load_model, load_tokenizer, resolve  # noqa: F401 (load_tokenizer: re-export)
from quantlab.specs import DType, Method, PlanConfig, TrainingPrecision

TASKS = Path(__file__).resolve().parent.parent.parent / "tasks"
METHODS = ("full", "freeze", "lora", "qlora", "ia3", "prefix", "prompt", "qat")  # the lab's --method choices
PEFT_METHODS = ("lora", "qlora", "ia3", "prefix", "prompt")
# What a lab fine-tune plans differently from `quantlab plan` when the user leaves it open (the one table: the CLI
# and quantlab.lab.finetune_plan.finetune_config read it). The lab cannot run inference, so a method is chosen
# (QLoRA: the least memory); a 40-step recipe learns from 8 sequences per step, not the planner's 1. Every other
# PlanConfig field takes the plan's default, resolved by PlanConfig.from_dict (specs assumption 4) after the
# lab's device has chosen the compute dtype (quantlab.lab.finetune_plan assumption 2).
LAB_PLAN_DEFAULTS = {"method": "qlora", "batch": 8}
SCHEDULES = ("cosine", "linear", "constant")
DEFAULT_LR = {"full": 5e-5, "qat": 5e-5, "freeze": 1e-4, "lora": 1e-3, "qlora": 1e-3, "ia3": 3e-3, "prefix": 3e-3,
              "prompt": 3e-3}


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tune: ``plan`` is what is planned, the other fields are the lab's own run settings.

    ``plan`` (a :class:`~quantlab.specs.PlanConfig` on the model's spec) holds everything the planner plans:
    method, weight precision, compute dtype, training precision, optimizer, batch, seq (the longest record; with
    ``packing`` / ``pad_to_max_len`` the width of every row), LoRA / freeze / virtual-token fields, gradient
    checkpointing, attention, grad_accum, k-bit upcast, double quant, padding (``padding_mask`` = not
    ``packing``) and the device. Its fields are validated once, by PlanConfig. Build one with
    :func:`quantlab.lab.finetune_plan.finetune_config` (flat keyword arguments, the plan's resolved through
    ``PlanConfig.from_dict`` as ``quantlab plan`` resolves them) or from a plan with
    :func:`~quantlab.lab.finetune_plan.from_plan_config`.

    The lab-only method ``qat`` (``qat=True``) is a full fine-tune with int4 fake quantization of the block
    linears, so its plan is ``method=full`` in the plan's precisions: the fake-quantized linears hold the same
    weights, gradients and optimizer states; the int4 round trip in the forward is a transient the planner does not
    model. ``qat_group_size`` is its torchao group (PlanConfig's ``group_size`` describes int4 *storage*, which a
    QAT run never holds while it trains).

    ``__post_init__`` checks the lab's own fields and refuses, in one line, what the one-process lab cannot run
    (:func:`quantlab.lab.finetune_plan.lab_refusal`).
    """

    plan: PlanConfig
    model: str = "smollm2-135m"  # the lab's model source (embedded name or a local folder); plan.model is its spec
    qat: bool = False
    qat_group_size: int = 32
    task: str | None = "json-extract"
    data: str | None = None
    lr: float | None = None  # None: DEFAULT_LR[method]
    schedule: str = "cosine"  # cosine | linear | constant (after linear warm-up)
    warmup_steps: int = 5
    max_steps: int = 40
    pad_to_max_len: bool = False  # pad every batch to plan.seq (a fixed shape, with padding)
    packing: bool = False  # rows of exactly plan.seq tokens cut from the concatenated examples (no padding)
    eval_every: int = 10
    patience: int = 3
    prompt_loss_weight: float = 0.0
    seed: int = 0
    eval_items: int = 40
    max_new_tokens: int = 32
    checkpoint_dir: str | None = None
    # the data path (quantlab.lab.data, on quantlab.data's reader, filters and dedup)
    near_threshold: float = 0.9  # near-duplicate Jaccard threshold in (0, 1]; 1 keeps near duplicates
    semantic_threshold: float | None = None  # all-MiniLM-L6-v2 cosine threshold in (0, 1]; None: no semantic pass
    val_ratio: float | None = None  # None: 0.1, or 0 with val_file
    test_ratio: float | None = None  # None: 0.1, or 0 with test_file (or a task's test.jsonl)
    val_file: str | None = None
    test_file: str | None = None

    def __post_init__(self):
        from quantlab.lab.finetune_plan import lab_refusal

        def bad(msg):
            raise QuantlabError(msg)

        if not isinstance(self.plan, PlanConfig):
            bad(f"plan must be a PlanConfig, got {type(self.plan).__name__}")
        if self.schedule not in SCHEDULES:
            bad(f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})")
        for f in ("max_steps", "eval_every", "eval_items", "qat_group_size", "max_new_tokens", "patience"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            bad("warmup-steps must not be negative")
        if not 0.0 <= self.prompt_loss_weight <= 1.0:
            bad(f"prompt-loss-weight must be in [0, 1], got {self.prompt_loss_weight}")
        if self.lr is not None and not (self.lr >= 0 and math.isfinite(self.lr)):
            bad(f"lr must be a finite non-negative number, got {self.lr}")
        if self.packing and self.pad_to_max_len:
            bad("choose packing or pad-to-max-len, not both")
        if self.plan.padding_mask == self.packing:
            bad("the plan's padding_mask is the lab's batch layout: packed rows have none, padded batches have one")
        if self.qat and self.plan.method is not Method.FULL:
            bad("qat is a full fine-tune with fake quantization: its plan's method is full")
        if (self.task is None) == (self.data is None):
            bad("give either --task or --data")
        from quantlab.data.dedup import check_threshold
        from quantlab.lab.data import check_ratios

        check_threshold("--near", self.near_threshold)
        if self.semantic_threshold is not None:
            check_threshold("--semantic", self.semantic_threshold)
        for name, ratio, f in (("val", self.val_ratio, self.val_file), ("test", self.test_ratio, self.test_file)):
            if f is not None and ratio:
                bad(f"give --{name}-ratio or --{name}-file, not both")
        check_ratios(self.val_split, self.test_split)
        why = lab_refusal(self.plan)
        if why:
            bad(why)

    # ---- derived: the lab's names for plan fields ------------------------------------------------------
    @property
    def method(self) -> str:
        """The lab's method name: the plan's method, or ``qat``."""
        return "qat" if self.qat else self.plan.method.value

    @property
    def batch(self) -> int:
        return self.plan.batch

    @property
    def max_len(self) -> int:
        """The longest record in tokens, and the row width of packed / fixed-width batches: ``plan.seq``."""
        return self.plan.seq

    @property
    def grad_accum(self) -> int:
        return self.plan.grad_accum

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def data_path(self) -> Path:
        if self.data:
            return Path(self.data)
        p = TASKS / str(self.task) / "data.jsonl"
        if not p.is_file():
            known = sorted(d.name for d in TASKS.iterdir() if (d / "data.jsonl").is_file()) if TASKS.is_dir() else []
            raise QuantlabError(f"unknown task {self.task!r} (known: {', '.join(known) or 'none installed'})")
        return p

    @property
    def val_path(self) -> Path | None:
        return Path(self.val_file) if self.val_file else None

    @property
    def test_path(self) -> Path | None:
        """``test_file``, else a shipped task's own held-out ``test.jsonl`` when it has one (and no test ratio is
        given), else None (the test split comes from the data)."""
        if self.test_file:
            return Path(self.test_file)
        if self.task and not self.data and not self.test_ratio:
            p = TASKS / str(self.task) / "test.jsonl"
            return p if p.is_file() else None
        return None

    @property
    def val_split(self) -> float:
        """The validation share of the data: ``val_ratio``, else 0.1 (0 with a validation file)."""
        return self.val_ratio if self.val_ratio is not None else 0.0 if self.val_file else 0.1

    @property
    def test_split(self) -> float:
        if self.test_ratio is not None:
            return self.test_ratio
        return 0.0 if self.test_file or (self.task and not self.data and (TASKS / str(self.task) / "test.jsonl")
                                         .is_file()) else 0.1

    @property
    def amp_dtype(self):
        """The autocast dtype under AMP (the plan's compute dtype), else None."""
        if self.plan.training_precision is not TrainingPrecision.AMP:
            return None
        return _torch_dtype(self.plan.compute_dtype)

    @property
    def param_dtype(self):
        """The dtype unquantized weights are loaded in: fp32 master weights under AMP, the plan's float weights
        under pure training, the compute dtype around k-bit linears."""
        if self.plan.training_precision is TrainingPrecision.AMP:
            return _torch_dtype(DType.FP32)
        if self.plan.precision.is_float:
            return _torch_dtype(DType(self.plan.precision.value))
        return _torch_dtype(self.plan.compute_dtype)

    def to_dict(self) -> dict:
        """One flat, JSON-serialisable dict: ``model``, the plan's fields (``PlanConfig.to_dict`` without its
        model spec, ``method`` in the lab's name) and the lab's own; :func:`finetune_config` reads it back."""
        d = {"model": self.model}
        d.update({k: v for k, v in self.plan.to_dict().items() if k != "model"})
        d["method"] = self.method
        for f in dataclasses.fields(self):
            if f.name not in ("plan", "model", "qat"):
                d[f.name] = getattr(self, f.name)
        return d

    def to_plan_config(self, spec=None, **kw):
        """The planner's :class:`PlanConfig` of this run (:mod:`quantlab.lab.finetune_plan`)."""
        from quantlab.lab.finetune_plan import to_plan_config

        return to_plan_config(self, spec, **kw)

    @classmethod
    def create(cls, **kw) -> "FinetuneConfig":
        """:func:`quantlab.lab.finetune_plan.finetune_config`."""
        from quantlab.lab.finetune_plan import finetune_config

        return finetune_config(**kw)

    @classmethod
    def from_plan_config(cls, pc, **kw) -> "FinetuneConfig":
        from quantlab.lab.finetune_plan import from_plan_config

        return from_plan_config(pc, **kw)


def _torch_dtype(d: DType):
    import torch

    return {DType.FP32: torch.float32, DType.BF16: torch.bfloat16, DType.FP16: torch.float16}[d]


# ---- model builders (one per method) ----------------------------------------------------------------------

Builder = Callable[[FinetuneConfig, object], object]
BUILDERS: dict[str, Builder] = {}


def register(name: str):
    def deco(fn):
        BUILDERS[name] = fn
        return fn
    return deco


def decoder_layers(model):
    """The list of transformer blocks (Llama-style ``model.layers``, GPT-2 ``transformer.h``, NeoX ``layers``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = base
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise QuantlabError(f"cannot find the decoder blocks of {type(base).__name__} (freeze needs them)")


def _device():
    return "cuda" if measure.cuda_available() else "cpu"


def _load_base(cfg: FinetuneConfig, src, **kw):
    return load_model(src, dtype=cfg.param_dtype, attn_implementation=cfg.plan.attn.value, progress=False, **kw)


@register("full")
def _full(cfg, src):
    m = _load_base(cfg, src)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


@register("qat")
def _qat(cfg, src):
    from quantlab.lab.qat import prepare_qat

    return prepare_qat(_full(cfg, src), cfg.qat_group_size)


@register("freeze")
def _freeze(cfg, src):
    m = _load_base(cfg, src)
    for p in m.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(m)
    if cfg.plan.freeze_last_layers > len(layers):
        raise QuantlabError(f"--freeze-last-layers must be in 0..{len(layers)} for this model")
    for layer in list(layers)[len(layers) - cfg.plan.freeze_last_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    mods = dict(m.named_modules())
    for name in cfg.plan.freeze_modules:
        hits = [n for n in mods if n == name or n.endswith("." + name)]
        if not hits:
            raise QuantlabError(f"--freeze-modules: no module named {name!r} (e.g. lm_head, model.norm)")
        for n in hits:
            for p in mods[n].parameters():
                p.requires_grad_(True)
    if not any(p.requires_grad for p in m.parameters()):
        raise QuantlabError("freeze: nothing trains (give --freeze-last-layers > 0 or --freeze-modules)")
    return m


def _lora_config(cfg):
    from peft import LoraConfig

    from quantlab.specs import ALL_LINEAR

    pc = cfg.plan
    targets = ALL_LINEAR if tuple(pc.lora_targets) == (ALL_LINEAR,) else list(pc.lora_targets)
    return LoraConfig(r=pc.lora_r, lora_alpha=pc.lora_alpha, lora_dropout=pc.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def _peft(model, peft_config):
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:  # e.g. target modules not found in the base model
        raise QuantlabError(f"PEFT refused the configuration: {str(e).splitlines()[0][:200]}") from e


@register("lora")
def _lora(cfg, src):
    return _peft(_load_base(cfg, src), _lora_config(cfg))


@register("qlora")
def _qlora(cfg, src):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    # the plan's compute dtype (fp32 by default on a CPU, where bf16 matmuls are emulated: finetune_plan
    # assumption 2); under AMP the k-bit matmuls compute in the autocast dtype, which is the same
    compute = _torch_dtype(cfg.plan.compute_dtype)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.plan.precision.value,
                           bnb_4bit_use_double_quant=cfg.plan.double_quant, bnb_4bit_compute_dtype=compute,
                           bnb_4bit_quant_storage=torch.uint8)
    m = load_model(src, dtype=compute, quantization_config=q, device_map=_device(),
                   attn_implementation=cfg.plan.attn.value, progress=False)
    keep_training_layout(m)
    if cfg.plan.kbit_upcast:
        m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=cfg.plan.grad_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    return _peft(m, _lora_config(cfg))


@register("ia3")
def _ia3(cfg, src):
    from peft import IA3Config

    return _peft(_load_base(cfg, src), IA3Config(task_type="CAUSAL_LM"))


@register("prefix")
def _prefix(cfg, src):
    from peft import PrefixTuningConfig

    return _peft(_load_base(cfg, src), PrefixTuningConfig(task_type="CAUSAL_LM",
                                                          num_virtual_tokens=cfg.plan.num_virtual_tokens))


@register("prompt")
def _prompt(cfg, src):
    from peft import PromptTuningConfig

    return _peft(_load_base(cfg, src), PromptTuningConfig(task_type="CAUSAL_LM",
                                                          num_virtual_tokens=cfg.plan.num_virtual_tokens))


def build_model(cfg: FinetuneConfig, src):
    """The method's model, on the device, with gradient checkpointing as configured (non-reentrant)."""
    m = BUILDERS[cfg.method](cfg, src)
    if cfg.plan.grad_checkpointing:
        if not (cfg.method == "qlora" and cfg.plan.kbit_upcast):  # prepare_model_for_kbit_training turned it on
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method in PEFT_METHODS and hasattr(m, "enable_input_require_grads"):
            m.enable_input_require_grads()
    if measure.cuda_available() and cfg.method != "qlora":
        m = m.to("cuda")
    return m


def keep_training_layout(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns the layers changed.

    bitsandbytes 0.50 (``Linear4bit.forward``) repacks a 4-bit weight into an AVX512-BF16 inference layout the
    first time it runs in eval mode without gradients on such a CPU, and keeps that layout: training forwards
    after an evaluation then produced garbage here (a QLoRA run's loss jumped from 0.97 to 17 right after its
    first validation pass, with or without the library's inverse repacking). Turning the repacking off for a
    model that will train keeps the one training layout (evaluation is a little slower).
    """
    try:
        from bitsandbytes.nn.modules import Linear4bit
    except ImportError:
        return 0
    n = 0
    for mod in model.modules():
        if isinstance(mod, Linear4bit) and getattr(mod, "support_avx512bf16_for_cpu", False):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def make_optimizer(cfg: FinetuneConfig, params):
    """The optimizer by name. bitsandbytes' 8-bit and paged optimizers run on a CPU in 0.50 (paged memory is a CUDA
    feature: on a CPU the paged variants hold ordinary tensors); tensors under 4096 elements keep 32-bit states."""
    import torch

    lr = cfg.learning_rate
    opt = cfg.plan.optimizer.value
    if opt == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if opt == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if opt == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False)
    if opt in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit", "lion"):
        try:
            import bitsandbytes as bnb

            cls = {"adamw-8bit": bnb.optim.AdamW8bit, "paged-adamw": bnb.optim.PagedAdamW,
                   "paged-adamw-8bit": bnb.optim.PagedAdamW8bit, "lion": bnb.optim.Lion}[opt]
            return cls(params, lr=lr, weight_decay=0.0)
        except Exception as e:  # bitsandbytes' optimizers need kernels this device may lack
            raise QuantlabError(f"{opt} is not available here ({str(e).splitlines()[0][:120]})") from e
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


# ---- loss, batches, evaluation ---------------------------------------------------------------------------
# forward_logits / weighted_loss / batch_for: the loss and batch order of quantlab.lab.distributed's loop (the
# one-process lab trains on Trainer); loss_from_logits: also the fractional prompt-loss weight's loss
# (quantlab.lab.finetune_trainer assumption 1).

def forward_logits(model, ids, mask, amp=None):
    import contextlib

    import torch

    ctx = torch.autocast(device_type=ids.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[:, -ids.shape[1]:]  # prompt tuning prepends virtual tokens


def loss_from_logits(logits, ids, w):
    """Token-weighted mean next-token cross-entropy in fp32 (assumption 1)."""
    import torch.nn.functional as F

    tgt, tw = ids[:, 1:], w[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    return (ce * tw.reshape(-1)).sum() / tw.sum().clamp(min=1e-6)


def weighted_loss(model, ids, mask, w, amp=None):
    return loss_from_logits(forward_logits(model, ids, mask, amp), ids, w)


def batch_for(step: int, micro: int, train, cfg: FinetuneConfig):
    """Assumption 2: the batch of (step, micro) depends only on them and the seed."""
    per_epoch = max(1, len(train) // cfg.batch)
    k = step * cfg.grad_accum + micro
    epoch, pos = divmod(k, per_epoch)
    order = list(range(len(train)))
    random.Random(cfg.seed * 100003 + epoch).shuffle(order)
    return [train[i] for i in order[pos * cfg.batch:(pos + 1) * cfg.batch]]


def task_scores(model, tok, records, cfg: FinetuneConfig) -> dict:
    from quantlab.lab.finetune_eval import task_scores as _scores

    return _scores(model, tok, records, cfg.eval_items, cfg.max_new_tokens)


GENERAL_TEXT, GENERAL_TOKENS = "heldout.txt", 4096  # the out-of-domain text of assumption 6, and how much of it


def text_perplexities(model, tok, test_rows, cfg: FinetuneConfig, suffix: str) -> dict:
    """Assumption 6: perplexity on the held-out domain rows (packed test records) and on the first
    :data:`GENERAL_TOKENS` tokens of the lab's licence text, both in non-overlapping windows of ``cfg.max_len``."""
    import torch

    from quantlab.lab.quality import read_text, score_text, token_windows

    was = model.training
    model.eval()
    try:
        dom, _ = score_text(model, [torch.tensor([r.input_ids]) for r in test_rows])
        gen, _ = score_text(model, token_windows(tok, read_text(GENERAL_TEXT), cfg.max_len, GENERAL_TOKENS))
    finally:
        model.train(was)
    return {f"meas_domain_perplexity{suffix}": dom.perplexity, "meas_domain_tokens": dom.tokens,
            f"meas_general_perplexity{suffix}": gen.perplexity, "meas_general_tokens": gen.tokens}


def perplexity_line(when: str, m: dict, suffix: str) -> str:
    return (f"{when}: domain perplexity {m[f'meas_domain_perplexity{suffix}']:.2f} ({m['meas_domain_tokens']:,} "
            f"held-out tokens), general (licence text) {m[f'meas_general_perplexity{suffix}']:.2f} "
            f"({m['meas_general_tokens']:,} tokens)")


# ---- measurement of one step (assumption 3) --------------------------------------------------------------

def component_bytes(model, method: str) -> dict:
    """weights / quant_constants / adapters bytes of the model as it is now, plus parameters by dtype."""
    from quantlab.lab.measure import model_bytes, tensor_bytes

    tb = model_bytes(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapters = tensor_bytes(trainable).total if method in PEFT_METHODS else 0
    out = {"meas_weights_bytes": tb.total - tb.quant_constants - adapters,
           "meas_quant_constants_bytes": tb.quant_constants, "meas_adapters_bytes": adapters,
           "meas_params": tb.params, "meas_trainable_params": sum(p.numel() for p in trainable),
           "meas_trainable_bytes": tensor_bytes(trainable).total}
    out.update({f"meas_param_bytes_{d}": n for d, n in sorted(tb.by_dtype.items())})
    return out


@contextlib.contextmanager
def block_kwargs(model, enabled: bool):
    """The tensors passed to each decoder block besides its hidden states (position embeddings, masks, positions),
    collected while ``enabled``: under gradient checkpointing the checkpoint closure holds them for the recompute,
    although no saved-tensor hook sees them (the rule quantlab.validate's measurement counts, its assumption 3)."""
    import torch

    held: list = []
    handles = []
    if enabled:
        def hook(mod, args, kwargs):
            for v in list(args[1:]) + list(kwargs.values()):
                vs = v if isinstance(v, (tuple, list)) else v.values() if isinstance(v, dict) else (v,)
                held.extend(t for t in vs if isinstance(t, torch.Tensor))

        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in decoder_layers(model)]
    try:
        yield held
    finally:
        for h in handles:
            h.remove()


# ---- the run ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    config: FinetuneConfig
    metrics: dict
    history: list  # (step, train_loss, val_loss or None)
    stopped_early: bool
    model: object = None
    tokenizer: object = None
    data: object = None
    notes: list = dataclasses.field(default_factory=list)


def run_finetune(cfg: FinetuneConfig, *, log=print, progress: bool = True, keep_model: bool = False,
                 interrupt_after: int | None = None, evaluate_before: bool = True,
                 evaluate_after: bool = True) -> Result:
    """Train and evaluate one configuration on transformers' Trainer (:mod:`quantlab.lab.finetune_trainer`).
    ``interrupt_after`` stops after that many steps (tests of resume)."""
    import tempfile

    import torch

    from quantlab.data.lengths import load_tokenizer as data_tokenizer
    from quantlab.lab.data import prepare
    from quantlab.lab.finetune_ckpt import check_checkpoint, last_checkpoint, write_run_config
    from quantlab.lab.finetune_plan import model_spec, predicted
    from quantlab.lab.finetune_trainer import (LabCollator, LabTrainer, MeasureCallback, _FinalStep, _Progress,
                                               fractional_weight, training_args)
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    torch.manual_seed(cfg.seed)
    src = resolve(cfg.model)
    tok = data_tokenizer(cfg.model, progress=progress)  # one that cannot load is a one-line error
    data = prepare(cfg.data_path, tok, None if cfg.packing else cfg.max_len, cfg.prompt_loss_weight, cfg.seed,
                   cfg.near_threshold, semantic_threshold=cfg.semantic_threshold, val_ratio=cfg.val_split,
                   test_ratio=cfg.test_split, val_file=cfg.val_path, test_file=cfg.test_path)
    log(data.summary())
    text = data.kind == "text"
    if text and not cfg.packing:
        raise QuantlabError("text records (continued pre-training) train on packed rows: add --packing (rows of "
                            "--seq tokens, no padding)")
    if text and cfg.qat:
        raise QuantlabError("qat compares task scores of prompt/response data; text records are not a task")
    if cfg.packing:
        from quantlab.lab.data import pack

        data.train, data.val = pack(data.train, cfg.max_len, "training"), pack(data.val, cfg.max_len, "validation")
        if text:
            data.test = pack(data.test, cfg.max_len, "test")
        log(f"packed into {len(data.train)} training and {len(data.val)} validation rows of {cfg.max_len} tokens"
            + (f"; {len(data.test)} held-out test rows for perplexity" if text else ""))
    if len(data.train) < cfg.batch:
        raise QuantlabError(f"{len(data.train)} training records are fewer than one batch of {cfg.batch}")
    metrics: dict = {f"meas_data_{k}": v for k, v in data.stats["train"].items()}
    metrics["meas_data_val_records"], metrics["meas_data_test_records"] = len(data.val), len(data.test)
    metrics["meas_data_exact_duplicates"], metrics["meas_data_near_duplicates"] = data.dedupe.exact, data.dedupe.near
    metrics["meas_data_semantic_duplicates"] = data.dedupe.semantic if cfg.semantic_threshold is not None else None
    metrics["meas_data_decontaminated"] = data.dedupe.decontaminated
    metrics["meas_data_filtered"] = sum(data.dedupe.filtered.values())
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    width = cfg.max_len if cfg.pad_to_max_len else None
    resume = last_checkpoint(cfg.checkpoint_dir)
    state = check_checkpoint(resume, cfg) if resume else None  # a corrupt or foreign checkpoint: one line, early
    with measure.measure_memory() as run_mem, tempfile.TemporaryDirectory(prefix="quantlab-ft-") as tmp:
        t0 = time.perf_counter()
        model = build_model(cfg, src)
        metrics["meas_load_s"] = time.perf_counter() - t0
        if evaluate_before and text:
            metrics.update(text_perplexities(model, tok, data.test, cfg, "_before"))
            log(perplexity_line("before", metrics, "_before"))
        elif evaluate_before:
            before = task_scores(model, tok, data.test_records, cfg)
            metrics["meas_exact_match_before"], metrics["meas_token_f1_before"] = before["exact_match"], before["token_f1"]
            log(f"before: exact match {before['exact_match']:.2f}, token F1 {before['token_f1']:.2f}; e.g. "
                f"{before['sample'][:80]!r}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise QuantlabError(f"method {cfg.method} left nothing to train")
        stopped_before = bool(state and state["stopped_early"])
        steps = state["global_step"] if stopped_before else cfg.max_steps  # a run that stopped early stays stopped
        save = cfg.checkpoint_dir is not None
        probe = MeasureCallback(steps)
        early = EarlyStoppingCallback(early_stopping_patience=cfg.patience, early_stopping_threshold=1e-4)
        trainer = LabTrainer(
            model=model, args=training_args(cfg, cfg.checkpoint_dir or tmp, save=save, progress=progress,
                                            max_steps=steps),
            train_dataset=data.train, eval_dataset=data.val,
            data_collator=LabCollator(pad, width, fractional_weight(cfg)),
            optimizers=(make_optimizer(cfg, params), None),
            callbacks=[probe, early, _FinalStep(steps, save, interrupt_after)])
        trainer.remove_callback(PrinterCallback)
        if progress:
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(_Progress())
        if save:
            write_run_config(cfg.checkpoint_dir, cfg)
        if resume:
            log(f"resumed from {resume} at step {state['global_step']}")
        if stopped_before:  # Trainer.train would run one more step past max_steps: load the checkpoint, no step
            from transformers import TrainerState

            trainer._load_from_checkpoint(str(resume))  # Trainer's own loading (safetensors / PEFT adapter)
            trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        else:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        history = history_from_log(trainer.state.log_history)
        stopped = stopped_before or early.early_stopping_patience_counter >= cfg.patience
        if stopped and not stopped_before:
            log(f"early stop at step {trainer.state.global_step}: validation loss has not improved for "
                f"{early.early_stopping_patience_counter} evaluations")
        metrics.update(probe.metrics)
        times = probe.step_times
        metrics["meas_s_per_step"] = sorted(times)[len(times) // 2] if times else None
        metrics["meas_train_s"] = sum(times) if times else None
        metrics["meas_train_tok_per_s"] = trainer.trained_tokens / sum(times) if times else None
        metrics["meas_steps"] = trainer.state.global_step
        metrics["meas_stopped_early"] = stopped
        metrics.update(component_bytes(model, cfg.method))
        if probe.metrics:
            dev = next(model.parameters()).device
            spec = model_spec((model.get_base_model() if hasattr(model, "get_base_model") else model).config,
                              cfg.model)
            metrics.update(predicted(cfg, spec, batch=metrics["meas_step_batch"], seq=metrics["meas_step_seq"],
                                     device=dev.type, padded=metrics["meas_step_pad_tokens"] > 0))
        if history:
            metrics["meas_final_train_loss"] = history[-1][1]
            vals = [h[2] for h in history if h[2] is not None]
            metrics["meas_final_val_loss"] = vals[-1] if vals else None
            metrics["meas_best_val_loss"] = min(vals) if vals else None
        if evaluate_after and interrupt_after is None and text:
            metrics.update(text_perplexities(model, tok, data.test, cfg, ""))
            log(perplexity_line("after", metrics, ""))
        elif evaluate_after and interrupt_after is None:
            after = task_scores(model, tok, data.test_records, cfg)
            metrics["meas_exact_match"], metrics["meas_token_f1"] = after["exact_match"], after["token_f1"]
            log(f"after: exact match {after['exact_match']:.2f}, token F1 {after['token_f1']:.2f}; e.g. "
                f"{after['sample'][:80]!r}")
        del trainer
    metrics["meas_peak_rss_bytes"] = run_mem.rss_peak_bytes
    metrics["meas_rss_delta_bytes"] = run_mem.rss_delta_bytes
    metrics["meas_peak_allocated_bytes"] = run_mem.cuda_allocated_bytes
    metrics["meas_peak_reserved_bytes"] = run_mem.cuda_reserved_bytes
    return Result(cfg, metrics, history, stopped, model if keep_model else None, tok if keep_model else None,
                  data if keep_model else None, list(probe.notes))


def history_from_log(log_history) -> list:
    """[(step, train_loss, val_loss or None)] from ``Trainer.state.log_history`` (a loss logged every step)."""
    train, val = {}, {}
    for e in log_history:
        if "loss" in e:
            train[e["step"]] = float(e["loss"])
        if "eval_loss" in e:
            val[e["step"]] = float(e["eval_loss"])
    return [(s, train[s], val.get(s)) for s in sorted(train)]


def loss_curve_png(history, path: Path, title: str) -> Path:
    """Train (every step) and validation (each evaluation) loss against the step, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h[0] for h in history], [h[1] for h in history], label="train")
    v = [(h[0], h[2]) for h in history if h[2] is not None]
    if v:
        ax.plot([a for a, _ in v], [b for _, b in v], "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (token-weighted cross-entropy)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def history_csv(history, path: Path) -> Path:
    from quantlab.fileio import atomic_write_text

    rows = ["step,train_loss,val_loss"] + [f"{s},{tl:.6g},{'' if vl is None else f'{vl:.6g}'}"
                                           for s, tl, vl in history]
    atomic_write_text(path, "\n".join(rows) + "\n")
    return Path(path)
