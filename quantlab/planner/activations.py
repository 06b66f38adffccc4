"""Tensors saved for backward, per architecture, in integer bytes: what autograd keeps between forward and backward.

Derived op by op from the modeling code of transformers 5.23 (``models/<family>/modeling_<family>.py``,
``integrations/sdpa_attention.py``; ``stack="transformers==5"``) and, where it differs, transformers 4.57.6
(``stack="transformers==4.57"``: A3d), PEFT 0.21 (``tuners/lora/layer.py``), bitsandbytes 0.50
(``autograd/_functions.py``) and torch's ``scaled_dot_product_attention``; checked on a CPU against
``torch.autograd.graph.saved_tensors_hooks`` on tiny models of every family
(``tests/planner/test_activations_vs_torch.py``). Costs sit beside the architecture they describe, one function
per part of a block, as nanochat's ``kv_bytes_per_token`` does.

Autograd's rule (assumption A1): a node saves only what the gradients it must compute need. ``y = x @ W`` saves
``x`` only when ``W`` needs a gradient, and keeps ``W`` (a parameter, not an activation) for ``x``'s gradient;
a node none of whose inputs needs a gradient saves nothing. Storages count once (a view of a saved tensor adds
nothing; a tensor saved by several nodes counts once).

Numbered assumptions (T = batch x tokens, h hidden, I intermediate, H heads of width d, qd = H·d, kvd = kv
heads · d, S = batch · H · seq · keys; ``r`` bytes of the residual stream and norm outputs, ``a`` of linear
outputs and attention internals, ``c`` of the autocast dtype):

A2. RMSNorm (``LlamaRMSNorm``: ``x.to(float32)``, ``pow``, ``* rsqrt``, ``weight * x.to(input_dtype)``) saves
    the fp32 copy of its input (the input itself when it is fp32: 4·T·h) and the rsqrt (4·T) when its input needs
    a gradient, and the normalized tensor (r·T·h) when its weight trains. Its output is saved by the linears that
    read it (A5). Gemma-2's norm computes ``x.float() * (1 + w.float())`` in fp32 and casts after: its normalized
    tensor is fp32 (4·T·h) and ``1 + w`` (4·h) is saved; a block has four norms, the post-norms' outputs feed a
    residual add (nothing saved). GPT-2's LayerNorm saves its input (r·T·h) and the mean and rstd (fp32 on CUDA,
    the input dtype on a CPU).
A3. Fused SDPA (FlashAttention, the memory-efficient kernel, the CPU flash kernel) saves q, k, v, its output and
    the fp32 log-sum-exp (4·b·H·s); GQA runs natively (transformers passes ``enable_gqa`` when there is no mask,
    ``use_gqa_in_sdpa``). q and k are new tensors (RoPE); v is a view of the projection output; the kernel's
    output is laid out (b, s, H, d), so the ``transpose(1, 2).contiguous()`` before ``o_proj`` is free and
    o_proj's input is the saved output. Phi-3's v is a view of the fused qkv output, so that whole storage stays
    (CUDA; the CPU kernel copies v and its output).
A3b. On CUDA only FlashAttention and the math kernel take ``enable_gqa`` (torch ``scaled_dot_product_attention``
    docstring), and FlashAttention needs fp16/bf16 on sm80+. A GQA model whose attention inputs are fp32 (k-bit
    training under PEFT's fp32 upcast, fp32 fine-tunes) or that runs on a GPU without FlashAttention (T4, V100:
    ``flash_attention=False``) gets the math kernel: fp32 scaled q, repeated k and v (4·T·qd each) and the fp32
    probabilities (4·S) are saved, and o_proj reads a new copy of the output. (Source of the finding: the other
    planner session's note, checked against the torch docstring in this venv.)
A3c. Padded batches (``PlanConfig.padding_mask``: dynamic padding with an attention mask, instead of packed or
    equal-length rows): transformers hands SDPA a 4-D mask, so GQA no longer runs natively (``use_gqa_in_sdpa``
    needs no mask): k and v are repeated to H heads (2·a·T·(qd - kvd) more; with one KV head ``repeat_kv`` is a
    view and nothing changes) and each layer's kernel saves the mask converted to the attention dtype (at·b·s·s:
    torch's SDPA turns a bool mask into an additive one of the query's dtype on every call; under autocast bf16,
    not the fp32 residual dtype: measured on transformers 5.24 and 4.57.6). Measured on tiny Llama / Qwen2 /
    Mixtral / Phi-3 models on a CPU (tests/planner/test_activations_vs_torch.py); eager attention (which always
    adds a causal mask) saves nothing more, nor GPT-2's SDPA on a CPU with attention dropout (the math kernel adds
    the mask to its scores); GPT-2's fused kernel (CUDA, or no dropout) keeps the mask (a·b·s·s). On CUDA the same
    rule is assumed (a mask rules out FlashAttention and native GQA: the memory-efficient kernel keeps the mask as
    its ``attn_bias``, padded to a multiple of 16 keys, which is not modelled: at most 15 columns), not measured.
    When k and v are repeated, Phi-3's v is a copy, so its fused qkv output is no longer kept.
A3d. transformers 4.57.6 (``stack="transformers==4.57"``) hands SDPA a materialised mask in a training forward
    with no attention mask and no KV cache: ``create_causal_mask`` (``masking_utils.py``) calls
    ``_preprocess_mask_arguments``, which, with ``position_ids`` (``LlamaModel.forward`` always builds them from
    ``cache_position``), no 2-D mask and ``past_key_values is None``, runs ``find_packed_sequence_indices``; that
    always returns a tensor (the packed-sequence check is left out "because it causes issues with export"), so
    ``allow_is_causal_skip=False`` and ``sdpa_mask`` builds a (b, 1, s, s) bool mask once per forward. Then
    ``use_gqa_in_sdpa`` (``integrations/sdpa_attention.py``) is False (a mask), so ``repeat_kv`` copies k and v to
    H heads, and the rest is A3c's path: per layer the repeated k and v (2·at·T·(qd - kvd) more) and the mask
    in the attention dtype (at·b·s·s); GPT-2 (MHA, own attention class) keeps the mask only. Eager attention gets
    the same float mask as in transformers 5 (nothing changes); neither does GQA with one KV head beyond the mask,
    nor MHA (``repeat_kv`` with one group returns its input). Under gradient checkpointing the bool mask is a
    keyword argument of every checkpointed block, held by the checkpoint until the block's recompute: b·s·s bytes
    beside the block inputs (memory assumption 5); the recomputed block keeps A3c's tensors. Assumed: the
    training forward has no KV cache (``use_cache=False``): gradient checkpointing forces it
    (``check_model_inputs``, ``utils/generic.py``), as does transformers 5's Trainer (``TrainingArguments.use_cache
    =False``) and the usual fine-tuning script (``model.config.use_cache = False``); the published vramcalc rows
    measured with 4.57.6 agree. With 4.57's config default ``use_cache=True`` and no checkpointing a DynamicCache
    is built, packed-sequence detection is skipped and SDPA gets ``is_causal=True`` and unrepeated k, v: plan that
    with ``transformers==5``. Measured on a CPU to the byte on tiny Llama / Qwen2 / Mistral / Phi-3 / GPT-2 /
    Gemma-2 models with transformers 4.57.6 (GQA, MQA, MHA; bf16, fp32, autocast; full and LoRA; checkpointing),
    ``scripts/stack_saved_tensors.py``, ``reports/stack/``. Not modelled: 4.57's Mixtral experts (a loop over
    nn.Linear experts, not A7's grouped_mm; a plan note says so).
A4. Eager attention (``eager_attention_forward``) saves q, k and v repeated to H heads (``repeat_kv`` copies,
    and a non-contiguous v is copied by ``matmul``), the fp32 softmax (``softmax(dtype=float32)``, 4·S) and its
    cast to the compute dtype (a·S, none when a = 4), and o_proj's input is a new contiguous copy (a·T·qd).
    Gemma-2 also saves the softcap ``tanh`` (a·S) and has no SDPA path in transformers 5 (softcapping).
    GPT-2's softmax runs in the compute dtype. Attention dropout (p > 0) saves a mask and its output.
A5. A tensor read by linears is saved once if any of them trains (its own dtype), and by each LoRA adapter
    reading it as PEFT's fp32 cast (``_cast_input_dtype``: a new 4-byte copy per adapter unless the tensor is
    fp32 and dropout is off, then the tensor itself); lora_B saves lora_A's fp32 output (4·T·rank). With
    ``lora_dropout`` > 0 each adapter saves the dropout mask and its own dropped copy. Under autocast (AMP)
    every linear saves its own cast of its input (autocast does not cache activations), adapters included
    (c·T·width each), and the cast of every weight whose input or weight needs a gradient (cached per forward
    for trainable leaves, per call for frozen ones): c bytes per weight.
A6. Gated MLP (SwiGLU / GeGLU; Phi-3's fused gate_up is one storage of the same size) saves the gate output
    (the activation's input), the activation output and the up output (the product's inputs): 3·a·T·I, and the
    product when down_proj reads it as in A5. GPT-2's ``gelu_new`` is composed of tensor ops and saves four
    T x I tensors (x, tanh, 0.5·x, 1 + tanh).
A7. Mixtral (transformers 5: experts as fused 3-D parameters run by the default ``grouped_mm`` experts
    implementation, ``integrations/moe.py``): the router saves its fp32 softmax (4·T·E), the top-k indices (int64)
    and normalized weights and their sum; each of the T·k routed (token, expert) pairs saves three int64 indices
    (the sort permutation, its inverse, the token gather), the gate_up output (2·a·I), the activation (a·I), the
    expert output (a·h, for the routing-weight product) and the fp32 routing weight; its gathered input (a·h) and
    product (a·I) when the experts train; ``grouped_mm`` keeps its int32 offsets (4·E).
A8. Dropout (GPT-2's attn/resid/embd_pdrop, LoRA's dropout) saves a bool mask on CUDA (1 byte per element;
    the input dtype on a CPU, where ``dropout`` is ``x * mask``).
A9. Outside the blocks: RoPE's cos and sin (2·s·d·r, shared by all layers), the final norm, lm_head's input
    when lm_head trains, the embedding's int64 ids when it trains (GPT-2: also the position ids), Gemma-2's final
    logit softcap ``tanh`` (a·T·V). The logits and the loss buffers are counted apart (``logits_loss``).
A10. A block whose input needs no gradient (the first block under LoRA without gradient checkpointing: PEFT
    freezes the embedding) saves nothing in its first norm. QLoRA's ``prepare_model_for_kbit_training`` and
    gradient checkpointing make the input require a gradient, so every block saves it.
A11. A k-bit linear that keeps its input: bitsandbytes 0.50's LLM.int8 (``MatMul8bitLt``: ``ctx.tensors =
    (CAt, subA, A)`` whenever A needs a gradient) and, for ``stack="litgpt"`` (LitGPT's published tables),
    bitsandbytes 0.41's 4-bit ``MatMul4Bit`` (``ctx.tensors = (A, B)``; 0.50 keeps only B). ``ctx.tensors`` is
    not ``save_for_backward``, so saved-tensor hooks do not see these inputs (the CPU comparison cannot check
    them); they are the norm outputs, o_proj's input (when not the SDPA output) and down_proj's input.
A12. Tensor parallelism (Megatron-style, no sequence parallelism) splits the heads and the MLP's intermediate
    width: q, k, v, attention internals, o_proj's and down_proj's inputs and the MLP's intermediates divide by the
    degree; the norms, their outputs (each rank's q/k/v and gate/up read the whole hidden state), the router and
    the residual stream stay whole on every rank (Korthikanti et al. 2022, "Reducing Activation Recomputation in
    Large Transformer Models", section 4.2.1).
A14. A checkpointed block in backward (memory assumption 5; torch 2.13 ``utils/checkpoint.py``, non-reentrant, as
    transformers 5.24 ``modeling_utils.py`` ``_activation_checkpointing_enable`` sets ``use_reentrant=False``): the
    first unpack of a saved tensor re-runs the block's forward and keeps the tensors A2-A8 name, and autograd then
    frees each node's saved tensors after the node runs. Two facts beyond :func:`block_saved`, both measured on a
    CPU (tiny Llama, fp32, Trainer step, torch profiler allocation events, tests/integrations/
    test_trainer_loop_plan.py):
    a. (:func:`recompute_reused`) the recompute reads the checkpoint's saved input, so what the first norm saves
       as the input itself (RMSNorm's ``x.to(float32)`` of an fp32 input is that input; GPT-2's LayerNorm saves its
       input) is not a new tensor: it is the block input memory assumption 5 already keeps.
    b. (:func:`block_backward_points`) the block's backward starts at the MLP's output projection, with the block
       output's gradient dY (r·T·h: the residual add passes it to both branches, and it waits in the residual's
       input buffer) beside every recomputed tensor. down_proj's ``MmBackward`` makes its input's gradient (a·T·I)
       and, when it trains, its weight's gradient (I·h in the gradient's dtype: a fresh tensor that
       ``AccumulateGrad`` adds into an existing ``.grad`` or that becomes ``.grad``; under autocast the c-dtype
       gradient of the weight's cast and its fp32 copy, ``ToCopyBackward``); a k-bit down_proj instead dequantizes
       its weight for the input gradient (bitsandbytes 0.50 ``MatMul4Bit.backward`` / ``MatMul8bitLt.backward``:
       c·I·h). A gated MLP's product then makes the gradients of both factors (2·a·T·I) beside down_proj's input
       gradient, once down_proj's saved input is freed. Under autocast the weight's cast has its own
       ``ToCopyBackward`` node, which runs after down_proj's (a higher sequence number than the product's): the c-dtype
       and fp32 gradients are live at once, down_proj's saved input and weight cast already freed (measured on
       ``quantlab validate --only qwen-full-amp-ckpt``: 18,258,824 B at that node). The block's transient is the
       largest of these points.
    c. (:func:`amp_weight_cache`) under autocast the casts of trainable leaves are cached until the outermost
       autocast region exits, which both loops leave after the loss's forward (Trainer's
       ``compute_loss_context_manager``; quantlab validate's loop): under checkpointing, where the blocks' casts are
       not saved for backward, every block's casts are still live through the loss's forward (measured on the same
       row: 8,374,528 B of casts, the step's peak at ``nll_loss_forward``).
       Not modelled: LoRA/IA3 adapters' own backward buffers on down_proj, Gemma-2's post-norm (one more r·T·h is
       added for it, read from the code, not measured), MoE experts (dY only), GPT-2's composed ``gelu_new``
       backward (the output projection's point only).
    d. Eager attention (``eager_attention_forward``, A4) reaches its softmax once the MLP's backward is done (its
       saved tensors and o_proj's saved input freed; the residual's gradient, T·h, still live): ``matmul(probs,
       v)``'s backward makes the probabilities' gradient, ``ToCopyBackward`` (fp16/bf16) its fp32 copy, and
       ``_softmax_backward_data`` its fp32 output (``softmax(dtype=float32)`` casts its input first, so the
       output's cast back is a later node) beside the saved fp32 probabilities: 8·S bytes above the saved set, less
       the half probabilities (at·S) ``matmul(probs, v)`` saved, freed by then. Measured by a Trainer step on the
       tiny Llama at 512 tokens (batch 2, eager): fp32 and bf16 within 0.03% (the plan was 40% and 15% below
       without it). Not modelled: GPT-2's own attention, attention dropout, Gemma-2's softcap
       backward, SDPA's math kernel (A3b), whose fp32 probabilities meet the same backward.
A13. Without tensor parallelism a block's saved bytes are ``C + b·(R + P·s + Q·s²)`` for fixed switches (every term
    above is b·s·width, b·s·keys·heads, b·keys·width or a constant): :func:`block_saved` evaluates that closed form
    from coefficients computed once per model and switches; :func:`block_saved_direct` is its oracle (tests).
"""

