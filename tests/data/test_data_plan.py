"""The plan from the data equals the planner's plan at the p50 / p95 / max batch widths, and the epoch time is the
planner's roofline summed over the batches."""

import dataclasses

import pytest

from quantlab.data.dataplan import data_plan
from quantlab.data.lengths import batch_widths, percentile
from quantlab.planner import fit, plan
from quantlab.planner import throughput as tp
from quantlab.planner.recommend import model_bytes
from quantlab.profiles import load_gpu, load_model
from quantlab.specs import PlanConfig

LENS = [40 + (i * 37) % 400 for i in range(101)]


def cfg(**kw):
    return PlanConfig.from_dict({"method": "qlora", "batch": 4, **kw}, model=load_model("smollm2-135m").spec)


def test_points_equal_the_planner_at_those_widths():
    c, gpu = cfg(), load_gpu("rtx-4090")
    doc = data_plan(c, LENS, gpu, seed=0)
    w = batch_widths(LENS, 4, 0)
    assert doc["widths"] == {"p50": percentile(w, 50), "p95": percentile(w, 95), "max": max(w)}
    assert doc["batches_per_epoch"] == 26 and doc["optimizer_steps_per_epoch"] == 26
    for row in doc["plans"]:
        want = fit(dataclasses.replace(c, seq=doc["widths"][row["point"]], padding_mask=True), gpu, suggest=False)
        assert row["process_bytes"] == want.plan.process_bytes
        assert row["peak_allocated_bytes"] == want.plan.peak_allocated_bytes
        assert row["fits"] == want.fits and row["margin_bytes"] == want.margin_bytes
    assert doc["longest_batch_fits"] is doc["plans"][-1]["fits"] is True
    # memory grows with the width
    assert doc["plans"][0]["process_bytes"] <= doc["plans"][1]["process_bytes"] <= doc["plans"][2]["process_bytes"]


def test_no_gpu_is_memory_only_and_matches_plan():
    c = cfg()
    doc = data_plan(c, LENS, None)
    top = plan(dataclasses.replace(c, seq=doc["widths"]["max"], padding_mask=True))
    assert doc["plans"][-1]["process_bytes"] == top.process_bytes
    assert doc["epoch_s"] is None and doc["cost_usd"] is None and doc["longest_batch_fits"] is None


def test_epoch_time_is_the_roofline_summed_over_batches():
    c, gpu = cfg(grad_accum=2), load_gpu("rtx-4090")
    doc = data_plan(c, LENS, gpu, epochs=3)
    w = batch_widths(LENS, 4, 0)
    sizes = [4] * 25 + [1]
    base = plan(dataclasses.replace(c, seq=max(w), padding_mask=True))
    r = tp.roof(gpu, c.compute_dtype)
    want = sum(tp.train_step(dataclasses.replace(c, batch=s, seq=x, grad_accum=1, padding_mask=True),
                             base.trainable_params, model_bytes(base), r).seconds for x, s in zip(w, sizes))
    assert doc["epoch_s"] == pytest.approx(want)
    assert doc["total_s"] == pytest.approx(3 * want)
    assert doc["cost_usd"] == pytest.approx(3 * want / 3600 * gpu.price_usd_per_hour)
    assert doc["optimizer_steps_per_epoch"] == 13
    assert doc["padded_tokens_per_epoch"] == sum(x * s for x, s in zip(w, sizes)) >= sum(LENS)


def test_packing_plans_every_batch_at_max_len_without_a_mask():
    c = cfg()
    doc = data_plan(c, LENS, None, packing=True, max_len=512)
    rows = sum(LENS) // 512
    assert doc["widths"] == {"p50": 512, "p95": 512, "max": 512}
    assert doc["batches_per_epoch"] == -(-rows // 4)
    assert doc["plans"][-1]["process_bytes"] == plan(dataclasses.replace(c, seq=512, padding_mask=False)).process_bytes


def test_preference_pairs_plan_twice_the_sequences():
    c = cfg()
    doc = data_plan(c, LENS, None, preference=True)
    assert all(r["batch"] == 8 for r in doc["plans"])
