#!/usr/bin/env python
"""Print the planner's accuracy against measured memory figures (published, plus the lab's own).

    python scripts/accuracy.py [--rows] [FILE.jsonl ...]

Each row plans with the stack its source names (``groundtruth.stack_of_source``: the vramcalc rows were measured
with transformers 4.57.6 and plan as ``transformers==4.57``). Column ``target``: ``groundtruth.TARGETS``
(issue #12's: transformers stacks allocated 3%, reserved and process 6%; LitGPT 10%), checked per row by
tests/test_groundtruth.py. Exit status 1 when a row misses.
"""

import argparse
import sys

from quantlab.groundtruth import MEASUREMENTS, PUBLISHED, check_row, load_rows, summarize

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help=f"default: {PUBLISHED} and {MEASUREMENTS}")
    ap.add_argument("--rows", action="store_true", help="print every row too")
    a = ap.parse_args()
    files = a.files or [PUBLISHED, MEASUREMENTS]
    checks = [check_row(r) for f in files for r in load_rows(f)]
    def within(c) -> bool:
        return c.ok

    if a.rows:
        for c in checks:
            err = "" if c.error is None else f"{100 * c.error:+6.1f}%"
            print(f"{c.id:45s} {c.stack:18s} {c.metric:9s} measured "
                  f"{c.measured / 1e9 if c.error is not None else c.measured:9.3f} "
                  f"predicted {c.predicted / 1e9 if c.error is not None else c.predicted:9.3f} {err} "
                  f"{'ok' if within(c) else 'MISS'}")
    print(f"{'stack':18s} {'metric':9s} {'rows':>4s} {'ok':>4s} {'mean|err|':>9s} {'worst':>7s} {'worst under':>11s} "
          f"{'target':>6s}")
    for s in summarize(checks):
        f = lambda v: "-" if v is None else f"{100 * v:+.1f}%"
        print(f"{s['stack']:18s} {s['metric']:9s} {s['rows']:4d} {s['right']:4d} "
              f"{f(s['mean_abs_error']):>9s} "
              f"{f(s['worst_error']):>7s} {f(s['worst_under']):>11s} {f(s.get('target')):>6s}")
    return 0 if all(within(c) for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
