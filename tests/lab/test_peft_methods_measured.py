"""BitFit, DoRA, P-tuning and bottleneck adapters: plan vs one measured training step on a CPU (issue #13).

The planner (quantlab.planner.peft_methods, memory.plan for Method.ADAPTER) against quantlab.lab.peft_measured's
step (the validate method: the second of two AdamW steps, tensors counted per component, the allocated total from
the profiler's allocator events) on tiny random models of shipped profiles, built with PEFT 0.21 where PEFT has the
method. Measured here: torch 2.13 CPU, transformers 5.24, PEFT 0.21.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from quantlab.groundtruth import model_spec  # noqa: E402
from quantlab.lab import peft_measured as L  # noqa: E402
from quantlab.planner import memory as M  # noqa: E402
from quantlab.planner import peft_methods as PM  # noqa: E402
from quantlab.planner.activations import Act, mlp  # noqa: E402
from quantlab.specs import DeviceMode, DType, Method, PlanConfig, Precision  # noqa: E402
from quantlab.validate_lab import peft_predicted  # noqa: E402

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 128, "vocab_size": 256}
QWEN = ("qwen2.5-0.5b", dict(SMALL, tie_word_embeddings=True))
LLAMA = ("llama-3.2-1b", dict(SMALL, head_dim=16))
GPT2 = ("gpt2", {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 256, "n_positions": 128})
B, S = 2, 16
COMPONENTS = ("weights", "adapters", "gradients", "optimizer", "activations", "logits_loss")


def cfg(prof, dt="fp32", **kw):
    base = dict(model=model_spec(*prof), method=Method.FULL, precision=Precision(dt), compute_dtype=DType(dt),
                batch=B, seq=S, device=DeviceMode.CPU)
    base.update(kw)
    return PlanConfig(**base)


def diffs(pred, meas):
    return {k: pred[f"pred_{k}_bytes"] - meas[f"meas_{k}_bytes"] for k in COMPONENTS}


LLAMA_BIASED = ("llama-3.2-1b", dict(LLAMA[1], attention_bias=True))  # q/k/v/o biases (LlamaConfig attention_bias)


@pytest.mark.parametrize("prof,dt", [(QWEN, "fp32"), (GPT2, "fp32"), (QWEN, "bf16"), (LLAMA_BIASED, "fp32")])
def test_bitfit_byte_exact(prof, dt):
    c = cfg(prof, dt)
    p = PM.bitfit_plan(c)
    m = L.measure_step(L.bitfit(L.tiny_from_profile(*prof, dtype=dt)), B, S, peft=False)
    pred = peft_predicted(p, c)
    assert diffs(pred, m) == dict.fromkeys(COMPONENTS, 0)
    assert pred["pred_trainable_params"] == m["meas_trainable_params"]
    # the total: within 0.01% (measured 4 bytes under on Qwen2, 52 on GPT-2: short-lived scalars of the loss)
    assert abs(p.peak_allocated_bytes - m["meas_allocated_bytes"]) <= 1e-4 * m["meas_allocated_bytes"]


def test_bitfit_refuses_llama_in_the_lab_too():
    with pytest.raises(Exception, match="no bias"):
        L.bitfit(L.tiny_from_profile(*LLAMA))


@pytest.mark.parametrize("prof,dt,targets,max_over", [
    (LLAMA, "fp32", ("q_proj", "v_proj"), 0.0),
    (QWEN, "bf16", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 0.03),
    (GPT2, "fp32", ("c_attn",), 0.07),  # Conv1D: D4b's weight-sized norm input
])
def test_dora_byte_exact_components(prof, dt, targets, max_over):
    c = cfg(prof, dt, method=Method.LORA, lora_r=4, lora_alpha=8, lora_targets=targets)
    p = PM.dora_plan(c)
    m = L.measure_step(L.dora(L.tiny_from_profile(*prof, dtype=dt), 4, 8, targets), B, S)
    pred = peft_predicted(p, c)
    assert diffs(pred, m) == dict.fromkeys(COMPONENTS, 0)
    assert pred["pred_trainable_params"] == m["meas_trainable_params"]
    # the forward transient (D5) is planned as a bound: never under; over by what is saved after the largest
    # adapted linear (q/v: the loss peak decides, 36 bytes under at 778 KB; all-linear bf16 2.6%, GPT-2 6.3% over)
    err = (p.peak_allocated_bytes - m["meas_allocated_bytes"]) / m["meas_allocated_bytes"]
    assert -1e-4 <= err <= max_over


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_ptuning_mlp_byte_exact(dt):
    c = cfg(LLAMA, dt, method=Method.PROMPT, num_virtual_tokens=5)
    p = PM.ptuning_plan(c, PM.PTuningConfig(32))
    m = L.measure_step(L.ptuning(L.tiny_from_profile(*LLAMA, dtype=dt), 5, 32, "mlp"), B, S, virtual_tokens=5)
    assert diffs(peft_predicted(p, c), m) == dict.fromkeys(COMPONENTS, 0)
    assert abs(p.peak_allocated_bytes - m["meas_allocated_bytes"]) <= 1e-3 * m["meas_allocated_bytes"]


def test_ptuning_lstm_native_cell_exact_onednn_not_modelled():
    """D7 is torch's decomposed LSTM cell: exact with oneDNN off. torch's default CPU path for an fp32 LSTM is
    oneDNN's RNN (``mkldnn_rnn``), whose saved workspace follows oneDNN, not a rule read here: the plan is under by
    what that workspace adds (101,376 bytes on this model), asserted so that a model of it must change the test."""
    c = cfg(LLAMA, method=Method.PROMPT, num_virtual_tokens=5)
    p = PM.ptuning_plan(c, PM.PTuningConfig(32, PM.EncoderType.LSTM))
    pred = peft_predicted(p, c)
    with torch.backends.mkldnn.flags(enabled=False):
        m = L.measure_step(L.ptuning(L.tiny_from_profile(*LLAMA), 5, 32, "lstm"), B, S, virtual_tokens=5)
    assert diffs(pred, m) == dict.fromkeys(COMPONENTS, 0)
    m1 = L.measure_step(L.ptuning(L.tiny_from_profile(*LLAMA), 5, 32, "lstm"), B, S, virtual_tokens=5)
    if torch.backends.mkldnn.is_available():
        assert m1["meas_activations_bytes"] > pred["pred_activations_bytes"]
        assert m1["meas_gradients_bytes"] == pred["pred_gradients_bytes"]


@pytest.mark.parametrize("prof,dt", [(LLAMA, "fp32"), (QWEN, "bf16")])
def test_bottleneck_adapters_vs_memory_plan(prof, dt):
    """memory.plan(Method.ADAPTER) against a measured step of the plain-torch bottleneck adapter: every component
    exact, activations included, after activations.block_saved_direct learned the two terms this measurement
    found (nothing saves the adapter's input in the model's dtype; the first block's MLP needs an input gradient
    once the attention's adapter trains; before: fp32 -24,704, bf16 -16,512 bytes)."""
    c = cfg(prof, dt, method=Method.ADAPTER, adapter_size=8)
    p = M.plan(c)
    m = L.measure_step(L.bottleneck_adapters(L.tiny_from_profile(*prof, dtype=dt), 8), B, S)
    assert diffs(peft_predicted(p, c), m) == dict.fromkeys(COMPONENTS, 0)


def test_live_saved_counter_calibration():
    """The instrument: a saved fp32 (64, 32) tensor is 8,192 bytes while its graph lives; a graph dropped inside
    the block (as DoRA's get_lora_weight drops its eye graph) leaves nothing; a view saved twice counts once."""
    lin = torch.nn.Linear(32, 8)
    with L.live_saved(lin) as c:
        y = lin(torch.randn(64, 32))  # saves its input (the weight is a parameter: excluded)
        z = (lin(torch.randn(16, 32)) * 2).sum()  # saves a 2,048-byte input, then the graph is dropped
        del z
    assert c.live_bytes() == 64 * 32 * 4
    assert c.packed() >= 2
    del y  # the graph goes, and with it the saved input
    assert c.live_bytes() == 0


def test_qdora_byte_exact(tmp_path):
    """DoRA on an NF4 base (QLoRA's recipe: bitsandbytes 4-bit, PEFT prepare_model_for_kbit_training): the
    dequantized weight is cast to the fp32 input's dtype, a plain tensor (D4b does not apply); every component
    exact, the total 36 bytes under at 526 KB (the loss peak decides)."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from quantlab.lab.finetune import keep_training_layout

    L.tiny_from_profile(*LLAMA).save_pretrained(tmp_path)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                           bnb_4bit_quant_storage=torch.uint8)
    m = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, quantization_config=q, device_map="cpu")
    keep_training_layout(m)
    m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=False)
    m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True,
                                     task_type="CAUSAL_LM"))
    c = cfg(LLAMA, method=Method.QLORA, precision=Precision.NF4, compute_dtype=DType.BF16, lora_r=4, lora_alpha=8)
    p = PM.dora_plan(c)
    meas = L.measure_step(m, B, S)
    assert diffs(peft_predicted(p, c), meas) == dict.fromkeys(COMPONENTS, 0)
    assert abs(p.peak_allocated_bytes - meas["meas_allocated_bytes"]) <= 1e-4 * meas["meas_allocated_bytes"]


def test_bottleneck_adapters_gpt2_first_block_dropout_not_planned():
    """GPT-2's names (``attn.c_proj``, ``mlp.c_proj``: validate.adapter_sublayers, families F6): every component
    exact but activations, under by one fp32 B·T·h tensor: block 0's attention saves nothing under A10, yet the
    adapter after c_proj makes ``resid_dropout``'s input need a gradient, and a CPU dropout keeps its fp32 noise
    (A8). Asserted as measured so that modelling it (/work/notes/adaprows-requests.md) changes this test."""
    from quantlab.validate import adapter_sublayers

    c = cfg(GPT2, method=Method.ADAPTER, adapter_size=8)
    p = M.plan(c)
    m = L.measure_step(L.bottleneck_adapters(L.tiny_from_profile(*GPT2), 8, sublayers=adapter_sublayers(c.model)),
                       B, S)
    d = diffs(peft_predicted(p, c), m)
    assert d == dict(dict.fromkeys(COMPONENTS, 0), activations=-4 * B * S * c.model.hidden_size)