from __future__ import annotations

from collections import namedtuple

from quantlab.families import (block_linears, family, ia3_linears, learned_positions, mlp_input_names, model_keyed,
                               qkv_names)
from quantlab.specs import ModelSpec


_ACT_FIELDS = ("b s kv_s r a c amp eager cuda flash rank lora_dropout kbit_keeps_input prefix padded kbit tp "
               "sdpa_mask")


class Act(namedtuple("Act", _ACT_FIELDS, defaults=(True, 0, False, False, False, False, False, 1, False))):
    """Sizes, dtype bytes and switches of one training configuration (an immutable, hashable value: results are
    cached; a named tuple, built once per plan at a fraction of a frozen dataclass's cost, and without importing
    ``typing`` on the CLI's start-up path).

    Fields: ``b`` batch; ``s`` tokens per sequence, virtual prompt tokens included; ``kv_s`` keys each query sees
    (s, plus prefix-tuning tokens); ``r`` bytes of the residual stream / norm outputs; ``a`` of linear outputs /
    attention internals; ``c`` the autocast dtype (amp); ``amp``, ``eager``, ``cuda``; ``flash`` the GPU runs
    FlashAttention (sm80+; default True); ``rank`` the LoRA rank (0); ``lora_dropout``; ``kbit_keeps_input`` (A11);
    ``prefix``; ``padded`` (A3c: an attention mask from padding); ``kbit`` block linears are k-bit (bitsandbytes
    autograd Functions: autocast does not cast them); ``tp`` the tensor-parallel degree (A12; default 1);
    ``sdpa_mask`` SDPA gets a materialised causal mask with no padding (transformers 4.57 without a KV cache, A3d).
    """

    __slots__ = ()

    @property
    def att(self) -> int:
        """Bytes of the attention inputs and internals: autocast casts q, k, v to its dtype (A5)."""
        return self.c if self.amp else self.a

    @property
    def T(self) -> int:
        return self.b * self.s

    @property
    def mask(self) -> int:
        """Bytes per element of a dropout mask (A8)."""
        return 1 if self.cuda else self.a


