"""quantlab/planner/offload.py (O1-O8): the pure arithmetic of activation offloading.

Golden figure (O3, tiny Llama: h = 64, 2 layers, 4 heads of 16, fp32, batch 2 x 128, T = 256): per norm the fp32
input and rsqrt, 4·256·64 + 4·256 = 66,560 B, for 2·2 + 1 = 5 norms = 332,800 B; per block the attention and MLP
norm outputs and the SDPA output, 3·4·256·64 = 196,608 B, for 2 blocks = 393,216 B; RoPE's cos and sin,
2·128·16·4 = 16,384 B; lm_head's input under the NoOpManager, 4·256·64 = 65,536 B (O2): 807,936 B kept. The same
figure was counted from TRL's hook on a CPU (tests/lab/test_offload_measured.py).
"""

import pytest

from quantlab.planner import memory as M
from quantlab.planner.offload import OffloadConfig, OffloadMode, mode, offload_plan
from quantlab.specs import (Attention, DeviceMode, DType, Method, ModelSpec, PlanConfig, Precision, SpecError,
                            TrainingPrecision)

TINY = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=256, max_position_embeddings=512)
LLAMA7B = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)
TINYLLAMA = dict(model_type="llama", hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, intermediate_size=5632, vocab_size=32000, max_position_embeddings=8192)


def _cfg(d=TINY, **kw):
    base = dict(model=ModelSpec.from_hf_config(d, name=d["model_type"]), method=Method.FULL,
                precision=Precision.FP32, compute_dtype=DType.FP32, batch=2, seq=128, device=DeviceMode.CPU)
    base.update(kw)
    return PlanConfig(**base)


def test_golden_device_kept():
    assert offload_plan(_cfg()).device_kept_bytes == 807_936


def test_modes_order_device_and_host():
    # TinyLlama-1.1B's shape at 8 x 4096 bf16: activations, not the optimizer step, set the peak
    cfg = _cfg(TINYLLAMA, precision=Precision.BF16, compute_dtype=DType.BF16, batch=8, seq=4096,
               device=DeviceMode.CUDA)
    trl, nos, soc = (offload_plan(cfg, OffloadConfig(m)) for m in OffloadMode)
    base = M.plan(cfg)
    # what stays on the device: save_on_cpu < TRL without streams < TRL with streams (O1-O3) < no offload
    assert soc.device_kept_bytes == 0 < nos.device_kept_bytes < trl.device_kept_bytes < base.components["activations"]
    assert trl.plan.peak_allocated_bytes < base.peak_allocated_bytes
    assert trl.host_exact and not nos.host_exact and not soc.host_exact
    assert soc.host_pinned_bytes > nos.host_pinned_bytes == trl.host_pinned_bytes  # lower bounds (O6)
    # the backward's in-flight block is an addition above memory's tail, never negative (O5)
    assert trl.plan.components["offload_in_flight"] >= 0


def test_device_grows_with_batch_and_seq():
    def dev(**kw):
        return offload_plan(_cfg(TINYLLAMA, precision=Precision.BF16, compute_dtype=DType.BF16, **kw))

    a = dev(batch=4, seq=2048)
    for b in (dev(batch=8, seq=2048), dev(batch=4, seq=4096)):
        assert b.device_kept_bytes > a.device_kept_bytes and b.host_pinned_bytes > a.host_pinned_bytes
        assert b.plan.peak_allocated_bytes > a.plan.peak_allocated_bytes


def test_host_is_the_saved_bytes_less_what_stays():
    """O6: every offloadable storage once: memory's activations less lm_head's input plus the loss's saved tensors
    (fp32 log_softmax 4·T·V and int64 targets 8·T)."""
    cfg = _cfg(LLAMA7B, batch=1, seq=2048, precision=Precision.BF16, compute_dtype=DType.BF16)
    T, h, V = 2048, 4096, 32000
    p = M.plan(cfg)
    assert offload_plan(cfg).host_pinned_bytes == p.components["activations"] - 2 * T * h + 4 * T * V + 8 * T


@pytest.mark.parametrize("kw", [dict(method=Method.LORA), dict(grad_checkpointing=True), dict(attn=Attention.EAGER),
                                dict(training_precision=TrainingPrecision.AMP, compute_dtype=DType.BF16)])
def test_unmodelled_is_a_spec_error(kw):
    with pytest.raises(SpecError, match="not modelled"):
        offload_plan(_cfg(**kw))


def test_unknown_mode_lists_the_known():
    with pytest.raises(SpecError, match="trl, trl-no-streams, save-on-cpu"):
        mode("zero-offload")


def test_fit_offloaded_fits_where_plain_does_not():
    """TinyLlama's shape, full bf16 fine-tune at 8 x 4096 on an 80 GB A100: memory.py's plan does not fit, TRL's
    offloading (device side) does, with a larger largest batch."""
    from quantlab.planner.fit import fit
    from quantlab.planner.offload import offload_fit
    from quantlab.profiles import load_gpu

    gpu = load_gpu("a100-80gb")
    cfg = _cfg(TINYLLAMA, precision=Precision.BF16, compute_dtype=DType.BF16, batch=8, seq=4096,
               device=DeviceMode.CUDA)
    plain = fit(cfg, gpu, suggest=False)
    off = offload_fit(cfg, OffloadConfig(), gpu)
    assert not plain.fits and off.fits
    assert off.max_batch > plain.max_batch >= 1
    assert off.margin_bytes == gpu.memory_bytes - off.plan.process_bytes
