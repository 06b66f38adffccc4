"""Serving: memory per GPU of generation, scoring and prefill, on transformers or vLLM, and what it buys.

A :class:`ServeConfig` holds a :class:`~quantlab.specs.PlanConfig` (model, precision, kv_dtype, LoRA fields, tp,
num_gpus, device) plus the serving settings; :func:`serve_plan` composes the named cost functions below into a
:class:`ServePlan` (integer bytes per GPU, a per-GPU table when the model is split, vLLM's KV pool, the roofline).
Pure: standard library only. The weights, the KV cache and one block's transient are the training planner's own
rules (:mod:`quantlab.planner.memory`: ``weights``, ``kv_cache``, ``prefill_transient``), so the two cannot drift.

Library versions read for these assumptions: transformers 5.24.0, accelerate 1.15.0, PEFT 0.21.2 (this project's
environment, ``.venv``) and vLLM at commit 35d5cda1 of vllm-project/vllm (the v1 engine, read with the code
search; not installed here).

Assumptions (numbered; notes in a plan refer to them as S1, S2, ...):

S1. ``generate`` (transformers ``generation/utils.py`` 5.24.0): ``generate`` sets ``logits_to_keep=1`` when the model's
    forward takes it (``_supports_logits_to_keep``), so the prefill of ``prompt_tokens`` keeps one position's logits
    (batch x vocab in the compute dtype), not every token's. ``_sample`` then copies them to fp32
    (``outputs.logits[:, -1].to(copy=True, dtype=torch.float32)``) and, sampling, takes a softmax (fp32): three
    batch x vocab tensors, whichever step. The KV cache holds prompt plus new tokens at the end of decode; the peak
    is the larger of the prefill phase (KV of the prompt + one block's transient over batch x prompt tokens) and the
    decode phase (KV of the whole context + one block's transient over batch tokens + the cache's own transient).
S1b. Sampling, ``_sample`` (transformers 5.24 ``generation/utils.py``) with ``GenerationConfig``'s global
    defaults (``configuration_utils.py`` ``_get_default_generation_params``: top_k 50, top_p 1.0, temperature
    1.0): the fp32 copy of the logits, ``TopKLogitsWarper``'s bool mask and masked copy (``masked_fill``), then the
    softmax: 12 bytes per sequence and vocabulary entry at the first step; from the second step on the previous
    step's scores and probabilities are still bound (the locals are rebound only by the new step's results), so
    the masked_fill moment holds 4 + 4 + 4 + 1 + 4 = 17, and the three fp32 tensors of the previous step (12;
    greedy: its copy, 4) stay alive through each decode forward. Greedy keeps the copy (4; decoding, 8).
    With no logits processor (``logits_warpers=False``: TRL's ``GRPOConfig`` samples with top_k 0, top_p 1.0,
    temperature 1.0, min_p None, repetition_penalty 1.0, ``grpo_config.py`` lines 532-580, put into the
    GenerationConfig at ``grpo_trainer.py`` lines 1156-1173), ``_get_logits_processor`` adds no warper
    (``generation/utils.py`` lines 1472, 1618-1634) and an empty ``LogitsProcessorList`` returns its input
    (``logits_process.py`` line 98): the scores are the fp32 copy itself (``_sample``, lines 3250-3275). A step holds
    the copy, the softmax and ``torch.multinomial``'s fp32 exponential noise (measured: one batch x vocab fp32
    tensor of allocator growth): 12 bytes per sequence and vocabulary entry, at the first step and at a decode
    step alike (the previous step's copy and probabilities are rebound by then); the copy and the probabilities
    (8) stay alive through each decode forward.
S1c. What generate adds to a forward (measured by ``quantlab validate`` on a CPU, each traced to the code):
    position ids per sequence (``_prepare_position_ids_for_generation``: ``attention_mask.cumsum(-1) - 1``,
    batch x prompt int64, kept by ``generate``'s own ``model_kwargs`` while ``_sample`` grows its copy by
    ``torch.cat``), the growing ``input_ids``, and ``prepare_inputs_for_generation``'s clone of the input ids: 2 x
    batch x prompt int64 at the prefill, batch x (prompt + context + context - 1) int64 at the last step. With
    per-sequence positions RoPE's cos and sin are batch x tokens x head_dim (compute dtype) and GPT-2's position
    embedding output batch x tokens x hidden. Eager attention's weights stay bound to the decoder block's ``_``
    through its MLP (``hidden_states, _ = self.self_attn(...)``).
S1d. Left-padded prompts (``padded_prompts``: a batch of prompts of different lengths, as TRL's GRPO pads them,
    ``grpo_trainer.py`` lines 1814-1827): the attention mask has zeros, so SDPA cannot skip the mask
    (``masking_utils.py`` ``_ignore_causal_mask_sdpa`` / ``sdpa_mask``, lines 252-290 and 510-535, transformers
    5.24): one bool mask of batch x 1 x query x keys is built per forward and lives through it beside every block
    (prefill: batch x prompt x prompt bytes; a decode step: batch x context). Eager attention builds its mask
    anyway (families F4, counted). Measured: reports/grpo-cpu (SmolLM2-135M, 8 prompts left-padded to 66 tokens)
    prefill transient 34,936 bytes above the unpadded rule, the mask 8 x 66 x 66 = 34,848. Not modelled: the K/V
    that SDPA's GQA path repeats under a mask (activations A3c), below the MLP's peak in that run.
S2. ``score`` is one forward that keeps every token's logits (perplexity, evaluation, reward scoring):
    :func:`quantlab.planner.memory.plan` for inference (its assumption 7), whose logits are T x vocab.
    ``prefill`` is the prefill phase of S1 alone (one forward with ``logits_to_keep=1`` and the cache kept).
S3. Caches (transformers ``cache_utils.py`` 5.24.0): ``DynamicLayer.update`` grows by ``torch.cat``, keys then
    values, so while a layer appends, its old and new keys (then values) are both alive: one layer's K (or V) at
    the context joins the decode transient, beside the residual stream (not the MLP's tensors). The cache ends at
    prompt + new - 1 positions: the last sampled token is never fed back (``generate``: ``max_cache_length =
    generation_config.max_length - 1``, also a static cache's ``max_cache_len``). Eager attention repeats K and V
    to every head at a decode step (``repeat_kv``: a copy of each, except with one KV head, where the reshape of
    the expanded tensor is a view and ``torch.matmul`` copies the broadcast K, then V, for its bmm, one at a time);
    SDPA passes ``enable_gqa`` without a mask. ``StaticLayer`` allocates ``max_cache_len`` (= prompt + new tokens) positions at the first
    forward, so the prefill phase already holds the whole cache. ``QuantizedLayer`` (quanto int4/int2, KIVI-style)
    stores quantized keys and values (``nbits`` bits each, plus a scale and a zero-point per ``q_group_size``
    values, assumed in the compute dtype) and at most ``residual_length - 1`` recent positions in full precision;
    each update dequantizes the layer's whole cache and concatenates it (``keys_to_return``), so two full-precision
    copies of one layer's K and V are alive during a decode step.
S4. Splitting a model over ``N`` GPUs without tensor parallel is transformers' ``device_map="auto"``
    (``integrations/accelerate.py`` 5.24.0, a copy of accelerate 1.15.0 ``utils/modeling.py``):
    ``get_balanced_memory`` gives every GPU but the last ``total // N + int(1.25 * max(largest decoder layer,
    largest leaf module))`` (the last keeps all its free memory; k-bit quantizers then take 90%:
    ``adjust_max_memory``), and ``infer_auto_device_map`` places modules in order (embedding, blocks, final norm,
    lm_head) whole (``_no_split_modules``: the decoder layer), moving to the next GPU when one does not fit; on GPU 0
    it keeps room for the largest layer (``main_devices``). Tied lm_head weights stay with the embedding. Free
    memory at load time is the GPU's memory less the CUDA context (assumption 10 of memory.py). A block's KV cache
    and transients live on its GPU; the logits on lm_head's GPU, their fp32 copies on GPU 0 (``input_ids.device``).
S5. Tensor parallel (``--tp``) divides block linears and KV heads (a GPU keeps at least one KV head: heads beyond
    their count are replicated, memory.py assumption 9). ``--replicas R`` runs R copies; ``--num-gpus`` counts all
    of them, so each copy has ``num_gpus / R`` GPUs. Replicas are never implied.
S6. Unmerged LoRA at serving time (PEFT 0.21.2 ``PeftModel.from_pretrained(autocast_adapter_dtype=True)``): each of
    the ``K`` loaded adapters keeps its lora_A (r x in) and lora_B (out x r) per targeted linear and layer in fp32.
    Merged adapters (``merge_and_unload``) add nothing. vLLM (``vllm/lora``) preallocates ``max_loras`` slots of
    ``max_lora_rank`` for every linear it can adapt (q/k/v, o, gate/up, down), stacked in the model dtype and
    sharded like their base layers; ``max_cpu_loras`` adapters wait in CPU memory.
S7. vLLM (``vllm/v1/worker/gpu_worker.py`` ``determine_available_memory``): the budget is ``gpu_memory_utilization``
    x the total CUDA reports (``torch.cuda.mem_get_info()[1]``, read by ``MemorySnapshot.measure`` in
    ``vllm/utils/mem_utils.py``), which is below NVML's total by what the driver keeps (0.42-0.46 GiB in the two
    published logs, reports/serving-groundtruth.md); GPU profiles carry it as ``cuda_total_bytes`` where a source
    gives it, else NVML's total stands in, with a note. The KV pool is the budget less the weights, the profile run's activation peak and the
    non-torch memory it adds. The profile run (``profile_run``) is one forward over ``max_num_batched_tokens``
    tokens (one block's transient: the fused gate_up output, its SiluAndMul and the residual stream) then a sampler
    run over ``min(max_num_seqs, max_num_batched_tokens)`` rows of logits (the logits, their fp32 copy, the
    probabilities and the exponential noise the sampler draws: four rows of the vocabulary, assumed).
    Non-torch memory added by the profile run is assumed 256 MiB (cuBLAS workspaces; NCCL when tp > 1 adds
    assumed 256 MiB more). CUDA graphs are captured after the pool is allocated (``compile_or_warm_up_model``)
    and so lie outside the budget: assumed 512 MiB per GPU (typical "Graph capturing finished ... took 0.3-1 GiB"
    log lines), none with ``enforce_eager``. Later vLLM releases profile the CUDA graphs into the budget instead
    (a v0.21+ log in vllm-project/vllm#46462: "CUDA graph memory profiling is enabled (default since v0.21.0)"):
    there the pool is smaller by the graphs and the process total is the budget plus the context; not planned here.
    The CUDA context is created before the memory snapshot and lies outside the budget too. Defaults of ``vllm serve`` (``EngineArgs.get_batch_defaults``): max_num_batched_tokens
    8192 and max_num_seqs 1024 on GPUs of at least 70 GiB that are not A100, else 2048 and 256. The embedding and
    lm_head are vocab-parallel (divided by tp), the vocabulary padded to a multiple of 64.
S8. vLLM's pool (``vllm/v1/core/kv_cache_utils.py``): a page is ``2 x block_size x kv_heads per GPU x head_dim x
    bytes`` per layer; ``num_blocks = available // page // layers``; "GPU KV cache size" is ``num_blocks x
    block_size`` tokens and "Maximum concurrency for max_model_len tokens per request" is ``num_blocks /
    cdiv(max_model_len, block_size)`` (``get_max_concurrency_for_kv_cache_config``). Sliding windows are planned as
    full attention there (an upper bound on KV use). max_model_len defaults to the context the config derives
    (``_get_and_verify_max_len``: max_position_embeddings, times the rope factor for linear, dynamic and yarn
    scaling; llama3 and longrope keep it).
S9. RoPE scaling (config.json ``rope_scaling``, or ``--rope-scaling TYPE:FACTOR``) changes no memory (the
    ``inv_freq`` buffers keep their size) but the context a model is planned to: ``original_max_position_embeddings``
    (or max_position_embeddings) x factor. Planning beyond that context is a warning.
S10. Concurrency and context (closed forms, checked against a search in the tests): within each phase of S1 the
    process total is affine in the concurrency C (KV, block transient and logits all scale with C; the allocator
    reserve is a fraction of them) and, for SDPA without sliding windows, affine in the context; the peak is the
    larger of two affine phases. The largest C (the longest context) is the smallest root over the phases, found
    from two planned points per phase and accepted only when the plan confirms it at the boundary; otherwise a
    bisection over the planned bracket gives it (the reference).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum

from quantlab.families import attended_positions, attention_masks, family, module_linears
from quantlab.planner import memory as M
from quantlab.planner import throughput as TP
from quantlab.planner.params import count_params
from quantlab.planner.serve_defaults import DEFAULT_NEW_TOKENS, DEFAULTS
from quantlab.specs import Attention, DeviceMode, DType, GPUSpec, Method, ModelSpec, PlanConfig, Precision, SpecError

MiB = 1 << 20
GiB = 1 << 30
VLLM_NON_TORCH_BYTES = 256 * MiB  # S7, assumed
VLLM_NCCL_BYTES = 256 * MiB  # S7, assumed (tp > 1)
VLLM_CUDA_GRAPH_BYTES = 512 * MiB  # S7, assumed
VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py: the ranks max_lora_rank accepts
VOCAB_PADDING = 64  # vllm/model_executor/layers/vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
SAMPLER_ROWS = 4  # S7: logits, fp32 copy, probabilities, exponential noise (assumed)
PROMPT_CAP = 1 << 22  # the longest prompt max_prompt searches (4M tokens)


class Mode(str, Enum):
    GENERATE = "generate"  # prefill with logits_to_keep=1, then decode (S1)
    SCORE = "score"  # one forward with every token's logits (S2)
    PREFILL = "prefill"  # the prefill phase alone (S2)


class Engine(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM = "vllm"


class Cache(str, Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"
    QUANTIZED = "quantized"  # transformers QuantizedCache (quanto int4/int2, residual window in full precision)


ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3", "longrope")


@dataclass(frozen=True)
class RopeScaling:
    """config.json ``rope_scaling`` (S9): a type, a factor and the context the model was trained to."""

    type: str
    factor: float
    original_max_position_embeddings: int | None = None
    source: str = "config.json"

    def __post_init__(self) -> None:
        if self.type not in ROPE_TYPES:
            raise SpecError(f"rope scaling type must be one of {', '.join(ROPE_TYPES)}, got {self.type!r}")
        if not (isinstance(self.factor, (int, float)) and self.factor >= 1 and math.isfinite(self.factor)):
            raise SpecError(f"rope scaling factor must be a number of at least 1, got {self.factor!r}")

    @classmethod
    def from_config(cls, rope: dict | None) -> "RopeScaling | None":
        """The config.json mapping (``rope_type`` or the older ``type``), or None without one."""
        if not rope:
            return None
        kind = rope.get("rope_type") or rope.get("type")
        if kind in (None, "default"):
            return None
        if kind == "su":
            kind = "longrope"
        return cls(str(kind), float(rope.get("factor", 1.0)), rope.get("original_max_position_embeddings"))

    @classmethod
    def parse(cls, text: str) -> "RopeScaling":
        """``TYPE:FACTOR`` as the CLI takes it (``yarn:4``)."""
        kind, sep, factor = text.partition(":")
        try:
            f = float(factor)
        except ValueError:
            f = float("nan")
        if not sep or not math.isfinite(f):
            raise SpecError(f"--rope-scaling takes TYPE:FACTOR (e.g. yarn:4; types {', '.join(ROPE_TYPES)}), "
                            f"got {text!r}")
        return cls(kind.strip(), f, source="--rope-scaling")


def context_limit(m: ModelSpec, rope: RopeScaling | None) -> int:
    """The context a model is planned to (S9): max_position_embeddings, or the trained context x the rope factor
    when that is longer (a config that already states the scaled context, as Llama 3.1 does, keeps it)."""
    if rope is None:
        return m.max_position_embeddings
    base = rope.original_max_position_embeddings or m.max_position_embeddings
    return max(m.max_position_embeddings, int(base * rope.factor))


def vllm_derived_max_len(m: ModelSpec, rope: RopeScaling | None) -> int:
    """vLLM's default max_model_len (S8: ``_get_and_verify_max_len``)."""
    n = m.max_position_embeddings
    if rope is not None and rope.type not in ("llama3", "longrope"):
        if rope.type == "yarn" and rope.original_max_position_embeddings:
            n = rope.original_max_position_embeddings
        n = int(n * rope.factor)
    return n


