"""Throughput roofline: how long a training step, a prefill and a decode step take on a device.

Pure arithmetic on the architecture (standard library only). A roofline takes the slowest of the
roofs a step must pass under: compute (FLOPs at a stated fraction of the dense peak, "MFU"),
memory (bytes read and written at a stated fraction of the memory bandwidth, "MBU") and the
network (bytes each GPU sends in collectives, at a stated fraction of its interconnect).

Assumptions (numbered; a recommendation shows them with its answer):

1. FLOPs per token follow Kaplan et al. 2020 (Table 1) and the PaLM paper (Chowdhery et al. 2022,
   appendix B): a matmul weight costs 2 FLOPs per token forward; the backward pass costs 2 more for
   the gradient with respect to its input and 2 more for the gradient with respect to the weight,
   so full training is 6N per token. N counts the weights that multiply (:func:`matmul_params`:
   every linear of the blocks, with only the routed experts of a MoE layer, plus lm_head); the
   input embedding is a lookup and does no FLOPs. A frozen weight (LoRA/QLoRA base, frozen blocks)
   skips its weight gradient, so LoRA training is about 4N, not 6N.
2. Attention scores cost 4·L·d_attn·T FLOPs per token forward (QKᵀ and AV, T = context, d_attn =
   heads × head_dim) and twice that backward: 12·L·d_attn·T per trained token (PaLM, appendix B).
   As in PaLM, the causal mask is not halved: a causal flash kernel does about half of it, so the
   attention term is an upper bound. A sliding window caps T in the layers that have one
   (:func:`quantlab.families.layer_windows`, families F4: every layer of Mistral, every other one of
   Gemma-2): L·T becomes the positions attended summed over layers, the rule the KV cache uses.
3. Gradient checkpointing recomputes the forward once in the backward pass (+2N and the forward
   attention per token).
4. Decode is one forward per sequence per step: every weight byte (shared by the batch) and every
   cached key/value byte of every sequence is read once per step: exactly the planner's KV cache
   (each layer holds min(context, its window) positions, families F4). Prefill processes the prompt as
   one batch and is bound by compute.
5. Data parallel moves, per GPU and per optimizer step, 2·(n−1)/n of the gradient bytes (ring
   all-reduce; ZeRO-1/2 move the same volume as a reduce-scatter plus an all-gather: Rajbhandari
   et al. 2020, section 7) and ZeRO-3 / FSDP full_shard 3·(n−1)/n of the parameter bytes (gather
   forward, gather backward, reduce-scatter gradients). Communication overlaps compute, so the
   network is one more roof, not an added term.
6. Tensor parallel decode does two all-reduces of the hidden state per layer per step; each
   pays a fixed latency (:attr:`Utilisation.collective_latency_s`) plus its volume.
7. Offloading streams over the host link (PCIe) and does not overlap: the optimizer step on the
   CPU (DeepSpeed ZeRO-Offload) moves gradients down and weights up once per step and runs the
   update at :attr:`Utilisation.cpu_adam_params_per_s`; parameter offload (ZeRO-Infinity) also
   fetches the weights twice per step (forward, backward). Those seconds are added.
8. k-bit weights (NF4/FP4/INT8) are dequantized to the compute dtype for each matmul: compute runs
   at the compute dtype's peak, memory reads the k-bit bytes. The dequantization kernels lower
   the utilisation reached (:attr:`Utilisation.kbit_train_mfu`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quantlab.families import attended_positions, block_linears
from quantlab.specs import DType, GPUSpec, Method, ModelSpec, Offload, PlanConfig


@dataclass(frozen=True)
class Utilisation:
    """Fractions of a device's peak that real kernels reach; every figure says where it comes from.

    The defaults are for GPUs. ``quantlab.lab.throughput_check`` derives this machine's own
    (CPU) figures from measurement; a recommendation prints the ones it used.
    """

    train_mfu: float = 0.40
    kbit_train_mfu: float = 0.25
    prefill_mfu: float = 0.50
    mbu: float = 0.60
    network: float = 0.70
    host_link_bytes_per_s: float = 25e9
    cpu_adam_params_per_s: float = 1e9
    inter_node_bytes_per_s: float = 50e9
    collective_latency_s: float = 10e-6
    basis: str = "assumed"
    source: str = (
        "train 0.40: Llama 3 paper (Dubey et al. 2024, Table 4: 38-43% BF16 MFU on H100); PaLM reports 46%. "
        "k-bit train 0.25: assumed (bitsandbytes dequantizes every matmul; QLoRA runs ~30-40% slower than "
        "LoRA in common reports). prefill 0.50, memory-bandwidth utilisation 0.60 (decode, and the memory roof of every phase): assumed from Databricks 'LLM inference "
        "performance engineering' (2023: MBU ~60% at batch 1 on A100). network 0.70 of the listed "
        "interconnect bandwidth: assumed (NCCL bus bandwidth in nccl-tests). host link 25 GB/s: PCIe 4.0 x16 "
        "effective, assumed. CPU Adam 1e9 params/s per GPU: assumed (ZeRO-Offload, Ren et al. 2021). "
        "inter-node 50 GB/s per GPU: 400 Gb/s InfiniBand per GPU (DGX H100 layout), assumed. "
        "collective latency 10 us: assumed (NCCL small all-reduce on NVLink).")

    def __post_init__(self) -> None:
        for f in ("train_mfu", "kbit_train_mfu", "prefill_mfu", "mbu", "network"):
            v = getattr(self, f)
            if not 0 < v <= 1:
                raise ValueError(f"utilisation {f} must be in (0, 1], got {v!r}")
        for f in ("host_link_bytes_per_s", "cpu_adam_params_per_s", "inter_node_bytes_per_s"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


GPUS_PER_NODE = 8


# ---- FLOPs from the architecture ---------------------------------------------------------------

def matmul_params(model: ModelSpec) -> int:
    """Weights that multiply per token (assumption 1): block linears (routed experts only) + lm_head.

    The input embedding is a lookup: no FLOPs. lm_head does a matmul whether or not it is tied to it.
    Norm weights and biases are elementwise and left out (well under 0.1% of the FLOPs).
    """
    per_block = 0
    for lin in block_linears(model):
        active = min(lin.count, model.num_experts_per_tok) if lin.count > 1 else lin.count
        per_block += active * lin.in_features * lin.out_features
    return model.num_hidden_layers * per_block + model.vocab_size * model.hidden_size


def attention_context(model: ModelSpec, seq: int) -> int:
    """Keys a query at position ``seq`` attends to, summed over layers (assumption 2; families F4): L·seq without
    sliding windows, each windowed layer capped at its window."""
    return attended_positions(model, seq)


def attention_flops_per_token(model: ModelSpec, seq: int) -> int:
    """Forward attention-score FLOPs per token: 4·d_attn·ΣT over layers (QKᵀ: 2·T·d_attn, AV: 2·T·d_attn)."""
    return 4 * model.num_attention_heads * model.head_dim * attended_positions(model, seq)


def kv_bytes_per_token(model: ModelSpec, dtype: DType) -> int:
    """Bytes of cached keys and values per token: 2 (K and V) · L · kv_heads · head_dim · bytes (GQA aware)."""
    return 2 * model.num_hidden_layers * model.kv_heads * model.head_dim * dtype.nbytes


def decode_kv_bytes(model: ModelSpec, dtype: DType, context: int, batch: int = 1) -> int:
    """Cached key/value bytes one decode step reads (assumption 4): 2 · kv_heads · head_dim · bytes per position,
    over every layer's min(context, window) positions (families F4), for each of ``batch`` sequences."""
    return batch * 2 * model.kv_heads * model.head_dim * dtype.nbytes * attended_positions(model, context)


