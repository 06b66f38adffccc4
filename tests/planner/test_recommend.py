"""The recommender: ranking, Pareto front, budget, and the arithmetic of time and cost.

Most tests drive it with a small stand-in planner (``FakePlanner``: bf16 weights, AdamW, ZeRO/FSDP sharding
by the ZeRO paper's rules) so the ranking logic is checked on numbers derived here; the last tests run the
real planner and GPU profiles.
"""

import dataclasses
import math
from dataclasses import dataclass, field

import pytest

from quantlab.planner import recommend as R
from quantlab.planner import throughput as tp
from quantlab.specs import GPUSpec, Method, ModelSpec, Offload, PlanConfig

GiB = 1 << 30
LLAMA2_7B = ModelSpec(name="llama-2-7b", model_type="llama", hidden_size=4096, num_hidden_layers=32,
                      num_attention_heads=32, intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)
P7B = 6_738_415_616


def gpu(name, mem_gib, price, bw=2e12, bf16=1e15, link=400e9):
    return GPUSpec(name=name, vendor="test", memory_bytes=mem_gib * GiB, memory_bandwidth_bytes_per_s=bw,
                   flops={"fp32": bf16 / 16, "tf32": None, "bf16": bf16, "fp16": bf16, "int8": None, "fp8": None},
                   bf16_supported=True, fp8_supported=False, interconnect="nvlink" if link else "pcie",
                   interconnect_bandwidth_bytes_per_s=link, price_usd_per_hour=price)


SMALL = gpu("small-24g", 24, 0.5, bw=1e12, bf16=0.3e15, link=None)
BIG = gpu("big-80g", 80, 3.0)


@dataclass
class FakePlan:
    components: dict
    process_bytes: int
    trainable_params: int
    params: int = P7B
    active_params: int = P7B
    notes: tuple = ()


