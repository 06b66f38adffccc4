"""Planner terms fixed after ``quantlab validate`` measured them on a CPU (issue #5); golden numbers derived here.

The measured side of each is in ``reports/validation-cpu`` (profiler allocator events, torch 2.13); these tests pin
the arithmetic so that a later edit does not silently undo it.
"""

import dataclasses

from quantlab.groundtruth import model_spec
from quantlab.planner import plan
from quantlab.planner.memory import _embedding_grad_tail, _optimizer_bytes, loss_buffers
from quantlab.planner.params import count_params
from quantlab.specs import (Attention, DeviceMode, DType, Method, Optimizer, PlanConfig, Precision,
                            TrainingPrecision)

LLAMA = model_spec("llama-3.2-1b", {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
                                    "num_key_value_heads": 1, "head_dim": 64, "intermediate_size": 1024,
                                    "vocab_size": 4096})  # tied embeddings, V·h = 1,048,576


def cfg(**kw):
    base = dict(model=LLAMA, method=Method.FULL, precision=Precision.BF16, compute_dtype=DType.BF16, batch=2, seq=64,
                device=DeviceMode.CPU)
    base.update(kw)
    return PlanConfig(**base)


def test_loss_buffers():
    """T = 2·64 = 128, V = 4096: bf16 logits 2·T·V = 1,048,576; the loss saves its fp32 log-softmax 4·T·V =
    2,097,152, the int64 targets 8·T = 1,024 and total_weight 4; backward allocates two fp32 T x V: 4,194,304."""
    assert loss_buffers(cfg()) == (1_048_576, 2_097_152 + 1_024 + 4, 4_194_304)
    assert loss_buffers(cfg(method=Method.INFERENCE)) == (0, 0, 0)
    # prompt tuning: the virtual tokens are in the loss's rows (label -100)
    assert loss_buffers(cfg(method=Method.PROMPT, num_virtual_tokens=8))[0] == 2 * 2 * 72 * 4096


def test_cpu_adamw_steps_one_parameter_at_a_time():
    """CPU: ``_single_tensor_adamw`` holds sqrt and its quotient of the largest tensor (the embedding, 1,048,576
    values): 2·1,048,576·2 bytes in bf16. CUDA: the foreach step's one state-sized temporary over all 2,950,400."""
    t = (((4096, 256), 1), ((256, 256), 4))
    assert _optimizer_bytes(Optimizer.ADAMW, t, 2, True)[1] == 2 * 4096 * 256 * 2
    assert _optimizer_bytes(Optimizer.ADAMW, t, 2, False)[1] == (4096 * 256 + 4 * 256 * 256) * 2
    assert plan(cfg()).components["optimizer_step"] == 2 * 1_048_576 * 2
    assert plan(cfg(device=DeviceMode.CUDA)).components["optimizer_step"] == 2_950_400 * 2


def test_cpu_8bit_adamw_dequantizes_in_torch_ops():
    """bitsandbytes 0.50 on a CPU: both states dequantized to fp32 plus mul, sqrt, div: 5·4 bytes per value of the
    largest 8-bit tensor; the fused CUDA kernel needs none."""
    t = (((4096, 256), 1), ((64,), 3))
    assert _optimizer_bytes(Optimizer.ADAMW_8BIT, t, 4, True)[1] == 5 * 4 * 4096 * 256
    assert _optimizer_bytes(Optimizer.ADAMW_8BIT, t, 4, False)[1] == 0


def test_adafactor_step_holds_the_previous_update():
    """A half parameter: fp32 grad and parameter copies, ``grad**2`` and ``+ eps``, and the previous parameter's
    update still bound: 4·N_i + N_{i-1} fp32 values; an fp32 parameter needs no copies (2·N_i + N_{i-1})."""
    t = (((1024, 448), 1), ((1024, 448), 1), ((448, 1024), 1))  # gate, up, down: equal sizes in a row
    n = 1024 * 448
    assert _optimizer_bytes(Optimizer.ADAFACTOR, t, 2, True)[1] == 4 * (4 * n + n)
    assert _optimizer_bytes(Optimizer.ADAFACTOR, t, 4, True)[1] == 4 * (2 * n + n)
    # a full fine-tune lists the embedding first (the model's order): nothing precedes it
    p = plan(cfg(optimizer=Optimizer.ADAFACTOR))
    assert p.components["optimizer_step"] == 4 * 4 * 4096 * 256


def test_embedding_gradient_tail():
    """Tied and trainable: lm_head's V·h gradient waits for the embedding's, summed out of place: 3·V·h·g at the end
    of backward (2 under AMP, where the cast is summed in place), V·h·g held through backward; untied: V·h·g."""
    pc = count_params(LLAMA)
    vh = 4096 * 256
    assert _embedding_grad_tail(cfg(), pc, 2) == (3 * vh * 2, vh * 2)
    amp = cfg(precision=Precision.FP32, training_precision=TrainingPrecision.AMP)
    assert _embedding_grad_tail(amp, pc, 4) == (2 * vh * 4, vh * 4)
    untied = dataclasses.replace(LLAMA, tie_word_embeddings=False)
    assert _embedding_grad_tail(cfg(model=untied), count_params(untied), 2) == (vh * 2, 0)
    assert _embedding_grad_tail(cfg(method=Method.LORA), pc, 4) == (0, 0)  # the embedding is frozen
    # a large vocabulary with a small batch: the tail decides the peak (SmolLM2-135M, full, fp32, 1 x 32 tokens)
    smol = model_spec("smollm2-135m")
    kw = dict(model=smol, method=Method.FULL, precision=Precision.FP32, compute_dtype=DType.FP32,
              optimizer=Optimizer.SGD, batch=1, seq=32, device=DeviceMode.CPU)
    p = plan(PlanConfig(keep_grads=True, **kw))
    static = p.components["weights"] + p.components["gradients"]
    assert p.peak_allocated_bytes == static + 4 * 32 * 49152 + 3 * 49152 * 576 * 4
    # set_to_none (memory 3): .grad is None, so AccumulateGrad takes the embedding's gradient itself: two V·h beyond
    # every gradient (matrix row smollm2-full-fp32-sgd-nokeep measures it)
    q = plan(PlanConfig(**kw))
    assert q.peak_allocated_bytes == static + 4 * 32 * 49152 + 2 * 49152 * 576 * 4
    assert q.components["embedding_grad_tail"] == 2 * 49152 * 576 * 4


