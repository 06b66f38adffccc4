#!/usr/bin/env python
"""Run the lab's fine-tune under `accelerate launch` on 2 CPU processes (gloo), DDP and FSDP, full and LoRA,
and compare each process's bytes (counted from its tensors) with the planner's per-GPU prediction.

    python scripts/launch_ddp_cpu.py                      # the embedded SmolLM2-135M on the json-extract task (~3 min)
    python scripts/launch_ddp_cpu.py --model tiny --out /tmp/dist   # a tiny random model (seconds)

Writes <out>/distributed.json (rank records + comparison rows), distributed.csv and distributed.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="reports/distributed-cpu")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256, help="longest example in tokens (the task's max length)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--task", default="json-extract",
                    help="the lab's fine-tune task the runs train on (ignored for --model tiny, which trains on random "
                         "tokens)")
    args = ap.parse_args(argv)

    import pandas as pd

    from quantlab.fileio import atomic_write_text
    from quantlab import validate_lab
    from quantlab.lab import distributed as D
    from quantlab.units import fmt_bytes  # RSS column

    out = Path(args.out)
    runs, rows = [], []
    for sharding in D.SHARDINGS:
        for method in D.METHODS:
            cfg = D.DistConfig(model=args.model, method=method, sharding=sharding, processes=args.processes,
                               batch=args.batch, seq=args.seq, steps=args.steps,
                               task=None if args.model == "tiny" else args.task)
            print(f"running {sharding} {method} on {args.processes} processes ...", file=sys.stderr, flush=True)
            recs = D.launch(cfg, out / f"{sharding}-{method}")
            runs.append({"config": cfg.__dict__, "ranks": recs})
            rows += validate_lab.distributed_rows(cfg, recs)  # the planner's per-GPU bytes beside them
    df = pd.DataFrame(rows)
    command = "python scripts/launch_ddp_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(out / "distributed.json", json.dumps({"command": command.strip(), "runs": runs, "rows": rows},
                                                           indent=2) + "\n")
    atomic_write_text(out / "distributed.csv", df.to_csv(index=False))
    lines = ["# Fine-tune under accelerate launch on CPU processes: per-process bytes vs the planner", "",
             f"Command: `{command.strip()}` (each run: `{runs[0]['ranks'][0]['launch_command']}` with its flags)", "",
             "Bytes. Measured: bytes of each process's own tensors after the last step (weights and buffers, gradients, "
             "AdamW states; a sharded parameter counts its local shard). Predicted: the planner's per-GPU component "
             "for the same plan (FP32 weights and compute, AdamW, num_gpus = processes, fsdp=full_shard for FSDP).",
             "FSDP weights: the planner's per-GPU figure includes two gathered blocks, live only while a block runs; "
             "'at rest' is its sharded share (one-process plan / processes), which is what a process holds after "
             "the step. DDP buckets: sizes from DDP's logging data.",
             "", "| sharding | method | rank | component | predicted (peak) | predicted at rest | measured | "
                 "meas/pred at rest |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "-" if r["meas_over_pred"] is None else f"{r['meas_over_pred']:.4f}"
        lines.append(f"| {r['sharding']} | {r['method']} | {r['rank']} | {r['component']} | "
                     f"{r['pred_bytes']:,} | {r['pred_at_rest_bytes']:,} | {r['meas_bytes']:,} | {ratio} |")
    lines += ["", "Per process: peak RSS, loss at first and last step, replicas consistent:", "",
              "| sharding | method | rank | peak RSS | first loss | last loss | replicas agree | step s (median) |",
              "|---|---|---:|---:|---:|---:|---|---:|"]
    for run in runs:
        for rec in run["ranks"]:
            steps = sorted(rec["step_s"])
            lines.append(f"| {run['config']['sharding']} | {run['config']['method']} | {rec['rank']} | "
                         f"{fmt_bytes(rec['peak_rss_bytes'], 'MiB')} | {rec['losses'][0]:.3f} | {rec['losses'][-1]:.3f} "
                         f"| {rec['replicas_agree']} | {steps[len(steps) // 2]:.2f} |")
    lines.append("")
    atomic_write_text(out / "distributed.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