@dataclass
class FakePlanner:
    """bf16 weights (2 B/param), full fine-tune: bf16 grads (2 B) + AdamW with fp32 master (12 B); 2 GiB of
    activations per sequence (1/4 GiB with checkpointing); 1 GiB context. ZeRO-1 shards the optimizer, 2 also grads, 3 also weights
    (FSDP full_shard = ZeRO-3, shard_grad_op = ZeRO-2); offload moves the optimizer (and weights) off the GPU.
    Inference: weights / tp + 0.5 MiB of KV per token per sequence / tp."""

    calls: list = field(default_factory=list)

    def plan(self, cfg: PlanConfig) -> FakePlan:
        self.calls.append(cfg)
        n = cfg.dp
        zero = 3 if cfg.fsdp == "full_shard" else 2 if cfg.fsdp == "shard_grad_op" else cfg.zero
        if cfg.method is Method.INFERENCE:
            w = 2 * P7B // cfg.tp
            kv = cfg.batch * cfg.seq * 524_288 // cfg.tp
            comp = {"weights": w, "kv_cache": kv}
            return FakePlan(comp, sum(comp.values()) + GiB, 0)
        w, g, o = 2 * P7B, 2 * P7B, 12 * P7B
        comp = {"weights": w // (n if zero == 3 else 1), "gradients": g // (n if zero >= 2 else 1),
                "optimizer": o // (n if zero >= 1 else 1),
                "activations": (GiB // 4 if cfg.grad_checkpointing else 2 * GiB) * cfg.batch}
        if cfg.offload is not Offload.NONE:
            comp["optimizer"] = 0
        if cfg.offload is Offload.PARAMS:
            comp["weights"] = 0
        return FakePlan(comp, sum(comp.values()) + GiB, P7B)


def rec(base, gpus, goal=R.Goal(train_tokens=1e8), **kw):
    fp = FakePlanner()
    return R.recommend(base, gpus, goal, plan=fp.plan, **kw), fp


FULL = PlanConfig(model=LLAMA2_7B, method=Method.FULL, seq=4096)


def _dominates(q, o):
    return q.time_s <= o.time_s and q.cost_usd <= o.cost_usd and (q.time_s < o.time_s or q.cost_usd < o.cost_usd)


@pytest.mark.parametrize("all_shardings", [False, True])
def test_pareto_front_is_the_undominated_set(all_shardings):
    r, _ = rec(FULL, [SMALL, BIG], all_shardings=all_shardings)
    priced = [o for o in r.options if o.cost_usd is not None]
    assert sum(o.pareto for o in priced) >= 2
    for o in priced:
        assert o.pareto == (not any(_dominates(q, o) for q in priced))


def test_pareto_front_keeps_ties_and_drops_slower_equal_cost():
    mk = lambda t, c: R.Option("g", 1, "s", 1, 1, 1, 0, 1, 1.0, t, c, 1.0, "compute", tp.StepTime(1, 0), FULL)
    opts = [mk(1, 10), mk(1, 10), mk(2, 10), mk(2, 5), mk(3, 7), mk(4, 1), mk(5, None)]
    assert R.pareto_front(opts) == {0, 1, 3, 5}


def test_only_fitting_options_ranked_cheapest_first():
    r, fp = rec(FULL, [SMALL, BIG])
    assert r.options, "a 7B full fine-tune fits on 8 x 80 GiB"
    costs = [o.cost_usd for o in r.options]
    assert costs == sorted(costs)
    for o in r.options:
        assert o.memory_per_gpu_bytes <= o.gpu_memory_bytes
    # 7B full fine-tuning needs 16 B/param = 100 GiB of states: never one GPU without offload
    assert not any(o.count == 1 and o.sharding == "single" for o in r.options)
    assert r.rejected.get("does not fit in memory", 0) > 0
    r_all, _ = rec(FULL, [SMALL, BIG], all_shardings=True)
    assert r.considered == len(r_all.options) + r.rejected["does not fit in memory"]


def test_best_sharding_per_gpu_count_prefers_less_traffic_then_more_headroom():
    """8 x 80 GiB, compute-bound: ZeRO-1/2/3 and FSDP are equally fast in the roofline; ZeRO-1/2 and
    shard_grad_op move 2(n-1)/n of the gradients, ZeRO-3 and full_shard 3(n-1)/n of the weights, so ZeRO-2
    (less traffic than ZeRO-3, less memory than ZeRO-1) is kept and the others are named."""
    r, _ = rec(FULL, [BIG])
    eight = [o for o in r.options if o.count == 8]
    assert len(eight) == 1 and eight[0].sharding == "zero2"
    assert any("as fast with" in n and "zero3" in n for n in eight[0].notes)
    assert len({(o.gpu, o.count) for o in r.options}) == len(r.options)


def test_time_and_cost_arithmetic():
    r, _ = rec(FULL, [BIG])
    for o in r.options:
        assert o.time_s == pytest.approx(1e8 / o.tokens_per_s)
        assert o.cost_usd == pytest.approx(o.time_s / 3600 * o.count * 3.0)
        assert o.tokens_per_s == pytest.approx(o.step.tokens_per_s * o.dp)


def test_more_gpus_is_faster_under_zero3_on_nvlink():
    r, _ = rec(FULL, [BIG], sort="time", all_shardings=True)
    z3 = {o.count: o for o in r.options if o.sharding == "zero3"}
    assert z3[8].time_s < z3[4].time_s < z3[2].time_s
    times = [o.time_s for o in r.options]
    assert times == sorted(times)


def test_budget_drops_expensive_configurations():
    r, _ = rec(FULL, [SMALL, BIG], budget_per_hour=10.0)
    assert r.options and all(o.cost_per_hour_usd <= 10.0 for o in r.options)
    assert max(o.count for o in r.options if o.gpu == "big-80g") <= 2
    assert r.rejected["over the hourly budget"] > 0


def test_unpriced_gpus_rank_last_and_stay_off_the_front():
    free = dataclasses.replace(BIG, name="unpriced", price_usd_per_hour=None)
    r, _ = rec(FULL, [BIG, free])
    kinds = [o.gpu for o in r.options]
    assert kinds.index("unpriced") > max(i for i, k in enumerate(kinds) if k == "big-80g")
    assert not any(o.pareto for o in r.options if o.gpu == "unpriced")


def test_serving_picks_tensor_parallel_and_the_largest_batch():
    base = PlanConfig(model=LLAMA2_7B, method=Method.INFERENCE, seq=4096)
    r, _ = rec(base, [SMALL, BIG], goal=R.Goal(serve_tokens_per_day=1e9), all_shardings=True)
    assert {o.sharding for o in r.options} >= {"tp1", "tp2", "tp8", "2x replicas"}
    for o in r.options:
        assert 32 % o.tp == 0
        assert 1 < o.batch <= R.MAX_SERVE_BATCH
        assert o.bound in ("memory", "compute", "network")
    d = r.to_dict()
    assert "largest batch" in " ".join(d["assumptions"]["notes"])


def test_json_document_holds_ranked_options_with_assumptions():
    r, _ = rec(FULL, [SMALL, BIG])
    d = r.to_dict()
    assert [o["rank"] for o in d["options"]] == list(range(1, len(r.options) + 1))
    first = d["options"][0]
    for k in ("gpu", "count", "sharding", "memory_per_gpu_bytes", "time_s", "cost_usd", "bound", "step"):
        assert k in first
    assert d["assumptions"]["utilisation"]["train_mfu"] == tp.Utilisation().train_mfu
    assert d["pareto"] and all(d["options"][i - 1]["pareto"] for i in d["pareto"])


def test_counts_and_shardings():
    assert R.gpu_counts(8) == [1, 2, 4, 8]
    assert R.gpu_counts(6) == [1, 2, 4, 6]
    assert R.gpu_counts(1) == [1]
    assert [s.name for s in R.training_shardings(1)] == ["single", "zero2+offload-opt", "zero3+offload-all"]
    names = {s.name for s in R.training_shardings(4)}
    assert {"ddp", "zero1", "zero2", "zero3", "fsdp-full", "fsdp-grad-op", "zero3+offload-all"} <= names
    gqa = dataclasses.replace(LLAMA2_7B, num_key_value_heads=8)
    tps = {s.tp for s in R.inference_shardings(16, PlanConfig(model=gqa))}
    assert tps == {1, 2, 4, 8, 16}  # tp 16 > 8 KV heads: each KV head is replicated on 2 GPUs


def test_goal_validation():
    with pytest.raises(ValueError):
        R.Goal(train_tokens=1e8, serve_tokens_per_day=1e9)
    with pytest.raises(ValueError):
        R.Goal(train_tokens=-1)
    with pytest.raises(ValueError):
        R.Goal(train_tokens=math.inf)


def test_checkpointing_is_searched_and_chosen_only_where_it_is_needed():
    """8 x 24 GiB under ZeRO-3: 100 GiB of states / 8 = 12.6 GiB + 1 GiB context + activations. At batch 6,
    2 GiB per sequence (12 GiB) does not fit, 1/4 GiB (1.5 GiB) does: that option must be '+ckpt' and pay one
    more forward. On 8 x 80 GiB the faster option without checkpointing is kept."""
    base = dataclasses.replace(FULL, batch=6)
    r, _ = rec(base, [SMALL, BIG], all_shardings=True)
    small8 = {o.sharding: o for o in r.options if o.gpu == "small-24g" and o.count == 8}
    assert "zero3" not in small8 and small8["zero3+ckpt"].config.grad_checkpointing
    best, _ = rec(base, [SMALL, BIG])
    big8 = next(o for o in best.options if o.gpu == "big-80g" and o.count == 8)
    assert not big8.config.grad_checkpointing
    ck = next(o for o in r.options if o.gpu == "big-80g" and o.count == 8 and o.sharding == big8.sharding + "+ckpt")
    assert ck.step.compute_s > big8.step.compute_s
    fixed, _ = rec(dataclasses.replace(base, grad_checkpointing=True), [SMALL, BIG], all_shardings=True)
    assert all(o.config.grad_checkpointing and "+ckpt" not in o.sharding for o in fixed.options)


# ---- with the real planner and GPU profiles -------------------------------------------------------------

def _real(model, method, **kw):
    from quantlab.profiles import list_gpus, load_gpu, load_model
    from quantlab.specs import Precision

    spec = load_model(model).spec
    prec = Precision.NF4 if method is Method.QLORA else Precision.BF16
    base = PlanConfig(model=spec, method=method, precision=prec, **kw)
    return base, [load_gpu(n) for n in list_gpus()]


def test_real_70b_qlora_memory_is_the_planners_and_speed_the_roofline():
    """Every option's memory is the planner's process total for exactly that configuration, and a
    compute-bound option's speed is MFU × peak / FLOPs per token."""
    from quantlab.planner import plan

    base, gpus = _real("70b", Method.QLORA, seq=4096)
    r = R.recommend(base, gpus, R.Goal(train_tokens=1e8))
    assert r.options and r.pareto
    for o in r.options:
        assert o.memory_per_gpu_bytes == plan(o.config).process_bytes <= o.gpu_memory_bytes
    h100 = next(o for o in r.options if o.gpu == "h100-sxm" and o.count == 1)
    assert h100.config.grad_checkpointing  # 70B at seq 4096 keeps ~160 GiB of activations without it
    assert h100.bound == "compute"
    per_tok = tp.train_flops_per_token(h100.config, plan(h100.config).trainable_params).total
    assert h100.tokens_per_s == pytest.approx(0.25 * 989.5e12 / per_tok)


def test_real_serving_uses_tensor_parallel_and_reads_fewer_bytes_per_gpu():
    base, gpus = _real("70b", Method.INFERENCE, seq=4096)
    h100 = [g for g in gpus if g.name == "h100-sxm"]
    r = R.recommend(base, h100, R.Goal(serve_tokens_per_day=1e9), all_shardings=True)
    by = {(o.count, o.tp): o for o in r.options}
    assert (1, 1) not in by  # 138 GB of bf16 weights do not fit one 80 GB GPU
    assert (2, 2) in by and (8, 8) in by
    assert by[(8, 8)].step.bytes < by[(2, 2)].step.bytes
    assert all(o.bound == "memory" for o in r.options)  # decode