def sdpa_kernel(m: ModelSpec, x: Act) -> str:
    """Which SDPA kernel runs: "fused" (flash / memory-efficient / CPU flash) or "math" (A3, A3b)."""
    return "math" if sdpa_math(m, x.cuda, x.att, x.flash, x.prefix or x.padded or x.sdpa_mask) else "fused"


def sdpa_math(m: ModelSpec, cuda: bool, att: int, flash: bool, masked: bool) -> bool:
    """SDPA takes the math kernel (A3b): GQA on CUDA without a mask, with fp32 inputs or no FlashAttention."""
    return cuda and m.kv_heads < m.num_attention_heads and not masked and (att == 4 or not flash)


def _readers(x: Act, xb: int, width: int, trains: int, loras: int, shared: bool = False, grad: bool = True) -> int:
    """Bytes saved by the linears that read one tensor of ``width`` features stored in ``xb`` bytes (A5).

    ``trains``: how many of them have trainable weights; ``loras``: how many carry a LoRA adapter; ``shared``: the
    tensor is already counted (an SDPA output); ``grad``: the tensor needs a gradient (else LoRA's dropout keeps
    no mask).
    """
    n = x.T * width
    out = 0
    mask = (1 if x.cuda else 4) * n if (x.lora_dropout and grad) else 0  # dropout after PEFT's fp32 cast (A8)
    if x.amp:
        if trains:
            out += 0 if (xb == x.c and shared) else x.c * n * (1 if xb == x.c else trains)
        if loras:
            out += loras * (x.c * n + mask + x.c * x.T * x.rank)
        return out
    if trains and not shared:
        out += xb * n
    if loras:
        if x.lora_dropout:
            out += loras * (mask + 4 * n)
        elif xb == 4:
            out += 0 if (trains or shared) else 4 * n
        else:
            out += loras * 4 * n
        out += loras * 4 * x.T * x.rank
    return out


