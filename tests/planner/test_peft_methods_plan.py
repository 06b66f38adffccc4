"""BitFit, DoRA and P-tuning plans (quantlab.planner.peft_methods, D1-D7): the arithmetic, golden numbers derived
here on tiny scaled-down profiles (the sizes the CPU lab measures in tests/lab/test_peft_methods_measured.py)."""

import pytest

from quantlab.groundtruth import model_spec
from quantlab.planner import memory as M
from quantlab.planner import peft_methods as PM
from quantlab.specs import DeviceMode, DType, Method, PlanConfig, Precision, SpecError

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 128, "vocab_size": 256}
QWEN = model_spec("qwen2.5-0.5b", dict(SMALL, tie_word_embeddings=True))  # head_dim 16: q 64, k/v 32 wide
LLAMA = model_spec("llama-3.2-1b", dict(SMALL, head_dim=16))
GPT2 = model_spec("gpt2", {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 256, "n_positions": 128})


def cfg(model, **kw):
    base = dict(model=model, method=Method.FULL, precision=Precision.FP32, compute_dtype=DType.FP32, batch=2, seq=16,
                device=DeviceMode.CPU)
    base.update(kw)
    return PlanConfig(**base)


def test_bitfit_trains_the_biases_the_family_has():
    """Qwen2: q/k/v biases only: 2 layers x (64 + 32 + 32) = 256. GPT-2: per block c_attn 192, attn c_proj 64,
    c_fc 256, mlp c_proj 64, ln_1 and ln_2 64 each = 704; x 2 + ln_f 64 = 1,472."""
    q = PM.bitfit_plan(cfg(QWEN))
    g = PM.bitfit_plan(cfg(GPT2))
    assert q.trainable_params == 256 and g.trainable_params == 1472
    assert q.components["gradients"] == 256 * 4 and g.components["gradients"] == 1472 * 4
    bf = PM.bitfit_plan(cfg(QWEN, precision=Precision.BF16, compute_dtype=DType.BF16))
    assert bf.components["gradients"] == 256 * 2  # the weights' dtype: no fp32 adapter copy (D1)
    assert "adapters" not in q.components


def test_bitfit_refuses_a_model_without_biases():
    with pytest.raises(SpecError, match="no bias parameters"):
        PM.bitfit_plan(cfg(LLAMA))
    with pytest.raises(SpecError, match="no bias parameters"):  # Phi-3: fused qkv / gate_up, no biases
        PM.bitfit_plan(cfg(model_spec("phi-3-mini")))
    # a Llama with attention_bias on: its q/k/v/o biases train
    biased = model_spec("llama-3.2-1b", dict(SMALL, head_dim=16, attention_bias=True))
    assert PM.bitfit_plan(cfg(biased)).trainable_params == 2 * (64 + 32 + 32 + 64)


def test_bitfit_saves_less_than_prompt_tuning_and_grows_with_the_batch():
    """D2: prompt tuning's layout at the same token count, less the virtual token id and (RMSNorm) the first
    block's input norm: 4·T·h + 4·T = 4·32·64 + 4·32 = 8,320 + 8 bytes below it."""
    c = cfg(QWEN)
    prompt = M.plan(M.replace(c, method=Method.PROMPT, seq=15, num_virtual_tokens=1)).components["activations"]
    assert PM.bitfit_plan(c).components["activations"] == prompt - 8 - 8320
    a1 = PM.bitfit_plan(c).peak_allocated_bytes
    a2 = PM.bitfit_plan(M.replace(c, batch=4)).peak_allocated_bytes
    assert a2 > a1


def test_dora_adds_one_fp32_magnitude_per_adapted_linear():
    """LoRA r=4 on q (64 -> 64) and v (64 -> 32): A and B 512 + 384 per layer = 1,792; magnitudes (64 + 32) x 2
    layers = 192; trainable 1,984, all fp32."""
    c = cfg(LLAMA, method=Method.LORA, lora_r=4, lora_alpha=8, lora_targets=("q_proj", "v_proj"))
    lora, dora = M.plan(c), PM.dora_plan(c)
    assert lora.trainable_params == 1792 and dora.trainable_params == 1984
    assert dora.components["adapters"] - lora.components["adapters"] == 192 * 4
    assert dora.components["gradients"] - lora.components["gradients"] == 192 * 4
    assert dora.components["optimizer"] > lora.components["optimizer"]