def test_paged_optimizer_states_are_ordinary_tensors_on_a_cpu():
    q = cfg(method=Method.QLORA, precision=Precision.NF4, optimizer=Optimizer.PAGED_ADAMW_8BIT)
    cpu, cuda = plan(q), plan(dataclasses.replace(q, device=DeviceMode.CUDA))
    assert cpu.peak_allocated_bytes - cpu.components["optimizer"] == plan(
        dataclasses.replace(q, optimizer=Optimizer.ADAMW_8BIT)).peak_allocated_bytes - cpu.components["optimizer"]
    assert cuda.process_bytes - cuda.peak_reserved_bytes == cuda.components["cuda_context"] + cuda.components["optimizer"]


def test_inference_transients_per_family():
    """Beside a block's transients the residual stream holds four T x h tensors (inputs_embeds, the block input, the
    residual after attention, the norm output; GPT-2 also its s x h position embeddings). Gemma-2's softcapping
    doubles the logits; a MoE layer holds k·T routed rows 4·I wide plus the routed inputs; GPT-2's gelu_new holds
    4 T x I tensors; bitsandbytes' CPU LLM.int8 holds four 4-byte T x out tensors (int32 product, its fp32 copy,
    the scale outer product, their product) beside act(gate); a 4-bit weight is dequantized beside act(gate) and
    the up projection's output only."""
    base = dict(method=Method.INFERENCE, precision=Precision.BF16, compute_dtype=DType.BF16, batch=2, seq=64,
                device=DeviceMode.CPU, attn=Attention.EAGER)
    T, a, h = 128, 2, 256
    stream = 4 * a * T * h
    logits = a * T * 4096 + a * T * h
    gemma = model_spec("gemma-2-2b", {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
                                      "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 1024,
                                      "vocab_size": 4096})
    assert plan(PlanConfig(model=gemma, **base)).components["prefill_transient"] == 2 * a * T * 4096 + a * T * h
    gpt2 = model_spec("gpt2", {"n_layer": 2, "n_embd": 256, "n_head": 4, "vocab_size": 4096, "n_positions": 512})
    sdpa = dict(base, attn=Attention.SDPA)
    assert plan(PlanConfig(model=gpt2, **sdpa)).components["prefill_transient"] == \
        max(4 * a * T * 1024 + stream + a * 64 * h, logits)
    moe = model_spec("mixtral-8x7b", {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
                                      "num_key_value_heads": 1, "intermediate_size": 512, "vocab_size": 4096,
                                      "num_local_experts": 4, "num_experts_per_tok": 2})
    assert plan(PlanConfig(model=moe, **sdpa)).components["prefill_transient"] == \
        max(4 * a * T * 1024 + a * 2 * T * h + stream, logits)
    int8 = dict(sdpa, precision=Precision.INT8, compute_dtype=DType.FP32)
    assert plan(PlanConfig(model=LLAMA, **int8)).components["prefill_transient"] == \
        4 * T * 1024 + 16 * T * 1024 + T * h + 4 * 4 * T * h
    nf4 = dict(sdpa, precision=Precision.NF4, compute_dtype=DType.FP32, batch=4)
    assert plan(PlanConfig(model=LLAMA, **nf4)).components["prefill_transient"] == \
        max(2 * 4 * 256 * 1024 + 4 * 1024 * 256 + 4 * 4 * 256 * h, 4 * 256 * 4096 + 4 * 256 * h)


def test_prefix_sdpa_with_one_kv_head_keeps_unrepeated_kv():
    """With one KV head ``repeat_kv`` is a view: the fused kernel saves k and v at kv width (64), not H·d (256)."""
    pre = dict(method=Method.PREFIX, num_virtual_tokens=8, attn=Attention.SDPA)
    one = plan(cfg(**pre)).components["activations"]
    two_kv = dataclasses.replace(LLAMA, num_key_value_heads=2)
    assert one < plan(cfg(model=two_kv, **pre)).components["activations"]
    # per layer: 2 tensors x bf16 x b·(s + 8) rows x (256 - 64) columns fewer than the repeated reading
    four = dataclasses.replace(LLAMA, num_key_value_heads=4)  # no repetition at all: H·d wide k and v
    assert plan(cfg(model=four, **pre)).components["activations"] - one == 2 * 2 * 2 * 144 * (256 - 64)


def test_ia3_vectors_are_one_tensor_per_target():
    """PEFT's IA3 on Llama: k_proj and v_proj (out, 1) and down_proj (1, in) per layer; AdamW on a CPU keeps a 4-byte
    step counter per tensor: 3 x 2 layers x 4 = 24 bytes beside the states (2 x 4 bytes per value)."""
    from quantlab.planner.activations import ia3_params_per_block

    p = plan(cfg(method=Method.IA3))
    n = 2 * ia3_params_per_block(LLAMA)
    assert n == 2 * (64 + 64 + 1024) and p.trainable_params == n
    assert p.components["optimizer"] == 2 * 4 * n + 4 * 3 * 2

