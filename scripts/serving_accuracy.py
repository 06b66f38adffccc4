#!/usr/bin/env python
"""Print the serving planner against published serving measurements (vLLM start-up logs, transformers generate).

    python scripts/serving_accuracy.py [--format table|md|json] [FILE.jsonl]

Rows: profiles/validation/serving-published.jsonl (fields and assumptions: quantlab/serving_groundtruth.py).
error = (planned - published) / published; negative = under-prediction. 'tol' is the error the row is expected to
show today (its tolerance_reason says why); 'target' is the accuracy aimed for; 'miss' marks a row outside it.
Exit status 1 when a row leaves its tolerance.
"""

import argparse
import json
import sys

from quantlab.groundtruth import load_rows
from quantlab.serving_groundtruth import SERVING_PUBLISHED, check_row, display, predict, summarize


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", default=str(SERVING_PUBLISHED))
    ap.add_argument("--format", choices=("table", "md", "json"), default="table")
    ap.add_argument("--cuda-total", action="store_true",
                    help="also plan the vLLM rows whose log prints CUDA's total memory on that total (the budget fix "
                         "of reports/serving-groundtruth.md; G7)")
    a = ap.parse_args()
    rows = load_rows(a.file)
    checks = [check_row(r) for r in rows]
    if a.format == "json":
        print(json.dumps({"rows": [c.to_dict() for c in checks], "summary": summarize(checks)}, indent=2))
        return 0 if all(c.ok for c in checks) else 1
    md = a.format == "md"
    head = ("row", "metric", "published", "planned", "error", "tol", "target", "")
    if a.cuda_total:
        head = head[:-1] + ("planned on CUDA total", "error", "")
    what_if = {}
    for r in rows:
        if a.cuda_total and r.get("gpu_cuda_total_bytes"):
            _, v = predict(r, cuda_total=True)
            what_if[r["id"]] = (display(r["metric"], v), f"{100 * (v - r['value']) / r['value']:+.1f}%")
    if md:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(f"{head[0]:46s} {head[1]:26s} {head[2]:>11s} {head[3]:>11s} {head[4]:>7s} {head[5]:>5s} {head[6]:>6s}")
    for c in checks:
        cells = (c.id, c.metric, display(c.metric, c.published), display(c.metric, c.predicted), f"{100 * c.error:+.1f}%",
                 f"{100 * c.tolerance:.0f}%", f"{100 * c.target:.0f}%")
        if a.cuda_total:
            cells += what_if.get(c.id, ("-", "-"))
        cells += (("" if c.on_target else "miss") + ("" if c.ok else " OUT OF TOLERANCE"),)
        if md:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:46s} {cells[1]:26s} {cells[2]:>11s} {cells[3]:>11s} {cells[4]:>7s} {cells[5]:>5s} "
                  f"{cells[6]:>6s} " + " ".join(f"{x:>11s}" for x in cells[7:-1]) + f" {cells[-1]}")
    print()
    head = ("engine", "metric", "rows", "on target", "mean abs error", "worst", "worst under")
    if md:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    for s in summarize(checks):
        cells = (s["engine"], s["metric"], str(s["rows"]), f"{s['on_target']}/{s['rows']} (<= {100 * s['target']:.0f}%)",
                 f"{100 * s['mean_abs_error']:.1f}%", f"{100 * s['worst_error']:+.1f}%", f"{100 * s['worst_under']:+.1f}%")
        print(("| " + " | ".join(cells) + " |") if md else
              f"{cells[0]:12s} {cells[1]:26s} {cells[2]:>4s} {cells[3]:>16s} {cells[4]:>8s} {cells[5]:>7s} {cells[6]:>7s}")
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
