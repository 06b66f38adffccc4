"""Memory components: golden numbers derived in docstrings, and properties that must hold."""

import dataclasses

import pytest

from quantlab.planner import plan
from quantlab.planner.memory import process_bytes_at
from quantlab.planner.formats import weight_format
from quantlab.profiles import load_model
from quantlab.specs import (ALL_LINEAR, Attention, DeviceMode, DType, Method, Optimizer, PlanConfig, Precision,
                            SpecError, TrainingPrecision)

L7 = load_model("llama-2-7b").spec
L8 = load_model("llama-3.1-8b").spec


def cfg(**kw):
    base = dict(model=L7, method=Method.INFERENCE, precision=Precision.FP16, compute_dtype=DType.FP16, seq=1)
    base.update(kw)
    return PlanConfig(**base)


def test_kv_cache_golden():
    """Llama-2-7B fp16 KV cache: 2 (K,V) x 32 layers x 32 heads x 128 dims x 2 bytes = 524,288 bytes per token;
    Llama-3.1-8B (8 KV heads, GQA) is 4x smaller: 131,072 bytes per token."""
    assert plan(cfg(seq=1000)).components["kv_cache"] == 524_288 * 1000
    assert plan(cfg(model=L8, seq=1000)).components["kv_cache"] == 131_072 * 1000
    assert plan(cfg(seq=1000, kv_dtype=DType.FP8)).components["kv_cache"] == 262_144 * 1000


def test_fp16_weights_golden():
    """6,738,415,616 parameters x 2 bytes, plus RoPE's two fp32 buffers of head_dim/2 = 64 floats (``inv_freq`` and
    ``original_inv_freq`` in transformers 5): 2 x 64 x 4 = 512 bytes."""
    assert plan(cfg()).components["weights"] == 6_738_415_616 * 2 + 2 * 64 * 4


def test_nf4_layout_golden():
    """A 4096x4096 NF4 weight: 8,388,608 packed bytes + 262,144 blocks x 4-byte absmax + the 16-entry fp32 4-bit
    code table every QuantState holds (64) = 9,437,248 bytes; double quant: 8,388,608 + 262,144 uint8 absmax +
    1,024 x 4 (second-level absmax) + 4 (offset) + 256 x 4 (the nested state's 8-bit code table) + 64."""
    assert weight_format(Precision.NF4).linear_bytes(4096, 4096, 2) == 8_388_608 + 262_144 * 4 + 64
    assert weight_format(Precision.NF4, True).linear_bytes(4096, 4096, 2) == \
        8_388_608 + 262_144 + 4096 + 4 + 1024 + 64
    assert weight_format(Precision.INT8).linear_bytes(4096, 11008, 2) == 4096 * 11008 + 11008 * 4


def test_only_block_linears_are_quantized():
    """Under NF4 the embeddings and lm_head stay fp16: 2 x 32000 x 4096 x 2 bytes of Llama-2-7B's weights."""
    w = plan(cfg(precision=Precision.NF4)).components["weights"]
    assert w > 2 * 32000 * 4096 * 2
    assert w < 6_738_415_616 * 0.5 + 2 * 32000 * 4096 * 2


def test_precision_order():
    totals = {p: plan(cfg(precision=p)).components["weights"] + plan(cfg(precision=p)).components.get("quant_constants", 0)
              for p in (Precision.FP32, Precision.BF16, Precision.INT8, Precision.NF4)}
    assert totals[Precision.NF4] < totals[Precision.INT8] < totals[Precision.BF16] < totals[Precision.FP32]
    assert plan(cfg(precision=Precision.NF4, double_quant=True)).components["quant_constants"] < \
        plan(cfg(precision=Precision.NF4)).components["quant_constants"]


@pytest.mark.parametrize("method", [Method.FULL, Method.LORA, Method.QLORA, Method.INFERENCE])
def test_memory_grows_with_batch_and_seq(method):
    prec = Precision.NF4 if method is Method.QLORA else Precision.BF16
    base = PlanConfig(model=L8, method=method, precision=prec, batch=1, seq=512)
    a = plan(base)
    for bigger in (dataclasses.replace(base, batch=2), dataclasses.replace(base, seq=1024)):
        b = plan(bigger)
        # the peak may be the optimizer step (independent of batch), so it never shrinks; the dynamic parts grow
        assert b.peak_allocated_bytes >= a.peak_allocated_bytes
        key = "activations" if method.is_training else "kv_cache"
        assert b.components[key] > a.components[key]


