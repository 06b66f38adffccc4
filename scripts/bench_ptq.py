#!/usr/bin/env python
"""PTQ lab targets, measured in one process on this machine:

1. harness overhead: the same forward loop over held-out windows, bare and inside the lab's instruments
   (RSS sampler thread + timing with synchronisation), as a ratio (target: < 3% added);
2. wall time of the FP32/BF16/INT8/NF4 comparison with default sizes (target < 5 min on 2 cores), and of
   GPTQ 4-bit on top (target < 10 min in all).

    python scripts/bench_ptq.py [--skip-wall]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `quantlab lab ptq` sets it (see commands/lab_ptq.py)


def overhead(rounds: int = 5) -> tuple[float, float]:
    import torch

    from quantlab.lab import measure, quality
    from quantlab.lab.model import load_model, load_tokenizer, resolve

    src = resolve("smollm2-135m")
    tok = load_tokenizer(src, progress=False)
    model = load_model(src, progress=False).eval()
    windows = quality.token_windows(tok, quality.read_text("heldout.txt"), 256, 2048)

    def loop():
        with torch.inference_mode():
            for w in windows:
                model(w)

    loop()  # warm-up
    bare, wrapped = [], []
    for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
        t = time.perf_counter()
        loop()
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        with measure.measure_memory():
            measure.median_time(loop, warmup=0, repeat=1)
        wrapped.append(time.perf_counter() - t)
    return statistics.median(bare), statistics.median(wrapped)


def wall(methods: str) -> tuple[float, float, list]:
    """(wall s, process CPU s, per-method rows) of one comparison with default sizes, in a fresh store."""
    from quantlab.lab.ptq import EvalSizes, parse_methods, run_ptq
    from quantlab.report.store import ResultStore

    with tempfile.TemporaryDirectory() as d:
        t, c = time.perf_counter(), time.process_time()
        recs, _ = run_ptq(parse_methods(methods), "smollm2-135m", store=ResultStore(Path(d) / "s.sqlite"),
                          sizes=EvalSizes(), log=lambda s: None, progress=False)
        return time.perf_counter() - t, time.process_time() - c, recs


def _phases(recs) -> None:
    for r in recs:
        m = r.metrics
        print(f"  {r.method:10s} total {m['meas_time_method_s']:6.1f} s: load {m['meas_load_s']:6.1f}, sqnr "
              f"{m['meas_time_sqnr_s']:5.1f}, perplexity {m['meas_time_perplexity_s']:5.1f} ({m['meas_ppl_tokens']} "
              f"tok), cloze {m['meas_time_cloze_s']:5.1f}, speed {m['meas_time_speed_s']:5.1f}; load avg "
              f"{m['meas_loadavg_1m']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-wall", action="store_true")
    a = ap.parse_args()
    b, w = overhead()
    print(f"bare loop {b:.3f} s, inside the harness {w:.3f} s: overhead {100 * (w / b - 1):+.2f}% (target < 3%)")
    ok = w / b - 1 < 0.03
    if not a.skip_wall:
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
        t4, c4, r4 = wall("fp32,bf16,int8,nf4")
        print(f"fp32,bf16,int8,nf4 comparison: {t4:.0f} s wall, {c4:.0f} s CPU (target < 300 s wall)")
        _phases(r4)
        tg, cg, rg = wall("gptq-int4")
        print(f"gptq-int4 alone: {tg:.0f} s wall, {cg:.0f} s CPU; with the four above: {t4 + tg:.0f} s "
              f"(target < 600 s)")
        _phases(rg)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        ok = ok and t4 < 300 and t4 + tg < 600
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
