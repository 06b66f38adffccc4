"""Specs: the frozen values the planner reads and the lab is configured by.

Everything here is a value (``frozen=True``); ``__post_init__`` validates and nothing else.
Closed choices are ``Enum``s whose values are the strings the CLI accepts.

Assumptions (numbered, referred to from the planner):

1. Architecture fields carry the names of HF ``config.json`` (hidden_size, num_hidden_layers, ...),
   so a profile is copied from a config, not invented. GPT-2's own names (n_embd, n_layer, ...)
   are mapped onto them by :meth:`ModelSpec.from_hf_config`.
2. A model is a stack of identical decoder blocks between an input embedding and an output head
   (lm_head), which may be tied to the embedding. Every family shipped here follows that shape.
3. The linears of a block are listed by :meth:`ModelSpec.block_linears` with the module names
   transformers uses, so LoRA targets and quantization skip-lists can name them.
4. Recipes: a field the user leaves open takes what the named stack does by default, resolved once, in
   :meth:`PlanConfig.from_dict` (every CLI command, ``--from-json``, the validation matrix and the ground-truth
   rows build their configuration there; :func:`recipe_defaults` is the rule):
   a. k-bit training through PEFT (``stack="transformers"``, ``kbit_upcast``) is
      ``prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)`` (peft 0.21.2
      ``utils/other.py``): gradient checkpointing on. Every other training recipe has it off, as transformers
      5.24's ``TrainingArguments`` resolves ``activation_checkpointing=None`` (``training_args.py``).
   b. LoRA targets are PEFT's per-family ``target_modules`` (families F9), not one list for every family.
   c. Weights, gradients and optimizer states in the weights' dtype (``pure``): transformers 5.24's
      ``from_pretrained`` loads ``dtype="auto"`` (the checkpoint's dtype, ``modeling_utils.py``) and
      ``TrainingArguments`` has ``bf16=False`` / ``fp16=False`` (no autocast, no fp32 master copy); accelerate
      1.15's ``Accelerator(mixed_precision=None)`` reads "no". fp32 masters (``amp``) are a choice the script makes
      (load in fp32, then ``bf16=True``), so they are a flag, not a default.
   d. Weights: nf4 for qlora (the QLoRA recipe), bf16 otherwise.
   e. The stack (``stack``): the modelled stacks are :data:`STACKS` (``transformers==5``, ``transformers==4.57``,
      ``litgpt``). Left open, or the plain alias ``transformers``, it is the installed transformers' major version
      (4.x plans as 4.57, the only 4.x modelled; 5 and later as 5), found by listing the ``sys.path`` entries for
      a ``transformers-*.dist-info`` folder (``os.listdir`` once per process: no import of transformers or
      ``importlib.metadata`` on the plan path), else the newest modelled (``transformers==5``). A spelled-out
      version (``transformers==4.57.6``, ``transformers==5.24``) plans as its modelled line.
5. No silent contradictions: a value a method cannot use is a one-line SpecError in ``__post_init__`` (inference
   with ZeRO, FSDP, offload, checkpointing, AMP or an optimizer; a KV-cache dtype on a training plan; parameter
   offload below ZeRO-3). What a default resolves, or what is legal but does nothing (ZeRO on one GPU), is a note
   (:func:`config_notes`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import namedtuple
from collections.abc import Callable, Mapping  # (not typing: importing it costs every CLI start ~4 ms)
from dataclasses import dataclass, field
from enum import Enum

from quantlab.errors import QuantlabError


class SpecError(QuantlabError, ValueError):
    """A spec that cannot describe a real configuration. Its message is one line for the user."""


class Precision(str, Enum):
    """Storage format of the base weights."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"  # LLM.int8 (bitsandbytes): int8 weights + one fp32 scale per output row
    NF4 = "nf4"  # bitsandbytes 4-bit NormalFloat, 64-weight blocks with absmax
    FP4 = "fp4"  # bitsandbytes 4-bit float, same block layout as NF4
    INT4 = "int4"  # GPTQ/AWQ-style int4 with a group size (scales + zeros per group)
    FP8 = "fp8"  # e4m3 weights with a per-tensor (or per-row) scale

    @property
    def is_float(self) -> bool:
        return self in (Precision.FP32, Precision.FP16, Precision.BF16)

    @property
    def is_kbit(self) -> bool:
        """Quantized storage (only quantizable linears take it)."""
        return not self.is_float


