"""Evaluation during training (memory.py assumption 20): the eval phase beside the training step."""

import dataclasses

import pytest

from quantlab.cli import main
from quantlab.planner.memory import plan, plan_direct, process_bytes_at
from quantlab.profiles import load_model
from quantlab.specs import Attention, DType, Loop, Loss, Method, PlanConfig, Precision, SpecError

SMOL = load_model("smollm2-135m").spec
L8 = load_model("llama-3.1-8b").spec


def cfg(**kw):
    base = dict(model=SMOL, method=Method.FULL, precision=Precision.BF16, compute_dtype=DType.BF16, batch=2, seq=512,
                loop=Loop.TRAINER)
    base.update(kw)
    return PlanConfig(**base)


def _static(p):
    c = p.components
    return sum(c.get(k, 0) for k in ("weights", "quant_constants", "adapters", "optimizer", "ddp_buckets"))


def test_eval_phase_golden_fp32():
    """fp32 full fine-tune, eval batch 64 x 512 tokens on SmolLM2-135M (vocab 49,152, hidden 576): at the end of
    the forward the fp32 logits 4·T·V, log_softmax's fp32 output 4·T·V (no upcast: already fp32), the final hidden
    states 4·T·h and the labels (padded int64 b·(s+1) and shifted int64 T), T = 32,768 tokens."""
    T, V, h = 64 * 512, SMOL.vocab_size, SMOL.hidden_size
    c = cfg(precision=Precision.FP32, compute_dtype=DType.FP32, eval_batch=64)
    p = plan(c)
    want = 4 * T * V + 4 * T * V + 4 * T * h + 8 * T + 8 * 64 * 513
    assert p.components["eval_forward"] == want
    assert p.peak_allocated_bytes == _static(p) + want  # gradients freed by zero_grad (assumption 3)
    # bf16 logits add the fp32 upcast
    assert plan(cfg(eval_batch=64)).components["eval_forward"] == 2 * T * V + 8 * T * V + 2 * T * h + 8 * T + 8 * 64 * 513


@pytest.mark.parametrize("kw", [
    {}, {"grad_checkpointing": True}, {"keep_grads": True}, {"grad_accum": 2},
    {"method": Method.LORA}, {"method": Method.QLORA, "precision": Precision.NF4, "grad_checkpointing": True},
    {"loop": Loop.MANUAL}, {"model": L8, "seq": 2048, "zero": 2, "num_gpus": 4},
    {"attn": Attention.EAGER},
])
@pytest.mark.parametrize("eb", [1, 8, 128])
def test_peak_is_the_larger_phase_and_the_closed_form_is_the_direct_sum(kw, eb):
    c = cfg(eval_batch=eb, **kw)
    p = plan(c)
    step = plan(dataclasses.replace(c, eval_batch=None))
    assert p == plan_direct(c)
    assert process_bytes_at(c) == p.process_bytes
    eval_peak = _static(step) + (step.components["gradients"] if _keeps(c) else 0) + p.components["eval_forward"]
    assert p.peak_allocated_bytes == max(step.peak_allocated_bytes, eval_peak)
    note = [n for n in p.notes if "evaluation during training" in n]
    assert len(note) == 1
    assert ("evaluation forward is the peak" in note[0]) == (eval_peak >= step.peak_allocated_bytes)
    assert {k: v for k, v in p.components.items() if k not in ("eval_forward", "allocator_reserve")} == \
        {k: v for k, v in step.components.items() if k != "allocator_reserve"}


def _keeps(c):
    from quantlab.planner.memory import keeps_grads

    return keeps_grads(c)


def test_eval_grows_with_the_eval_batch_and_kept_gradients_join_it():
    a, b = (plan(cfg(eval_batch=n)).components["eval_forward"] for n in (4, 8))
    assert 0 < a < b
    free = plan(cfg(eval_batch=256))
    kept = plan(cfg(eval_batch=256, keep_grads=True))
    assert kept.peak_allocated_bytes - free.peak_allocated_bytes == kept.components["gradients"]


def test_none_leaves_the_plan_as_it_was():
    c = cfg()
    assert c.eval_batch is None and "eval_forward" not in plan(c).components
    assert not any("evaluation" in n for n in plan(c).notes)


@pytest.mark.parametrize("kw, msg", [
    ({"method": Method.INFERENCE, "loop": Loop.MANUAL, "batch": 1}, "inference plan"),
    ({"eval_batch": 0}, "positive integer"),
    ({"loss": Loss.CHUNKED, "loop": Loop.MANUAL}, "not modelled"),
])
def test_refuses(kw, msg):
    kw = dict(kw)
    kw.setdefault("eval_batch", 4)
    with pytest.raises(SpecError, match=msg):
        cfg(**kw)


def test_round_trips_and_the_flag(capsys):
    c = cfg(eval_batch=16)
    assert c.to_dict()["eval_batch"] == 16 and PlanConfig.from_dict(c.to_dict()) == c
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert "--eval-batch" in out and "off (no evaluation during training)" in " ".join(out.split())
    assert main(["plan", "--model", "smollm2-135m", "--eval-batch", "4"]) == 2  # inference: the flag does nothing
    assert "inference plan" in capsys.readouterr().err