def ia3_params_per_block(m: ModelSpec) -> int:
    """IA3 vectors of one block (PEFT's defaults, families F7): the output width of each scaled linear, the input
    width of the feedforward one."""
    targets, ff = ia3_linears(m)
    return sum(l.out_features for l in targets) + (ff.in_features if ff else 0)


def _norm(m: ModelSpec, x: Act, input_grad: bool, weight_trains: bool) -> int:
    """One norm (A2)."""
    T, h = x.T, m.hidden_size
    norm = family(m).norm  # families F1
    if norm == "layernorm":
        stat = 4 if x.cuda else x.r
        return x.r * T * h + 2 * stat * T if (input_grad or weight_trains) else 0
    out = 0
    if input_grad:
        out += 4 * T * h + 4 * T
    if norm == "rmsnorm_1p":  # normalized and scaled in fp32, ``1 + w`` saved
        out += 4 * h if input_grad else 0
        out += 4 * T * h if weight_trains else 0
    elif weight_trains:
        out += x.r * T * h
    return out


def _has(names: frozenset, *cands: str) -> int:
    return sum(1 for c in cands if c in names)


def attention(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool, ia3: bool = False) -> int:
    """Attention sub-block: its norm, projections' inputs, attention internals, o_proj's input (A2-A5)."""
    T, h, H, d = x.T, m.hidden_size, m.num_attention_heads, m.head_dim
    qd, kvd = H * d, m.kv_heads * d
    a, r, at = x.a, x.r, x.att  # at: attention dtype (differs from a under autocast over k-bit linears)
    fam = family(m)
    qkv = qkv_names(m)  # families F6: one name when fused
    o_name = fam.names[3]
    n_lora_in = _has(lora, *qkv)
    scaled = frozenset(fam.ia3_targets) if ia3 else frozenset()  # IA3: outputs times a trainable vector
    if not (input_grad or trains or n_lora_in or scaled or x.prefix):
        return 0  # nothing upstream or here needs a gradient (A1)
    # which of q, k, v need a gradient (the first block under LoRA: only the adapted ones, A1, A10)
    base = input_grad or trains
    if len(qkv) == 1:
        qg = kg = vg = base or n_lora_in > 0 or bool(scaled)
    else:
        qg, kg, vg = (base or n in lora or n in scaled for n in qkv)
    if x.prefix:  # the trainable prefix is concatenated to k and v
        kg = vg = True
    scores = qg or kg
    # IA3 keeps each scaled linear's output for its vector's gradient
    outs = {"q_proj": qd, "k_proj": kvd, "v_proj": kvd, "qkv_proj": qd + 2 * kvd, "c_attn": 3 * h}
    rep = _norm(m, x, input_grad, trains)  # replicated on every tensor-parallel rank (A12)
    keep = x.kbit_keeps_input and not trains
    rep += r * T * h if keep else 0  # A11: the k-bit q/k/v linears keep their (shared) input
    rep += _readers(x, r, h, len(qkv) if trains else 0, n_lora_in, grad=input_grad, shared=keep)
    # IA3 keeps each scaled output (for its vector's gradient) and, when that output needs a gradient through the
    # product, the fp32 vector ``1 * ia3_l.flatten()`` (a new tensor)
    out = sum(a * T * outs[n] + (4 * outs[n] if base else 0) for n in scaled) if scaled else 0
    S = x.b * H * x.s * x.kv_s
    kv_T = x.b * x.kv_s
    o_shared = False
    if fam.attention_code == "gpt2":  # GPT2Attention runs its own code (families F8)
        drop = m.attention_dropout > 0
        if not x.eager and (x.cuda or not drop):  # fused: q, k, v views of c_attn's output (prefix: k, v new)
            out += a * T * 3 * h + a * T * qd + 4 * H * T
            out += 2 * a * kv_T * h + a * x.b * x.s * x.kv_s if x.prefix else 0  # concatenated k, v; the mask
            out += a * x.b * x.s * x.kv_s if (x.sdpa_mask or x.padded) and not x.prefix else 0  # A3d: the mask
            o_shared = True
        else:  # eager; a CPU SDPA with dropout falls back to the math kernel, which upcasts half inputs to fp32
            f = a if x.eager else 4
            sm = 4 if x.amp else f  # autocast runs softmax in fp32
            # q copy (for k's gradient), k (for q's), v (for the probabilities')
            out += (f * T * h if kg else 0) + (f * kv_T * h if qg else 0) + (f * kv_T * h if scores else 0)
            if drop:  # softmax, mask (A8), dropped probabilities
                out += (sm * S + (1 if x.cuda else f) * S if scores else 0) + (f * S if vg else 0)
            else:  # softmax and its cast back
                out += (sm * S if scores or (vg and sm == f) else 0) + (f * S if sm != f and vg else 0)
    elif not x.eager:
        if sdpa_kernel(m, x) == "math":  # A3b: fp32 scaled q, repeated k and v, fp32 probabilities
            out += (4 * T * qd if kg else 0) + (4 * kv_T * qd if qg else 0) + (4 * kv_T * qd if scores else 0)
            out += 4 * S
        elif x.prefix:  # a prefix makes a mask: no native GQA, k and v repeated to H heads; the mask is kept
            # (one KV head: ``repeat_kv``'s expand + reshape is a view, and the fused kernel saves it as it is, so the
            # storage kept is the unrepeated k and v; measured by quantlab validate)
            rd = kvd if m.kv_heads == 1 else qd
            out += at * T * qd + 2 * at * kv_T * rd + at * T * qd + 4 * H * T + x.r * x.b * x.s * x.kv_s
            o_shared = True
        else:
            # A3c/A3d: a 4-D mask (padding; transformers 4.57 without a KV cache): k and v repeated to H heads
            # (new tensors unless one KV head, where repeat_kv is a view), and each layer's kernel keeps the mask
            # converted to the attention dtype
            masked = x.padded or x.sdpa_mask
            kd = qd if (masked and m.kv_heads > 1) else kvd
            # a fused qkv (Phi-3): v is a view of its output (CUDA), unless autocast or repeat_kv copies it
            v = at * T * (qd + 2 * kvd) if (fam.fused_qkv and x.cuda and at == a and kd == kvd) else at * T * kd
            out += at * T * qd + at * T * kd + v + at * T * qd + 4 * H * T
            o_shared = not (fam.fused_qkv and not x.cuda)
            if masked:
                out += at * x.b * x.s * x.kv_s
    else:
        # q (for k's gradient), k repeated to H heads (for q's), v repeated (for the probabilities')
        out += (at * T * qd if kg else 0) + (at * kv_T * qd if qg else 0) + (at * kv_T * qd if scores else 0)
        drop = m.attention_dropout > 0
        out += 4 * S if (scores or (vg and at == 4 and not drop)) else 0  # fp32 softmax
        if fam.attn_softcap and scores:
            out += at * S  # softcap tanh (families F5)
        if drop:
            out += (x.mask * S if scores else 0) + (at * S if vg else 0)  # mask; dropped probabilities
        elif vg and at != 4:
            out += at * S  # the probabilities cast to the compute dtype
    o_keep = x.kbit_keeps_input and not trains and not o_shared
    out += at * T * qd if o_keep else 0  # A11: o_proj keeps its input
    out += _readers(x, at, qd, 1 if trains else 0, _has(lora, o_name), shared=o_shared or o_keep)
    out = rep + out // x.tp  # A12: heads are split across tensor-parallel ranks, the residual stream is not
    if fam.residual_dropout and m.hidden_dropout > 0:
        out += x.mask * T * h  # resid_dropout
    if fam.post_norms:
        out += _norm(m, x, True, trains)  # post_attention_layernorm
    return out


