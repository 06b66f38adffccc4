#!/usr/bin/env python
"""Benchmark: cold-start wall time of ``quantlab recommend`` (ranked answer + PNG plot), against baselines.

Each run is a fresh interpreter (cold start: imports, profile loading, planning, rendering, plot).
Baselines run in the same script, interleaved with the measured command, so machine load affects
both alike: ``python -m quantlab --version`` (interpreter + package start) and ``quantlab plan`` of
the same configuration (one plan). Reported: median seconds of each and the ratios.

    python scripts/bench_recommend.py [--runs 5] [--out reports/recommend/bench.json]

The target (issue #6): under 2 s for
``quantlab recommend --model 70b --method qlora --seq 4096 --train-tokens 1e8`` with a plot.
Exit status 1 when the median misses the target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 2.0
QUESTION = ["--model", "70b", "--method", "qlora", "--seq", "4096"]


def wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode not in (0,):
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0")
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        png = str(Path(tmp) / "rec.png")
        cmds = {
            "startup (quantlab --version)": [py, "-m", "quantlab", "--version"],
            "plan (one configuration)": [py, "-m", "quantlab", "plan", *QUESTION],
            "recommend + plot": [py, "-m", "quantlab", "recommend", *QUESTION, "--train-tokens", "1e8",
                                 "--plot", png],
        }
        for c in cmds.values():  # warm the OS file cache and the .pyc cache once (a "cold" interpreter, not a cold disk)
            wall(c, env)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.runs):
            for k, c in cmds.items():
                times[k].append(wall(c, env))
        plot_bytes = Path(png).stat().st_size
    med = {k: statistics.median(v) for k, v in times.items()}
    rec = med["recommend + plot"]
    print(f"{'command':32s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for k, v in times.items():
        print(f"{k:32s} {med[k]:9.3f} {min(v):7.3f} {max(v):7.3f}")
    print(f"recommend / startup = {rec / med['startup (quantlab --version)']:.2f}x, "
          f"recommend / plan = {rec / med['plan (one configuration)']:.2f}x; plot {plot_bytes} bytes")
    ok = rec < TARGET_S
    print(f"target < {TARGET_S} s: {'met' if ok else 'MISSED'} (median {rec:.2f} s over {args.runs} cold starts, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f})")
    if args.out:
        doc = {"command": "quantlab recommend " + " ".join(QUESTION) + " --train-tokens 1e8 --plot PNG",
               "runs": args.runs, "seconds": times, "median_s": med, "target_s": TARGET_S, "met": ok,
               "ratio_to_startup": rec / med["startup (quantlab --version)"],
               "ratio_to_plan": rec / med["plan (one configuration)"], "cpu_count": os.cpu_count(),
               "loadavg_1m": os.getloadavg()[0]}
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from quantlab.fileio import atomic_write_text

        atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
