"""Distillation plan (quantlab.planner.peft_methods.distill_plan, D8-D9) against one measured step of TRL 1.16's
GKD loss (``GKDTrainer.generalized_jsd_loss``, the teacher under no_grad as ``compute_loss`` runs it) on tiny
random Llama-architecture models, on a CPU (torch 2.13, transformers 5.24, TRL 1.16)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from quantlab.groundtruth import model_spec  # noqa: E402
from quantlab.lab import peft_measured as L  # noqa: E402
from quantlab.planner import peft_methods as PM  # noqa: E402
from quantlab.specs import DeviceMode, DType, Method, PlanConfig, Precision, SpecError  # noqa: E402

STUDENT = ("llama-3.2-1b", {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 256})
TEACHER = ("llama-3.2-1b", {"num_hidden_layers": 3, "hidden_size": 128, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 256, "vocab_size": 256})


def cfg(dt="fp32", **kw):
    base = dict(model=model_spec(*STUDENT), method=Method.FULL, precision=Precision(dt), compute_dtype=DType(dt),
                batch=2, seq=16, device=DeviceMode.CPU)
    base.update(kw)
    return PlanConfig(**base)


@pytest.mark.parametrize("dt,beta", [("fp32", 0.5), ("bf16", 0.5), ("fp32", 0.0), ("fp32", 1.0)])
def test_gkd_step_per_component(dt, beta):
    c = cfg(dt)
    p = PM.distill_plan(c, PM.DistillConfig(model_spec(*TEACHER), beta))
    m = L.measure_distill(L.tiny_from_profile(*STUDENT, dtype=dt), L.tiny_from_profile(*TEACHER, seed=1, dtype=dt),
                          2, 16, beta=beta)
    pc = p.components
    assert pc["activations"] == m["meas_activations_bytes"]
    assert pc["teacher_weights"] == m["meas_teacher_weights_bytes"]
    assert pc["gradients"] == m["meas_gradients_bytes"] and pc["optimizer"] == m["meas_optimizer_bytes"]
    assert PM.jsd_saved(c, beta) == m["meas_loss_saved_bytes"]
    # the total: under by the mask indexing's few bytes per row only (D9: 7·T' + 16 or 24·T' + 16, T' = 30)
    gap = m["meas_allocated_bytes"] - p.peak_allocated_bytes
    assert 0 <= gap <= 24 * 30 + 16


def test_teacher_kv_cache_is_held():
    """The teacher runs without use_cache=False (D8): 3 layers x K and V x 2 x 16 positions x 2 KV heads x 32 x 4
    bytes = 49,152 bytes of cache in the plan."""
    p = PM.distill_plan(cfg(), PM.DistillConfig(model_spec(*TEACHER)))
    assert p.components["teacher_kv_cache"] == 3 * 2 * 2 * 16 * 2 * 32 * 4


def test_distill_refusals():
    with pytest.raises(SpecError, match="vocabulary"):
        PM.distill_plan(cfg(), PM.DistillConfig(model_spec("llama-3.2-1b")))
    with pytest.raises(SpecError, match="beta"):
        PM.DistillConfig(model_spec(*TEACHER), beta=1.5)
    with pytest.raises(SpecError, match="training"):
        PM.distill_plan(cfg(method=Method.INFERENCE), PM.DistillConfig(model_spec(*TEACHER)))
