"""Memory of one configuration, per component, in integer bytes (per GPU).

The model follows how transformers 5, PEFT and bitsandbytes allocate on a CUDA device (files named below,
as installed in this project's environment), so that it can be checked against ``max_memory_allocated``.

Components (stable names, shared with the lab's measurements):
``weights`` (stored base weights, high-precision modules included), ``quant_constants`` (absmax, scales,
zeros of k-bit weights), ``adapters`` (LoRA/adapter/prefix/prompt/IA3 parameters), ``gradients``,
``optimizer`` (states), ``optimizer_step`` (transient of the optimizer step), ``activations`` (tensors saved
for backward), ``logits_loss`` (logits and the fp32 loss buffers), ``kv_cache``, ``prefill_transient``
(the largest short-lived buffer of a forward pass), ``ddp_buckets``, ``cuda_context``, ``allocator_reserve``.

Assumptions (numbered; notes in the plan refer to them):

1. Weights: block linears take the storage format (:mod:`quantlab.planner.formats`); embeddings, lm_head,
   norms and biases stay in the load dtype (the compute dtype for k-bit models). Under AMP the weights
   are fp32 (master weights). Under k-bit training, PEFT's ``prepare_model_for_kbit_training``
   (peft/utils/other.py) upcasts every fp16/bf16 parameter that is not ``Params4bit`` to fp32.
2. PEFT adapters are fp32 (``autocast_adapter_dtype=True``, the default) and cast their input to fp32
   (``LoraLayer._cast_input_dtype``); their gradients and optimizer states are fp32 too.
3. Gradients are counted as live through the next forward/backward: the safe reading (gradient
   accumulation and ``zero_grad(set_to_none=False)`` keep them; with ``set_to_none=True`` the true peak is
   lower by the gradient bytes). Checked against the published full fine-tune rows.
4. Saved activations follow autograd's rule: a node saves only what the gradients it must compute need
   (``mm`` saves its input only when the weight needs a gradient). Per block, with T = batch x seq tokens:
   RMSNorm (modeling_llama.py ``LlamaRMSNorm``) saves its fp32 upcast input (4·T·h) and, when its weight
   trains, its output; SDPA saves q, k, v, its output and the log-sum-exp; eager attention
   (``eager_attention_forward``) also saves the fp32 softmax (4·b·heads·s²) and its cast to the compute
   dtype; a gated MLP saves the gate output, the activation, the up output and (when down_proj trains) their
   product. Under AMP every linear saves its own autocast copy of its input and of its weight
   (torch autocast casts per call; weights that require grad are cached for the whole forward).
5. Gradient checkpointing keeps each block's input (T·h in the residual dtype) and recomputes one block at a
   time during backward, so one block's saved tensors are live at once.
6. Logits and loss (transformers ``loss/loss_utils.py`` ``ForCausalLMLoss``): the logits (T·vocab in the
   lm_head output dtype) stay referenced by the model output; the loss upcasts them to fp32
   (``logits.float()``), ``log_softmax`` saves its fp32 output, and backward allocates the fp32 gradient of
   ``nll_loss`` and of ``log_softmax``: at the start of backward logits + 3 x 4·T·vocab bytes are live.
7. Inference is a full forward over ``seq`` tokens with the KV cache kept (``use_cache``): weights + KV
   cache + the larger of the logits (T·vocab in the compute dtype) and one block's transient (the gated MLP's
   three T x intermediate tensors; for eager attention the b·heads·s² scores, the fp32 softmax and, for a
   bf16 input, the fp32 copy ``softmax(dtype=float32)`` makes of it).
8. Optimizer states: AdamW 2 x trainable in the parameter dtype; 8-bit AdamW (bitsandbytes blockwise) 2 bytes
   per parameter + one fp32 absmax per 256 values per state; paged optimizers live in CUDA unified memory,
   outside PyTorch's allocator (counted in the process total, not in allocated/reserved); SGD with momentum
   and Lion one state; Adafactor the factored second moment (rows + columns per matrix, fp32). The foreach
   AdamW/Lion step allocates one state-sized temporary (``torch/optim/adamw.py`` ``_multi_tensor_adamw``).
9. Sharding (per GPU, data-parallel degree dp = num_gpus / tp): ZeRO-1 shards optimizer states, ZeRO-2 also
   gradients, ZeRO-3 / FSDP full_shard also weights (plus two gathered blocks: the current and the
   prefetched one); FSDP shard_grad_op is ZeRO-2. Plain DDP keeps gradient buckets the size of the
   gradients (``gradient_as_bucket_view=False``). Offload moves optimizer states (and with ``params``, the
   weights) to CPU memory. Tensor parallel divides block linears, KV cache and block activations by tp.
10. CUDA context: 150 MiB per process (assumed: CUDA 12 with lazy module loading; the published T4 row shows
    141 MiB between NVML and reserved). Allocator reserve: the caching allocator rounds blocks up to 2 MiB and
    keeps freed activation blocks of sizes later requests cannot reuse; modelled as 25% of the dynamic
    (non-static) peak (assumed; one published reserved/allocated pair checks it). On a CPU (``device=cpu``)
    both are zero: the lab counts tensor bytes exactly there.
11. ``stack="litgpt"`` (LitGPT's own model code, as in its published tables): no PEFT upcast, and the
    bitsandbytes it pins (0.41) saves each 4-bit linear's input for backward (``MatMul4Bit``:
    ``ctx.tensors = (A, B)``; 0.50 keeps only B), so a k-bit block also keeps its norm outputs, the
    attention output and the MLP product.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from quantlab.planner.formats import weight_format
from quantlab.planner.params import ParamCounts, count_params
from quantlab.specs import (ALL_LINEAR, Attention, DeviceMode, LinearShape, Method, ModelSpec, Offload, Optimizer,
                            PlanConfig, Precision, SpecError, TrainingPrecision)

MiB = 1 << 20
CUDA_CONTEXT_BYTES = 150 * MiB
RESERVE_FRACTION = 0.25
SEGMENT = 2 * MiB

_FLOAT_BYTES = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}


@dataclass(frozen=True)
class Plan:
    """The plan of one configuration: components per GPU, totals, and the notes behind automatic choices."""

    config: PlanConfig
    params: int
    active_params: int
    trainable_params: int
    components: dict = field(hash=False)
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    process_bytes: int
    notes: tuple = ()

    def to_dict(self) -> dict:
        c = self.config
        return {
            "model": c.model.name, "method": c.method.value, "precision": c.precision.value,
            "compute_dtype": c.compute_dtype.value, "training_precision": c.training_precision.value,
            "optimizer": c.optimizer.value if c.method.is_training else None,
            "batch": c.batch, "seq": c.seq, "attn": c.attn.value, "grad_checkpointing": c.grad_checkpointing,
            "num_gpus": c.num_gpus, "zero": c.zero, "fsdp": c.fsdp, "offload": c.offload.value, "tp": c.tp,
            "device": c.device.value,
            "params": self.params, "active_params": self.active_params, "trainable_params": self.trainable_params,
            "components": dict(self.components),
            "peak_allocated_bytes": self.peak_allocated_bytes, "peak_reserved_bytes": self.peak_reserved_bytes,
            "process_bytes": self.process_bytes, "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------------------
# helpers tied to the architecture

def _targets(m: ModelSpec, targets: tuple[str, ...]) -> tuple[LinearShape, ...]:
    """The block linears a LoRA target list names (PEFT matches module-name suffixes)."""
    lins = m.block_linears()
    if ALL_LINEAR in targets:
        return tuple(l for l in lins if l.name != "gate")  # PEFT's all-linear: every linear but the output layer
    chosen = tuple(l for l in lins if any(l.name == t or l.name.split(".")[-1] == t or l.name.endswith("." + t)
                                          for t in targets))
    if not chosen:
        names = ", ".join(l.name for l in lins)
        raise SpecError(f"LoRA targets {','.join(targets)} match no linear of {m.name} (its linears: {names})")
    return chosen


@functools.lru_cache(maxsize=4096)
def _adapter_params(m: ModelSpec, method: Method, lora_r: int, targets: tuple[str, ...], adapter_size: int,
                    nvt: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(trainable adapter parameters, their matrix shapes) for a PEFT method."""
    L, h = m.num_hidden_layers, m.hidden_size
    kv = m.kv_heads * m.head_dim
    if method in (Method.LORA, Method.QLORA):
        shapes = []
        for l in _targets(m, targets):
            shapes += [(l.in_features, lora_r), (lora_r, l.out_features)] * l.count
        per = sum(a * b for a, b in shapes)
        return L * per, tuple(shapes) * L
    if method is Method.ADAPTER:  # Houlsby: two bottleneck adapters per block, with biases
        per = 2 * (2 * h * adapter_size + adapter_size + h)
        return L * per, ((h, adapter_size), (adapter_size, h)) * (2 * L)
    if method is Method.PREFIX:  # PEFT PrefixEncoder without projection: keys and values per layer
        n = nvt * L * 2 * kv
        return n, ((nvt, L * 2 * kv),)
    if method is Method.PROMPT:
        return nvt * h, ((nvt, h),)
    if method is Method.IA3:  # PEFT IA3 defaults for Llama: k_proj, v_proj outputs and down_proj input
        per = 2 * kv + m.intermediate_size
        return L * per, ()
    return 0, ()