@dataclass(frozen=True)
class TrainFlops:
    """FLOPs per trained token, by term (assumptions 1-3)."""

    forward: int  # 2N (+ adapters) + forward attention
    backward_input: int  # gradients with respect to activations (incl. attention backward)
    backward_weight: int  # gradients with respect to trainable weights
    recompute: int  # gradient checkpointing: one more forward

    @property
    def total(self) -> int:
        return self.forward + self.backward_input + self.backward_weight + self.recompute


def train_flops_per_token(cfg: PlanConfig, trainable_params: int) -> TrainFlops:
    """Training FLOPs per token for ``cfg``; ``trainable_params`` comes from the planner.

    Weight gradients cost 2 FLOPs per trainable matmul weight: ``min(trainable, N)``, so a full
    fine-tune pays 2N (its input-embedding gradient is a scatter, not a matmul) and a PEFT method
    pays twice its adapter size. PEFT adapters also add 2 FLOPs per adapter weight forward and
    2 backward. The input gradient reaches every block, except under ``--method freeze`` where it
    stops at the first trained block (the last ``freeze_last_layers`` blocks; only lm_head when
    ``freeze_modules`` names modules).
    """
    m = cfg.model
    n = matmul_params(m)
    adapters = trainable_params if cfg.method.is_peft else 0
    attn = attention_flops_per_token(m, cfg.seq)
    fwd = 2 * (n + adapters) + attn
    if cfg.method is Method.FREEZE:
        head = m.vocab_size * m.hidden_size
        frac = 0.0 if cfg.freeze_modules else cfg.freeze_last_layers / m.num_hidden_layers
        b_in = 2 * head + round(frac * (2 * (n - head) + 2 * attn))
    else:
        b_in = 2 * (n + adapters) + 2 * attn
    b_w = 2 * min(trainable_params, n + adapters)
    return TrainFlops(forward=fwd, backward_input=b_in, backward_weight=b_w,
                      recompute=fwd if cfg.grad_checkpointing else 0)