def mlp(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool, ia3: bool = False) -> int:
    """MLP sub-block with its norm (A2, A5-A7); ``ia3``: PEFT's IA3 scales the feedforward linear's input."""
    f = family(m)
    ff = f.ia3_feedforward if ia3 else None
    T, h, I = x.T, m.hidden_size, m.intermediate_size
    a, r = x.a, x.r
    if m.is_moe:  # fused expert parameters: no nn.Linear for LoRA
        up, down = (), ""
    else:
        up, down = mlp_input_names(m), f.names[6]  # families F6
    if not (input_grad or trains or ff or _has(lora, *up, down)):
        return 0
    rep = _norm(m, x, input_grad, trains)  # replicated on every tensor-parallel rank (A12)
    if not f.gated_mlp:  # GPT-2's two-linear MLP with gelu_new (families F2)
        rep += _readers(x, r, h, 1 if trains else 0, _has(lora, *up))
        out = 4 * a * T * I
        out += _readers(x, a, I, 1 if trains else 0, _has(lora, down))
        out += 4 * T * I + 4 * I if ff else 0  # IA3: the fp32 copy of the scaled input, the vector
        if f.residual_dropout and m.hidden_dropout > 0:
            rep += x.mask * T * h
        return rep + out // x.tp
    if m.is_moe:
        k, E = m.num_experts_per_tok, m.num_local_experts
        n = T * k
        rep += ((x.c if x.amp else r) * T * h) if trains else 0  # the router's input (autocast: its cast)
        rep += 4 * T * E + 8 * T * k + 4 * T * k + 4 * T  # softmax, top-k indices, normalized weights, their sum
        ae = r if x.amp else a  # autocast does not cover grouped_mm: the experts run in the residual dtype
        rep += n * (24 + ae * h + 4) + 4 * E  # per pair: indices, expert output, routing weight; offsets
        out = n * (2 * ae * I + ae * I)  # gate_up output, activation: split with each expert's intermediate
        if trains:
            rep += n * ae * h
            out += n * ae * I
        return rep + out // x.tp
    keep = x.kbit_keeps_input and not trains
    rep += r * T * h if keep else 0  # A11: the k-bit gate/up linears keep their (shared) input
    rep += _readers(x, r, h, len(up) if trains else 0, _has(lora, *up), shared=keep)
    out = 0
    if input_grad or trains or _has(lora, *up):
        out += 3 * a * T * I
    out += a * T * I if keep else 0  # A11: down_proj keeps its input
    out += _readers(x, a, I, 1 if trains else 0, _has(lora, down), shared=keep)
    if ff:  # IA3 casts down_proj's input to its fp32 vector's dtype and keeps it and the vector for the product
        out += 4 * T * I + 4 * I
    if f.post_norms:
        rep += _norm(m, x, True, trains)  # post_feedforward_layernorm
    return rep + out // x.tp