# ServeConfig fields added after serving documents were first written (``--format json``), with the value an older
# document meant: transformers' default top-k warper and unpadded prompts (S1b, S1d)
ADDED_FIELDS = {"logits_warpers": True, "padded_prompts": False}


@dataclass(frozen=True)
class ServeConfig:
    """A serving configuration: a PlanConfig (``batch`` = concurrency, ``seq`` = prompt + new tokens, the whole
    context) plus the serving settings. Build one with :func:`serve_config`, which resolves the defaults."""

    plan: PlanConfig
    mode: Mode = Mode(DEFAULTS["mode"])
    prompt_tokens: int = 2048 - DEFAULT_NEW_TOKENS
    new_tokens: int = DEFAULT_NEW_TOKENS
    concurrency: int = 1
    engine: Engine = Engine(DEFAULTS["engine"])
    cache: Cache = Cache(DEFAULTS["cache"])
    kv_bits: int = DEFAULTS["kv_bits"]  # quantized cache: 4 or 2 (quanto)
    residual_length: int = DEFAULTS["residual_length"]  # QuantizedCache default
    q_group_size: int = DEFAULTS["q_group_size"]  # QuantizedCache default
    do_sample: bool = True  # softmax over the vocabulary per step (S1); greedy skips it
    # S1b: GenerationConfig's default top-k 50 warper; False: no logits processor (TRL GRPOConfig's top_k 0, top_p 1,
    # temperature 1): the scores are the fp32 copy itself
    logits_warpers: bool = True
    padded_prompts: bool = False  # S1d: prompts of different lengths, left-padded (an attention mask with zeros)
    block_size: int = DEFAULTS["block_size"]  # vLLM
    gpu_memory_utilization: float = DEFAULTS["gpu_memory_utilization"]  # vLLM
    max_model_len: int | None = None  # vLLM; None: derived from the config (S8)
    max_num_batched_tokens: int | None = None  # vLLM; None: the vllm serve default for the GPU (S7)
    max_num_seqs: int | None = None  # vLLM; None: the vllm serve default for the GPU (S7)
    enforce_eager: bool = False  # vLLM: no CUDA graphs
    adapters: int = DEFAULTS["adapters"]  # LoRA adapters resident (PEFT: unmerged; vLLM: max_loras)
    merged: bool = False  # adapters merged into the base weights (no overhead)
    max_lora_rank: int | None = None  # vLLM; None: the smallest allowed rank >= lora_r
    max_cpu_loras: int | None = None  # vLLM; None: max_loras
    replicas: int = DEFAULTS["replicas"]
    rope_scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        p = self.plan
        for f in ("prompt_tokens", "concurrency", "block_size", "replicas", "residual_length", "q_group_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SpecError(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")
        for f in ("new_tokens", "adapters"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SpecError(f"{f.replace('_', '-')} must be a non-negative integer, got {v!r}")
        if p.method is not Method.INFERENCE:
            raise SpecError(f"a serving plan is for --method inference, not {p.method.value}")
        if self.mode is not Mode.GENERATE and self.new_tokens:
            raise SpecError(f"--new-tokens applies to --mode generate; {self.mode.value} runs one forward over the "
                            "prompt (give --prompt-tokens or --seq)")
        if self.mode is Mode.GENERATE and not self.new_tokens:
            raise SpecError("--mode generate needs at least one new token (or use --mode prefill)")
        if p.batch != self.concurrency or p.seq != self.context:
            raise SpecError(f"the plan's batch x seq ({p.batch} x {p.seq}) must be concurrency x (prompt + new "
                            f"tokens) ({self.concurrency} x {self.context}); build with serve_config()")
        if self.engine is Engine.VLLM:
            if p.device is DeviceMode.CPU:
                raise SpecError("--engine vllm plans a CUDA GPU; --device cpu is for transformers")
            if self.mode is not Mode.GENERATE:
                raise SpecError(f"--mode {self.mode.value} is planned for --engine transformers; vLLM generates")
            if self.cache is not Cache.DYNAMIC:
                raise SpecError(f"--cache {self.cache.value} is transformers' cache; vLLM pages its KV cache")
            if self.block_size not in VLLM_BLOCK_SIZES:
                raise SpecError(f"block-size must be one of {', '.join(map(str, VLLM_BLOCK_SIZES))}, got "
                                f"{self.block_size}")
            if not 0 < self.gpu_memory_utilization <= 1:
                raise SpecError(f"gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
            for f in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
                v = getattr(self, f)
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                    raise SpecError(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")
            if self.max_model_len is not None and self.context > self.max_model_len:
                raise SpecError(f"prompt + new tokens ({self.context}) exceed --max-model-len {self.max_model_len}")
            if self.per_replica_gpus > 1 and p.tp != self.per_replica_gpus:
                raise SpecError(f"vLLM spreads a replica with tensor parallel: give --tp {self.per_replica_gpus} "
                                f"(or --replicas {p.num_gpus // p.tp if p.tp > 1 else p.num_gpus})")
        else:
            for f in ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "max_lora_rank", "max_cpu_loras"):
                if getattr(self, f) is not None:
                    raise SpecError(f"--{f.replace('_', '-')} is a vLLM setting; add --engine vllm")
        if self.cache is Cache.QUANTIZED and self.kv_bits not in (2, 4):
            raise SpecError(f"the quantized cache (quanto) stores 2 or 4 bits, got {self.kv_bits}")
        if self.cache is Cache.QUANTIZED and p.kv_dtype not in (None, p.compute_dtype):
            raise SpecError("--cache quantized stores int4/int2 values; leave --kv-dtype at the compute dtype")
        if p.num_gpus % self.replicas:
            raise SpecError(f"num-gpus {p.num_gpus} is not a multiple of --replicas {self.replicas}")
        if p.tp > 1 and p.tp != self.per_replica_gpus:
            raise SpecError(f"tensor parallel over {p.tp} GPUs with {self.replicas} replica(s) needs --num-gpus "
                            f"{p.tp * self.replicas} (each replica is one tensor-parallel group)")
        if self.adapters or self.merged:
            if self.adapters and self.merged:
                raise SpecError("--merged folds one adapter into the weights; give --adapters K or --merged")
            # the targets must name linears of this model, and the rank fit them (one-line SpecError otherwise)
            small = min(p.model.lora_linears(tuple(p.lora_targets)), key=lambda l: min(l.in_features, l.out_features))
            dim = min(small.in_features, small.out_features)
            if p.lora_r > dim:
                raise SpecError(f"--adapters: lora-r {p.lora_r} is larger than {small.name} of {p.model.name} allows "
                                f"({small.in_features} -> {small.out_features}); give --lora-r at most {dim}")
        if self.max_lora_rank is not None:
            if self.max_lora_rank not in VLLM_LORA_RANKS:
                raise SpecError(f"max-lora-rank must be one of {', '.join(map(str, VLLM_LORA_RANKS))}")
            if self.adapters and self.max_lora_rank < p.lora_r:
                raise SpecError(f"max-lora-rank {self.max_lora_rank} is below --lora-r {p.lora_r}")

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.new_tokens

    @property
    def per_replica_gpus(self) -> int:
        return self.plan.num_gpus // self.replicas

    @property
    def split(self) -> bool:
        """The model is split over the replica's GPUs by device_map="auto" (S4), not tensor parallel."""
        return self.engine is Engine.TRANSFORMERS and self.per_replica_gpus > 1 and self.plan.tp == 1

    @property
    def lora_rank_slots(self) -> int:
        """vLLM's max_lora_rank (S6)."""
        if self.max_lora_rank is not None:
            return self.max_lora_rank
        return next((r for r in VLLM_LORA_RANKS if r >= self.plan.lora_r), VLLM_LORA_RANKS[-1])

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "plan":
                v = v.to_dict()
            elif isinstance(v, Enum):
                v = v.value
            elif isinstance(v, RopeScaling):
                v = dataclasses.asdict(v)
            out[f.name] = v
        out["context"] = self.context
        return out

    @classmethod
    def from_dict(cls, d) -> "ServeConfig":
        """The ServeConfig :meth:`to_dict` wrote (the derived ``context`` is checked, not read); a missing, unknown
        or mistyped field is a one-line SpecError."""
        if not isinstance(d, dict):
            raise SpecError(f"a serving configuration must be a mapping, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names and k != "context"]
        if unknown:
            raise SpecError(f"unknown serving field {unknown[0]!r} (fields: {', '.join(names)})")
        kw = dict(d)
        for k, v in ADDED_FIELDS.items():  # documents written before these fields existed still read back
            kw.setdefault(k, v)
        missing = [k for k in names if k not in kw]
        if missing:
            raise SpecError(f"serving field {missing[0]!r} is missing")
        kw.pop("context", None)
        kw["plan"] = PlanConfig.from_dict(kw["plan"])
        for name, enum in (("mode", Mode), ("engine", Engine), ("cache", Cache)):
            try:
                kw[name] = enum(kw[name])
            except ValueError:
                raise SpecError(f"{name} must be one of {', '.join(e.value for e in enum)}, got {kw[name]!r}") from None
        r = kw["rope_scaling"]
        if r is not None:
            if not isinstance(r, dict):
                raise SpecError(f"rope_scaling must be a mapping or null, got {r!r}")
            try:
                kw["rope_scaling"] = RopeScaling(**r)
            except TypeError as e:
                raise SpecError(f"rope_scaling: {e}") from None
        for name in ("do_sample", "logits_warpers", "padded_prompts", "enforce_eager", "merged"):
            if not isinstance(kw[name], bool):
                raise SpecError(f"{name} must be true or false, got {kw[name]!r}")
        for name in ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "max_lora_rank", "max_cpu_loras",
                     "kv_bits"):
            if kw[name] is not None and (not isinstance(kw[name], int) or isinstance(kw[name], bool)):
                raise SpecError(f"{name} must be an integer or null, got {kw[name]!r}")
        if not isinstance(kw["gpu_memory_utilization"], (int, float)) or isinstance(kw["gpu_memory_utilization"], bool):
            raise SpecError(f"gpu_memory_utilization must be a number, got {kw['gpu_memory_utilization']!r}")
        out = cls(**kw)
        if "context" in d and d["context"] != out.context:
            raise SpecError(f"context {d['context']!r} is not prompt_tokens + new_tokens ({out.context})")
        return out


def serve_config(plan: PlanConfig, *, prompt_tokens: int | None = None, new_tokens: int | None = None,
                 seq_given: bool = False, concurrency: int | None = None, **kw) -> ServeConfig:
    """A ServeConfig with the defaults resolved (``seq`` keeps its meaning as the whole context):

    - generate: new tokens default to 256; the prompt to ``plan.seq`` less them when ``seq_given`` or no prompt is
      given; ``--seq`` beside both must equal their sum;
    - score / prefill: the prompt is ``plan.seq`` unless given; new tokens must not be given.
    ``concurrency`` defaults to ``plan.batch``."""
    mode = kw.get("mode", Mode.GENERATE)
    c = plan.batch if concurrency is None else concurrency
    if not isinstance(c, int) or isinstance(c, bool) or c <= 0:
        raise SpecError(f"concurrency must be a positive integer, got {c!r}")
    if mode is Mode.GENERATE:
        new = DEFAULT_NEW_TOKENS if new_tokens is None else new_tokens
        if prompt_tokens is None:
            prompt = plan.seq - new
            if prompt <= 0:
                raise SpecError(f"seq {plan.seq} leaves no prompt beside {new} new tokens; give --prompt-tokens")
        else:
            prompt = prompt_tokens
            if seq_given and plan.seq != prompt + new:
                raise SpecError(f"--seq {plan.seq} is the whole context and must equal --prompt-tokens {prompt} + "
                                f"--new-tokens {new} (or leave --seq out)")
    else:
        new = 0 if new_tokens is None else new_tokens
        prompt = plan.seq if prompt_tokens is None else prompt_tokens
        if seq_given and prompt_tokens is not None and plan.seq != prompt:
            raise SpecError(f"--seq {plan.seq} and --prompt-tokens {prompt} disagree (either alone is the context)")
    for name, v in (("prompt-tokens", prompt), ("new-tokens", new)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "prompt-tokens" else 0):
            raise SpecError(f"{name} must be a {'positive' if name == 'prompt-tokens' else 'non-negative'} integer, "
                            f"got {v!r}")
    return ServeConfig(plan=dataclasses.replace(plan, batch=c, seq=prompt + new), prompt_tokens=prompt,
                       new_tokens=new, concurrency=c, **kw)


def with_workload(s: ServeConfig, *, concurrency: int | None = None, prompt_tokens: int | None = None) -> ServeConfig:
    """The same configuration at another concurrency or prompt length (the context follows)."""
    c = s.concurrency if concurrency is None else concurrency
    p = s.prompt_tokens if prompt_tokens is None else prompt_tokens
    return dataclasses.replace(s, plan=dataclasses.replace(s.plan, batch=c, seq=p + s.new_tokens), concurrency=c,
                               prompt_tokens=p)


# ---------------------------------------------------------------------------------------------------------
# results

@dataclass(frozen=True)
class GPUShare:
    """One GPU of a split model (S4): what accelerate places on it and its memory."""

    index: int
    modules: str  # "embed, blocks 0-19"
    blocks: int
    weights: int
    kv_cache: int
    transient: int
    allocated: int
    reserve: int
    context: int

    @property
    def process_bytes(self) -> int:
        return self.allocated + self.reserve + self.context

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), process_bytes=self.process_bytes)