def test_checkpointing_lowers_activations_and_eager_raises_them():
    base = PlanConfig(model=L8, method=Method.LORA, seq=2048)
    a = plan(base).components["activations"]
    assert plan(dataclasses.replace(base, grad_checkpointing=True)).components["activations"] < a / 5
    assert plan(dataclasses.replace(base, attn=Attention.EAGER)).components["activations"] > a


def test_optimizer_states():
    """Full fine-tune of Llama-2-7B in pure bf16: AdamW holds 2 x N x 2 bytes (its fp32 ``step`` scalars stay on
    the CPU); 8-bit AdamW 2 x N bytes plus one fp32 absmax per 256 values per state (every tensor of Llama-2-7B has
    at least 4096 values and a multiple of 256) plus the two shared 256-entry fp32 quantile maps; SGD none;
    momentum 1 x N x 2."""
    n = 6_738_415_616
    full = PlanConfig(model=L7, method=Method.FULL)
    assert plan(full).components["optimizer"] == 4 * n
    assert plan(dataclasses.replace(full, optimizer=Optimizer.ADAMW_8BIT)).components["optimizer"] == \
        2 * n + 8 * (n // 256) + 2 * 256 * 4
    assert plan(dataclasses.replace(full, optimizer=Optimizer.SGD)).components["optimizer"] == 0
    assert plan(dataclasses.replace(full, optimizer=Optimizer.SGD_MOMENTUM)).components["optimizer"] == 2 * n
    amp = plan(dataclasses.replace(full, training_precision=TrainingPrecision.AMP))
    assert amp.components["optimizer"] == 8 * n and amp.components["weights"] > 4 * n


def test_paged_optimizer_outside_allocator():
    base = PlanConfig(model=L7, method=Method.FULL)
    paged = plan(dataclasses.replace(base, optimizer=Optimizer.PAGED_ADAMW))
    assert paged.peak_allocated_bytes < plan(base).peak_allocated_bytes
    assert paged.process_bytes >= paged.peak_reserved_bytes + paged.components["optimizer"]


def test_lora_trainable_params():
    """LoRA r=16 on q_proj, v_proj of Llama-2-7B: 32 layers x 2 x 16 x (4096 + 4096) = 8,388,608."""
    p = plan(PlanConfig(model=L7, method=Method.LORA, lora_r=16, lora_targets=("q_proj", "v_proj")))
    assert p.trainable_params == 8_388_608
    assert p.components["adapters"] == 8_388_608 * 4  # fp32 under PEFT
    allp = plan(PlanConfig(model=L7, method=Method.LORA, lora_targets=(ALL_LINEAR,)))
    assert allp.trainable_params > p.trainable_params
    with pytest.raises(SpecError, match="match no linear"):
        plan(PlanConfig(model=L7, method=Method.LORA, lora_targets=("c_attn",)))


def test_freeze_trains_last_k_blocks():
    one_block = (4096 * 4096 * 4 + 3 * 4096 * 11008) + 2 * 4096
    p = plan(PlanConfig(model=L7, method=Method.FREEZE, freeze_last_layers=2))
    assert p.trainable_params == 2 * one_block


def test_sharding_order_per_gpu():
    base = PlanConfig(model=L7, method=Method.FULL, num_gpus=8)
    vals = [plan(dataclasses.replace(base, zero=z)).peak_allocated_bytes for z in (0, 1, 2, 3)]
    assert vals[3] < vals[2] == vals[1] < vals[0]  # DeepSpeed keeps ZeRO-2's buffers at ZeRO-1 (memory 9d)
    fsdp = [plan(dataclasses.replace(base, fsdp=f)).peak_allocated_bytes for f in ("shard_grad_op", "full_shard")]
    assert fsdp[1] < fsdp[0] < vals[0]  # FSDP keeps the divided reading: no longer equal to ZeRO-3


def test_cpu_mode_has_no_context_or_reserve():
    p = plan(cfg(device=DeviceMode.CPU))
    assert p.components["cuda_context"] == 0 and p.components["allocator_reserve"] == 0
    assert p.process_bytes == p.peak_allocated_bytes


def test_qlora_upcast_and_impossible_combinations():
    q = plan(PlanConfig(model=L7, method=Method.QLORA, precision=Precision.NF4))
    no_up = plan(PlanConfig(model=L7, method=Method.QLORA, precision=Precision.NF4, kbit_upcast=False))
    assert q.components["weights"] - no_up.components["weights"] == 2 * 32000 * 4096 * 2 + (65 * 4096) * 2
    with pytest.raises(SpecError):
        PlanConfig(model=L7, method=Method.QLORA, precision=Precision.FP32)
    with pytest.raises(SpecError):
        PlanConfig(model=L7, method=Method.FULL, precision=Precision.NF4)


def test_sequence_beyond_context_warns():
    p = plan(cfg(seq=8192))
    assert any("beyond the model's context" in n for n in p.notes)


def test_mixtral_fused_experts_stay_unquantized():
    """transformers 5 stores Mixtral's experts as fused 3-D parameters and its router as a plain parameter: no
    nn.Linear, so bitsandbytes leaves them in bf16. Per layer 8 experts x 3 x 4096 x 14336 + 8 x 4096 router
    = 1,409,318,912 parameters; x 32 layers x 2 bytes = 90,196,410,368 bytes stay in the weights."""
    mix = load_model("mixtral-8x7b").spec
    p = plan(PlanConfig(model=mix, method=Method.INFERENCE, precision=Precision.NF4, seq=1))
    assert p.components["weights"] > 90_196_410_368
    assert any("stay unquantized" in n for n in p.notes)
    with pytest.raises(SpecError, match="fused parameters"):
        plan(PlanConfig(model=mix, method=Method.LORA, lora_targets=("experts.gate_up_proj",)))
    all_linear = plan(PlanConfig(model=mix, method=Method.LORA, lora_targets=(ALL_LINEAR,), lora_r=8))
    assert all_linear.trainable_params == 32 * 8 * (2 * (4096 + 4096) + 2 * (4096 + 1024))  # q, o, k, v only


def test_gqa_sdpa_math_fallback():
    """Llama-3.1-8B (32 heads, 8 KV heads) QLoRA, batch 1 x 2048: under PEFT's fp32 upcast the attention inputs are
    fp32, so SDPA with enable_gqa takes the math kernel on CUDA and keeps 4 x 32 x 2048^2 = 536,870,912 bytes of
    fp32 probabilities per layer (32 layers). Under bf16 autocast FlashAttention takes it; on a CPU the fused CPU
    kernel does."""
    base = PlanConfig(model=L8, method=Method.QLORA, precision=Precision.NF4, seq=2048)
    fp32_attn = plan(base)
    autocast = plan(dataclasses.replace(base, training_precision=TrainingPrecision.AMP))
    cpu = plan(dataclasses.replace(base, device=DeviceMode.CPU))
    assert fp32_attn.components["activations"] - cpu.components["activations"] >= 32 * 536_870_912
    assert autocast.components["activations"] < fp32_attn.components["activations"] - 32 * 536_870_912
    assert any("math kernel" in n for n in fp32_attn.notes)
    # a bf16 LoRA needs FlashAttention: a GPU without it (flash_attention=False) gets the math kernel too
    lora = PlanConfig(model=L8, method=Method.LORA, seq=2048)
    assert plan(dataclasses.replace(lora, flash_attention=False)).components["activations"] > \
        plan(lora).components["activations"] + 32 * 536_870_912
    # Llama-2-7B has no GQA (32 KV heads): the memory-efficient kernel takes fp32, nothing changes
    l7 = PlanConfig(model=L7, method=Method.QLORA, precision=Precision.NF4, seq=2048)
    assert plan(l7).components["activations"] == plan(dataclasses.replace(l7, device=DeviceMode.CPU)).components["activations"]


def test_tensor_parallel_degree_must_split_heads():
    """Llama-3.1-8B: 32 heads, 8 KV heads. TP 16 splits the heads and replicates each KV head twice (KV cache per
    GPU = one KV head's share: 1/8 of the whole); TP 3 splits nothing evenly."""
    kv = plan(PlanConfig(model=L8, seq=1000, num_gpus=16, tp=16, compute_dtype=DType.FP16)).components["kv_cache"]
    assert kv == 131_072 * 1000 // 8
    with pytest.raises(SpecError, match="tensor-parallel degree 3"):
        PlanConfig(model=L8, num_gpus=3, tp=3)


def test_lora_dropout_keeps_masks_and_copies():
    base = PlanConfig(model=L8, method=Method.LORA, seq=1024, lora_targets=(ALL_LINEAR,))
    assert plan(dataclasses.replace(base, lora_dropout=0.05)).components["activations"] > \
        plan(base).components["activations"]
    with pytest.raises(SpecError, match="lora-dropout"):
        dataclasses.replace(base, lora_dropout=1.5)


def test_optimizer_state_layouts():
    """Trainable tensors of LoRA r=16 on q_proj, v_proj of Llama-2-7B: 64 lora_A (16 x 4096) and 64 lora_B
    (4096 x 16), 8,388,608 fp32 values. AdamW on a CPU adds one 4-byte ``step`` per tensor: 2 x 4 x 8,388,608 + 128 x 4.
    Adafactor factors each matrix: rows + columns, fp32, + one fp32 RMS scalar per tensor:
    64 x (16 + 4096) x 4 + 64 x (4096 + 16) x 4 + 128 x 4."""
    lora = PlanConfig(model=L7, method=Method.LORA, lora_r=16, device=DeviceMode.CPU)
    assert plan(lora).components["optimizer"] == 2 * 4 * 8_388_608 + 128 * 4
    ada = plan(dataclasses.replace(lora, optimizer=Optimizer.ADAFACTOR)).components["optimizer"]
    assert ada == 128 * (16 + 4096) * 4 + 128 * 4
    full = plan(PlanConfig(model=L7, method=Method.FULL, optimizer=Optimizer.ADAFACTOR))
    assert full.components["optimizer"] < 0.01 * full.components["gradients"]


def test_tensor_parallel_splits_heads_not_the_residual_stream():
    """Megatron-style TP without sequence parallelism (activations A12): per GPU the attention and MLP internals
    halve at TP 2, the norms and block inputs do not, so activations land strictly between a half and the whole;
    with checkpointing (only block inputs kept) they do not shrink at all."""
    base = PlanConfig(model=L8, method=Method.LORA, seq=2048)
    one = plan(base).components["activations"]
    two = plan(dataclasses.replace(base, num_gpus=2, tp=2)).components["activations"]
    assert one / 2 < two < one
    ck = dataclasses.replace(base, grad_checkpointing=True)
    assert plan(dataclasses.replace(ck, num_gpus=2, tp=2)).components["activations"] == plan(ck).components["activations"]


# ---- memory assumption 3: gradients through the next forward (keep_grads, grad_accum) -------------------------

def _full_1b(**kw):
    from quantlab.profiles import load_model

    return PlanConfig(model=load_model("llama-3.2-1b").spec, method=Method.FULL, batch=1, seq=2048, **kw)


def test_set_to_none_takes_the_gradients_out_of_the_forward_peak():
    """Trainer's zero_grad() (set_to_none=True): the forward+loss peak runs without the gradients, so the peak is
    the largest of the forward (no gradients), the end of backward and the optimizer step (both with them)."""
    keep = plan(_full_1b(keep_grads=True))
    free = plan(_full_1b())
    c = free.components
    G = c["gradients"]
    assert G == keep.components["gradients"] > 0
    assert free.peak_allocated_bytes < keep.peak_allocated_bytes
    static = sum(c.get(k, 0) for k in ("weights", "quant_constants", "adapters", "optimizer"))
    fwd = c["activations"] + c["logits_loss"]
    assert free.peak_allocated_bytes >= static + G + c["optimizer_step"]  # the step keeps every gradient
    assert free.peak_allocated_bytes >= static + fwd
    assert keep.peak_allocated_bytes - free.peak_allocated_bytes <= G
    # on CUDA the freed gradient blocks stay cached: reserved is the kept plan's
    assert free.peak_reserved_bytes == keep.peak_reserved_bytes
    assert any("set_to_none=True" in n for n in free.notes)


def test_gradient_accumulation_and_sharding_keep_the_gradients_live():
    keep = plan(_full_1b(keep_grads=True)).peak_allocated_bytes
    assert plan(_full_1b(grad_accum=2)).peak_allocated_bytes == keep
    a = plan(_full_1b(grad_accum=2))
    assert any("gradient accumulation keeps them" in n for n in a.notes)
    z = plan(_full_1b(num_gpus=2, zero=2))
    assert any("ZeRO/FSDP keep flat gradient buffers" in n for n in z.notes)


def test_keep_grads_makes_no_difference_to_inference_and_cpu_reserved_is_allocated():
    from quantlab.profiles import load_model

    m = load_model("llama-3.2-1b").spec
    assert plan(PlanConfig(model=m)).peak_allocated_bytes == plan(PlanConfig(model=m, keep_grads=True)).peak_allocated_bytes
    p = plan(_full_1b(device=DeviceMode.CPU))
    assert p.peak_reserved_bytes == p.process_bytes == p.peak_allocated_bytes
    assert process_bytes_at(_full_1b()) == plan(_full_1b()).process_bytes


# ---- memory savers (assumptions 12-17) ------------------------------------------------------------------------

def _tiny(**kw):
    from quantlab.specs import ModelSpec

    m = ModelSpec(name="t", model_type="llama", hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=1024, vocab_size=4096, num_key_value_heads=1, tie_word_embeddings=True)
    d = dict(model=m, method=Method.LORA, precision=Precision.BF16, compute_dtype=DType.BF16, batch=2, seq=64,
             device=DeviceMode.CPU)
    d.update(kw)
    return PlanConfig(**d)


def test_trl_fused_loss_is_trl_heads_peak():
    """The logits_loss component of loss=trl-fused is trl_head's fused head at SFTTrainer's outputs: its outputs kept,
    what it saves and the larger of its forward and backward transients (assumption 14)."""
    from quantlab.planner import trl_head
    from quantlab.specs import Loss

    cfg = _tiny(loss=Loss.TRL_FUSED, precision=Precision.FP32, compute_dtype=DType.FP32)
    fh = trl_head.fused_head(batch=2, seq=64, hidden=256, vocab=4096, hidden_bytes=4, compute_bytes=4, weight_bytes=4,
                             head_trains=False, triton=False, outputs=trl_head.TRAINER_OUTPUTS["sft"])
    p = plan(cfg)
    assert p.components["logits_loss"] == fh.outputs_kept + fh.saved + max(fh.forward_transient, fh.backward_peak)
    hf = plan(dataclasses.replace(cfg, loss=Loss.HF))
    # a 4,096 vocabulary still takes 32,768-column tiles on a CPU (trl_head H3): more than the HF loss here ...
    assert p.components["logits_loss"] > hf.components["logits_loss"]
    assert p.components["activations"] == hf.components["activations"]  # the head is frozen: nothing else moves
    # ... while on CUDA (Triton: no torch tiles) at SmolLM2's 49,152 it is far less than the HF loss
    big = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=49152), batch=4, seq=96,
                              device=DeviceMode.CUDA)
    assert plan(big).components["logits_loss"] < plan(dataclasses.replace(big, loss=Loss.HF)).components["logits_loss"]
    assert any("TRL fused LM head" in n for n in p.notes)


