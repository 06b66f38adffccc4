#!/usr/bin/env python
"""Print the serving planner against published serving measurements (vLLM start-up logs, transformers generate).

    python scripts/serving_accuracy.py [--format table|md|json] [--cuda-total] [FILE.jsonl]

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


def pct(x: float, sign: bool = True) -> str:
    return f"{100 * x:+.1f}%" if sign else f"{100 * x:.0f}%"


def emit(cells, widths, md: bool) -> None:
    """One table line: markdown, or fixed-width columns (a negative width left-aligns)."""
    if md:
        print("| " + " | ".join(cells) + " |")
    else:
        print(" ".join(f"{c:<{-w}s}" if w < 0 else f"{c:>{w}s}" for c, w in zip(cells, widths)).rstrip())


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
    head = ["row", "metric", "published", "planned", "error", "tol", "target"]
    widths = [-46, -26, 11, 11, 7, 5, 6]
    if a.cuda_total:
        head += ["planned on CUDA total", "error"]
        widths += [11, 7]
    head.append("note")
    widths.append(-1)
    emit(head, widths, md)
    if md:
        print("|" + "---|" * len(head))
    for r, c in zip(rows, checks):
        cells = [c.id, c.metric, display(c.metric, c.published), display(c.metric, c.predicted), pct(c.error),
                 pct(c.tolerance, False), pct(c.target, False)]
        if a.cuda_total:
            if r.get("gpu_cuda_total_bytes"):
                _, v = predict(r, cuda_total=True)
                cells += [display(c.metric, v), pct((v - c.published) / c.published)]
            else:
                cells += ["-", "-"]
        cells.append(("" if c.on_target else "miss") + ("" if c.ok else " OUT OF TOLERANCE"))
        emit(cells, widths, md)
    print()
    head = ["engine", "metric", "rows", "on target", "mean abs error", "worst", "worst under"]
    widths = [-12, -26, 4, 16, 14, 7, 11]
    emit(head, widths, md)
    if md:
        print("|" + "---|" * len(head))
    for s in summarize(checks):
        emit([s["engine"], s["metric"], str(s["rows"]), f"{s['on_target']}/{s['rows']} (<= {pct(s['target'], False)})",
              f"{100 * s['mean_abs_error']:.1f}%", pct(s["worst_error"]),
              pct(s["worst_under"])], widths, md)
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