def block_saved(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool, ia3: bool = False,
                adapter_size: int = 0) -> int:
    """Bytes one decoder block saves for backward.

    Closed form (A13): without tensor parallelism every saved tensor is a product of the batch with the tokens, or
    the tokens times the keys, or a constant (IA3 vectors, ``1 + w``), so a block saves ``C + b·(R + P·s + Q·s²)``
    for fixed switches and a fixed number of extra keys (``kv_s - s``: prefix tuning). The four coefficients come
    once from :func:`block_saved_direct` at four sizes and are checked at a fifth; tensor parallelism's integer
    division (A12) is evaluated directly.
    """
    if x.tp != 1:
        return _block_saved_tp(m, x, trains, lora, input_grad, ia3, adapter_size)
    coef = _block_coefficients(m, x.kv_s - x.s, x.r, x.a, x.c, x.amp, x.eager, x.cuda, x.flash, x.rank,
                               x.lora_dropout, x.kbit_keeps_input, x.prefix, x.padded, x.kbit, x.sdpa_mask, trains,
                               lora, input_grad, ia3, adapter_size)
    if coef is None:  # pragma: no cover - the closed form did not hold at the check point
        return block_saved_direct(m, x, trains, lora, input_grad, ia3, adapter_size)
    C, R, P, Q = coef
    s = x.s
    return C + x.b * (R + s * (P + s * Q))