@dataclass(frozen=True)
class VllmPool:
    """vLLM's KV pool on one GPU, as it logs it (S7, S8)."""

    budget_bytes: int  # gpu_memory_utilization x memory
    weights_bytes: int
    lora_bytes: int
    activation_peak_bytes: int
    non_torch_bytes: int
    kv_pool_bytes: int  # available KV cache memory
    page_bytes: int  # one block, all layers
    num_blocks: int
    kv_tokens: int
    max_model_len: int
    max_concurrency: float  # at max_model_len
    max_num_batched_tokens: int
    max_num_seqs: int
    cuda_graph_bytes: int
    context_bytes: int

    @property
    def process_bytes(self) -> int:
        """What nvidia-smi shows: the budget (used up by the pool), the CUDA graphs and the CUDA context (S7)."""
        return self.budget_bytes + self.cuda_graph_bytes + self.context_bytes

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), process_bytes=self.process_bytes)


@dataclass(frozen=True)
class Speed:
    """The roofline beside the memory (throughput.py assumptions 4, 6, 8)."""

    decode_step_s: float
    decode_tok_s_per_seq: float
    decode_tok_s: float  # aggregate of one replica at its concurrency
    decode_bound: str
    prefill_s: float  # time to first token: the prompts of the batch in one prefill
    prefill_tok_s: float
    request_s: float  # one request: TTFT + new tokens x decode step
    replicas: int
    util: TP.Utilisation

    @property
    def total_decode_tok_s(self) -> float:
        return self.decode_tok_s * self.replicas

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["util"] = self.util.to_dict()
        d["total_decode_tok_s"] = self.total_decode_tok_s
        return d