# ---- devices ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Roof:
    """The peaks one device offers a step: FLOP/s in the compute dtype, memory and link bandwidths."""

    name: str
    flops_per_s: float
    memory_bytes_per_s: float
    link_bytes_per_s: float | None  # GPU-to-GPU, per GPU (None: no peer link listed)
    flops_key: str


def flops_key(compute_dtype: DType) -> str:
    """The peak a matmul in this dtype runs at. FP32 stays FP32: PyTorch leaves TF32 off for matmuls."""
    return {DType.FP32: "fp32", DType.FP16: "fp16", DType.BF16: "bf16", DType.FP8: "fp8"}[compute_dtype]


def roof(gpu: GPUSpec, compute_dtype: DType) -> Roof:
    """The roof of ``gpu`` for matmuls in ``compute_dtype`` (k-bit weights compute in it: assumption 8)."""
    key = flops_key(compute_dtype)
    peak = gpu.flops.get(key)
    if not peak and key in ("fp16", "bf16"):  # some datasheets list one of the two
        peak = gpu.flops.get("bf16") or gpu.flops.get("fp16")
    if not peak:
        raise ValueError(f"{gpu.name} lists no {key} throughput")
    return Roof(gpu.name, float(peak), float(gpu.memory_bandwidth_bytes_per_s), gpu.interconnect_bandwidth_bytes_per_s,
                key)


def link_bandwidth(r: Roof, num_gpus: int, util: Utilisation) -> float:
    """Bytes/s one GPU's collectives reach: its peer link within a node, the node's network beyond it."""
    link = r.link_bytes_per_s or util.host_link_bytes_per_s  # no peer link: through the host (PCIe)
    if num_gpus > GPUS_PER_NODE:
        link = min(link, util.inter_node_bytes_per_s)
    return link * util.network


