"""Which GPU, how many, sharded how: ranked by time to finish and cost, with the Pareto front.

Pure (standard library only): the caller passes the GPU kinds (``GPUSpec`` from the profiles) and
a base :class:`~quantlab.specs.PlanConfig`; memory comes from the planner (``plan``, judged by ``fit``'s rule),
speed from the roofline (:mod:`quantlab.planner.throughput`), prices from the GPU profiles.

Assumptions (numbered; every option carries the ones it used, and the answer lists them all):

1. Search space. Counts 1, 2, 4, 8, ... up to ``max_gpus`` (and ``max_gpus`` itself), one GPU kind
   per option. Training: one GPU alone or with DeepSpeed ZeRO-Offload (optimizer, or optimizer and
   parameters); several GPUs under DDP, ZeRO-1/2/3, FSDP (full_shard, shard_grad_op) and ZeRO with
   offload. Inference: tensor parallel over ``tp`` GPUs (``tp`` divides the attention and KV heads),
   replicated ``count / tp`` times (data parallel).
2. An option fits when the planner's process memory per GPU (allocated + allocator reserve + CUDA
   context) is at most the GPU's memory: the rule of ``quantlab.planner.fit``, applied to ``plan``
   directly, because ``fit`` also searches the longest sequence, the fewest GPUs and suggestions,
   which ranking a thousand configurations does not need (about 1.7 ms per ``fit``, 0.03 ms per
   ``plan``).
3. Speed is the roofline of :mod:`~quantlab.planner.throughput` at the stated utilisations; more
   GPUs add data-parallel ranks that each run the same step, with their communication as one
   more roof. Pipeline parallelism is not modelled.
4. Training time = tokens to train on / tokens per second of all ranks. Serving time = tokens to
   generate per day / decode tokens per second of all replicas, decoding at a context of ``seq``
   tokens (the KV cache full: the slow end) with the largest batch that fits (at most
   :data:`MAX_SERVE_BATCH`) unless ``--batch`` is given; prefill is not counted (a prompt-heavy
   workload needs more).
5. Cost = hours × GPUs × the profile's indicative on-demand price per GPU-hour (its date and
   source are shown); GPUs without a price are ranked by time only and are off the Pareto front.
6. More than 8 GPUs span nodes: collectives then run at the inter-node bandwidth.
7. Training also tries gradient checkpointing (unless the question already turned it on): it saves
   activation memory for one more forward pass of compute; an option that needs it says ``+ckpt``.

Serving (:func:`recommend_serving`, what ``recommend --method inference`` runs):

8. Buying: each GPU profile's ``purchase_usd`` (an indicative price per GPU, assumed and dated) plus a host
   overhead, and its ``power_watts`` (the datasheet TDP) at a stated fraction while serving, with the host's
   draw and the facility's PUE, at a stated electricity price (:class:`BuyCosts`, every figure assumed).
9. Break-even months = purchase / (renting around the clock - the power bill) per month; none when the power
   costs more than the rent. "Own $/M tokens" spreads the purchase over ``amortize_months`` plus power.
10. Renting: the profile's on-demand price per GPU-hour (assumption 5), around the clock; $/M tokens is the
    price of one copy for the time it takes to decode a million tokens at full load.
11. Layouts: tensor parallel degrees dividing the heads with the rest as replicas (assumption 1), and, on
    transformers, one copy split over all the GPUs by device_map="auto" (serving S4). Each layout serves the
    largest concurrency that fits while keeping a headroom (default 10%) of every GPU's memory free: a plan
    that fills 191.4 of 191.7 GiB is one OOM away from failing in production.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from quantlab.planner import throughput as tp
from quantlab.specs import GPUSpec, Offload, PlanConfig, SpecError

MAX_SERVE_BATCH = 256
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Goal:
    """What the GPUs must do: train on ``train_tokens`` tokens, or generate ``serve_tokens_per_day``."""

    train_tokens: float | None = None
    serve_tokens_per_day: float | None = None

    def __post_init__(self) -> None:
        if self.train_tokens is not None and self.serve_tokens_per_day is not None:
            raise ValueError("give train tokens or serve tokens per day, not both")
        for v in (self.train_tokens, self.serve_tokens_per_day):
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"token counts must be positive, got {v!r}")

    @property
    def tokens(self) -> float:
        return self.train_tokens or self.serve_tokens_per_day or 1e6

    @property
    def described(self) -> str:
        if self.train_tokens:
            return f"train on {self.train_tokens:.3g} tokens"
        if self.serve_tokens_per_day:
            return f"generate {self.serve_tokens_per_day:.3g} tokens per day"
        return "1e6 tokens (no goal given: time and cost per million tokens)"


@dataclass(frozen=True)
class Sharding:
    """One way to spread a job over ``count`` GPUs; ``apply`` turns a base config into it."""

    name: str
    zero: int = 0
    fsdp: str | None = None
    offload: Offload = Offload.NONE
    tp: int = 1

    def apply(self, cfg: PlanConfig, count: int) -> PlanConfig:
        return dataclasses.replace(cfg, num_gpus=count, zero=self.zero, fsdp=self.fsdp, offload=self.offload,
                                   tp=self.tp)


def training_shardings(count: int) -> list[Sharding]:
    """Assumption 1, training."""
    if count == 1:
        return [Sharding("single"), Sharding("zero2+offload-opt", zero=2, offload=Offload.OPTIMIZER),
                Sharding("zero3+offload-all", zero=3, offload=Offload.PARAMS)]
    return [Sharding("ddp"), Sharding("zero1", zero=1), Sharding("zero2", zero=2), Sharding("zero3", zero=3),
            Sharding("fsdp-full", fsdp="full_shard"), Sharding("fsdp-grad-op", fsdp="shard_grad_op"),
            Sharding("zero2+offload-opt", zero=2, offload=Offload.OPTIMIZER),
            Sharding("zero3+offload-opt", zero=3, offload=Offload.OPTIMIZER),
            Sharding("zero3+offload-all", zero=3, offload=Offload.PARAMS)]


def inference_shardings(count: int, cfg: PlanConfig) -> list[Sharding]:
    """Assumption 1, inference: tensor parallel degrees that divide the heads, the rest replicas."""
    m = cfg.model
    out = []
    for t in (1, 2, 4, 8, 16):
        if t > count or count % t or m.num_attention_heads % t or (m.kv_heads % t and t % m.kv_heads):
            continue
        dp = count // t
        name = f"tp{t}" if dp == 1 else (f"{dp}x replicas" if t == 1 else f"tp{t} x{dp} replicas")
        out.append(Sharding(name, tp=t))
    return out


def gpu_counts(max_gpus: int) -> list[int]:
    counts, c = [], 1
    while c <= max_gpus:
        counts.append(c)
        c *= 2
    if counts[-1] != max_gpus:
        counts.append(max_gpus)
    return counts


@dataclass(frozen=True)
class Option:
    """One fitting configuration with its speed, time and cost, and what they assume."""

    gpu: str
    count: int
    sharding: str
    tp: int
    dp: int
    batch: int
    memory_per_gpu_bytes: int
    gpu_memory_bytes: int
    tokens_per_s: float  # all GPUs together
    time_s: float
    cost_usd: float | None
    price_usd_per_gpu_hour: float | None
    bound: str  # the roof that limits the step: compute, memory, network, host
    step: tp.StepTime
    config: PlanConfig
    notes: tuple[str, ...] = ()
    pareto: bool = False

    @property
    def cost_per_hour_usd(self) -> float | None:
        return None if self.price_usd_per_gpu_hour is None else self.price_usd_per_gpu_hour * self.count

    @property
    def replicas_to_keep_up(self) -> int:
        """Serving: copies of this configuration that must run all day to generate the day's tokens."""
        return max(1, math.ceil(self.time_s / SECONDS_PER_DAY))

    def to_dict(self) -> dict:
        c = self.config
        return {
            "gpu": self.gpu, "count": self.count, "sharding": self.sharding, "tp": self.tp, "dp": self.dp,
            "zero": c.zero, "fsdp": c.fsdp, "offload": c.offload.value, "batch": self.batch, "seq": c.seq,
            "memory_per_gpu_bytes": self.memory_per_gpu_bytes, "gpu_memory_bytes": self.gpu_memory_bytes,
            "tokens_per_s": self.tokens_per_s, "time_s": self.time_s, "time_h": self.time_s / 3600,
            "cost_usd": self.cost_usd, "price_usd_per_gpu_hour": self.price_usd_per_gpu_hour,
            "cost_per_hour_usd": self.cost_per_hour_usd, "bound": self.bound, "pareto": self.pareto,
            "step": {"compute_s": self.step.compute_s, "memory_s": self.step.memory_s,
                     "network_s": self.step.network_s, "host_s": self.step.host_s, "seconds": self.step.seconds,
                     "tokens": self.step.tokens, "flops": self.step.flops, "bytes": self.step.bytes},
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Recommendation:
    options: tuple[Option, ...]  # ranked
    goal: Goal
    base: PlanConfig
    util: tp.Utilisation
    assumptions: tuple[str, ...]
    gpu_facts: dict  # gpu name -> interconnect, price and where the price comes from
    considered: int  # configurations planned
    fitting: int = 0  # of which fit (before keeping the best sharding per GPU kind and count)
    rejected: dict = field(default_factory=dict)  # reason -> count
    sort: str = "cost"

    @property
    def pareto(self) -> tuple[Option, ...]:
        return tuple(sorted((o for o in self.options if o.pareto), key=lambda o: o.time_s))

    def to_dict(self) -> dict:
        b = self.base
        return {
            "question": {"model": b.model.name, "method": b.method.value, "precision": b.precision.value,
                         "compute_dtype": b.compute_dtype.value, "seq": b.seq, "batch": b.batch,
                         "grad_checkpointing": b.grad_checkpointing, "goal": self.goal.described,
                         "train_tokens": self.goal.train_tokens,
                         "serve_tokens_per_day": self.goal.serve_tokens_per_day, "sort": self.sort},
            "options": [dict(o.to_dict(), rank=i + 1, **({"copies_to_keep_up": o.replicas_to_keep_up}
                                                           if self.goal.serve_tokens_per_day else {}))
                        for i, o in enumerate(self.options)],
            "pareto": [self.options.index(o) + 1 for o in self.pareto],
            "assumptions": {"notes": list(self.assumptions), "utilisation": self.util.to_dict(),
                            "gpus": self.gpu_facts},
            "considered": self.considered, "fitting": self.fitting, "rejected": dict(self.rejected),
        }


def pareto_front(options: Sequence[Option]) -> set[int]:
    """Indices of the priced options that no other option beats: none is at least as fast and as cheap and
    strictly better on one. Ties (same time and cost, e.g. ZeRO-3 and FSDP full_shard) are all kept."""
    priced = sorted((i for i, o in enumerate(options) if o.cost_usd is not None),
                    key=lambda i: (options[i].time_s, options[i].cost_usd))
    front: set[int] = set()
    best_cost = math.inf  # cheapest among strictly faster options
    k = 0
    while k < len(priced):
        t = options[priced[k]].time_s
        group = [i for i in priced[k:] if options[i].time_s == t]
        c = min(options[i].cost_usd for i in group)
        if c < best_cost:
            front.update(i for i in group if options[i].cost_usd == c)
            best_cost = c
        k += len(group)
    return front


def largest_batch(cfg: PlanConfig, gpu: GPUSpec, plan: Callable, cap: int) -> int:
    """The largest batch (at most ``cap``) whose plan fits ``gpu``, by doubling then bisection; ``cfg.batch``
    must fit. (``quantlab.planner.fit`` searches the same way up to 65,536, with its own ``plan``; this
    one stops at the serving cap and uses the injected ``plan``.)"""
    def fits(b: int) -> bool:
        return plan(dataclasses.replace(cfg, batch=b)).process_bytes <= gpu.memory_bytes

    lo, hi = cfg.batch, cfg.batch * 2
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def best_per_group(options: Sequence[Option]) -> list[Option]:
    """One option per (GPU kind, count): the fastest; among equally fast ones (within 0.5%), the one that moves
    the fewest bytes between devices (network and host seconds: the roofline assumes perfect overlap, real runs
    do not), then the one with the most memory to spare. The others that are as fast are named in its notes."""
    groups: dict[tuple, list[Option]] = {}
    for o in options:
        groups.setdefault((o.gpu, o.count), []).append(o)
    out = []
    for group in groups.values():
        fastest = min(o.time_s for o in group)
        tied = [o for o in group if o.time_s <= fastest * 1.005]
        best = min(tied, key=lambda o: (o.step.network_s + o.step.host_s, o.memory_per_gpu_bytes))
        also = [o.sharding for o in tied if o is not best]
        if also:
            best = dataclasses.replace(best, notes=best.notes + (f"as fast with: {', '.join(also)}",))
        out.append(best)
    return out


def _sum(components: dict, keys: Iterable[str]) -> int:
    return int(sum(components.get(k, 0) or 0 for k in keys))


# The planner's component names (quantlab/planner/memory.py) that the roofline moves as weights, gradients, states.
WEIGHT_KEYS = ("weights", "quant_constants", "adapters")
GRAD_KEYS = ("gradients",)
OPT_KEYS = ("optimizer",)


def model_bytes(plan_obj) -> tp.ModelBytes:
    """The unsharded bytes the roofline moves, from a one-GPU plan's components."""
    c = plan_obj.components
    return tp.ModelBytes(weights=_sum(c, WEIGHT_KEYS), gradients=_sum(c, GRAD_KEYS), optimizer=_sum(c, OPT_KEYS))


def recommend(base: PlanConfig, gpus: Sequence[GPUSpec], goal: Goal = Goal(), *, max_gpus: int = 8,
              budget_per_hour: float | None = None, util: tp.Utilisation = tp.Utilisation(), sort: str = "cost",
              auto_batch: bool = True, all_shardings: bool = False, counts: Sequence[int] | None = None,
              plan: Callable | None = None) -> Recommendation:
    """Rank every fitting (GPU kind × count × sharding) for ``base`` by cost (or time); mark the Pareto front.

    ``plan`` defaults to the planner's; it is a parameter so tests can drive the ranking with hand-made plans.
    ``auto_batch`` (inference only) picks the largest batch that fits, up to :data:`MAX_SERVE_BATCH`.
    Unless ``all_shardings``, each (GPU kind, count) keeps its best sharding (:func:`best_per_group`).
    ``counts`` replaces the GPU counts searched (default :func:`gpu_counts` of ``max_gpus``).
    """
    if plan is None:
        from quantlab.planner import plan
    from quantlab.planner.fit import for_gpu
    if max_gpus < 1:
        raise ValueError("max-gpus must be at least 1")
    if sort not in ("cost", "time"):
        raise ValueError("sort must be cost or time")
    base = dataclasses.replace(base, num_gpus=1, zero=0, fsdp=None, offload=Offload.NONE, tp=1)
    training = base.method.is_training
    ref = plan(base)
    nbytes = model_bytes(ref)
    trainable = ref.trainable_params
    # Assumption 7: checkpointing is searched too unless the question fixed it on.
    checkpointing = [base.grad_checkpointing] if base.grad_checkpointing or not training else [False, True]
    options: list[Option] = []
    rejected: dict[str, int] = {}
    considered = 0
    facts: dict = {}

    def reject(reason: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1

    for gpu in gpus:
        facts[gpu.name] = _gpu_facts(gpu)
        try:
            r = tp.roof(gpu, base.compute_dtype)
        except ValueError as e:
            reject(f"{gpu.name}: {e}")
            continue
        for count in counts or gpu_counts(max_gpus):
            price = gpu.price_usd_per_hour
            if budget_per_hour is not None and (price is None or price * count > budget_per_hour):
                reject("over the hourly budget" if price is not None else "no price to check the budget against")
                continue
            shardings = training_shardings(count) if training else inference_shardings(count, base)
            variants = [(sh, ck) for sh in shardings for ck in checkpointing]
            for sh, ck in variants:
                # as the configuration runs on this GPU (fit.for_gpu: no FlashAttention without bf16)
                cfg = for_gpu(dataclasses.replace(sh.apply(base, count), grad_checkpointing=ck), gpu)
                if ck and not base.grad_checkpointing:
                    sh = dataclasses.replace(sh, name=sh.name + "+ckpt")
                considered += 1
                try:
                    p = plan(cfg)
                except SpecError as e:  # a combination the planner rejects (e.g. heads not divisible by tp)
                    reject(f"not plannable: {e}")
                    continue
                if p.process_bytes > gpu.memory_bytes:
                    reject("does not fit in memory")
                    continue
                if not training and auto_batch:
                    b = largest_batch(cfg, gpu, plan, MAX_SERVE_BATCH)
                    if b > cfg.batch:
                        cfg = dataclasses.replace(cfg, batch=b)
                        p = plan(cfg)
                options.append(_option(cfg, gpu, sh, p, r, nbytes, trainable, goal, util, training))
    fitting = len(options)
    if not all_shardings:
        options = best_per_group(options)
    _mark = pareto_front(options)
    options = [dataclasses.replace(o, pareto=i in _mark) for i, o in enumerate(options)]
    key = (lambda o: (o.cost_usd is None, o.cost_usd or 0.0, o.time_s)) if sort == "cost" else \
        (lambda o: (o.time_s, o.cost_usd if o.cost_usd is not None else math.inf))
    options.sort(key=key)
    return Recommendation(options=tuple(options), goal=goal, base=base, util=util,
                          assumptions=_assumptions(base, goal, util, training), gpu_facts=facts,
                          considered=considered, fitting=fitting, rejected=rejected, sort=sort)


def _option(cfg: PlanConfig, gpu: GPUSpec, sh: Sharding, p, r: tp.Roof, nbytes: tp.ModelBytes, trainable: int,
            goal: Goal, util: tp.Utilisation, training: bool) -> Option:
    notes = []
    if training:
        step = tp.train_step(cfg, trainable, nbytes, r, util)
        tokens_per_s = step.tokens_per_s * cfg.dp
    else:
        step = tp.decode_step(cfg, nbytes, r, util)
        tokens_per_s = step.tokens_per_s * cfg.dp
        notes.append(f"decode at batch {cfg.batch} per replica, context {cfg.seq}")
    if r.flops_key != tp.flops_key(cfg.compute_dtype):
        notes.append(f"{gpu.name} has no {tp.flops_key(cfg.compute_dtype)} peak: {r.flops_key} used")
    if cfg.num_gpus > tp.GPUS_PER_NODE:
        notes.append("spans nodes: inter-node bandwidth assumed")
    if not gpu.interconnect_bandwidth_bytes_per_s and cfg.num_gpus > 1:
        notes.append("no peer link listed: collectives over the host link (PCIe) assumed")
    time_s = goal.tokens / tokens_per_s
    price = gpu.price_usd_per_hour
    cost = None if price is None else time_s / 3600 * cfg.num_gpus * price
    return Option(gpu=gpu.name, count=cfg.num_gpus, sharding=sh.name, tp=cfg.tp, dp=cfg.dp, batch=cfg.batch,
                  memory_per_gpu_bytes=int(p.process_bytes), gpu_memory_bytes=gpu.memory_bytes,
                  tokens_per_s=tokens_per_s, time_s=time_s, cost_usd=cost, price_usd_per_gpu_hour=price,
                  bound=step.bound, step=step, config=cfg, notes=tuple(notes))


def _gpu_facts(gpu: GPUSpec) -> dict:
    src = gpu.sources or {}
    price_src = src.get("price_usd_per_hour")
    link_src = src.get("interconnect_bandwidth_bytes_per_s")
    return {"price_usd_per_hour": gpu.price_usd_per_hour,
            "price_source": price_src.source if price_src else None,
            "price_basis": price_src.basis if price_src else None,
            "interconnect": gpu.interconnect, "interconnect_bandwidth_bytes_per_s": gpu.interconnect_bandwidth_bytes_per_s,
            "interconnect_source": link_src.source if link_src else None,
            "memory_bandwidth_bytes_per_s": gpu.memory_bandwidth_bytes_per_s}


def _assumptions(base: PlanConfig, goal: Goal, util: tp.Utilisation, training: bool) -> tuple[str, ...]:
    out = []
    if training:
        mfu = util.kbit_train_mfu if base.precision.is_kbit else util.train_mfu
        out.append(f"training at {mfu:.0%} of the GPU's dense {tp.flops_key(base.compute_dtype)} peak "
                   f"({'k-bit dequantizing ' if base.precision.is_kbit else ''}MFU); memory traffic at "
                   f"{util.mbu:.0%} of its bandwidth")
        out.append("FLOPs per token: 2N forward + 2N input gradients + 2 per trainable weight (6N for full fine-tuning, "
                   "about 4N for LoRA/QLoRA) + 12·L·d·seq attention (PaLM)"
                   + (" + 2N recompute (checkpointing)" if base.grad_checkpointing else ""))
        out.append(f"communication overlaps compute; collectives at {util.network:.0%} of the listed interconnect "
                   f"bandwidth; more than {tp.GPUS_PER_NODE} GPUs use {util.inter_node_bytes_per_s / 1e9:.0f} GB/s "
                   "per GPU between nodes")
        out.append(f"offload: host link {util.host_link_bytes_per_s / 1e9:.0f} GB/s, CPU Adam "
                   f"{util.cpu_adam_params_per_s:.0e} params/s, not overlapped")
    else:
        out.append(f"decode reads weights + KV cache at {util.mbu:.0%} of memory bandwidth; compute at "
                   f"{util.prefill_mfu:.0%} of peak; tensor parallel pays 2 all-reduces per layer "
                   f"({util.collective_latency_s * 1e6:.0f} us latency each)")
        out.append(f"largest batch that fits, at most {MAX_SERVE_BATCH} sequences, each with {base.seq} tokens of "
                   "context; prefill not counted")
    out.append(f"goal: {goal.described}")
    out.append("cost: indicative on-demand price per GPU-hour from each GPU profile (see gpus: price_source)")
    out.append(f"utilisation basis: {util.basis}; {util.source}")
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------
# serving: rent or buy (the serving planner's memory, concurrency and roofline; quantlab.planner.serving)

@dataclass(frozen=True)
class BuyCosts:
    """What owning GPUs costs besides their price; every figure is assumed and says so (assumptions 8-10)."""

    electricity_usd_per_kwh: float = 0.15
    power_fraction: float = 0.7  # average board power while serving, as a fraction of the TDP
    host_overhead: float = 0.25  # server, CPUs, memory, network per GPU, as a fraction of the GPU's price
    host_power: float = 0.3  # the host's draw, as a fraction of the GPUs'
    pue: float = 1.3  # facility power usage effectiveness (cooling)
    hours_per_month: float = 730.0
    amortize_months: int = 36  # a bought GPU's $/M tokens spreads its price over this many months
    basis: str = "assumed"
    source: str = ("electricity $0.15/kWh (assumed: US commercial average ~$0.13 in 2024, EIA); board power 70% of the "
                   "TDP while serving (assumed: decode is memory-bound and rarely reaches the TDP); host +25% of the "
                   "GPU price and +30% of its power (assumed); PUE 1.3 (assumed: Uptime Institute surveys report "
                   "~1.5 on average, modern sites lower); 36-month amortization (assumed)")

    def __post_init__(self) -> None:
        for f in ("electricity_usd_per_kwh", "power_fraction", "hours_per_month", "pue"):
            if not getattr(self, f) > 0:
                raise ValueError(f"{f} must be positive")
        if self.amortize_months < 1:
            raise ValueError("amortize_months must be at least 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_HEADROOM = 0.10


@dataclass(frozen=True)
class ServeOption:
    """One serving layout on one GPU kind: memory, speed, and what renting or buying it costs."""

    gpu: str
    count: int  # GPUs in one copy (replicas x GPUs per replica)
    layout: str  # tp2, split4, 2x tp1 ...
    concurrency: int  # sequences per replica
    memory_per_gpu_bytes: int
    gpu_memory_bytes: int
    headroom_bytes: int  # kept free on each GPU
    tokens_per_s: float  # decode, all replicas of one copy
    copies: int  # copies needed to serve the day's tokens
    price_usd_per_gpu_hour: float | None
    purchase_usd_per_gpu: float | None
    power_watts_per_gpu: float | None
    speed: object  # serving.Speed
    serve: object  # serving.ServeConfig
    notes: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return self.copies * self.count

    @property
    def rent_usd_per_hour(self) -> float | None:
        return None if self.price_usd_per_gpu_hour is None else self.price_usd_per_gpu_hour * self.gpus

    @property
    def rent_usd_per_m_tokens(self) -> float | None:
        """At full load: the price of one copy for the hour it takes to make a million tokens."""
        p = self.price_usd_per_gpu_hour
        return None if p is None else p * self.count / (self.tokens_per_s * 3600) * 1e6

    def buy(self, costs: BuyCosts, tokens_per_day: float | None = None) -> dict | None:
        """Purchase, power and break-even against renting around the clock (assumptions 8-10); the owned cost per
        million tokens is at the day's load when ``tokens_per_day`` is given, else at full load."""
        if self.purchase_usd_per_gpu is None or self.power_watts_per_gpu is None:
            return None
        purchase = self.gpus * self.purchase_usd_per_gpu * (1 + costs.host_overhead)
        kw = self.gpus * self.power_watts_per_gpu * costs.power_fraction * (1 + costs.host_power) * costs.pue / 1000
        power_month = kw * costs.hours_per_month * costs.electricity_usd_per_kwh
        rent_month = None if self.rent_usd_per_hour is None else self.rent_usd_per_hour * costs.hours_per_month
        saving = None if rent_month is None else rent_month - power_month
        tokens_month = (tokens_per_day * costs.hours_per_month / 24 if tokens_per_day else
                        self.copies * self.tokens_per_s * 3600 * costs.hours_per_month)
        own_month = purchase / costs.amortize_months + power_month
        return {"purchase_usd": purchase, "power_kw": kw, "power_usd_per_month": power_month,
                "rent_usd_per_month": rent_month,
                "break_even_months": purchase / saving if saving and saving > 0 else None,
                "own_usd_per_m_tokens": own_month / tokens_month * 1e6}

    def to_dict(self, costs: BuyCosts | None = None, tokens_per_day: float | None = None) -> dict:
        s = self.serve
        return {"gpu": self.gpu, "count": self.count, "layout": self.layout, "tp": s.plan.tp,
                "replicas": s.replicas, "engine": s.engine.value, "batch": self.concurrency,
                "concurrency": self.concurrency, "context": s.context,
                "memory_per_gpu_bytes": self.memory_per_gpu_bytes, "gpu_memory_bytes": self.gpu_memory_bytes,
                "headroom_bytes": self.headroom_bytes, "tokens_per_s": self.tokens_per_s,
                "copies_to_keep_up": self.copies, "gpus": self.gpus,
                "price_usd_per_gpu_hour": self.price_usd_per_gpu_hour,
                "cost_per_hour_usd": None if self.price_usd_per_gpu_hour is None else
                self.price_usd_per_gpu_hour * self.count,  # one copy
                "rent_usd_per_hour": self.rent_usd_per_hour,  # every copy needed
                "rent_usd_per_m_tokens": self.rent_usd_per_m_tokens,
                "purchase_usd_per_gpu": self.purchase_usd_per_gpu, "power_watts_per_gpu": self.power_watts_per_gpu,
                "buy": self.buy(costs, tokens_per_day) if costs else None, "speed": self.speed.to_dict(), "notes": list(self.notes)}


@dataclass(frozen=True)
class ServeRecommendation:
    options: tuple[ServeOption, ...]  # ranked by the day's rent (by rent $/M tokens without a goal), unpriced last
    base: object  # serving.ServeConfig
    tokens_per_day: float | None
    headroom: float
    costs: BuyCosts | None  # None: no --buy
    util: tp.Utilisation
    assumptions: tuple[str, ...]
    gpu_facts: dict
    considered: int
    rejected: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        b = self.base
        return {"question": {"model": b.plan.model.name, "method": "inference", "engine": b.engine.value,
                             "mode": b.mode.value, "prompt_tokens": b.prompt_tokens, "new_tokens": b.new_tokens,
                             "precision": b.plan.precision.value, "serve_tokens_per_day": self.tokens_per_day,
                             "headroom": self.headroom, "buy": self.costs is not None},
                "options": [dict(o.to_dict(self.costs, self.tokens_per_day), rank=i + 1)
                            for i, o in enumerate(self.options)],
                "assumptions": {"notes": list(self.assumptions), "utilisation": self.util.to_dict(),
                                "buy": self.costs.to_dict() if self.costs else None, "gpus": self.gpu_facts},
                "considered": self.considered, "rejected": dict(self.rejected)}


def serving_layouts(count: int, s) -> list[tuple[str, int, int, bool]]:
    """(name, tp, replicas, split) for ``count`` GPUs (assumption 11): tensor parallel degrees that divide the
    heads, the rest replicas; transformers also splits one copy over all of them (device_map="auto")."""
    from quantlab.planner.serving import Engine

    m = s.plan.model
    out = []
    for t in (1, 2, 4, 8, 16):
        if t > count or count % t or m.num_attention_heads % t or (m.kv_heads % t and t % m.kv_heads):
            continue
        r = count // t
        out.append((f"tp{t}" if r == 1 else f"{r}x tp{t}", t, r, False))
    if count > 1 and s.engine is Engine.TRANSFORMERS:
        out.append((f"split{count}", 1, 1, True))
    return out


def recommend_serving(base, gpus: Sequence[GPUSpec], *, tokens_per_day: float | None = None, max_gpus: int = 8,
                      counts: Sequence[int] | None = None, headroom: float = DEFAULT_HEADROOM,
                      concurrency: int | None = None, budget_per_hour: float | None = None,
                      buy: dict | None = None, costs: BuyCosts | None = None,
                      util: tp.Utilisation = tp.Utilisation()) -> ServeRecommendation:
    """Rank serving layouts (GPU kind x count x tensor parallel / split / replicas) of the ServeConfig ``base``.

    Each layout serves the largest concurrency that fits with ``headroom`` of each GPU's memory kept free (at most
    :data:`MAX_SERVE_BATCH`, or exactly ``concurrency``), decoding at the mean context (serving.speed). ``buy`` maps
    a GPU name to ``(purchase_usd, power_watts)`` (the profiles' ``purchase_usd`` and ``power_watts``); with
    ``costs`` the options carry purchase, power and break-even figures."""
    from quantlab.planner import serving as S
    from quantlab.planner.fit import for_gpu

    if not 0 <= headroom < 1:
        raise ValueError("headroom must be in [0, 1)")
    options: list[ServeOption] = []
    rejected: dict[str, int] = {}
    facts: dict = {}
    considered = 0

    def reject(reason: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1

    for gpu in gpus:
        facts[gpu.name] = _gpu_facts(gpu)
        try:
            tp.roof(gpu, base.plan.compute_dtype)
        except ValueError as e:
            reject(f"{gpu.name}: {e}")
            continue
        price = gpu.price_usd_per_hour
        purchase, watts, p_src, w_src = (tuple((buy or {}).get(gpu.name, ())) + (None,) * 4)[:4]
        facts[gpu.name].update(purchase_usd=purchase, purchase_source=p_src, power_watts=watts, power_source=w_src)
        for count in counts or gpu_counts(max_gpus):
            if budget_per_hour is not None and (price is None or price * count > budget_per_hour):
                reject("over the hourly budget" if price is not None else "no price to check the budget against")
                continue
            for name, t, reps, split in serving_layouts(count, base):
                considered += 1
                try:
                    plan_cfg = for_gpu(dataclasses.replace(base.plan, num_gpus=count, tp=t), gpu)
                    s = dataclasses.replace(base, plan=plan_cfg, replicas=reps)
                    if concurrency is None:
                        c = S.max_concurrency(s, gpu, headroom=headroom, cap=MAX_SERVE_BATCH)
                    else:
                        c = concurrency if S.fits(S.serve_plan(S.with_workload(s, concurrency=concurrency), gpu),
                                                  gpu, headroom) else 0
                except SpecError as e:
                    reject(f"not plannable: {e}")
                    continue
                if c < 1:
                    reject(f"does not fit with {headroom:.0%} headroom")
                    continue
                s = S.with_workload(s, concurrency=c)
                p = S.serve_plan(s, gpu)
                sp = S.speed(s, gpu, util)
                tok_s = sp.total_decode_tok_s
                copies = max(1, math.ceil(tokens_per_day / (tok_s * SECONDS_PER_DAY))) if tokens_per_day else 1
                notes = []
                if count > tp.GPUS_PER_NODE:
                    notes.append("spans nodes: inter-node bandwidth assumed")
                options.append(ServeOption(
                    gpu=gpu.name, count=count, layout=name, concurrency=c, memory_per_gpu_bytes=p.process_bytes,
                    gpu_memory_bytes=gpu.memory_bytes, headroom_bytes=int(gpu.memory_bytes * headroom),
                    tokens_per_s=tok_s, copies=copies, price_usd_per_gpu_hour=price, purchase_usd_per_gpu=purchase,
                    power_watts_per_gpu=watts, speed=sp, serve=s, notes=tuple(notes)))
    options = _best_serving(options)
    if tokens_per_day:  # the day's bill decides (copies round up), then fewer GPUs
        options.sort(key=lambda o: (o.rent_usd_per_hour is None, o.rent_usd_per_hour or 0.0, o.gpus, -o.tokens_per_s))
    else:
        options.sort(key=lambda o: (o.rent_usd_per_m_tokens is None, o.rent_usd_per_m_tokens or 0.0, o.gpus))
    return ServeRecommendation(options=tuple(options), base=base, tokens_per_day=tokens_per_day, headroom=headroom,
                               costs=costs, util=util, assumptions=_serving_assumptions(base, headroom, costs, util),
                               gpu_facts=facts, considered=considered, rejected=rejected)


def _best_serving(options: Sequence[ServeOption]) -> list[ServeOption]:
    """One option per (GPU kind, count): the most tokens per second; among ties (within 0.5%), the fewest bytes per
    GPU (more headroom left)."""
    groups: dict[tuple, list[ServeOption]] = {}
    for o in options:
        groups.setdefault((o.gpu, o.count), []).append(o)
    out = []
    for group in groups.values():
        best_tok = max(o.tokens_per_s for o in group)
        tied = [o for o in group if o.tokens_per_s >= best_tok / 1.005]
        out.append(min(tied, key=lambda o: o.memory_per_gpu_bytes))
    return out


def _serving_assumptions(base, headroom: float, costs: BuyCosts | None, util: tp.Utilisation) -> tuple[str, ...]:
    out = [f"memory: the serving planner (quantlab/planner/serving.py S1-S10), {base.engine.value}, "
           f"{base.mode.value}, prompt {base.prompt_tokens} + new {base.new_tokens} tokens; each GPU keeps "
           f"{headroom:.0%} of its memory free (headroom)",
           f"concurrency: the largest that fits with the headroom, at most {MAX_SERVE_BATCH} sequences per replica",
           f"speed: decode roofline at the mean context, {util.mbu:.0%} of memory bandwidth, {util.prefill_mfu:.0%} "
           "of peak FLOPs (assumed); prefill not counted (a prompt-heavy workload needs more)",
           "rent: the profile's indicative on-demand price per GPU-hour, rented around the clock; $/M tokens at "
           "full load"]
    if costs is not None:
        out.append(f"buy: purchase_usd per GPU from the profiles (assumed, dated) + {costs.host_overhead:.0%} for the "
                   f"host; power = TDP x {costs.power_fraction:.0%} x (1 + {costs.host_power:.0%} host) x PUE "
                   f"{costs.pue} at ${costs.electricity_usd_per_kwh}/kWh; break-even = purchase / (rent - power) "
                   f"per month; own $/M tokens amortizes the purchase over {costs.amortize_months} months")
        out.append(f"buy basis: {costs.basis}; {costs.source}")
    if util == tp.Utilisation():
        out.append(f"utilisation basis: {util.basis}; memory bandwidth {util.mbu:.0%} and prefill {util.prefill_mfu:.0%} "
                   "from Databricks 'LLM inference performance engineering' (2023: MBU ~60% at batch 1 on A100); "
                   f"collectives at {util.network:.0%} of the interconnect, {util.collective_latency_s * 1e6:.0f} us "
                   "latency each")
    else:
        out.append(f"utilisation basis: {util.basis}; {util.source}")
    return tuple(out)