@dataclass(frozen=True)
class ServePlan:
    config: ServeConfig
    params: int
    components: dict = field(hash=False)  # per GPU (the busiest one of a split model)
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    process_bytes: int
    gpus: tuple[GPUShare, ...] = ()  # split model: one row per GPU of a replica
    vllm: VllmPool | None = None
    offloaded_blocks: int = 0  # split model: blocks accelerate could not place on the GPUs
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"serve": self.config.to_dict(), "params": self.params, "components": dict(self.components),
                "peak_allocated_bytes": self.peak_allocated_bytes, "peak_reserved_bytes": self.peak_reserved_bytes,
                "process_bytes": self.process_bytes, "gpus": [g.to_dict() for g in self.gpus],
                "vllm": self.vllm.to_dict() if self.vllm else None, "offloaded_blocks": self.offloaded_blocks,
                "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------------------
# named cost functions

def _a(cfg: PlanConfig) -> int:
    return cfg.compute_dtype.nbytes


def one_position_logits(cfg: PlanConfig, do_sample: bool = True, decode: bool = False,
                        warpers: bool = True) -> tuple[int, int]:
    """(logits of one position in the compute dtype, the fp32 tensors beside them at the sampling's peak) for
    ``cfg.batch`` sequences (S1b); a final softcap (families F5) makes a second logits tensor. ``decode``: a step
    after the first, where the previous step's scores and probabilities are still bound. ``warpers`` False: no
    logits processor (S1b)."""
    m = cfg.model
    BV = cfg.batch * m.vocab_size
    logits = (2 if family(m).final_logit_softcap else 1) * _a(cfg) * BV
    if do_sample and not warpers:  # the copy (= the scores), the softmax, multinomial's exponential noise; a decode
        per = 4 + 4 + 4             # step: the same three (the previous copy and probabilities rebound by then)
    elif do_sample:  # copy, top-k mask (bool) and masked copy, then the softmax (the mask freed by then)
        per = (4 + 4 + 4 + 1 + 4) if decode else max(4 + 1 + 4, 4 + 4 + 4)
    else:  # the copy (and, decoding, the previous step's)
        per = 8 if decode else 4
    return logits, per * BV


def generate_ids_bytes(s: "ServeConfig", decode: bool) -> int:
    """generate's own int64 tensors at a phase's peak (S1c)."""
    B, P = s.concurrency, s.prompt_tokens
    if decode:
        return 8 * B * (P + (P + s.new_tokens) + (P + s.new_tokens - 1))
    return 8 * B * 2 * P


def position_tables(cfg: PlanConfig, tokens: int) -> int:
    """What generate's per-sequence position ids (batch x tokens) add to a forward over ``cfg.batch`` x ``tokens``
    tokens beyond :func:`quantlab.planner.memory.prefill_transient` (S1c; families F3): RoPE's cos and sin in the
    compute dtype (batch x tokens x head_dim each), or, for learned positions, the position embedding's output for
    every sequence rather than one broadcast row (batch - 1 more tokens x hidden)."""
    m = cfg.model
    if family(m).positional == "rope":
        return 2 * cfg.batch * tokens * m.head_dim * _a(cfg)
    return (cfg.batch - 1) * tokens * m.hidden_size * _a(cfg)


def held_attention_weights(cfg: PlanConfig, tokens: int) -> int:
    """Eager attention's weights (batch x heads x tokens x tokens in the compute dtype) that a decoder block keeps
    through its MLP (S1c: transformers 5.24 ``modeling_llama.py`` / ``modeling_gemma2.py`` / ``modeling_gpt2.py``
    ``DecoderLayer.forward``: ``hidden_states, _ = self.self_attn(...)`` binds them to ``_`` until the block returns);
    SDPA returns none."""
    if _attention(cfg) is not Attention.EAGER:
        return 0
    m = cfg.model
    return cfg.batch * m.num_attention_heads * tokens * tokens * _a(cfg)


def prefill_block(cfg: PlanConfig, tokens: int, notes: list) -> int:
    """One block's transient over ``cfg.batch`` x ``tokens`` tokens in a generate forward (S1, S1c): the larger of
    the attention (memory.py's eager branch) and the MLP with eager attention's weights still bound beside it
    (the same transient without the eager branch: SDPA on a CPU, or FlashAttention), plus the position tables."""
    t = block_transient(cfg, tokens, notes)
    held = held_attention_weights(cfg, tokens)
    if held:  # the masks eager attention builds live through the whole forward (families F4)
        mlp = block_transient(dataclasses.replace(cfg, attn=Attention.SDPA, flash_attention=True), tokens, [])
        masks = attention_masks(cfg.model) * cfg.batch * tokens * tokens * _a(cfg)
        t = max(t, mlp + held + masks)
    return t + position_tables(cfg, tokens)