# ---- steps ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepTime:
    """Seconds one step takes under each roof; ``seconds`` is the roofline's answer."""

    compute_s: float
    memory_s: float
    network_s: float = 0.0
    host_s: float = 0.0  # offload transfers and CPU optimizer (added, assumption 7)
    tokens: int = 0  # tokens the step processes on this device (for tokens/s)
    flops: float = 0.0
    bytes: float = 0.0

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s, self.network_s) + self.host_s

    @property
    def bound(self) -> str:
        roofs = {"compute": self.compute_s, "memory": self.memory_s, "network": self.network_s,
                 "host": self.host_s}
        return max(roofs, key=roofs.get)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def _kbit(cfg: PlanConfig) -> bool:
    return cfg.precision.is_kbit


@dataclass(frozen=True)
class ModelBytes:
    """Unsharded byte counts the roofline moves, taken from a single-device plan's components."""

    weights: int  # stored base weights (k-bit bytes for quantized ones) plus adapters
    gradients: int = 0  # trainable gradients
    optimizer: int = 0  # optimizer states (and fp32 master weights under AMP)


def train_step(cfg: PlanConfig, trainable_params: int, nbytes: ModelBytes, r: Roof,
               util: Utilisation = Utilisation()) -> StepTime:
    """One optimizer step of ``cfg.batch`` × ``cfg.seq`` × ``cfg.grad_accum`` tokens per data-parallel rank.

    Under tensor parallel (``cfg.tp`` > 1) each GPU does 1/tp of the FLOPs and bytes; the
    activation all-reduces of training TP are not modelled (the recommender proposes TP for
    inference only). Memory traffic: the weights are read once forward, once backward and once
    more when recomputing (all of them, gathered, even under ZeRO-3); each GPU's share of the gradients
    and optimizer states (sharded by ZeRO-1/2 and FSDP, moved to the CPU by offload) is read and
    written once.
    """
    flops = train_flops_per_token(cfg, trainable_params)
    tokens = cfg.batch * cfg.seq * cfg.grad_accum
    f_gpu = tokens * flops.total / cfg.tp
    mfu = util.kbit_train_mfu if _kbit(cfg) else util.train_mfu
    passes = 3 if cfg.grad_checkpointing else 2
    n = cfg.dp
    sharded = bool(cfg.fsdp) or cfg.zero > 0
    opt_gpu = 0 if cfg.offload is not Offload.NONE else nbytes.optimizer / (n if sharded else 1)
    grad_gpu = nbytes.gradients / (n if cfg.fsdp or cfg.zero >= 2 else 1)
    b_gpu = (cfg.grad_accum * passes * nbytes.weights + 2 * (grad_gpu + opt_gpu)) / cfg.tp
    net = 0.0
    if n > 1:
        link = link_bandwidth(r, cfg.num_gpus, util)
        if cfg.zero == 3 or cfg.fsdp == "full_shard":
            vol = 3 * (n - 1) / n * nbytes.weights * cfg.grad_accum
        elif cfg.fsdp == "shard_grad_op":
            vol = (n - 1) / n * (nbytes.weights * cfg.grad_accum + nbytes.gradients)
        else:
            vol = 2 * (n - 1) / n * nbytes.gradients
        net = vol / cfg.tp / link
    host = 0.0
    if cfg.offload is not Offload.NONE:
        shard = max(1, n) if (cfg.zero or cfg.fsdp) else 1
        trainable_share = trainable_params / shard
        moved = (nbytes.gradients + _trainable_weight_bytes(cfg, trainable_params)) / shard
        host = moved / util.host_link_bytes_per_s + trainable_share / util.cpu_adam_params_per_s
        if cfg.offload is Offload.PARAMS:
            host += 2 * cfg.grad_accum * nbytes.weights / shard / util.host_link_bytes_per_s
    return StepTime(compute_s=f_gpu / (r.flops_per_s * mfu), memory_s=b_gpu / (r.memory_bytes_per_s * util.mbu),
                    network_s=net, host_s=host, tokens=tokens, flops=f_gpu, bytes=b_gpu)