class DType(str, Enum):
    """A compute / activation / KV-cache dtype."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"

    @property
    def nbytes(self) -> int:
        return {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}[self.value]


class Method(str, Enum):
    INFERENCE = "inference"
    FULL = "full"
    FREEZE = "freeze"
    LORA = "lora"
    QLORA = "qlora"
    ADAPTER = "adapter"  # bottleneck adapters (Houlsby)
    PREFIX = "prefix"  # prefix tuning (per-layer key/value prefixes)
    PROMPT = "prompt"  # prompt tuning / P-tuning (virtual input tokens)
    IA3 = "ia3"

    @property
    def is_training(self) -> bool:
        return self is not Method.INFERENCE

    @property
    def is_peft(self) -> bool:
        return self in (Method.LORA, Method.QLORA, Method.ADAPTER, Method.PREFIX, Method.PROMPT, Method.IA3)


class Optimizer(str, Enum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW = "paged-adamw"
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"
    SGD = "sgd"
    SGD_MOMENTUM = "sgd-momentum"
    ADAFACTOR = "adafactor"
    LION = "lion"


class TrainingPrecision(str, Enum):
    PURE = "pure"  # weights, grads and optimizer states in the compute dtype
    AMP = "amp"  # fp32 master weights and states, autocast to the compute dtype


class Attention(str, Enum):
    EAGER = "eager"  # materialises heads x seq x seq scores (and keeps them for backward)
    SDPA = "sdpa"  # fused kernel: no seq^2 tensor kept


class Offload(str, Enum):
    NONE = "none"
    OPTIMIZER = "optimizer"
    PARAMS = "params"  # parameters and optimizer states


class Loss(str, Enum):
    """How a training step turns the last hidden state into the loss (memory.py assumptions 6, 12-14)."""

    HF = "hf"  # transformers' ForCausalLMLoss: full logits, fp32 log_softmax (memory 6)
    CHUNKED = "chunked"  # torchtune CEWithChunkedOutputLoss: logits in 8 token chunks, fp32 one chunk at a time (12)
    LIGER = "liger"  # Liger-Kernel LigerFusedLinearCrossEntropy: no logits, gradients computed in the forward (13)
    TRL_FUSED = "trl-fused"  # TRL 1.16's fused LM head (add_fused_lm_head, trl_head H1-H6): no logits (14)


class Loop(str, Enum):
    """Who holds the model output through backward (memory.py assumption 19)."""

    MANUAL = "manual"  # ``out = model(...); out.loss.backward()``: the logits stay referenced through backward
    TRAINER = "trainer"  # transformers Trainer.compute_loss returns the loss only: the logits are freed before it


class DeviceMode(str, Enum):
    """Where the plan is for. ``cpu`` has no CUDA context and no caching-allocator reserve."""

    CUDA = "cuda"
    CPU = "cpu"


class LinearShape(namedtuple("LinearShape", "name in_features out_features bias count module",
                             defaults=(False, 1, True))):
    """One linear module of a decoder block, with the name transformers gives it: ``name``, ``in_features``,
    ``out_features``, ``bias`` (False), ``count`` (1; > 1 for MoE experts, one matrix per expert) and ``module``
    (True: an nn.Linear that quantizers and PEFT's LoRA see; False: a fused parameter, MoE in transformers 5).
    A named tuple: a frozen, hashable value without a dataclass's class-creation cost at start-up."""

    __slots__ = ()

    @property
    def params(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


_GPT2_KEYS = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
              "n_positions": "max_position_embeddings", "n_inner": "intermediate_size"}

FAMILIES = ("llama", "mistral", "qwen2", "mixtral", "gemma2", "phi3", "gpt2")

# Upper bounds of the architecture integers (positive, and at most these). They are sanity bounds, far above
# every released model (Llama-3.1-405B: hidden 16,384, intermediate 53,248, 126 layers, 128 heads; Gemma-2:
# vocabulary 256,000; Llama-4-Scout: 10,485,760 positions; DeepSeek-V3: 256 experts), so a typo (1e30) is an
# error instead of "7.99e49 T parameters".
MODEL_BOUNDS = {"hidden_size": 1 << 20, "num_hidden_layers": 1 << 12, "num_attention_heads": 1 << 12,
                "intermediate_size": 1 << 22, "vocab_size": 1 << 24, "num_key_value_heads": 1 << 12,
                "head_dim_": 1 << 12, "max_position_embeddings": 1 << 24, "num_local_experts": 1 << 12,
                "num_experts_per_tok": 1 << 12, "sliding_window": 1 << 24}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, in HF config.json terms (assumption 1)."""

    name: str
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim_: int | None = None  # config.json "head_dim" when given (gemma2); else hidden/heads
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    attention_bias: bool = False  # bias on q/k/v (qwen2: true)
    mlp_bias: bool = False
    num_local_experts: int = 0  # MoE: experts per layer (0 = dense)
    num_experts_per_tok: int = 0
    sliding_window: int | None = None
    attention_dropout: float = 0.0  # training-mode dropout on attention probabilities (GPT-2: attn_pdrop)
    hidden_dropout: float = 0.0  # on block outputs (GPT-2: resid_pdrop)
    embd_dropout: float = 0.0  # on the embeddings (GPT-2: embd_pdrop)
    hf_id: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        _check_types(self, ModelSpec, f"{self.name}: " if isinstance(self.name, str) else "")
        if self.model_type not in FAMILIES:
            raise SpecError(f"model_type {self.model_type!r} is not supported (supported: {', '.join(FAMILIES)})")
        for f, hi in MODEL_BOUNDS.items():
            v = getattr(self, f)
            if v is None or (f in ("num_local_experts", "num_experts_per_tok") and v == 0):
                continue
            if not 0 < v <= hi:
                raise SpecError(f"{self.name}: {_MODEL_JSON_NAMES.get(f, f)} must be a positive integer of at most "
                                f"{hi:,}, got {v!r}")
        if self.num_attention_heads % self.kv_heads:
            raise SpecError(f"{self.name}: num_attention_heads {self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads {self.kv_heads}")
        if self.num_local_experts and not 0 < self.num_experts_per_tok <= self.num_local_experts:
            raise SpecError(f"{self.name}: num_experts_per_tok must be in 1..num_local_experts")
        for f in ("attention_dropout", "hidden_dropout", "embd_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise SpecError(f"{self.name}: {f} must be in [0, 1), got {getattr(self, f)!r}")

    # ---- derived -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.head_dim_ or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 0

    # Family facts live once, as data, in quantlab.families (imported here lazily: it imports this module).
    @property
    def uses_layernorm(self) -> bool:
        """LayerNorm (weight + bias) rather than RMSNorm (weight only)."""
        from quantlab.families import family

        return family(self).norm == "layernorm"

    @property
    def norms_per_block(self) -> int:
        from quantlab.families import family

        return family(self).norms_per_block

    @property
    def gated_mlp(self) -> bool:
        """SwiGLU/GeGLU (gate, up, down) rather than a two-linear GeLU MLP."""
        from quantlab.families import family

        return family(self).gated_mlp

    def block_linears(self) -> tuple[LinearShape, ...]:
        """The linears of one decoder block (assumption 3), from the family's linear roles (families F6)."""
        from quantlab.families import block_linears

        return block_linears(self)

    def lora_linears(self, targets: tuple[str, ...]) -> tuple[LinearShape, ...]:
        """The block linears a LoRA target list names, as PEFT matches them: a module name, its last component, or
        a dotted suffix; ``all-linear`` is every nn.Linear of the block (PEFT leaves out the output layer).
        A list that matches nothing, or names a fused parameter (not an nn.Linear), is a SpecError."""
        return _lora_linears(self, tuple(targets))

    # ---- construction --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Every field, with config.json names (``head_dim`` for ``head_dim_``); JSON-serialisable."""
        return {_MODEL_JSON_NAMES.get(f, f): _canonical(ModelSpec, f, getattr(self, f))
                for f in _field_names(ModelSpec)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "ModelSpec":
        """The exact inverse of :meth:`to_dict`; an unknown key or a value of the wrong type is a SpecError."""
        if isinstance(d, ModelSpec):
            return d
        if not isinstance(d, Mapping):
            raise SpecError(f"model must be a mapping of ModelSpec fields, got {type(d).__name__}")
        names = {_MODEL_JSON_NAMES.get(f, f): f for f in _field_names(ModelSpec)}
        unknown = [k for k in d if k not in names]
        if unknown:
            raise SpecError(f"unknown model field {unknown[0]!r} (fields: {', '.join(names)})")
        kw = {names[k]: _convert(ModelSpec, names[k], v) for k, v in d.items()}
        missing = [k for k in ("name", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size", "vocab_size") if k not in kw]
        if missing:
            raise SpecError(f"model is missing {', '.join(missing)}")
        return cls(**kw)

    @classmethod
    def from_hf_config(cls, config: Mapping[str, object], *, name: str | None = None, hf_id: str | None = None,
                       source: str | None = None) -> "ModelSpec":
        """Build from a config.json mapping (assumption 1). Raises SpecError on a malformed one."""
        if not isinstance(config, Mapping):
            raise SpecError("config must be a JSON object")
        c = dict(config)
        mt = c.get("model_type")
        if mt == "gpt2":
            for old, new in _GPT2_KEYS.items():
                if old in c and new not in c:
                    c[new] = c[old]
            if c.get("intermediate_size") is None:
                c["intermediate_size"] = 4 * c.get("hidden_size", 0)
            c.setdefault("hidden_act", c.get("activation_function", "gelu_new"))
            c.setdefault("tie_word_embeddings", True)
        if mt == "mistral" and c.get("num_local_experts"):
            mt = "mixtral"
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
                   if c.get(k) is None]
        if mt is None:
            missing.insert(0, "model_type")
        if missing:
            raise SpecError(f"config is missing {', '.join(missing)}")
        if c.get("intermediate_size") is None:
            raise SpecError("config is missing intermediate_size")
        act = c.get("hidden_act") or c.get("hidden_activation") or "silu"
        gpt2 = mt == "gpt2"
        sliding = c.get("use_sliding_window", True)
        if not isinstance(sliding, bool):
            raise SpecError(f"use_sliding_window must be true or false, got {sliding!r}")
        return cls(
            name=name or c.get("_name_or_path") or mt,
            model_type=mt,
            hidden_size=c["hidden_size"],
            num_hidden_layers=c["num_hidden_layers"],
            num_attention_heads=c["num_attention_heads"],
            intermediate_size=c["intermediate_size"],
            vocab_size=c["vocab_size"],
            num_key_value_heads=c.get("num_key_value_heads"),
            head_dim_=c.get("head_dim"),
            tie_word_embeddings=_get(c, "tie_word_embeddings", mt == "gemma2"),
            max_position_embeddings=c.get("max_position_embeddings") or 2048,
            hidden_act=act,
            attention_bias=_get(c, "attention_bias", mt == "qwen2"),
            mlp_bias=_get(c, "mlp_bias", False),
            num_local_experts=c.get("num_local_experts") or 0,
            num_experts_per_tok=c.get("num_experts_per_tok") or 0,
            sliding_window=c.get("sliding_window") if sliding else None,
            attention_dropout=_number(c, "attn_pdrop", 0.1) if gpt2 else _number(c, "attention_dropout", 0.0),
            hidden_dropout=_number(c, "resid_pdrop", 0.1) if gpt2 else 0.0,
            embd_dropout=_number(c, "embd_pdrop", 0.1) if gpt2 else 0.0,
            hf_id=hf_id,
            source=source,
        )


def _get(c: Mapping[str, object], key: str, default: object) -> object:
    """A config.json value, the default where it is absent or null (the constructor checks its type)."""
    v = c.get(key)
    return default if v is None else v


def _number(c: Mapping[str, object], key: str, default: float) -> float:
    v = _get(c, key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise SpecError(f"{key} must be a number, got {v!r}")
    return float(v)


class Sourced(namedtuple("Sourced", "value basis source")):
    """A number (``value``: float, int or None) with where it comes from (``source``); ``basis`` is 'datasheet',
    'measured' or 'assumed'. A named tuple: a frozen value without a dataclass's class-creation cost."""

    __slots__ = ()

    def __new__(cls, value, basis, source):
        if basis not in ("datasheet", "measured", "assumed"):
            raise SpecError(f"basis must be datasheet, measured or assumed, got {basis!r}")
        return super().__new__(cls, value, basis, source)


@dataclass(frozen=True)
class GPUSpec:
    """An accelerator kind. Throughputs are dense (no sparsity), in FLOP/s (OP/s for int8)."""

    name: str
    vendor: str
    memory_bytes: int
    memory_bandwidth_bytes_per_s: float
    flops: Mapping[str, float | None]  # keys: fp32, tf32, bf16, fp16, int8, fp8; None = not supported
    bf16_supported: bool
    fp8_supported: bool
    interconnect: str
    interconnect_bandwidth_bytes_per_s: float | None
    price_usd_per_hour: float | None
    aliases: tuple[str, ...] = ()
    nvml_names: tuple[str, ...] = ()  # substrings of the NVML device name that identify it
    sources: Mapping[str, Sourced] = field(default_factory=dict)  # field name -> provenance
    # the total CUDA reports (torch.cuda.mem_get_info()[1]), below NVML's total by what the driver keeps; None where
    # no source gives it. vLLM's budget multiplies this one (serving S7).
    cuda_total_bytes: int | None = None
    # the CUDA context one process holds on this GPU (NVML's used minus torch's reserved, at the start of a run),
    # by GPU generation and CUDA version; None: the planner's default (allocator.CUDA_CONTEXT_BYTES)
    cuda_context_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0:
            raise SpecError(f"{self.name}: memory_bytes must be positive")
        if self.cuda_total_bytes is not None and not 0 < self.cuda_total_bytes <= self.memory_bytes:
            raise SpecError(f"{self.name}: cuda_total_bytes must be positive and at most memory_bytes")

    def with_memory(self, memory_bytes: int) -> "GPUSpec":
        """The GPU with other memory (a detected device's free memory, a document's figure): CUDA's total of the
        catalogued memory then says nothing about it, and goes."""
        if memory_bytes == self.memory_bytes:
            return self
        return dataclasses.replace(self, memory_bytes=memory_bytes, cuda_total_bytes=None)


ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class PlanConfig:
    """One configuration to plan (and, in the lab, to measure): model, method, precision, workload.

    ``seq`` is tokens per sequence: the training sequence length, or for inference the whole context
    (prompt plus generated tokens) the KV cache holds. Sizes are per GPU before sharding;
    ``batch`` is the micro-batch per GPU (``grad_accum`` micro-batches make one optimizer step).
    """

    model: ModelSpec
    method: Method = Method.INFERENCE
    precision: Precision = Precision.BF16  # storage of the base weights
    compute_dtype: DType = DType.BF16
    training_precision: TrainingPrecision = TrainingPrecision.PURE
    double_quant: bool = False
    group_size: int = 128  # int4 (GPTQ/AWQ-style) quantization group
    optimizer: Optimizer = Optimizer.ADAMW
    batch: int = 1
    seq: int = 2048
    kv_dtype: DType | None = None  # None: the compute dtype
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # or (ALL_LINEAR,)
    lora_dropout: float = 0.0  # PEFT's default; > 0 saves a mask and a dropped copy per adapter
    flash_attention: bool = True  # the GPU runs FlashAttention (sm80+); False (T4, V100): GQA SDPA takes the math kernel
    freeze_last_layers: int = 2  # method=freeze: the last k blocks train ...
    freeze_modules: tuple[str, ...] = ()  # ... or these named modules (e.g. lm_head)
    adapter_size: int = 64  # bottleneck adapter width
    num_virtual_tokens: int = 20  # prefix / prompt tuning
    grad_checkpointing: bool = False
    attn: Attention = Attention.SDPA
    padding_mask: bool = False  # training batches padded to a common width (an attention mask): activations A3c
    grad_accum: int = 1
    keep_grads: bool = False  # gradients live through the next forward (zero_grad(set_to_none=False)); memory 3
    loss: Loss = Loss.HF  # the loss head (memory 6, 12-14)
    loop: Loop = Loop.MANUAL  # the training loop around the loss: manual or transformers Trainer (memory 19)
    eval_batch: int | None = None  # evaluation during training: rows of its no-grad forward; None: none (memory 20)
    optimizer_in_backward: bool = False  # a post-accumulate-grad hook steps and frees each gradient (memory 15)
    packed: bool = False  # packed sequences with position_ids, no padding and no attention mask (memory 16)
    torch_compile: bool = False  # torch.compile: inductor changes what is saved (not modelled; memory 17)
    expandable_segments: bool = False  # PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (allocator 10h)
    qat_group: int | None = None  # QAT: torchao int4 fake quantization of the block linears, N-weight groups (memory 18)
    num_gpus: int = 1
    zero: int = 0  # DeepSpeed ZeRO stage 0..3
    fsdp: str | None = None  # "full_shard" | "shard_grad_op"
    offload: Offload = Offload.NONE
    tp: int = 1  # tensor-parallel degree
    device: DeviceMode = DeviceMode.CUDA
    kbit_upcast: bool = True  # PEFT prepare_model_for_kbit_training: non-quantized weights to fp32 (k-bit training)
    stack: str = "transformers==5"  # STACKS: transformers 5 or 4.57 (+ PEFT + bitsandbytes 0.50), litgpt (its own code)

    def __post_init__(self) -> None:
        _check_types(self, PlanConfig, "")
        _check_contradictions(self)
        for f in ("batch", "seq", "lora_r", "lora_alpha", "group_size", "grad_accum", "num_gpus", "tp",
                  "adapter_size", "num_virtual_tokens"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SpecError(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.method is Method.FREEZE:
            if not 0 <= self.freeze_last_layers <= self.model.num_hidden_layers:
                raise SpecError(f"freeze-last-layers must be in 0..{self.model.num_hidden_layers}")
            if self.freeze_last_layers == 0 and not self.freeze_modules:
                raise SpecError("freeze with --freeze-last-layers 0 and no --freeze-modules trains nothing; train at "
                                "least one block or name modules to train (e.g. --freeze-modules lm_head)")
        if self.method in (Method.LORA, Method.QLORA):
            small, dim = _smallest_linear(self.model, self.lora_targets)
            if self.lora_r > dim:
                raise SpecError(f"lora-r {self.lora_r} is larger than the smallest dimension of the targeted linear "
                                f"{small.name} of {self.model.name} ({small.in_features} -> {small.out_features}); "
                                f"the rank must be at most {dim}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise SpecError(f"lora-dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.padding_mask and not self.method.is_training:
            raise SpecError("padded batches (--padded) apply to training; inference here is one prompt batch")
        if self.stack not in STACKS:
            alias = " (the alias is resolved by PlanConfig.from_dict)" if self.stack == TRANSFORMERS else ""
            raise SpecError(f"stack must be one of {', '.join(STACKS)}, got {self.stack!r}{alias}")
        if self.zero not in (0, 1, 2, 3):
            raise SpecError(f"zero must be 0, 1, 2 or 3, got {self.zero!r}")
        if self.fsdp not in (None, "full_shard", "shard_grad_op"):
            raise SpecError(f"fsdp must be full_shard or shard_grad_op, got {self.fsdp!r}")
        if self.fsdp and self.zero:
            raise SpecError("choose ZeRO or FSDP, not both")
        if self.num_gpus % self.tp:
            raise SpecError(f"num-gpus {self.num_gpus} is not a multiple of the tensor-parallel degree {self.tp}")
        heads, kv = self.model.num_attention_heads, self.model.kv_heads
        if self.tp > 1 and (heads % self.tp or (kv % self.tp and self.tp % kv)):
            raise SpecError(f"tensor-parallel degree {self.tp} must divide {self.model.name}'s {heads} attention heads "
                            f"and divide or be a multiple of its {kv} KV heads")
        if self.method is Method.QLORA and self.precision not in (Precision.NF4, Precision.FP4):
            raise SpecError(f"QLoRA trains LoRA adapters on 4-bit (nf4/fp4) weights, not {self.precision.value}; "
                            "use --method lora for unquantized weights")
        if self.method in (Method.FULL, Method.FREEZE) and self.precision.is_kbit:
            raise SpecError(f"{self.method.value} fine-tuning cannot update {self.precision.value} weights; "
                            "use --method qlora (or lora) on quantized weights")
        if self.double_quant and self.precision not in (Precision.NF4, Precision.FP4):
            raise SpecError("double quantization applies to nf4/fp4 weights only")
        if self.device is DeviceMode.CPU and self.num_gpus > 1:
            raise SpecError("a CPU plan is for one process; num-gpus must be 1")

    # ---- the one vocabulary: dicts ---------------------------------------------------------
    def to_dict(self) -> dict:
        """Every field in field order, JSON-serialisable: enums as their values, tuples as lists,
        the model as :meth:`ModelSpec.to_dict`."""
        out: dict = {}
        for f in _field_names(PlanConfig):
            v = getattr(self, f)
            if f == "model":
                v = v.to_dict()
            elif isinstance(v, Enum):
                v = v.value
            elif isinstance(v, tuple):
                v = list(v)
            elif f == "lora_dropout":
                v = float(v)
            out[f] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, object], *, model: ModelSpec | None = None) -> "PlanConfig":
        """The exact inverse of :meth:`to_dict`. Absent keys take the dataclass defaults, except the recipe fields
        (:data:`RECIPE_FIELDS`): absent or None means what the stack does (assumption 4, :func:`recipe_defaults`,
        resolved here, once). ``d["model"]`` is a ModelSpec dict, or absent when ``model=`` is given. An unknown
        key or a wrong type is a SpecError."""
        if not isinstance(d, Mapping):
            raise SpecError(f"a plan configuration must be a mapping, got {type(d).__name__}")
        fields = _field_names(PlanConfig)
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise SpecError(f"unknown configuration field {unknown[0]!r} (fields: {', '.join(fields)})")
        kw = {k: _convert(PlanConfig, k, v) for k, v in d.items() if k != "model"}
        if "model" in d and d["model"] is not None:
            m = ModelSpec.from_dict(d["model"])
            if model is not None and m != model:
                raise SpecError("the configuration names a model and a different model was given")
            model = m
        if model is None:
            raise SpecError("the configuration has no model")
        kw["stack"] = resolve_stack(kw.get("stack"))  # assumption 4e: the alias and spelled-out versions too
        for k, v in recipe_defaults(model, kw).items():  # assumption 4: what the user left open
            if kw.get(k) is None:
                kw[k] = v
        return cls(model=model, **kw)

    @property
    def library(self) -> str:
        """The model code that runs: ``transformers`` (either version) or ``litgpt``."""
        return "litgpt" if self.stack == "litgpt" else TRANSFORMERS

    @property
    def world_size(self) -> int:
        return self.num_gpus

    @property
    def dp(self) -> int:
        """Data-parallel degree."""
        return self.num_gpus // self.tp


# ---- recipes (assumption 4) and contradictions (assumption 5) ---------------------------------------------
RECIPE_FIELDS = ("precision", "grad_checkpointing", "lora_targets", "stack")  # resolved by from_dict when absent/None
TRANSFORMERS = "transformers"  # the alias: the installed major version, else the newest modelled (assumption 4e)
STACKS = ("transformers==5", "transformers==4.57", "litgpt")  # modelled; the newest transformers first
_MODELLED = {"4": "transformers==4.57", "5": "transformers==5"}  # installed major version -> modelled stack
_installed: list = []  # the installed transformers' stack, looked up once per process (None: not installed)


def installed_transformers_stack() -> str | None:
    """The modelled stack of the transformers installed on ``sys.path`` (assumption 4e), or None: the first
    ``transformers-<version>.dist-info`` folder of a ``sys.path`` entry, listed with ``os.listdir`` and cached."""
    if not _installed:
        import os
        import sys

        found = None
        for entry in sys.path:
            try:
                names = os.listdir(entry or ".")
            except OSError:
                continue
            for n in names:
                if n.startswith("transformers-") and n.endswith(".dist-info"):
                    major = n[len("transformers-"):].split(".", 1)[0]
                    if major.isdigit():
                        found = _MODELLED.get(major) or (STACKS[0] if int(major) > 5 else None)
                        break
            if found:
                break
        _installed.append(found)
    return _installed[0]


def resolve_stack(v: object) -> str:
    """A stack as :data:`STACKS` spells it (assumption 4e): None or the alias ``transformers`` -> the installed
    transformers' major version, else the newest modelled; ``transformers==4.57.6`` -> ``transformers==4.57``,
    ``transformers==5.24`` -> ``transformers==5``; anything else is a one-line SpecError."""
    if v is None or v == TRANSFORMERS:
        return installed_transformers_stack() or STACKS[0]
    if not isinstance(v, str):
        raise SpecError(f"stack must be a string, got {type(v).__name__}")
    if v in STACKS:
        return v
    name, _, version = v.partition("==")
    parts = version.split(".")
    if name == TRANSFORMERS and parts[0] in _MODELLED and all(p.isdigit() for p in parts) \
            and (parts[0] == "5" or parts[1:2] == ["57"]):
        return _MODELLED[parts[0]]
    raise SpecError(f"stack must be one of {', '.join(STACKS)} (or {TRANSFORMERS}: the installed version), "
                    f"got {v!r}")


def kbit_prepared(method: Method, precision: Precision, kbit_upcast: bool, stack: str) -> bool:
    """The model goes through PEFT's ``prepare_model_for_kbit_training`` (k-bit weights, training, a
    transformers stack, the upcast not turned off): the rule memory.py's upcast and the checkpointing default
    share (assumptions 4a, memory 1)."""
    return method.is_training and precision.is_kbit and kbit_upcast and stack != "litgpt"


def recipe_defaults(model: ModelSpec, given: Mapping[str, object]) -> dict:
    """The recipe fields (:data:`RECIPE_FIELDS`) for a configuration whose other fields are ``given`` (a dict of
    converted values, absent = the dataclass default): assumption 4."""
    fields = {f.name: f.default for f in dataclasses.fields(PlanConfig) if f.name != "model"}

    def get(k):
        v = given.get(k)
        return fields[k] if v is None else v

    method = get("method")
    precision = given.get("precision")
    if precision is None:
        precision = Precision.NF4 if method is Method.QLORA else Precision.BF16
    from quantlab.families import lora_default_targets

    stack = resolve_stack(given.get("stack"))
    return {"precision": precision,
            "grad_checkpointing": kbit_prepared(method, precision, get("kbit_upcast"), stack),
            "lora_targets": lora_default_targets(model), "stack": stack}


def _check_contradictions(c: "PlanConfig") -> None:
    """A value the method cannot use is one line (assumption 5)."""
    if not c.method.is_training:
        what = ("--zero" if c.zero else "--fsdp" if c.fsdp else "--offload" if c.offload is not Offload.NONE
                else None)
        if what:
            raise SpecError(f"{what} shards or offloads a training job's states; an inference plan splits the "
                            "model with --tp N (drop " + what + ")")
        if c.grad_checkpointing:
            raise SpecError("gradient checkpointing applies to training (inference keeps no activations for "
                            "backward); drop --grad-checkpointing")
        if c.training_precision is TrainingPrecision.AMP:
            raise SpecError("--training-precision amp applies to training (fp32 master weights); inference "
                            "computes in --compute-dtype")
        if c.optimizer is not Optimizer.ADAMW:
            raise SpecError(f"--optimizer {c.optimizer.value} applies to training; inference has no optimizer")
        if c.loss is not Loss.HF:
            raise SpecError(f"--loss {c.loss.value} is a training loss; inference computes no loss (drop --loss)")
        if c.loop is not Loop.MANUAL:
            raise SpecError(f"--loop {c.loop.value} is a training loop; inference runs no loss (drop --loop)")
        if c.eval_batch is not None:
            raise SpecError("--eval-batch plans evaluation during training; an inference plan has no training step "
                            "(drop it, or give a training --method)")
        if c.optimizer_in_backward:
            raise SpecError("--optimizer-in-backward applies to training; inference has no optimizer")
        if c.packed:
            raise SpecError("--packed applies to training batches; inference here is one prompt batch (drop it)")
    elif c.kv_dtype is not None:
        raise SpecError(f"--kv-dtype {c.kv_dtype.value} applies to inference (a training step keeps no KV cache); "
                        "drop it")
    if c.eval_batch is not None:
        e = c.eval_batch
        if not isinstance(e, int) or isinstance(e, bool) or e <= 0:
            raise SpecError(f"eval-batch must be a positive integer, got {e!r}")
        if c.loss is not Loss.HF:
            raise SpecError(f"--eval-batch plans the evaluation forward of transformers' own loss (memory 20); with "
                            f"--loss {c.loss.value} it is not modelled: use --loss hf or drop --eval-batch")
    if c.loop is Loop.TRAINER and c.loss is Loss.CHUNKED:
        raise SpecError("--loss chunked is torchtune's recipe, which runs its own loop, not transformers Trainer's "
                        "compute_loss: use --loop manual")
    if c.optimizer_in_backward and c.grad_accum > 1:
        raise SpecError("--optimizer-in-backward steps each parameter as its gradient is made: it cannot accumulate "
                        "gradients (torch docs, 'How to save memory by fusing the optimizer step into the backward "
                        "pass'); use --grad-accum 1")
    if c.optimizer_in_backward and (c.zero or c.fsdp or c.num_gpus > 1):
        raise SpecError("--optimizer-in-backward is planned for one process (a hook per parameter); drop the "
                        "sharding flags")
    if c.qat_group is not None:
        if not c.method.is_training or c.method not in (Method.FULL, Method.FREEZE):
            raise SpecError("--qat-group plans QAT fake quantization of trained weights: give --method full or "
                            "freeze (torchao's QAT with LoRA is not modelled)")
        if not c.precision.is_float:
            raise SpecError(f"QAT fake-quantizes float weights, not {c.precision.value}")
        g = c.qat_group
        if not isinstance(g, int) or isinstance(g, bool) or g <= 0:
            raise SpecError(f"qat-group must be a positive integer, got {g!r}")
        from quantlab.families import block_linears

        for l in block_linears(c.model):
            if l.module and l.in_features % g:
                raise SpecError(f"--qat-group {g} does not divide {l.name}'s {l.in_features} inputs")
    if c.packed and c.padding_mask:
        raise SpecError("--packed batches have no padding; drop --padded (or --packed)")
    if c.offload is Offload.PARAMS and c.zero in (1, 2):
        raise SpecError(f"DeepSpeed offloads parameters only at ZeRO-3 (offload_param), not ZeRO-{c.zero}; use "
                        "--zero 3, or --offload optimizer")


_NAMES = {Method.LORA: "LoRA", Method.QLORA: "QLoRA", Method.ADAPTER: "bottleneck adapters",
          Method.PREFIX: "prefix tuning", Method.PROMPT: "prompt tuning", Method.IA3: "IA3"}


def recipe(c: "PlanConfig") -> str:
    """The recipe a configuration follows, named, with its resolved defaults (assumption 4): one line."""
    from quantlab.families import family

    m = c.method
    if not m.is_training:
        return ("inference: one forward over the context with the KV cache kept (generate, use_cache=True); "
                + stack_text(c.stack))
    ck = "checkpointing " + ("on" if c.grad_checkpointing else "off")
    if kbit_prepared(m, c.precision, c.kbit_upcast, c.stack):
        name = "PEFT QLoRA" if m is Method.QLORA else f"PEFT {_NAMES[m]} on {c.precision.value} weights"
        head = f"{name} (prepare_model_for_kbit_training: {ck}, fp32 upcast)"
    elif c.precision.is_kbit:
        head = (f"{'LitGPT' if c.stack == 'litgpt' else 'PEFT'} {_NAMES[m]} on {c.precision.value} weights "
                f"({ck}, no fp32 upcast)")
    elif m.is_peft:
        head = f"PEFT {_NAMES[m]} ({ck}, fp32 adapters)"
    else:
        head = f"{m.value} fine-tune ({ck})"
    parts = [head]
    if m in (Method.LORA, Method.QLORA):
        fam = family(c.model)
        t = ",".join(c.lora_targets)
        if tuple(c.lora_targets) == fam.lora_targets:
            t += (f" (PEFT's default for {fam.model_type})" if fam.lora_targets_from_peft else
                  f" (PEFT has no default for {fam.model_type})")
        parts.append(f"r {c.lora_r} on {t}")
    if c.training_precision is TrainingPrecision.AMP:
        parts.append(f"AMP: autocast to {c.compute_dtype.value}"
                     + ("" if m.is_peft else ", fp32 master weights, gradients and states"))
    else:
        parts.append(f"{'compute' if m.is_peft else 'pure'} {c.compute_dtype.value}, no autocast "
                     "(TrainingArguments bf16=False)"
                     + ("" if m.is_peft else f": weights, gradients and states in {c.precision.value}"))
    parts.append(stack_text(c.stack))
    return "; ".join(parts)


def stack_text(stack: str) -> str:
    """The stack a plan models, for the header (assumption 4e)."""
    if stack == "litgpt":
        return "stack litgpt (LitGPT's own model code)"
    return f"stack {stack} (modelling code of transformers {stack.partition('==')[2]}.x)"


def config_notes(c: "PlanConfig") -> list[str]:
    """What the configuration resolves or leaves without effect (assumptions 4, 5), derived from its values (so a
    plan read back from JSON says the same)."""
    from quantlab.families import family

    out = []
    fam = family(c.model)
    if c.method in (Method.LORA, Method.QLORA) and tuple(c.lora_targets) == fam.lora_targets \
            and not fam.lora_targets_from_peft:
        out.append(f"PEFT 0.21.2 has no default LoRA target_modules for {fam.model_type} (it asks for them): "
                   f"planned with {','.join(fam.lora_targets)}; pass --lora-targets to match your LoraConfig")
    if c.method.is_training and c.dp == 1 and (c.zero or c.fsdp):
        what = f"ZeRO-{c.zero}" if c.zero else f"FSDP {c.fsdp}"
        out.append(f"{what} on one data-parallel rank shards nothing: planned as one GPU"
                   + (" (offload still applies)" if c.offload is not Offload.NONE else ""))
    if c.method.is_training and c.offload is not Offload.NONE and not (c.zero or c.fsdp):
        out.append(f"--offload {c.offload.value} without --zero: DeepSpeed offloads through ZeRO (stage "
                   f"{3 if c.offload is Offload.PARAMS else 2} is what --emit writes); planned without sharding")
    if c.stack == "transformers==4.57" and c.model.is_moe:
        out.append(f"transformers 4.57 runs {c.model.name}'s experts as a loop over nn.Linear modules "
                   "(MixtralSparseMoeBlock); planned with transformers 5's fused expert tensors and grouped_mm "
                   "(activations A7): 4.57's expert path is not modelled (measured 4.4% more saved bytes on a tiny "
                   "Mixtral, reports/stack/), and bitsandbytes would quantize 4.57's expert linears")
    if c.fsdp and c.offload is Offload.OPTIMIZER:
        out.append("FSDP has no optimizer-only offload (CPUOffload moves parameters, gradients and states "
                   "together): planned as optimizer offload, the GPU holds less with FSDP's")
    return out


# ---- dict conversion: one table of field kinds, read from the annotations ---------------------------------
_MODEL_JSON_NAMES = {"head_dim_": "head_dim"}  # field -> config.json name, where they differ
_ENUMS = {e.__name__: e for e in (Precision, DType, Method, Optimizer, TrainingPrecision, Attention, Offload,
                                  DeviceMode, Loss, Loop)}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_KINDS: dict[type, dict[str, tuple[str, bool]]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _kinds(cls: type) -> dict[str, tuple[str, bool]]:
    """field -> (kind, None allowed); kind is int, float, bool, str, tuple (of str), model or an Enum name."""
    k = _KINDS.get(cls)
    if k is None:
        k = {}
        for f in dataclasses.fields(cls):
            t = str(f.type).replace(" ", "")
            optional = t.endswith("|None")
            t = t.removesuffix("|None")
            k[f.name] = ("tuple" if t.startswith("tuple[") else "model" if t == "ModelSpec" else t, optional)
        _KINDS[cls] = k
    return k


def _convert(cls: type, name: str, v: object) -> object:
    """A JSON value for field ``name`` of ``cls`` as the dataclass holds it, or a one-line SpecError."""
    kind, optional = _kinds(cls)[name]
    if v is None:
        if optional or (cls is PlanConfig and name in RECIPE_FIELDS):
            return None
        raise SpecError(f"{name} must not be null")
    if kind in _ENUMS:
        enum = _ENUMS[kind]
        try:
            return enum(v)
        except ValueError:
            raise SpecError(f"{name} must be one of {', '.join(e.value for e in enum)}, got {v!r}") from None
    if kind == "int":
        if not isinstance(v, int) or isinstance(v, bool):
            raise SpecError(f"{name} must be an integer, got {v!r}")
        return v
    if kind == "float":
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise SpecError(f"{name} must be a number, got {v!r}")
        return float(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise SpecError(f"{name} must be true or false, got {v!r}")
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise SpecError(f"{name} must be a string, got {v!r}")
        return v
    if kind == "tuple":
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise SpecError(f"{name} must be a list of strings, got {v!r}")
        return tuple(v)
    raise AssertionError(f"no conversion for {cls.__name__}.{name} ({kind})")  # pragma: no cover


def _canonical(cls: type, name: str, v: object) -> object:
    """The JSON form of a plain field: floats stay floats (an int 0 given for a dropout is written 0.0)."""
    return float(v) if v is not None and _kinds(cls)[name][0] == "float" else v


_TYPES = {"int": int, "float": (int, float), "bool": bool, "str": str, "tuple": tuple}
_CHECKS: dict[type, tuple] = {}


def _checks(cls: type) -> tuple:
    """(field, exact types accepted at once, accepted types, None allowed, bools rejected, kind) per field of
    ``cls``, built once."""
    c = _CHECKS.get(cls)
    if c is None:
        rows = []
        for name, (kind, optional) in _kinds(cls).items():
            types = ModelSpec if kind == "model" else _ENUMS.get(kind) or _TYPES[kind]
            exact = frozenset((types if isinstance(types, tuple) else (types,)) + ((type(None),) if optional else ()))
            rows.append((name, exact, types, optional, kind not in ("bool", "model") and kind not in _ENUMS, kind))
        c = _CHECKS[cls] = tuple(rows)
    return c


_FAST: dict[type, Callable[[object], bool]] = {}


def _fast_check(cls: type) -> Callable[[object], bool]:
    """A straight-line function, generated once per class, that is True when every field has exactly its annotated
    type (the common case: ``dataclasses.replace`` in a sweep builds many configs); anything else goes to the
    full check, which accepts subclasses and words the error."""
    fn = _FAST.get(cls)
    if fn is None:
        lines, env = ["def fast(o):"], {}
        for i, (name, exact, _, optional, _, kind) in enumerate(_checks(cls)):
            names = []
            for j, t in enumerate(sorted(exact, key=str)):
                env[f"t{i}_{j}"] = t
                names.append(f"t{i}_{j}")
            lines.append(f"    v = o.{name}")
            lines.append(f"    if {' and '.join(f'type(v) is not {n}' for n in names)}: return False")
            if kind == "tuple":
                lines.append("    for x in v or ():")
                lines.append("        if type(x) is not str: return False")
        lines.append("    return True")
        exec("\n".join(lines), env)  # noqa: S102 (generated from the dataclass fields, as dataclasses does)
        fn = _FAST[cls] = env["fast"]
    return fn


def _check_types(obj: object, cls: type, prefix: str) -> None:
    """Every field holds its annotated type (bools are not ints, floats are not ints, enums are members)."""
    if _fast_check(cls)(obj):
        return
    for name, exact, types, optional, no_bool, kind in _checks(cls):
        v = getattr(obj, name)
        if type(v) in exact and kind != "tuple":  # the common case: exactly the annotated type
            continue
        if v is None:
            if optional:
                continue
        elif isinstance(v, types) and not (no_bool and (v is True or v is False)):
            if kind != "tuple" or all(isinstance(x, str) for x in v):
                continue
        _type_error(prefix, cls, name, kind, v)


def _type_error(prefix: str, cls: type, name: str, kind: str, v: object) -> None:
    shown = _MODEL_JSON_NAMES.get(name, name) if cls is ModelSpec else name
    if v is None:
        raise SpecError(f"{prefix}{shown} must not be null")
    if kind == "model":
        raise SpecError(f"model must be a ModelSpec, got {type(v).__name__}")
    if kind in _ENUMS:
        raise SpecError(f"{prefix}{shown} must be one of {', '.join(e.value for e in _ENUMS[kind])}, got {v!r}")
    what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "tuple": "a tuple of strings"}[kind]
    if cls is ModelSpec and name in MODEL_BOUNDS:
        what = "a non-negative integer" if name in ("num_local_experts", "num_experts_per_tok") else \
            "a positive integer"
    raise SpecError(f"{prefix}{shown} must be {what}, got {v!r}")


@functools.lru_cache(maxsize=1024)
def _smallest_linear(m: ModelSpec, targets: tuple[str, ...]) -> tuple[LinearShape, int]:
    """The targeted linear with the smallest dimension, and that dimension (the largest meaningful LoRA rank)."""
    small = min(_lora_linears(m, targets), key=lambda l: min(l.in_features, l.out_features))
    return small, min(small.in_features, small.out_features)


@functools.lru_cache(maxsize=1024)
def _lora_linears(m: ModelSpec, targets: tuple[str, ...]) -> tuple[LinearShape, ...]:
    lins = m.block_linears()
    if ALL_LINEAR in targets:  # PEFT's all-linear: every nn.Linear but the output layer
        return tuple(l for l in lins if l.module)
    chosen = tuple(l for l in lins if any(l.name == t or l.name.split(".")[-1] == t or l.name.endswith("." + t)
                                          for t in targets))
    if not chosen:
        names = ", ".join(l.name for l in lins if l.module)
        raise SpecError(f"LoRA targets {','.join(targets)} match no linear of {m.name} (its linears: {names})")
    fused = [l.name for l in chosen if not l.module]
    if fused:
        raise SpecError(f"LoRA targets nn.Linear modules; {', '.join(fused)} of {m.name} are fused parameters in "
                        "transformers 5 (PEFT's target_parameters is not planned)")
    return chosen