def repeated_kv(s: "ServeConfig") -> int:
    """K and V of one layer repeated to every attention head at a decode step (S3): eager attention
    (``repeat_kv`` in ``eager_attention_forward``), where there are fewer KV heads than heads; SDPA passes
    ``enable_gqa`` instead (``use_gqa_in_sdpa``, transformers 5.24 ``integrations/sdpa_attention.py``)."""
    cfg = s.plan
    m = cfg.model
    if m.kv_heads >= m.num_attention_heads:
        return 0
    if _attention(cfg) is not Attention.EAGER:
        return 0
    n = cached_positions(s)
    full = _layer_kv_full(s, n) * m.num_attention_heads // m.kv_heads
    # one KV head (multi-query): repeat_kv's reshape of the expanded tensor is a view, and torch.matmul copies the
    # broadcast K (then V) for its bmm, one at a time
    return full // 2 if m.kv_heads == 1 else full


def decode_attention(s: "ServeConfig") -> int:
    """Eager attention's own bytes at a decode step beyond the cache (S3): K and V repeated to every head
    (:func:`repeated_kv`), the scores of one query over the context (batch x heads x context: memory.py's eager
    rule, in the compute dtype plus the fp32 softmax input and output when that is not fp32) and the masks over the
    context (families F4); 0 for SDPA."""
    cfg = s.plan
    if _attention(cfg) is not Attention.EAGER:
        return 0
    m = cfg.model
    n = cached_positions(s)
    a = _a(cfg)
    S_ = cfg.batch * m.num_attention_heads * n
    scores = 2 * 4 * S_ if a == 4 else S_ * a + 2 * 4 * S_
    if m.kv_heads == 1:  # the copy of V is made at the second matmul, beside the weights alone (compute dtype)
        scores = S_ * a
    return repeated_kv(s) + scores + attention_masks(m) * cfg.batch * n * a


def _stream(cfg: PlanConfig, tokens: int) -> int:
    """The residual stream beside a block's attention over ``cfg.batch`` x ``tokens`` tokens: memory.py's
    ``prefill_transient`` of the same block without its MLP (intermediate size 1) and without a k-bit matmul's
    dequantized weight (the weights in the compute dtype), the attention in SDPA (S3: while the cache appends, the
    MLP's tensors are not alive)."""
    m1 = dataclasses.replace(cfg.model, intermediate_size=1)
    f = dataclasses.replace(cfg, model=m1, attn=Attention.SDPA, flash_attention=True,
                            precision=Precision(cfg.compute_dtype.value))
    return block_transient(f, tokens, [])


def lora_block(s: "ServeConfig", tokens: int) -> int:
    """The largest moment of a block's unmerged LoRA forward over ``batch`` x ``tokens`` tokens (S6b), beside the
    residual stream; 0 without adapters. PEFT 0.21.2 ``lora/layer.py`` ``Linear.forward``: ``result =
    base_layer(x)``, the input cast to the adapter's fp32 (``_cast_input_dtype``: a T x in copy unless the model is
    fp32), ``result + lora_B(lora_A(x)) * scaling``: lora_B's output, its scaled copy and, for a bf16/fp16 result,
    the fp32 copy that type promotion makes of the result and the fp32 sum (measured on a CPU: 3 fp32 T x out
    tensors beside the base output; fp32: 2). Beside it the tensor the block holds at that linear (transformers
    5.24 ``LlamaMLP.forward``: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``): act(gate) at a gated MLP's
    second linear, the MLP product (or activation) at the linear that reads the intermediate width."""
    if not s.adapters or s.merged or s.engine is not Engine.TRANSFORMERS:
        return 0
    cfg = s.plan
    m = cfg.model
    a = _a(cfg)
    T = cfg.batch * tokens
    I = m.intermediate_size
    gated = family(m).gated_mlp
    targets = {l.name for l in m.lora_linears(tuple(cfg.lora_targets))}
    best, mlp_seen = 0, 0
    for l in module_linears(m):
        mlp_in = l.in_features == I
        mlp_out = l.out_features in (I, 2 * I)
        held = a * T * I if (mlp_in or (gated and mlp_out and mlp_seen)) else 0
        mlp_seen += mlp_out
        if l.name not in targets:
            continue
        O = l.out_features
        peak = a * T * O + (3 if a != 4 else 2) * 4 * T * O + (4 * T * l.in_features if a != 4 else 0)
        best = max(best, held + peak)
    return best + _stream(cfg, tokens) if best else 0


def padding_mask_bytes(s: "ServeConfig", queries: int, keys: int) -> int:
    """SDPA's bool mask over left-padded prompts, alive through a forward (S1d); 0 unpadded or eager (F4)."""
    if not s.padded_prompts or _attention(s.plan) is Attention.EAGER:
        return 0
    return s.concurrency * queries * keys


def held_scores(cfg: PlanConfig, do_sample: bool, warpers: bool = True) -> int:
    """The previous step's fp32 tensors that ``_sample``'s locals keep through the next forward (S1b): the logits'
    copy, the processed scores and the probabilities when sampling (the copy is the scores, greedy, and with no
    logits processor: ``warpers`` False)."""
    return ((12 if warpers else 8) if do_sample else 4) * cfg.batch * cfg.model.vocab_size


def cached_positions(s: "ServeConfig") -> int:
    """Positions in the cache at the end (S1, S3): generate never feeds back the last token it samples (transformers
    ``generation/utils.py`` ``generate``: ``max_cache_length = generation_config.max_length - 1``), so it holds
    prompt + new - 1; a prefill or score forward holds the prompt."""
    return s.prompt_tokens + max(s.new_tokens - 1, 0)


def block_transient(cfg: PlanConfig, tokens: int, notes: list) -> int:
    """One block's transient over ``cfg.batch`` x ``tokens`` tokens, without any logits (S1): memory.py's
    ``prefill_transient`` (its assumption 7) on the same model with a one-entry vocabulary, so that its logits
    term (T x vocab) cannot be the larger one (T x (hidden + 1) is below the residual stream it holds)."""
    m1 = dataclasses.replace(cfg.model, vocab_size=1)
    return M.prefill_transient(dataclasses.replace(cfg, model=m1, seq=tokens), _attention(cfg), notes)


def _attention(cfg: PlanConfig) -> Attention:
    """The attention that runs: a family without an SDPA path in transformers 5 runs eager (families F5)."""
    if cfg.attn is Attention.SDPA and not family(cfg.model).sdpa and cfg.library == "transformers":
        return Attention.EAGER
    return cfg.attn


def kv_bytes(s: ServeConfig, positions: int) -> int:
    """KV cache per GPU (whole model, tp-divided) when every sequence holds ``positions`` tokens (S3, memory.py
    ``kv_cache``); the quantized cache stores ``kv_bits`` per value plus group constants, and its residual window
    in full precision."""
    full = M.kv_cache(dataclasses.replace(s.plan, seq=positions))
    if s.cache is not Cache.QUANTIZED:
        return full
    residual = min(positions, s.residual_length - 1)
    q = positions - residual
    fq = M.kv_cache(dataclasses.replace(s.plan, seq=q)) if q else 0
    a = _a(s.plan)
    stored = fq * s.kv_bits // (8 * a) + fq * 2 // s.q_group_size  # values + (scale, zero-point) per group
    return stored + (full - fq)


def _layer_kv_full(s: ServeConfig, positions: int) -> int:
    """One layer's K and V at ``positions`` in full precision (the cache transients of S3)."""
    return M.kv_cache(dataclasses.replace(s.plan, seq=positions)) // s.plan.model.num_hidden_layers


def cache_transient(s: ServeConfig) -> int:
    """The cache's own short-lived bytes in a decode step (S3)."""
    n = cached_positions(s)
    if s.cache is Cache.DYNAMIC:  # torch.cat of the keys, then of the values: one of them at a time
        return _layer_kv_full(s, n) // 2
    if s.cache is Cache.QUANTIZED:
        return 2 * _layer_kv_full(s, n)
    return 0


def adapter_bytes(s: ServeConfig) -> int:
    """Resident LoRA adapters (S6): PEFT's K unmerged adapters in fp32, or vLLM's max_loras slots."""
    if not s.adapters:
        return 0
    p, m = s.plan, s.plan.model
    L = m.num_hidden_layers
    if s.engine is Engine.VLLM:
        r = s.lora_rank_slots
        per = sum(l.count * (r * l.in_features + l.out_features * r) for l in module_linears(m))
        return s.adapters * L * per * _a(p) // p.tp
    per = sum(l.count * (p.lora_r * l.in_features + l.out_features * p.lora_r)
              for l in m.lora_linears(tuple(p.lora_targets)))
    return s.adapters * L * per * 4


def _weights(cfg: PlanConfig, notes: list) -> tuple[int, int]:
    pc = count_params(cfg.model)
    load = cfg.compute_dtype.nbytes if cfg.precision.is_kbit else {"fp32": 4, "fp16": 2, "bf16": 2}[cfg.precision.value]
    return M.weights(cfg, pc, load, load, notes)


