#!/usr/bin/env python
"""Planner speed: cold-start CLI, one plan through the library, a sweep of 10,000 configurations.

    python scripts/bench_planner.py

Targets (issue #2): `quantlab plan` answers in under 1 s from a cold start; one plan under 5 ms; 10,000
configurations under 1 s. Each figure is a median of repeated runs in this process; the baseline is the bare
interpreter start-up, measured in the same run, so the CLI figure is also given as a ratio to it.
"""

import dataclasses
import itertools
import statistics
import subprocess
import sys
import time

from quantlab.planner import fit, plan
from quantlab.profiles import load_gpu, load_model
from quantlab.specs import Attention, Method, Optimizer, PlanConfig, Precision


def timed(fn, repeat):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> int:
    py = sys.executable
    bare = timed(lambda: subprocess.run([py, "-c", "pass"], check=True), 5)
    cli = timed(lambda: subprocess.run([py, "-m", "quantlab", "plan", "--model", "13b", "--method", "qlora", "--gpu",
                                        "rtx-4090", "--format", "json"], check=True, capture_output=True), 5)
    cli_table = timed(lambda: subprocess.run([py, "-m", "quantlab", "plan", "--model", "13b", "--method", "qlora",
                                              "--gpu", "rtx-4090"], check=True, capture_output=True), 5)
    cfg = PlanConfig(model=load_model("13b").spec, method=Method.QLORA, precision=Precision.NF4)
    gpu = load_gpu("rtx-4090")
    one = timed(lambda: plan(cfg), 200)
    one_fit = timed(lambda: fit(cfg, gpu), 20)
    models = [load_model(n).spec for n in ("7b", "8b", "70b", "qwen2.5-7b", "mixtral-8x7b")]
    grid = list(itertools.product(models, (Method.INFERENCE, Method.FULL, Method.LORA, Method.QLORA),
                                  (1, 2, 4, 8, 16), (512, 1024, 2048, 4096, 8192), (False, True),
                                  (Attention.SDPA, Attention.EAGER), (Optimizer.ADAMW, Optimizer.ADAMW_8BIT)))
    cfgs = []
    for m, meth, b, s, gc, at, opt in grid:
        cfgs.append(PlanConfig(model=m, method=meth, precision=Precision.NF4 if meth is Method.QLORA else Precision.BF16,
                               batch=b, seq=s, grad_checkpointing=gc, attn=at, optimizer=opt))
    cfgs = (cfgs * (10_000 // len(cfgs) + 1))[:10_000]
    from quantlab.planner import activations, memory, params

    def clear():
        for f in (activations.block_saved, activations.amp_weight_casts, params.count_params, memory._adapter_params):
            f.cache_clear()

    clear()
    t = time.perf_counter()
    [plan(c) for c in cfgs]
    cold_sweep = time.perf_counter() - t  # every per-model and per-shape cache empty at the start
    sweep = timed(lambda: [plan(c) for c in cfgs], 3)
    print(f"interpreter start (baseline)        {bare * 1e3:8.1f} ms")
    print(f"quantlab plan, cold start           {cli * 1e3:8.1f} ms  ({cli / bare:.1f}x bare python; target < 1000 ms)")
    print(f"  same, rich table output           {cli_table * 1e3:8.1f} ms  ({cli_table / bare:.1f}x bare python)")
    print(f"one plan() through the library      {one * 1e6:8.1f} us  (target < 5 ms)")
    print(f"one fit() (verdict + searches)      {one_fit * 1e3:8.2f} ms")
    print(f"sweep of {len(cfgs):,} configurations   {sweep * 1e3:8.1f} ms  (target < 1000 ms; "
          f"{len(set(cfgs)):,} distinct, caches warm)")
    print(f"  same, caches cleared first        {cold_sweep * 1e3:8.1f} ms")
    ok = cli < 1.0 and cli_table < 1.0 and one < 0.005 and sweep < 1.0 and cold_sweep < 1.0
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