@model_keyed
def _block_coefficients(m: ModelSpec, extra_keys: int, r: int, a: int, c: int, amp: bool, eager: bool, cuda: bool,
                        flash: bool, rank: int, lora_dropout: bool, kbit_keeps_input: bool, prefix: bool,
                        padded: bool, kbit: bool, sdpa_mask: bool, trains: bool, lora: frozenset, input_grad: bool,
                        ia3: bool, adapter_size: int) -> tuple[int, int, int, int] | None:
    """(C, R, P, Q) of ``block_saved = C + b·(R + P·s + Q·s²)`` (A13), or None when the check point disagrees."""
    def f(b: int, s: int) -> int:
        x = Act(b=b, s=s, kv_s=s + extra_keys, r=r, a=a, c=c, amp=amp, eager=eager, cuda=cuda, flash=flash, rank=rank,
                lora_dropout=lora_dropout, kbit_keeps_input=kbit_keeps_input, prefix=prefix, padded=padded, kbit=kbit,
                sdpa_mask=sdpa_mask)
        return block_saved_direct(m, x, trains, lora, input_grad, ia3, adapter_size)
    f11, f12, f13, f21 = f(1, 1), f(1, 2), f(1, 3), f(2, 1)
    d1, d2 = f12 - f11, f13 - f12
    Q2 = d2 - d1
    if Q2 % 2:
        return None
    Q = Q2 // 2
    P = d1 - 3 * Q
    R = f21 - f11 - P - Q
    C = f11 - R - P - Q
    if f(3, 5) != C + 3 * (R + 5 * (P + 5 * Q)):
        return None
    return C, R, P, Q


@model_keyed
def _block_saved_tp(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool, ia3: bool,
                    adapter_size: int) -> int:
    return block_saved_direct(m, x, trains, lora, input_grad, ia3, adapter_size)


def recompute_reused(m: ModelSpec, x: Act, trains: bool, input_grad: bool) -> int:
    """Bytes of a block's saved tensors that are its input itself, which a checkpointed block's recompute reads from
    the checkpoint's saved input instead of making anew (A14a)."""
    T, h = x.T, m.hidden_size
    if family(m).norm == "layernorm":
        return x.r * T * h if (input_grad or trains) else 0
    return 4 * T * h if (input_grad and x.r == 4) else 0  # x.to(float32) / x.float() of an fp32 input: itself