def _phases(s: ServeConfig, notes: list) -> tuple[int, int, int, int, int, int]:
    """(KV at the end of prefill, prefill transient, KV at the end of decode, decode transient, logits on lm_head's
    GPU, their fp32 copies) per replica, before any split (S1, S3)."""
    cfg = s.plan
    logits, copies = one_position_logits(cfg, s.do_sample, warpers=s.logits_warpers)
    pre_block = max(prefill_block(cfg, s.prompt_tokens, notes),
                    lora_block(s, s.prompt_tokens) + position_tables(cfg, s.prompt_tokens)) \
        + padding_mask_bytes(s, s.prompt_tokens, s.prompt_tokens)
    kv_prompt = kv_bytes(s, cached_positions(s) if s.cache is Cache.STATIC else s.prompt_tokens)
    pre = max(pre_block, logits + copies) + generate_ids_bytes(s, False)
    if s.mode is Mode.PREFILL:
        return kv_prompt, pre, 0, 0, logits, copies
    d_logits, d_copies = one_position_logits(cfg, s.do_sample, decode=True, warpers=s.logits_warpers)
    kv_end = kv_bytes(s, cached_positions(s))
    dec_block = (max(block_transient(cfg, 1, []), lora_block(s, 1),
                     _stream(cfg, 1) + max(cache_transient(s), decode_attention(s)))
                 + position_tables(cfg, 1) + held_scores(cfg, s.do_sample, s.logits_warpers)
                 + padding_mask_bytes(s, 1, cached_positions(s)))
    dec = max(dec_block, d_logits + d_copies) + generate_ids_bytes(s, True)
    return kv_prompt, pre, kv_end, dec, d_logits, max(copies, d_copies)


def transformers_plan(s: ServeConfig) -> ServePlan:
    """transformers generate / forward on one GPU, or tensor parallel (S1-S3, S5, S6)."""
    cfg = s.plan
    notes: list[str] = []
    if s.mode is Mode.SCORE:
        p = M.plan(cfg)
        comps = dict(p.components)
        comps = {"weights": comps.pop("weights"), **({"adapters": adapter_bytes(s)} if s.adapters else {}), **comps}
        comps["logits"] = comps.pop("prefill_transient")
        extra = comps.get("adapters", 0)
        notes.append("score: one forward keeps every token's logits (S2; memory.py assumption 7): the larger of the "
                     "logits and one block's transient is shown as 'logits'")
        reserve, ctx = M.allocator(cfg, comps["kv_cache"] + comps["logits"])
        return ServePlan(s, p.params, comps, p.peak_allocated_bytes + extra, p.peak_allocated_bytes + extra + reserve,
                         p.peak_allocated_bytes + extra + reserve + ctx, notes=tuple(notes + list(p.notes)))
    w, qc = _weights(cfg, notes)
    ad = adapter_bytes(s)
    kv_p, pre, kv_e, dec, _, _ = _phases(s, notes)
    static = w + qc + ad
    dynamic = max(kv_p + pre, kv_e + dec)
    reserve, ctx = M.allocator(cfg, dynamic)
    comps = {"weights": w}
    if qc:
        comps["quant_constants"] = qc
    if ad:
        comps["adapters"] = ad
    comps["kv_cache"] = max(kv_p, kv_e)
    comps["prefill_transient"] = pre
    if s.mode is Mode.GENERATE:
        comps["decode_transient"] = dec
    comps["cuda_context"] = ctx
    comps["allocator_reserve"] = reserve
    notes.append(f"{s.mode.value}: the prefill keeps one position's logits (logits_to_keep=1, S1); peak = "
                 + ("prefill phase" if kv_p + pre >= kv_e + dec else "decode phase")
                 + f" ({s.cache.value} cache, S3)")
    if s.merged:
        notes.append("merged adapter: folded into the base weights, no overhead (S6)")
    allocated = static + dynamic
    return ServePlan(s, count_params(cfg.model).total, comps, allocated, allocated + reserve,
                     allocated + reserve + ctx, notes=tuple(notes))


# ---- S4: device_map="auto" -----------------------------------------------------------------------------------

def module_sizes(cfg: PlanConfig) -> tuple[int, int, int, int]:
    """(embedding, one decoder block, final norm + buffers, lm_head) bytes as accelerate sizes them; lm_head is 0
    when tied (its weight is the embedding's). Quantization constants count with their block."""
    notes: list = []
    pc = count_params(cfg.model)
    one = dataclasses.replace(cfg, tp=1, num_gpus=1)
    w, qc = _weights(one, notes)
    load = cfg.compute_dtype.nbytes if cfg.precision.is_kbit else {"fp32": 4, "fp16": 2, "bf16": 2}[cfg.precision.value]
    embed = pc.embedding * load
    head = pc.lm_head * load
    outside = embed + head + pc.final_norm * load
    block = (w - outside) // pc.layers + qc // pc.layers
    tail = w + qc - embed - head - block * pc.layers  # final norm, buffers and the rounding remainder
    return embed, block, tail, head


def device_map(cfg: PlanConfig, gpu_bytes: int, n: int) -> tuple[list[list[str]], list[int], list[int], int]:
    """accelerate's placement over ``n`` GPUs of ``gpu_bytes`` free memory each (S4): (module names per GPU,
    weight bytes per GPU, blocks per GPU, blocks left over for CPU offload)."""
    embed, block, tail, head = module_sizes(cfg)
    L = cfg.model.num_hidden_layers
    total = embed + L * block + tail + head
    max_mem = [gpu_bytes] * n
    per_gpu = total // n + int(1.25 * max(block, embed, head))
    for i in range(n - 1):
        max_mem[i] = min(per_gpu, gpu_bytes)
    if cfg.precision.is_kbit:  # transformers quantizers' adjust_max_memory
        max_mem = [int(x * 0.9) for x in max_mem]
    modules = [("embed", embed)] + [(f"block {i}", block) for i in range(L)] + [("norm", tail)]
    if head:
        modules.append(("lm_head", head))
    names: list[list[str]] = [[] for _ in range(n)]
    used, blocks = [0] * n, [0] * n
    dev = 0
    largest = max(block, embed, head)
    k = 0
    while k < len(modules) and dev < n:
        name, size = modules[k]
        cap = max_mem[dev] - (largest if dev == 0 else 0)
        if used[dev] + size <= cap:
            used[dev] += size
            names[dev].append(name)
            blocks[dev] += name.startswith("block")
            k += 1
        else:
            dev += 1
    left = sum(1 for name, _ in modules[k:] if name.startswith("block"))
    if k < len(modules):  # what does not fit on a GPU: accelerate offloads it (counted as not fitting)
        names[-1].append("(" + ", ".join(nm for nm, _ in modules[k:k + 1]) + (" ..." if len(modules) - k > 1 else "")
                         + " offloaded)")
    return names, used, blocks, left


def _describe(names: list[str]) -> str:
    """'embed, blocks 0-19' from the module names on one GPU."""
    idx = [int(x.split()[1]) for x in names if x.startswith("block ")]
    parts = [x for x in names if not x.startswith("block ") and x != "norm"]
    if idx:
        parts.insert(1 if "embed" in parts else 0, f"blocks {idx[0]}-{idx[-1]}" if len(idx) > 1 else f"block {idx[0]}")
    if "norm" in names:
        parts.append("norm")
    return ", ".join(parts) or "-"


def split_plan(s: ServeConfig, gpu_bytes: int | None) -> ServePlan:
    """A model split over a replica's GPUs by device_map="auto" (S4), each GPU with its blocks' KV and transients."""
    cfg = s.plan
    n = s.per_replica_gpus
    notes: list[str] = []
    one = dataclasses.replace(cfg, tp=1, num_gpus=1)
    s1 = dataclasses.replace(s, plan=one, replicas=1)
    ctx = M.CUDA_CONTEXT_BYTES if cfg.device is DeviceMode.CUDA else 0
    free = (gpu_bytes if gpu_bytes is not None else 80 * GiB) - ctx
    names, used, blocks, left = device_map(cfg, free, n)
    L = cfg.model.num_hidden_layers
    kv_p, pre, kv_e, dec, logits, copies = _phases(s1, notes)
    ad = adapter_bytes(s)
    rows = []
    head_gpu = max(i for i in range(n) if names[i]) if not cfg.model.tie_word_embeddings else 0
    for i in range(n):
        b = blocks[i]
        kvp, kve = kv_p * b // L, kv_e * b // L
        blk_pre = block_transient(one, s.prompt_tokens, []) if b else 0
        blk_dec = (block_transient(one, 1, []) + cache_transient(s1)) if b and s.mode is Mode.GENERATE else 0
        lg = (logits if i == head_gpu else 0) + (copies if i == 0 else 0)
        pre_i, dec_i = max(blk_pre, lg), max(blk_dec, lg) if s.mode is Mode.GENERATE else 0
        dyn = max(kvp + pre_i, kve + dec_i)
        w_i = used[i] + ad * b // L
        reserve, c = M.allocator(cfg, dyn)
        rows.append(GPUShare(i, _describe(names[i]), b, w_i, max(kvp, kve), max(pre_i, dec_i), w_i + dyn, reserve, c))
    busiest = max(rows, key=lambda r: r.process_bytes)
    comps = {"weights": busiest.weights, "kv_cache": busiest.kv_cache, "transient": busiest.transient,
             "cuda_context": busiest.context, "allocator_reserve": busiest.reserve}
    notes.append(f"device_map=\"auto\" splits {cfg.model.name} over {n} GPUs (S4): whole blocks per GPU; the GPUs "
                 "run one after another (no speed-up over one GPU, S4); components shown for the fullest GPU "
                 f"(GPU {busiest.index})")
    if left:
        notes.append(f"accelerate would offload {left} blocks to the CPU: the GPUs are too small (counted as not "
                     "fitting)")
    return ServePlan(s, count_params(cfg.model).total, comps, busiest.allocated, busiest.allocated + busiest.reserve,
                     busiest.process_bytes, gpus=tuple(rows), offloaded_blocks=left, notes=tuple(notes))


