"""activations A13: the closed form of a block's saved bytes equals the op-by-op sum on a sweep."""

import itertools

import pytest

from quantlab.planner.activations import Act, block_saved, block_saved_direct
from quantlab.profiles import list_models, load_model

SWITCHES = [dict(), dict(eager=True), dict(amp=True, a=2, r=4), dict(r=4, a=4, kbit=True), dict(cuda=False),
            dict(padded=True), dict(lora_dropout=True, rank=8), dict(prefix=True, extra=20), dict(flash=False),
            dict(kbit_keeps_input=True, kbit=True)]


@pytest.mark.parametrize("name", list_models())
def test_block_saved_closed_form_equals_the_sum(name):
    m = load_model(name).spec
    first = sorted({l.name for l in m.block_linears() if l.module})[:2]
    for sw, (trains, lora, ig, ia3, adapter) in itertools.product(
            SWITCHES, [(True, (), True, False, 0), (False, tuple(first), False, False, 0),
                       (False, tuple(first), True, False, 0), (False, (), True, True, 0), (False, (), True, False, 64)]):
        sw = dict(sw)
        extra = sw.pop("extra", 0)
        base = dict(r=2, a=2, c=2, amp=False, eager=False, cuda=True)
        base.update(sw)
        for b, s in ((1, 1), (3, 17), (7, 512), (2, 4096)):
            x = Act(b=b, s=s, kv_s=s + extra, **base)
            args = (m, x, trains, frozenset(lora), ig, ia3, adapter)
            assert block_saved(*args) == block_saved_direct(*args), (sw, b, s, trains, lora, ig, ia3, adapter)


# ---------------------------------------------------------------------------------------------------------
# memory: plan() evaluates a shape-free part once and closed forms in batch and sequence (memory._bipoly); the
# op-by-op plan (plan_direct, nothing cached per configuration) is its oracle

from quantlab.planner import memory  # noqa: E402
from quantlab.specs import (Attention, DeviceMode, Method, Offload, Optimizer, PlanConfig, Precision,  # noqa: E402
                            TrainingPrecision)

PLAN_VARIANTS = [dict(), dict(grad_checkpointing=True), dict(attn=Attention.EAGER),
                 dict(training_precision=TrainingPrecision.AMP), dict(device=DeviceMode.CPU),
                 dict(num_gpus=4, zero=3), dict(num_gpus=4, tp=2, zero=1), dict(optimizer=Optimizer.ADAFACTOR),
                 dict(padding_mask=True, lora_dropout=0.1), dict(num_gpus=2, zero=2, offload=Offload.OPTIMIZER),
                 dict(flash_attention=False, grad_checkpointing=True, attn=Attention.EAGER)]
PLAN_METHODS = [(Method.INFERENCE, Precision.BF16), (Method.INFERENCE, Precision.NF4), (Method.FULL, Precision.BF16),
                (Method.FREEZE, Precision.BF16), (Method.LORA, Precision.FP16), (Method.QLORA, Precision.NF4),
                (Method.PREFIX, Precision.BF16), (Method.PROMPT, Precision.BF16), (Method.IA3, Precision.BF16),
                (Method.ADAPTER, Precision.BF16)]


def _configs(name):
    m = load_model(name).spec
    for (method, precision), v in itertools.product(PLAN_METHODS, PLAN_VARIANTS):
        if method is Method.INFERENCE and set(v) - {"attn", "device", "flash_attention"}:
            continue
        for b, s in ((1, 1), (3, 17), (2, 4097), (5, 40_001)):
            try:
                yield PlanConfig(model=m, method=method, precision=precision, batch=b, seq=s, **v)
            except Exception:  # a combination the spec refuses (e.g. tp on this model's heads)
                continue


@pytest.mark.parametrize("name", ["llama-3.1-8b", "gemma-2-9b", "mixtral-8x7b", "gpt2", "phi-3-mini", "qwen2.5-7b"])
def test_plan_equals_the_op_by_op_plan(name):
    n = 0
    for cfg in _configs(name):
        fast, direct = memory.plan(cfg), memory.plan_direct(cfg)
        assert fast == direct, cfg
        assert memory.process_bytes_at(cfg) == direct.process_bytes
        n += 1
    assert n > 100


def test_process_bytes_at_is_the_plan_at_that_shape():
    import dataclasses

    cfg = PlanConfig(model=load_model("llama-3.1-8b").spec, method=Method.LORA, batch=2, seq=1024)
    for b, s in ((1, 1), (7, 3000), (64, 16)):
        assert memory.process_bytes_at(cfg, b, s) == memory.plan(dataclasses.replace(cfg, batch=b, seq=s)).process_bytes
    with pytest.raises(memory.SpecError):
        memory.process_bytes_at(cfg, 0, 16)


def test_closed_form_refuses_what_it_does_not_reproduce():
    """A term with a window (not a polynomial in the sequence) fails the check points: _bipoly answers None."""
    assert memory._bipoly(lambda b, s: (b * min(s, 4096),)) is None
    assert memory._bipoly(lambda b, s: (b * min(s, 32_768),)) is None
    # integer-valued with half-integer coefficients (s(s+1)/2) is still exact in Newton form
    c = memory._bipoly(lambda b, s: (7 + 3 * s + b * (5 + 2 * s + s * s), b * s * (s + 1) // 2))
    assert c is not None and memory._bipoly_at(c, 11, 1234) == (7 + 3 * 1234 + 11 * (5 + 2 * 1234 + 1234 ** 2),
                                                                11 * 1234 * 1235 // 2)
    assert memory._bipoly(lambda b, s: (b * s * (s + 20) // 2,)) is None  # not a polynomial (odd s rounds down)


def test_tensor_parallel_plans_are_summed_directly():
    cfg = PlanConfig(model=load_model("llama-3.1-8b").spec, method=Method.FULL, num_gpus=2, tp=2)
    assert memory._static(cfg).poly is None
    assert memory._static(dataclasses_replace(cfg, num_gpus=1, tp=1)).poly is not None


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)
