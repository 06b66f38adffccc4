"""Serving recommendations (quantlab/planner/recommend.py recommend_serving): headroom, copies, rent and buy."""

from __future__ import annotations

import math
import re

import pytest

from quantlab.planner import serving as S
from quantlab.planner.recommend import SECONDS_PER_DAY, BuyCosts, recommend_serving, serving_layouts
from quantlab.profiles import gpu_doc, list_gpus, load_gpu, load_model
from quantlab.specs import PlanConfig

M8 = load_model("8b").spec
M70 = load_model("70b").spec
GPUS = [load_gpu(n) for n in ("l40s", "h100-sxm", "mi300x", "rtx-4090", "a100-80gb")]


def buy_table(gpus):
    return {g.name: (gpu_doc(g.name)["purchase_usd"]["value"], gpu_doc(g.name)["power_watts"]["value"])
            for g in gpus}


def rec(model=M8, headroom=0.1, **kw):
    base = S.serve_config(PlanConfig(model=model), prompt_tokens=kw.pop("prompt", 1792), new_tokens=256)
    return recommend_serving(base, GPUS, headroom=headroom, buy=buy_table(GPUS), **kw)


def test_every_option_keeps_the_headroom_and_says_how_much():
    for h in (0.1, 0.3):
        r = rec(headroom=h, tokens_per_day=1e9)
        assert r.options
        for o in r.options:
            assert o.memory_per_gpu_bytes <= o.gpu_memory_bytes * (1 - h)
            assert o.headroom_bytes == int(o.gpu_memory_bytes * h)
    # the pick: 8B on MI300X filled 191.4 of 191.7 GiB; now at most 90% of it
    mi = [o for o in rec(tokens_per_day=1e9).options if o.gpu == "mi300x"]
    assert mi and all(o.memory_per_gpu_bytes <= 0.9 * o.gpu_memory_bytes for o in mi)


def test_copies_serve_the_day_and_the_rank_is_the_days_rent():
    r = rec(M70, tokens_per_day=1e9)
    for o in r.options:
        assert o.copies * o.tokens_per_s * SECONDS_PER_DAY >= 1e9
        assert (o.copies - 1) * o.tokens_per_s * SECONDS_PER_DAY < 1e9
        assert o.rent_usd_per_m_tokens == pytest.approx(o.price_usd_per_gpu_hour * o.count / (o.tokens_per_s * 3600)
                                                        * 1e6)
    rents = [o.rent_usd_per_hour for o in r.options]
    assert rents == sorted(rents)


def test_buy_break_even_and_power():
    costs = BuyCosts()
    r = rec(M70, tokens_per_day=1e9, costs=costs)
    for o in r.options:
        b = o.buy(costs)
        assert b["purchase_usd"] == pytest.approx(o.gpus * o.purchase_usd_per_gpu * 1.25)
        kw = o.gpus * o.power_watts_per_gpu * 0.7 * 1.3 * 1.3 / 1000
        assert b["power_kw"] == pytest.approx(kw)
        saving = o.rent_usd_per_hour * 730 - b["power_usd_per_month"]
        assert b["break_even_months"] == pytest.approx(b["purchase_usd"] / saving)
    # dearer electricity, later break-even
    o = r.options[0]
    assert o.buy(BuyCosts(electricity_usd_per_kwh=0.5))["break_even_months"] > o.buy(costs)["break_even_months"]


def test_layouts_name_tensor_parallel_split_and_replicas():
    base = S.serve_config(PlanConfig(model=M70))
    names = [n for n, *_ in serving_layouts(4, base)]
    assert names == ["4x tp1", "2x tp2", "tp4", "split4"]
    vllm = S.serve_config(PlanConfig(model=M70), engine=S.Engine.VLLM)
    assert "split4" not in [n for n, *_ in serving_layouts(4, vllm)]


def test_a_fixed_concurrency_is_kept_or_rejected():
    r = rec(concurrency=8)
    assert r.options and all(o.concurrency == 8 for o in r.options)
    huge = rec(concurrency=100000)
    assert not huge.options and any("headroom" in k for k in huge.rejected)


@pytest.mark.parametrize("name", list_gpus())
def test_gpu_profiles_carry_a_dated_purchase_price_and_a_datasheet_power(name):
    d = gpu_doc(name)
    p, w = d["purchase_usd"], d["power_watts"]
    assert 300 <= p["value"] <= 100_000 and p["basis"] == "assumed"
    assert re.search(r"recorded \d{4}-\d{2}-\d{2}", p["source"]) and "GPU only" in p["source"]
    assert 50 <= w["value"] <= 1500 and w["basis"] == "datasheet" and len(w["source"]) > 20
    # a price per GPU-hour above 1% of the purchase price, or below 0.001%, is a typo
    assert 1e-5 <= d["price_usd_per_hour"]["value"] / p["value"] <= 1e-2
    assert not math.isnan(p["value"])