# ---- S7, S8: vLLM ---------------------------------------------------------------------------------------------

def vllm_defaults(gpu: GPUSpec | None) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that ``vllm serve`` picks on this GPU (S7)."""
    if gpu is not None and gpu.memory_bytes >= 70 * GiB and "a100" not in gpu.name.lower():
        return 8192, 1024
    return 2048, 256


def vllm_weights(cfg: PlanConfig, notes: list) -> int:
    """Weights per GPU under vLLM (S7): block linears / tp (memory.weights), the padded vocabulary's embedding and
    lm_head / tp as well (vocab-parallel)."""
    w, qc = _weights(cfg, notes)
    m = cfg.model
    pc = count_params(m)
    load = cfg.compute_dtype.nbytes if cfg.precision.is_kbit else {"fp32": 4, "fp16": 2, "bf16": 2}[cfg.precision.value]
    vocab = pc.embedding + pc.lm_head
    padded = -(-m.vocab_size // VOCAB_PADDING) * VOCAB_PADDING * m.hidden_size * (1 if m.tie_word_embeddings else 2)
    return w + qc - vocab * load + padded * load // cfg.tp


def vllm_activation_peak(s: ServeConfig, max_tokens: int, max_seqs: int) -> int:
    """The profile run's torch peak above the weights (S7): one block over max_num_batched_tokens tokens, or the
    sampler over min(max_num_seqs, max_num_batched_tokens) rows of the vocabulary."""
    cfg = s.plan
    m = cfg.model
    a = _a(cfg)
    T = max_tokens
    I = m.intermediate_size * (m.num_experts_per_tok if m.is_moe else 1)
    h = m.hidden_size
    qkv = (m.num_attention_heads + 2 * m.kv_heads) * m.head_dim
    mlp = a * T * (2 * I + I) // cfg.tp  # gate_up output and SiluAndMul beside it
    attn = a * T * (qkv + m.num_attention_heads * m.head_dim) // cfg.tp
    stream = 3 * a * T * h  # hidden states, residual, normed input (whole on every rank)
    rows = min(max_seqs, max_tokens)
    vocab = -(-m.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    sampler = rows * vocab * (a + 4 * (SAMPLER_ROWS - 1))
    return max(max(mlp, attn) + stream, sampler)


def vllm_plan(s: ServeConfig, gpu: GPUSpec | None) -> ServePlan:
    """vLLM's memory on one GPU of a replica (S5-S8): the budget, what it holds, the KV pool in blocks."""
    cfg = s.plan
    m = cfg.model
    notes: list[str] = []
    # S7: the budget multiplies CUDA's total (torch.cuda.mem_get_info()[1]), which is below NVML's by what the
    # driver keeps; where the GPU profile has no source for it, NVML's total stands in (over by ~0.4 GiB)
    mem = (gpu.cuda_total_bytes or gpu.memory_bytes) if gpu is not None else 80 * GiB
    if gpu is None:
        notes.append("no --gpu: vLLM's budget planned on an 80 GiB GPU")
    elif gpu.cuda_total_bytes is None:
        notes.append(f"vLLM's budget is planned on {gpu.name}'s NVML total: CUDA reports about 0.4 GiB less "
                     "(no source for it in the profile), so the KV pool may be a few hundred MiB smaller (S7)")
    d_tokens, d_seqs = vllm_defaults(gpu)
    max_tokens = s.max_num_batched_tokens or d_tokens
    max_seqs = s.max_num_seqs or d_seqs
    max_len = s.max_model_len or vllm_derived_max_len(m, s.rope_scaling)
    if max_tokens < max_len and s.max_num_batched_tokens is None:
        pass  # chunked prefill (v1 default) lets max_num_batched_tokens sit below max_model_len
    budget = int(mem * s.gpu_memory_utilization)
    w = vllm_weights(cfg, notes)
    lora = adapter_bytes(s)
    act = vllm_activation_peak(s, max_tokens, max_seqs)
    non_torch = VLLM_NON_TORCH_BYTES + (VLLM_NCCL_BYTES if cfg.tp > 1 else 0)
    pool = budget - w - lora - act - non_torch
    kv_heads = max(1, m.kv_heads // cfg.tp)
    kv_dtype = cfg.kv_dtype or cfg.compute_dtype
    page_layer = 2 * s.block_size * kv_heads * m.head_dim * kv_dtype.nbytes
    page = page_layer * m.num_hidden_layers
    blocks = max(0, pool // page_layer // m.num_hidden_layers)
    per_request = -(-max_len // s.block_size)
    graphs = 0 if s.enforce_eager else VLLM_CUDA_GRAPH_BYTES
    ctx = M.CUDA_CONTEXT_BYTES
    v = VllmPool(budget, w, lora, act, non_torch, max(pool, 0), page, blocks, blocks * s.block_size, max_len,
                 blocks / per_request, max_tokens, max_seqs, graphs, ctx)
    comps = {"weights": w}
    if lora:
        comps["adapters"] = lora
    comps.update({"activation_peak": act, "non_torch": non_torch, "kv_cache": max(pool, 0), "cuda_graphs": graphs,
                  "cuda_context": ctx})
    if kv_heads * cfg.tp > m.kv_heads:
        notes.append(f"tp {cfg.tp} is above {m.name}'s {m.kv_heads} KV heads: each GPU keeps one (replicated, S5)")
    if s.adapters:
        cpu = (s.max_cpu_loras or s.adapters) * lora // max(s.adapters, 1) * cfg.tp
        notes.append(f"vLLM LoRA: {s.adapters} GPU slot(s) of rank {s.lora_rank_slots} for every linear (S6); "
                     f"max_cpu_loras {s.max_cpu_loras or s.adapters} wait in CPU memory (~{cpu / GiB:.2f} GiB of host "
                     "RAM)")
    if m.sliding_window:
        notes.append("vLLM's pool is planned as full attention for the sliding-window layers (S8: an upper bound)")
    notes.append("vLLM fills its budget (gpu_memory_utilization x memory) with the KV pool; the CUDA graphs and the "
                 "CUDA context lie outside it (S7, vLLM at commit 35d5cda1; v0.21+ counts the graphs inside: "
                 f"about {graphs * blocks // max(pool, 1) if pool > 0 else 0:,} fewer blocks)")
    allocated = budget
    return ServePlan(s, count_params(m).total, comps, allocated, allocated, v.process_bytes, vllm=v,
                     notes=tuple(notes))


def serve_plan(s: ServeConfig, gpu: GPUSpec | None = None) -> ServePlan:
    """The serving plan of ``s`` (per GPU of one replica), on ``gpu`` where vLLM or a split needs its memory."""
    if s.engine is Engine.VLLM:
        p = vllm_plan(s, gpu)
    elif s.split:
        p = split_plan(s, gpu.memory_bytes if gpu is not None else None)
    else:
        p = transformers_plan(s)
    notes = list(p.notes)
    limit = context_limit(s.plan.model, s.rope_scaling)
    if s.context > limit:
        notes.append(f"warning: context {s.context} is beyond {s.plan.model.name}'s {limit} tokens"
                     + (f" (rope {s.rope_scaling.type} x{s.rope_scaling.factor:g})" if s.rope_scaling else "")
                     + "; --rope-scaling TYPE:FACTOR plans a longer one (S9)")
    if s.replicas > 1:
        notes.append(f"{s.replicas} replicas of {s.per_replica_gpus} GPU(s) each (S5): memory is per GPU, "
                     "throughput adds up")
    return dataclasses.replace(p, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------------------
# fit: does the plan fit, how many sequences, how long a context (S10)

def fits(p: ServePlan, gpu: GPUSpec, headroom: float = 0.0) -> bool:
    """The plan fits ``gpu`` keeping ``headroom`` (a fraction of its memory) free. vLLM: the pool holds the
    requested concurrency at its context, one max_model_len request, and the process total fits."""
    budget = int(gpu.memory_bytes * (1 - headroom))
    if p.offloaded_blocks:
        return False
    if p.vllm is not None:
        v, s = p.vllm, p.config
        need = s.concurrency * -(-s.context // s.block_size)
        per_req = -(-v.max_model_len // s.block_size)
        return (v.num_blocks >= max(need, per_req) and s.concurrency <= v.max_num_seqs
                and v.process_bytes <= budget)
    return p.process_bytes <= budget


def _search(ok, lo: int, hi: int) -> int:
    """Bisection: the largest x in [lo, hi] with ok(x), given ok(lo) (the reference search)."""
    a, b = lo, hi + 1
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (mid, b) if ok(mid) else (a, mid)
    return a


def _closed(value, ok, x1: int, x2: int, limit: int, cap: int) -> int:
    """The largest x <= cap with ok(x), where the process total ``value`` is the max of affine phases (S10): the
    root of the line through two planned points, accepted when ok() confirms it at the boundary (ok(x) and not
    ok(x + 1)). A convex function's secant from the left lands past the root, so a miss becomes the new upper
    bracket and the next secant goes through it; after a few steps a bisection over the bracket decides."""
    if not ok(x1):
        return x1 - 1
    lo, hi = x1, cap + 1  # ok(lo); hi does not fit (or is past the cap)
    pts = [(x1, value(x1))]
    if min(x2, cap) > x1:
        pts.append((min(x2, cap), value(min(x2, cap))))
    for _ in range(6):
        if len(pts) < 2:
            break
        (xa, va), (xb, vb) = pts[-2], pts[-1]
        if xb == xa or vb <= va:
            break
        x = xa + math.floor((limit - va) * (xb - xa) / (vb - va))
        x = max(lo, min(x, hi - 1))
        if ok(x):
            lo = x
            if x + 1 >= hi or not ok(x + 1):
                return x
        else:
            hi = x
        if hi - lo <= 1:
            return lo
        pts.append((x, value(x)))
    return _search(ok, lo, hi - 1)


def _probes(s: ServeConfig, gpu: GPUSpec, headroom: float, field: str):
    """(process bytes, fits) of ``s`` with ``field`` (concurrency or prompt_tokens) set to x: what the closed forms
    and the reference searches probe (an invalid configuration is infinite and does not fit)."""
    def plan_at(x: int) -> ServePlan:
        return serve_plan(with_workload(s, **{field: x}), gpu)

    def value(x: int) -> float:
        try:
            return plan_at(x).process_bytes
        except SpecError:
            return math.inf

    def ok(x: int) -> bool:
        try:
            return fits(plan_at(x), gpu, headroom)
        except SpecError:
            return False

    return value, ok


def _doubling_search(ok, cap: int) -> int:
    """The largest x <= cap with ok(x), ok monotone: doubling then bisection, planning every probe (0: none)."""
    if not ok(1):
        return 0
    lo = 1
    while lo * 2 <= cap and ok(lo * 2):
        lo *= 2
    return _search(ok, lo, min(cap, lo * 2 - 1))


def max_concurrency(s: ServeConfig, gpu: GPUSpec, *, headroom: float = 0.0, cap: int = 65536) -> int:
    """The largest concurrency that fits ``gpu`` at ``s``'s context (S10; vLLM: its blocks, S8)."""
    if s.engine is Engine.VLLM:
        v = serve_plan(s, gpu).vllm
        if v.process_bytes > gpu.memory_bytes * (1 - headroom) or v.num_blocks < -(-v.max_model_len // s.block_size):
            return 0
        return min(cap, v.max_num_seqs, v.num_blocks // -(-s.context // s.block_size))
    value, ok = _probes(s, gpu, headroom, "concurrency")
    return max(0, _closed(value, ok, 1, 2, int(gpu.memory_bytes * (1 - headroom)), cap))


def prompt_limit(s: ServeConfig) -> int:
    """The longest prompt the model is planned to take: its context (S9: max_position_embeddings, or the trained
    context x the rope factor) less the new tokens; at least 1."""
    return max(1, context_limit(s.plan.model, s.rope_scaling) - s.new_tokens)


def max_prompt(s: ServeConfig, gpu: GPUSpec, *, headroom: float = 0.0, cap: int | None = None) -> int:
    """The longest prompt (context less the new tokens) that fits at ``s``'s concurrency (S10; vLLM: S8), at most
    the model's own context (:func:`prompt_limit`): memory for a longer prompt is no use to a model that was not
    trained or rope-scaled to it."""
    cap = min(cap or PROMPT_CAP, prompt_limit(s))
    if s.engine is Engine.VLLM:
        v = serve_plan(s, gpu).vllm
        if v.process_bytes > gpu.memory_bytes * (1 - headroom):
            return 0
        tokens = (v.num_blocks // s.concurrency) * s.block_size
        return max(0, min(tokens, v.max_model_len) - s.new_tokens)
    value, ok = _probes(s, gpu, headroom, "prompt_tokens")
    return max(0, _closed(value, ok, 1, 1024, int(gpu.memory_bytes * (1 - headroom)), cap))


def search_concurrency(s: ServeConfig, gpu: GPUSpec, *, headroom: float = 0.0, cap: int = 65536) -> int:
    """The reference for :func:`max_concurrency`: doubling then bisection, planning every probe."""
    return _doubling_search(_probes(s, gpu, headroom, "concurrency")[1], cap)


def search_prompt(s: ServeConfig, gpu: GPUSpec, *, headroom: float = 0.0, cap: int | None = None) -> int:
    """The reference for :func:`max_prompt`."""
    return _doubling_search(_probes(s, gpu, headroom, "prompt_tokens")[1], min(cap or PROMPT_CAP, prompt_limit(s)))


def suggestions(s: ServeConfig, gpu: GPUSpec, headroom: float = 0.0) -> list[tuple[str, int]]:
    """Single changes that make ``s`` fit ``gpu``, each planned (text, process bytes per GPU): the fewest GPUs with
    tensor parallel and with the device_map split (both named: S4, S5), a smaller KV cache, k-bit weights."""
    out: list[tuple[str, int]] = []

    def attempt(text: str, t: ServeConfig) -> bool:
        try:
            p = serve_plan(t, gpu)
        except SpecError:
            return False
        if fits(p, gpu, headroom):
            out.append((text, p.process_bytes))
            return True
        return False

    per = s.per_replica_gpus
    m = s.plan.model
    for n in (2, 4, 8, 16):
        if n <= per:
            continue
        tp_ok = not (m.num_attention_heads % n or (m.kv_heads % n and n % m.kv_heads))
        if tp_ok and attempt(f"{n} x {gpu.name} with tensor parallel (--tp {n} --num-gpus {n * s.replicas})",
                             dataclasses.replace(s, plan=dataclasses.replace(s.plan, tp=n, num_gpus=n * s.replicas))):
            break
    if s.engine is Engine.TRANSFORMERS:
        for n in (2, 4, 8, 16):
            if n > per and attempt(f"{n} x {gpu.name} split by device_map=\"auto\" (--num-gpus {n * s.replicas})",
                                   dataclasses.replace(s, plan=dataclasses.replace(s.plan, tp=1,
                                                                                   num_gpus=n * s.replicas))):
                break
    if (s.plan.kv_dtype or s.plan.compute_dtype) is not DType.FP8 and s.cache is not Cache.QUANTIZED:
        attempt("fp8 KV cache (--kv-dtype fp8)", dataclasses.replace(s, plan=dataclasses.replace(s.plan,
                                                                                             kv_dtype=DType.FP8)))
        if s.engine is Engine.TRANSFORMERS and s.mode is not Mode.SCORE:
            attempt("int4 quantized cache (--cache quantized)", dataclasses.replace(s, cache=Cache.QUANTIZED))
    if s.plan.precision.is_float:
        for prec in (Precision.INT8, Precision.NF4):
            attempt(f"{prec.value} weights (--precision {prec.value})",
                    dataclasses.replace(s, plan=dataclasses.replace(s.plan, precision=prec)))
    return out


# ---------------------------------------------------------------------------------------------------------
# throughput beside memory

def model_bytes(s: ServeConfig) -> TP.ModelBytes:
    """Unsharded bytes a decode step reads: the weights with their constants and the resident adapters."""
    one = dataclasses.replace(s.plan, tp=1, num_gpus=1)
    w, qc = _weights(one, [])
    ad = adapter_bytes(dataclasses.replace(s, plan=one, replicas=1)) if s.engine is not Engine.VLLM else 0
    return TP.ModelBytes(weights=w + qc + ad)


def speed(s: ServeConfig, gpu: GPUSpec, util: TP.Utilisation = TP.Utilisation()) -> Speed:
    """Decode at the mean context (prompt + new/2) and the prefill of the batch's prompts (throughput.py 4, 6, 8).
    A split model runs its GPUs one after another: the roofline of one GPU reading every byte (S4)."""
    cfg = s.plan
    r = TP.roof(gpu, cfg.compute_dtype)
    nb = model_bytes(s)
    tp_cfg = cfg if not s.split else dataclasses.replace(cfg, tp=1)
    ctx = s.prompt_tokens + max(s.new_tokens, 1) // 2
    kv_read = None
    if s.cache is Cache.QUANTIZED:  # the stored (quantized) bytes are what a step reads
        one = dataclasses.replace(s, plan=dataclasses.replace(cfg, tp=1, num_gpus=1), replicas=1)
        kv_read = kv_bytes(one, ctx)
    dec = TP.decode_step(tp_cfg, nb, r, util, context=ctx, kv_bytes=kv_read)
    pre = TP.prefill_step(tp_cfg, nb, r, util, prompt=s.prompt_tokens)
    step = dec.seconds
    return Speed(decode_step_s=step, decode_tok_s_per_seq=1 / step, decode_tok_s=s.concurrency / step,
                 decode_bound=dec.bound, prefill_s=pre.seconds, prefill_tok_s=pre.tokens_per_s,
                 request_s=pre.seconds + s.new_tokens * step, replicas=s.replicas, util=util)


__all__ = ["Mode", "Engine", "Cache", "RopeScaling", "ServeConfig", "ServePlan", "GPUShare", "VllmPool", "Speed",
           "serve_config", "with_workload", "serve_plan", "fits", "max_concurrency", "max_prompt",
           "search_concurrency", "search_prompt", "speed", "context_limit", "vllm_derived_max_len", "device_map",
           "module_sizes", "kv_bytes", "suggestions", "adapter_bytes", "block_transient", "one_position_logits", "vllm_defaults"]