def test_chunked_loss_keeps_the_logits_and_chunks_the_fp32_buffers():
    """torchtune's CEWithChunkedOutputLoss (assumption 12): the same logits and fp32 log_softmax saved as the HF loss
    (plus 8 total_weight scalars and the int64 divisor; the labels copied per chunk when B > 1), the backward's two
    fp32 T x V gradients one chunk (of 8) at a time, with the chunk's cast back to bf16."""
    from quantlab.planner.memory import loss_buffers
    from quantlab.specs import Loss

    T, V = 2 * 64, 4096
    kept, saved, transient = loss_buffers(_tiny(loss=Loss.CHUNKED))
    assert kept == 2 * T * V
    assert saved == 4 * T * V + 8 * T + 4 * 8 + 8
    assert transient == (8 + 2) * (T // 8) * V
    assert plan(_tiny(loss=Loss.CHUNKED)).peak_allocated_bytes < plan(_tiny()).peak_allocated_bytes


def test_liger_loss_keeps_gradients_not_logits():
    """Liger's fused linear cross-entropy (assumption 13): nothing T x V; grad_input (N x H) and, when lm_head trains,
    grad_weight (V x H) are made in the forward; one chunk x V tile at a time."""
    from quantlab.planner.memory import loss_buffers
    from quantlab.specs import Loss

    N, H, V = 2 * 63, 256, 4096
    kept, saved, transient = loss_buffers(_tiny(loss=Loss.LIGER))
    assert (kept, saved) == (0, N * H * 2)
    chunk = 8  # next_power_of_2(ceil(126 / ceil(4096 / 256) = 16)) = 8
    assert transient == N * H * 2 + 5 * N + chunk * V * 2 + chunk * H * 2
    full = loss_buffers(_tiny(loss=Loss.LIGER, method=Method.FULL))
    assert full[1] == N * H * 2 + V * H * 2
    assert any("not validated" in n for n in plan(_tiny(loss=Loss.LIGER)).notes)


def test_packed_rows_plan_per_row_rope_tables_and_the_checkpointed_mask():
    """Assumption 16 (measured: matrix rows llama-*-packed*): the caller's (B, S) position ids make RoPE's cos and sin
    one row per sequence; under checkpointing every block's closure also holds the block-diagonal bool mask."""
    hd, r = 64, 2
    plain, packed = plan(_tiny()), plan(_tiny(packed=True))
    assert packed.components["activations"] - plain.components["activations"] == 2 * (2 - 1) * 64 * hd * r
    ck, ck_packed = plan(_tiny(grad_checkpointing=True)), plan(_tiny(grad_checkpointing=True, packed=True))
    assert ck_packed.components["activations"] - ck.components["activations"] == 2 * 64 * hd * r + 2 * 64 * 64
    assert any("find_packed_sequence_indices" in n for n in packed.notes)


def test_optimizer_in_backward_holds_one_gradient_at_a_time():
    """Assumption 15: no gradients kept; the largest parameter's gradient (the tied embedding, V x h) and its step
    (on a CPU, AdamW's single-tensor step: two temporaries of it) in flight."""
    full = _tiny(method=Method.FULL, precision=Precision.FP32, compute_dtype=DType.FP32)
    p = plan(dataclasses.replace(full, optimizer_in_backward=True))
    assert p.components["gradients"] == 0
    assert p.components["optimizer_step"] == 3 * 4096 * 256 * 4
    assert p.components["optimizer"] == plan(full).components["optimizer"]
    assert p.peak_allocated_bytes < plan(full).peak_allocated_bytes


def test_savers_contradictions_are_one_line_errors():
    from quantlab.specs import Loss

    for kw, word in ((dict(method=Method.INFERENCE, loss=Loss.LIGER), "inference computes no loss"),
                     (dict(optimizer_in_backward=True, grad_accum=2), "cannot accumulate"),
                     (dict(packed=True, padding_mask=True), "no padding"),
                     (dict(method=Method.INFERENCE, packed=True), "training batches")):
        with pytest.raises(SpecError, match=word):
            _tiny(**kw)


def test_expandable_segments_and_compile_say_what_is_planned():
    cuda = _tiny(device=DeviceMode.CUDA)
    default, expandable = plan(cuda), plan(dataclasses.replace(cuda, expandable_segments=True))
    assert default.peak_allocated_bytes == expandable.peak_allocated_bytes
    assert expandable.peak_reserved_bytes != default.peak_reserved_bytes
    assert any("expandable_segments off" in n for n in default.notes)
    assert any("expandable_segments:True" in n for n in expandable.notes)
    compiled = plan(_tiny(torch_compile=True))
    assert compiled.peak_allocated_bytes == plan(_tiny()).peak_allocated_bytes
    assert any("torch.compile" in n and "not modelled" in n for n in compiled.notes)