def test_dora_saved_tensors_per_adapted_linear():
    """D4 at T = 32, fp32: per adapted linear 4·out (norm) + 4·T·out (base) + 4·T·out (LoRA) + 4·out (scale) per
    layer, + 4·out (scale - 1) where the base output needs a gradient: q and v read the first block's input norm
    (none there). q: 64 out, v: 32 out."""
    c = cfg(LLAMA, method=Method.LORA, lora_r=4, lora_alpha=8, lora_targets=("q_proj", "v_proj"))
    per = lambda o: 4 * o + 4 * 32 * o + 4 * 32 * o + 4 * o  # noqa: E731
    assert PM.dora_saved(c) == 2 * (per(64) + per(32)) + 1 * 4 * (64 + 32)
    assert PM.dora_plan(c).components["activations"] == M.plan(c).components["activations"] + PM.dora_saved(c)
    # the eye graph is freed in the forward (D5): 4·in² + 4·in·r per adapted linear, not an activation
    assert PM.dora_transient_saved(c) == 2 * 2 * (4 * 64 * 64 + 4 * 64 * 4)


def test_dora_refusals():
    c = cfg(LLAMA, method=Method.LORA, lora_r=4)
    with pytest.raises(SpecError, match="use_dora"):
        PM.dora_plan(M.replace(c, method=Method.FULL))
    with pytest.raises(SpecError, match="lora-dropout"):
        PM.dora_plan(M.replace(c, lora_dropout=0.1))
    with pytest.raises(SpecError, match="checkpointing"):
        PM.dora_plan(M.replace(c, grad_checkpointing=True))


def test_ptuning_encoder_parameters():
    """MLP head, h 64, E 32: 64·32 + 32 + 32·32 + 32 + 32·64 + 64 = 5,248; LSTM (2 layers, bidirectional):
    each layer and direction 4E·in + 4E·E + 8E = 12,544 (in = h = 2E = 64), x 4 = 50,176, head
    Linear(64, 64) + Linear(64, 64) = 8,320: 58,496; plus the 5 x 64 virtual tokens."""
    c = cfg(LLAMA, method=Method.PROMPT, num_virtual_tokens=5)
    mlp = PM.ptuning_plan(c, PM.PTuningConfig(32))
    lstm = PM.ptuning_plan(c, PM.PTuningConfig(32, PM.EncoderType.LSTM))
    assert mlp.trainable_params == 320 + 5248 and lstm.trainable_params == 320 + 58496
    assert mlp.components["adapters"] == 4 * (320 + 5248)
    assert PM.encoder_saved(64, 5, PM.PTuningConfig(32)) == 4 * 5 * (64 + 64)
    base = M.plan(c).components["activations"]
    assert mlp.components["activations"] == base + 4 * 5 * (64 + 64)


def test_ptuning_config_validation():
    with pytest.raises(SpecError, match="encoder-hidden-size"):
        PM.PTuningConfig(0)
    with pytest.raises(SpecError, match="encoder-type"):
        PM.PTuningConfig(32, "gru")


def test_sharded_plans_are_refused():
    with pytest.raises(SpecError, match="one GPU"):
        PM.bitfit_plan(cfg(QWEN, device=DeviceMode.CUDA, num_gpus=2, zero=2))


def test_dora_conv1d_norm_input_only_for_fp32_weights():
    """D4b: GPT-2's Conv1D under DoRA keeps the (out, in) fp32 norm input when the weights are fp32 (PEFT's
    ``transpose`` makes a new Parameter): c_attn 64 -> 192: 4·64·192 = 49,152 bytes per layer, 2 layers; with bf16
    weights the cast is a plain tensor and nothing is kept."""
    lo = dict(method=Method.LORA, lora_r=4, lora_alpha=8, lora_targets=("c_attn",))
    fp32, bf16 = cfg(GPT2, **lo), cfg(GPT2, precision=Precision.BF16, compute_dtype=DType.BF16, **lo)
    T = 32
    base = lambda a: 2 * (4 * 192 + a * T * 192 + 4 * T * 192 + 4 * 192) + 4 * 192  # noqa: E731
    assert PM.dora_saved(fp32) == base(4) + 2 * 4 * 64 * 192
    assert PM.dora_saved(bf16) == base(2)


def test_module_is_pure():
    """Standard library only, like memory.py: importing it loads no torch."""
    import subprocess
    import sys

    code = "import sys, quantlab.planner.peft_methods; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