def _trainable_weight_bytes(cfg: PlanConfig, trainable_params: int) -> int:
    """Bytes of the updated weights the host sends back after an offloaded optimizer step."""
    if cfg.method.is_peft:
        return 4 * trainable_params  # PEFT keeps adapters in fp32
    return trainable_params * (cfg.compute_dtype.nbytes if cfg.precision.is_float else 4)


def prefill_step(cfg: PlanConfig, nbytes: ModelBytes, r: Roof, util: Utilisation = Utilisation(),
                 prompt: int | None = None) -> StepTime:
    """One prefill of ``cfg.batch`` prompts of ``prompt`` (default ``cfg.seq``) tokens (assumption 4).

    Bytes: the weights once, plus the keys and values written to the cache. Under tensor parallel
    each GPU holds 1/tp of both and does 1/tp of the FLOPs; two all-reduces per layer carry the
    batch's hidden states.
    """
    m = cfg.model
    p = prompt or cfg.seq
    tokens = cfg.batch * p
    per_tok = 2 * matmul_params(m) + attention_flops_per_token(m, p)
    kv = kv_bytes_per_token(m, cfg.kv_dtype or cfg.compute_dtype)
    f_gpu = tokens * per_tok / cfg.tp
    b_gpu = (nbytes.weights + tokens * kv) / cfg.tp
    net = _tp_allreduce_s(cfg, r, util, tokens)
    return StepTime(compute_s=f_gpu / (r.flops_per_s * util.prefill_mfu),
                    memory_s=b_gpu / (r.memory_bytes_per_s * util.mbu), network_s=net, tokens=tokens,
                    flops=f_gpu, bytes=b_gpu)


def decode_step(cfg: PlanConfig, nbytes: ModelBytes, r: Roof, util: Utilisation = Utilisation(),
                context: int | None = None, kv_bytes: int | None = None) -> StepTime:
    """One decode step: one new token for each of ``cfg.batch`` sequences holding ``context`` tokens.

    Bytes read (assumption 4): all weights once (shared by the batch) plus each sequence's cached
    keys and values. FLOPs: 2N plus attention over the context per token; decode is memory-bound
    unless the batch is large. Compute runs at the prefill utilisation. ``kv_bytes`` replaces the
    cached bytes of the whole batch (unsharded) where the cache stores another format than its
    dtype (transformers' quantized cache: the serving planner's S3).
    """
    m = cfg.model
    ctx = context or cfg.seq
    kv = decode_kv_bytes(m, cfg.kv_dtype or cfg.compute_dtype, ctx, cfg.batch) if kv_bytes is None else kv_bytes
    b_gpu = (nbytes.weights + kv) / cfg.tp
    f_gpu = cfg.batch * (2 * matmul_params(m) + attention_flops_per_token(m, ctx)) / cfg.tp
    net = _tp_allreduce_s(cfg, r, util, cfg.batch)
    return StepTime(compute_s=f_gpu / (r.flops_per_s * util.prefill_mfu),
                    memory_s=b_gpu / (r.memory_bytes_per_s * util.mbu), network_s=net, tokens=cfg.batch,
                    flops=f_gpu, bytes=b_gpu)


def _tp_allreduce_s(cfg: PlanConfig, r: Roof, util: Utilisation, tokens: int) -> float:
    """Two all-reduces of the hidden states per layer (assumption 6), ring volume 2·(k−1)/k."""
    k = cfg.tp
    if k == 1:
        return 0.0
    vol = 2 * (k - 1) / k * tokens * cfg.model.hidden_size * cfg.compute_dtype.nbytes
    return 2 * cfg.model.num_hidden_layers * (util.collective_latency_s + vol / link_bandwidth(r, k, util))


__all__ = [
    "Utilisation", "Roof", "StepTime", "TrainFlops", "ModelBytes", "matmul_params", "attention_flops_per_token",
    "attention_context", "kv_bytes_per_token", "decode_kv_bytes", "train_flops_per_token", "roof", "flops_key", "link_bandwidth",
    "train_step", "prefill_step", "decode_step", "GPUS_PER_NODE",
]