def _optimizer_bytes(opt: Optimizer, n: int, state_bytes: int, shapes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """(persistent state bytes, step transient bytes) for ``n`` trainable parameters (assumption 8)."""
    if n == 0:
        return 0, 0
    if opt in (Optimizer.ADAMW, Optimizer.PAGED_ADAMW):
        return 2 * n * state_bytes, n * state_bytes
    if opt in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT):
        return 2 * n + 2 * 4 * -(-n // 256), 0
    if opt is Optimizer.SGD:
        return 0, 0
    if opt is Optimizer.SGD_MOMENTUM:
        return n * state_bytes, 0
    if opt is Optimizer.LION:
        return n * state_bytes, n * state_bytes
    if opt is Optimizer.ADAFACTOR:
        if shapes:
            mat = sum(a * b for a, b in shapes)
            return 4 * (sum(a + b for a, b in shapes) + max(0, n - mat)), 4 * max(a * b for a, b in shapes)
        return 4 * n, 0
    raise ValueError(opt)  # pragma: no cover


# ---------------------------------------------------------------------------------------------------------
# activations


@dataclass(frozen=True)
class _Dt:
    r: int  # residual stream / norm output dtype bytes
    a: int  # dtype of linear outputs and attention internals
    amp: bool
    c: int  # autocast dtype bytes (AMP)


def _block_saved(m: ModelSpec, cfg: PlanConfig, dt: _Dt, trainable_block: bool, lora: frozenset[str]) -> int:
    """Bytes one decoder block saves for backward (assumption 4). ``trainable_block``: its weights train."""
    b, s = cfg.batch, cfg.seq + (cfg.num_virtual_tokens if cfg.method is Method.PROMPT else 0)
    T = b * s
    h, I, H, d = m.hidden_size, m.intermediate_size, m.num_attention_heads, m.head_dim
    qd, kvd = H * d, m.kv_heads * d
    r, a = dt.r, dt.a
    tp = cfg.tp
    total = 0
    if m.is_moe:
        I_tok = I * m.num_experts_per_tok  # each token runs through k experts
    else:
        I_tok = I

    def norm() -> int:
        # x.to(float32) saved by pow and mul; output saved when the norm weight trains (mul by weight).
        return 4 * T * h + (r * T * h if trainable_block else 0)

    def consumers(names: tuple[str, ...], width: int, in_dtype: int, weight_in_dtype_shared: bool) -> int:
        """Inputs saved by the linears reading one tensor of ``width`` features."""
        out = 0
        shared_counted = weight_in_dtype_shared
        for n in names:
            trains = trainable_block
            in_lora = n in lora
            if dt.amp and (trains or in_lora):
                # autocast casts the input for each linear call: one copy per trainable linear
                if trains:
                    out += dt.c * T * width
                if in_lora:  # PEFT casts the (fp32) input to fp32: a no-op, the fp32 tensor itself
                    if not shared_counted and in_dtype == 4:
                        out += 4 * T * width
                        shared_counted = True
                    elif in_dtype != 4:
                        out += 4 * T * width
                continue
            if trains and not shared_counted:
                out += in_dtype * T * width
                shared_counted = True
            if in_lora:
                if in_dtype == 4:
                    if not shared_counted:
                        out += 4 * T * width
                        shared_counted = True
                else:
                    out += 4 * T * width
        return out

    lins = {l.name for l in m.block_linears()}
    # -- attention
    total += norm()
    if m.model_type == "gpt2":
        total += consumers(("c_attn",), h, r, trainable_block)
        total += 3 * a * T * h // tp  # q, k, v are views of c_attn's output: one storage
        total += a * T * qd // tp + 4 * H * T  # sdpa output + logsumexp
        total += consumers(("attn.c_proj",), qd, a, False) // tp
    else:
        qkv = ("qkv_proj",) if "qkv_proj" in lins else ("q_proj", "k_proj", "v_proj")
        total += consumers(qkv, h, r, trainable_block)
        if cfg.attn is Attention.SDPA:
            # q, k, v (GQA handled natively when no padding mask), output, logsumexp
            total += (a * T * (2 * qd + 2 * kvd) + 4 * H * T) // tp
        else:
            S = b * H * s * s
            total += (a * T * 3 * qd + 4 * S + (a * S if a != 4 else 0)) // tp
        total += consumers(("o_proj",), qd, a, False) // tp
    # -- MLP
    total += norm()
    if m.gated_mlp:
        up = ("gate_up_proj",) if "gate_up_proj" in lins else (("w1", "w3") if m.is_moe else ("gate_proj", "up_proj"))
        down = "w2" if m.is_moe else "down_proj"
        total += consumers(up, h, r, trainable_block)
        total += 3 * a * T * I_tok // tp  # gate out (for the activation), activation and up out (for the product)
        total += consumers((down,), I_tok, a, False) // tp
        if m.is_moe:
            total += 4 * T * m.num_local_experts  # router logits (fp32 softmax)
    else:
        total += consumers(("c_fc",), h, r, trainable_block)
        total += 4 * a * T * I // tp  # gelu_new composed of tensor ops: x, tanh(...), 0.5x, 1 + tanh
        total += consumers(("mlp.c_proj",), I, a, False) // tp
    if cfg.stack == "litgpt" and cfg.precision.is_kbit and not trainable_block:
        # assumption 11: bitsandbytes 0.41 MatMul4Bit saves its input (norm outputs shared by their readers)
        total += (2 * r * T * h + a * T * qd + a * T * I_tok) // tp
    if cfg.method is Method.IA3:
        total += a * T * I_tok // tp  # the scaled down_proj input
    if cfg.method is Method.ADAPTER:
        total += 2 * (a * T * h + 4 * T * h + 4 * T * cfg.adapter_size)
    return total


def _amp_weight_casts(m: ModelSpec, pc: ParamCounts, c: int, layers: int, lm_head: bool) -> int:
    """Autocast copies of linear weights held for backward (assumption 4)."""
    per_block = pc.block_linear_weights
    head = m.vocab_size * m.hidden_size if lm_head else 0
    return c * (layers * per_block + head)


# ---------------------------------------------------------------------------------------------------------


def _kv_cache(m: ModelSpec, cfg: PlanConfig, kv_bytes: int) -> int:
    per_token_layer = 2 * m.kv_heads * m.head_dim * kv_bytes
    total = 0
    L = m.num_hidden_layers
    w = m.sliding_window
    for i in range(L) if w and w < cfg.seq else ():
        sliding = m.model_type in ("mistral", "mixtral", "phi3") or (m.model_type == "gemma2" and i % 2 == 0)
        total += per_token_layer * (min(cfg.seq, w) if sliding else cfg.seq)
    if not (w and w < cfg.seq):
        total = L * per_token_layer * cfg.seq
    return cfg.batch * total // cfg.tp


def plan(cfg: PlanConfig) -> Plan:
    """Plan one configuration (pure arithmetic; no I/O)."""
    m = cfg.model
    pc = count_params(m)
    notes: list[str] = []
    method = cfg.method
    training = method.is_training
    kbit = cfg.precision.is_kbit
    amp = training and cfg.training_precision is TrainingPrecision.AMP and not kbit
    c = cfg.compute_dtype.nbytes
    if cfg.precision.is_float:
        load = 4 if amp else _FLOAT_BYTES[cfg.precision]
        if amp and cfg.precision is not Precision.FP32:
            notes.append("AMP keeps fp32 master weights: weights counted in fp32 (assumption 1)")
    else:
        load = c
    upcast = kbit and training and cfg.kbit_upcast and cfg.stack == "transformers"
    hp = 4 if upcast else load  # bytes of the modules that stay in high precision
    if upcast:
        notes.append("k-bit training: PEFT prepare_model_for_kbit_training upcasts embeddings, norms and lm_head "
                     "to fp32 (assumption 1)")
    if cfg.seq > m.max_position_embeddings:
        notes.append(f"warning: seq {cfg.seq} is beyond the model's context ({m.max_position_embeddings} tokens)")

    # ---- weights (assumption 1)
    fmt = weight_format(cfg.precision, cfg.double_quant, cfg.group_size)
    L = m.num_hidden_layers
    tp = cfg.tp
    if cfg.precision.is_float:
        lin_data = pc.block_linear_weights * load
        lin_const = 0
    else:
        lin_total = sum(l.count * fmt.linear_bytes(l.in_features, l.out_features, load) for l in pc.linears)
        lin_data = sum(l.count * -(-(l.in_features * l.out_features * fmt.bits) // 8) for l in pc.linears)
        lin_const = lin_total - lin_data
        if cfg.precision is Precision.INT8:
            notes.append("LLM.int8: block linears int8 + fp32 row scales; lm_head, embeddings and norms stay in "
                         f"{'fp32' if hp == 4 else cfg.compute_dtype.value}")
    other = (pc.embedding + pc.lm_head + pc.layers * (pc.block_linear_biases + pc.block_norms) + pc.final_norm) * hp
    rotary = 0 if m.model_type == "gpt2" else (m.head_dim // 2) * 4  # inv_freq buffer (fp32)
    weights = L * lin_data // tp + other + rotary
    quant_constants = L * lin_const // tp

    # ---- trainable parameters (assumption 2)
    shapes: tuple[tuple[int, int], ...] = ()
    adapter_n = 0
    trainable = 0
    tw_bytes = load  # dtype of trainable base weights
    if method is Method.FULL:
        trainable = pc.total
        shapes = tuple((l.in_features, l.out_features) for l in pc.linears for _ in range(l.count)) * L
    elif method is Method.FREEZE:
        k = cfg.freeze_last_layers
        trainable = k * pc.per_block
        for name in cfg.freeze_modules:
            if name in ("lm_head", "embed_tokens", "wte"):
                trainable += pc.lm_head if (name == "lm_head" and pc.lm_head) else pc.embedding
            elif name in ("norm", "ln_f"):
                trainable += pc.final_norm
            else:
                raise SpecError(f"--freeze-modules: unknown module {name!r} (known: lm_head, embed_tokens, norm)")
        shapes = tuple((l.in_features, l.out_features) for l in pc.linears for _ in range(l.count)) * k
        notes.append(f"freeze: the last {k} of {L} blocks train" + (f", plus {', '.join(cfg.freeze_modules)}"
                                                                      if cfg.freeze_modules else ""))
    elif method.is_peft:
        adapter_n, shapes = _adapter_params(m, method, cfg.lora_r, tuple(cfg.lora_targets), cfg.adapter_size,
                                            cfg.num_virtual_tokens)
        trainable = adapter_n
    adapters = adapter_n * 4

    # ---- gradients, optimizer (assumptions 3, 8)
    grad_bytes = 4 if method.is_peft else tw_bytes
    gradients = trainable * grad_bytes if training else 0
    paged = cfg.optimizer in (Optimizer.PAGED_ADAMW, Optimizer.PAGED_ADAMW_8BIT)
    opt_state, step_tmp = _optimizer_bytes(cfg.optimizer, trainable, grad_bytes, shapes) if training else (0, 0)

    # ---- sharding (assumption 9)
    dp = cfg.dp
    zero = cfg.zero if not cfg.fsdp else (3 if cfg.fsdp == "full_shard" else 2)
    ddp_buckets = 0
    if training and dp > 1:
        if zero >= 1:
            opt_state //= dp
            step_tmp //= dp
        if zero >= 2:
            gradients //= dp
        if zero >= 3:
            gathered = 2 * (pc.per_block * load)
            weights = weights // dp + gathered
            quant_constants //= dp
        if zero == 0:
            ddp_buckets = gradients
            notes.append("data parallel (DDP) keeps gradient buckets the size of the gradients (assumption 9)")
    if cfg.offload is not Offload.NONE and training:
        opt_state, step_tmp = 0, 0
        notes.append("optimizer states offloaded to CPU memory")
        if cfg.offload is Offload.PARAMS:
            weights = 2 * pc.per_block * load
            notes.append("parameters offloaded to CPU: two blocks gathered at a time on the GPU")

    comps: dict[str, int] = {"weights": weights}
    if quant_constants:
        comps["quant_constants"] = quant_constants
    if adapters:
        comps["adapters"] = adapters

    T = cfg.batch * cfg.seq
    V = m.vocab_size
    if not training:
        kv_bytes = (cfg.kv_dtype or cfg.compute_dtype).nbytes
        kv = _kv_cache(m, cfg, kv_bytes)
        a = c
        h, I, H = m.hidden_size, m.intermediate_size * (m.num_experts_per_tok if m.is_moe else 1), m.num_attention_heads
        layer = (3 * a * T * I + 2 * a * T * h) // tp
        if cfg.attn is Attention.EAGER:
            S = cfg.batch * H * cfg.seq * cfg.seq
            fp32_copy = 4 * S if (a == 2 and not (cfg.compute_dtype.value == "fp16" and cfg.device is DeviceMode.CUDA)) else 0
            attn = max(2 * S * a, S * a + fp32_copy + 4 * S, S * a + 4 * S + S * a) if a != 4 else 2 * 4 * S
            mask = cfg.batch * cfg.seq * cfg.seq * a
            layer = max(layer, (attn + 4 * a * T * H * m.head_dim) // tp + mask)
        logits = a * T * V + a * T * h
        transient = max(layer, logits)
        comps["kv_cache"] = kv
        comps["prefill_transient"] = transient
        static = weights + quant_constants + adapters
        allocated = static + kv + transient
        dynamic = kv + transient
    else:
        r = 4 if (amp or upcast or cfg.precision is Precision.FP32) else (load if cfg.precision.is_float else c)
        if cfg.precision.is_float and not amp:
            a = load
        elif amp:
            a = c
        else:
            a = r  # bitsandbytes casts k-bit linear outputs back to the input dtype
        dt = _Dt(r=r, a=a, amp=amp, c=c)
        lora = frozenset(l.name for l in _targets(m, tuple(cfg.lora_targets))) \
            if method in (Method.LORA, Method.QLORA) else frozenset()
        full_like = method is Method.FULL
        if method is Method.FREEZE:
            n_layers_grad = cfg.freeze_last_layers
            per_layer = _block_saved(m, cfg, dt, True, lora) if n_layers_grad else 0
        else:
            n_layers_grad = L
            per_layer = _block_saved(m, cfg, dt, full_like, lora)
        trains_head = full_like or (method is Method.FREEZE and "lm_head" in cfg.freeze_modules)
        head_grad = n_layers_grad > 0 or trains_head
        final_norm = (4 * T * m.hidden_size + (r * T * m.hidden_size if full_like else 0)) if head_grad else 0
        if trains_head and not full_like:
            final_norm += r * T * m.hidden_size
        Ld = a if not upcast else 4
        keep_logits = Ld * T * V
        loss_peak = keep_logits + 12 * T * V
        amp_casts = 0
        if amp:
            amp_casts = _amp_weight_casts(m, pc, c, n_layers_grad if not cfg.grad_checkpointing else 1, head_grad)
        if cfg.grad_checkpointing:
            ckpt = n_layers_grad * r * T * m.hidden_size
            activations = ckpt + final_norm
            recompute = per_layer + (c * pc.block_linear_weights if amp else 0)
            fwd_bwd = activations + max(loss_peak + amp_casts, keep_logits + recompute)
            notes.append("gradient checkpointing: one input per block kept, one block recomputed at a time "
                         "(assumption 5)")
        else:
            activations = n_layers_grad * per_layer + final_norm
            fwd_bwd = activations + amp_casts + loss_peak
        comps["gradients"] = gradients
        comps["optimizer"] = opt_state
        comps["activations"] = activations + amp_casts
        comps["logits_loss"] = fwd_bwd - activations - amp_casts
        if ddp_buckets:
            comps["ddp_buckets"] = ddp_buckets
        static = weights + quant_constants + adapters + gradients + ddp_buckets + (0 if paged else opt_state)
        comps["optimizer_step"] = step_tmp
        dynamic = max(fwd_bwd, step_tmp)
        allocated = static + dynamic
        if paged:
            notes.append("paged optimizer states live in CUDA unified memory: counted in the process total, "
                         "not in PyTorch's allocated/reserved (assumption 8)")
    if cfg.device is DeviceMode.CUDA:
        reserve = int(RESERVE_FRACTION * dynamic) + SEGMENT * 4
        context = CUDA_CONTEXT_BYTES
    else:
        reserve = context = 0
    reserved = allocated + reserve
    process = reserved + context + (opt_state if (training and paged) else 0)
    comps["cuda_context"] = context
    comps["allocator_reserve"] = reserve
    return Plan(config=cfg, params=pc.total, active_params=pc.active, trainable_params=trainable if training else 0,
                components=comps, peak_allocated_bytes=int(allocated), peak_reserved_bytes=int(reserved),
                process_bytes=int(process), notes=tuple(notes))


def replace(cfg: PlanConfig, **changes) -> PlanConfig:
    return dataclasses.replace(cfg, **changes)