def attention_backward_point(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool, grad_bytes: int,
                             grads_kept: bool) -> int | None:
    """Bytes above a block's saved tensors at eager attention's softmax backward (A14d), dY included; None where it
    is not modelled (SDPA, GPT-2's own attention) or the attention runs no backward."""
    f = family(m)
    if not (x.eager and f.attention_code != "gpt2" and (input_grad or trains or _has(lora, *qkv_names(m)))):
        return None
    T, tp = x.T, x.tp
    dy = x.r * T * m.hidden_size * (2 if f.post_norms else 1)
    S = x.b * m.num_attention_heads * x.s * x.kv_s
    o_in = x.att * T * m.num_attention_heads * m.head_dim // tp if (trains or f.names[3] in lora) else 0
    done = 0  # the gradients the block's MLP, post-attention norm and o_proj left as .grad (grads_kept False)
    if trains and not grads_kept:
        qkv = set(qkv_names(m))
        done = sum(l.count * (l.in_features * l.out_features // tp + (l.out_features if l.bias else 0))
                   for l in block_linears(m) if l.name not in qkv) + (f.norms_per_block - 1) * m.hidden_size
    sm = 8 * S - (x.att * S if x.att != 4 else 0)  # fp32 gradient and output; a half cast of the probs freed
    return dy + sm // tp - mlp(m, x, trains, lora, True) - o_in + done * grad_bytes


def block_backward_points(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool, grad_bytes: int,
                          grads_kept: bool) -> tuple[int, ...]:
    """Bytes above a checkpointed block's recomputed tensors (and their autocast weight casts) at each candidate
    peak of its backward's first nodes (A14b), the block output's gradient dY included in each: down_proj's
    ``MmBackward`` (its input's gradient and its weight's gradient, or a k-bit weight's dequantized copy), under
    autocast the ``ToCopyBackward`` of its weight's cast (the fp32 copy of that gradient; down_proj's saved input and
    weight cast freed), and a gated MLP's product backward (the gradients of both factors beside down_proj's input
    gradient, down_proj's saved tensors freed, its weight's gradient still live where it becomes ``.grad``:
    ``grads_kept`` False). ``grad_bytes``: bytes of a trainable weight's ``.grad``. Each point is a closed form in the
    shape; the caller takes their maximum (so the plan's polynomial form holds)."""
    f = family(m)
    if not (input_grad or trains or lora):
        return (0,)  # (the block saves nothing and runs no backward)
    T, h, I, a, tp = x.T, m.hidden_size, m.intermediate_size, x.a, x.tp
    dy = x.r * T * h
    if f.post_norms:  # Gemma-2's post_feedforward_layernorm: its input's gradient beside dY (read, not measured)
        dy += x.r * T * h
    point = attention_backward_point(m, x, trains, lora, input_grad, grad_bytes, grads_kept)
    attn = (point,) if point is not None else ()
    if m.is_moe:
        return (dy,) + attn
    down = f.names[6]
    w = I * h // tp
    gi = a * T * I // tp
    cast = x.c * w if (x.amp and not x.kbit) else 0  # down_proj's weight cast (A5), freed after its MmBackward
    saved_down = gi if ((trains and down not in lora) or x.kbit_keeps_input) else 0
    if trains:
        points = [dy + gi + (x.c if x.amp else grad_bytes) * w]
        if x.amp:  # ToCopyBackward: the c-dtype gradient and its fp32 copy, down_proj's saved tensors freed
            points.append(dy + gi + 4 * w - saved_down)
    else:
        points = [dy + gi + (x.c * w if x.kbit else 0)]  # a k-bit weight dequantized for the input gradient
    if f.gated_mlp:
        stays = w * grad_bytes if (trains and not grads_kept) else 0
        points.append(dy + gi + 2 * a * T * I // tp - saved_down - cast + stays)
    return tuple(points) + attn


def amp_weight_cache(m: ModelSpec, x: Act, trains: bool, lora: frozenset) -> int:
    """Bytes of one block's weight casts autocast keeps in its cache until the autocast region exits (A14c): the
    casts of leaves that require a gradient (torch ``autocast_mode.cpp`` ``cached_cast``: ``arg.requires_grad() &&
    arg.is_leaf()``), so every trainable linear weight and bias and the LoRA matrices; frozen and k-bit weights are
    cast per call. MoE experts run through ``grouped_mm``, which autocast does not cover."""
    if not x.amp:
        return 0
    total = 0
    for l in block_linears(m):
        if l.name.startswith("experts."):
            continue
        if trains and not (x.kbit and getattr(l, "module", True)):
            total += l.count * (l.in_features * l.out_features + (l.out_features if l.bias else 0)) // x.tp
        if l.name in lora:
            total += l.count * x.rank * (l.in_features + l.out_features)
    return x.c * total


def block_saved_direct(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool, ia3: bool = False,
                       adapter_size: int = 0) -> int:
    """Bytes one decoder block saves for backward, summed op by op (the oracle of :func:`block_saved`)."""
    attn_out = attention(m, x, trains, lora, input_grad, ia3)
    # the MLP's input needs a gradient once the attention's bottleneck adapter (after o_proj) trains
    total = attn_out + mlp(m, x, trains, lora, input_grad or attn_out > 0 or adapter_size > 0, ia3)
    if adapter_size:  # two bottleneck adapters (down, nonlinearity, up) per block, on the residual stream:
        # the fp32 input the down projection saves (the input itself in fp32) and the ReLU output (up's input);
        # nothing saves the adapter's input in the model's dtype (measured: quantlab.lab.peft_measured.Bottleneck)
        total += 2 * (4 * x.T * m.hidden_size + 4 * x.T * adapter_size)
    return total


def amp_weight_casts(m: ModelSpec, x: Act, trains: bool, lora: frozenset, input_grad: bool) -> int:
    """Autocast copies of one block's weights saved for backward (A5).

    A linear keeps its weight's cast when its input needs a gradient (the input's gradient multiplies by it);
    lora_B's input (lora_A's output) always does. MoE experts run through ``grouped_mm``, which autocast does not
    cover: no cast. Independent of the batch and sequence (cached without them).
    """
    return _amp_weight_casts(m, x.c, x.rank, x.kbit, trains, lora, input_grad)


@model_keyed
def _amp_weight_casts(m: ModelSpec, c: int, rank: int, kbit: bool, trains: bool, lora: frozenset,
                      input_grad: bool) -> int:
    lins = block_linears(m)
    qkv = set(qkv_names(m))
    attn_grad = input_grad or trains or bool(lora & qkv)
    total = 0
    for l in lins:
        if l.name.startswith("experts.") or (kbit and getattr(l, "module", True) and l.name not in lora):
            continue
        reads_input = l.name in qkv
        grad = (input_grad or trains) if reads_input else attn_grad  # a trained norm's output needs one
        w = l.count * l.in_features * l.out_features
        if grad and not (kbit and getattr(l, "module", True)):
            total += w
        if l.name in lora:
            total += rank * l.out_features * l.count  # lora_B
            total += (rank * l.in_features * l.count) if grad else 0  # lora_A
    return c * total


def outside_blocks(m: ModelSpec, x: Act, *, head_grad: bool, norm_trains: bool, head_trains: bool,
                   embed_trains: bool, head_bytes: int, prompt_tokens: int = 0, inputs_grad: bool = False) -> int:
    """Saved tensors outside the blocks (A9): RoPE tables, final norm, lm_head input, embedding ids, softcap.

    ``prompt_tokens``: prompt or prefix tuning's virtual tokens (their int64 ids feed PEFT's prompt encoder);
    ``inputs_grad``: the embedding output needs a gradient (``enable_input_require_grads`` under checkpointing,
    prompt tuning's trainable virtual tokens).
    """
    T, h = x.T, m.hidden_size
    f = family(m)
    out = 8 * prompt_tokens
    if f.positional == "rope":
        out += 2 * x.s * m.head_dim * x.r  # cos, sin (position ids broadcast over the batch)
    elif f.residual_dropout and m.embd_dropout > 0 and (embed_trains or inputs_grad):
        out += (1 if x.cuda else x.r) * T * h  # embedding dropout mask (the embedding's dtype on a CPU)
    if head_grad or head_trains:
        out += _norm(m, x, head_grad, norm_trains)
    if head_trains:
        out += (x.c if x.amp else x.r) * T * h
    if embed_trains:
        out += 8 * T + (8 * x.s if learned_positions(m) else 0)  # GPT-2: also the position ids
    if f.final_logit_softcap and (head_grad or head_trains):
        out += head_bytes * T * m.vocab_size  # final logit softcap tanh
    return out


def _clear_caches() -> None:
    """Empty the coefficient and per-shape caches behind :func:`block_saved` and :func:`amp_weight_casts`."""
    _block_coefficients.cache_clear()
    _block_saved_tp.cache_clear()
    _amp_weight_casts.cache_clear()


block_saved.cache_clear = _clear_caches  # type: ignore[attr-defined]  (benchmarks clear it for cold figures)
amp_weight_casts.cache_clear = _clear_caches  # type: ignore[attr-defined]
