"""``quantlab report``: render the stored runs (PTQ comparison first, then fine-tune and other runs)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("report", help="render stored lab runs as a table, CSV, JSON, Markdown or HTML",
                       description="Render the runs in a results store: the PTQ comparison (memory, speed, quality, "
                                   "with the planner's prediction beside the measurement) and any fine-tune or "
                                   "validation runs. HTML is one self-contained page with PNG plots.",
                       epilog="Example:\n  quantlab report --format html --out reports/report.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None, help="results database (default: reports/quantlab.sqlite)")
    p.add_argument("--format", choices=("table", "csv", "json", "markdown", "html"), default="table",
                   help="table (markdown-like text), csv, json, markdown or html (default: table)")
    p.add_argument("--kind", default=None, help="only runs of this kind (ptq, finetune, qat, validate) (default: all)")
    p.add_argument("--model", default=None, help="only runs of this model (default: all)")
    p.add_argument("--out", default=None, help="write to this file (atomically) instead of stdout (default: stdout)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from quantlab.errors import QuantlabError
    from quantlab.fileio import atomic_write_text
    from quantlab.report.render import generic_table, html_page, ptq_table
    from quantlab.report.store import DEFAULT_STORE, ResultStore

    if args.out:
        from quantlab.fileio import check_writable_file

        check_writable_file(args.out, "--out")
    path = Path(args.store) if args.store else DEFAULT_STORE
    if not path.exists():
        raise QuantlabError(f"no results store at {path}: run 'quantlab lab ptq' first (or pass --store)")
    store = ResultStore(path)
    recs = store.records(args.kind, args.model)
    if not recs:
        raise QuantlabError(f"{path} holds no runs" + (f" of kind {args.kind}" if args.kind else ""))
    ptq = [r for r in recs if r.kind == "ptq"]
    other = [r for r in recs if r.kind != "ptq"]
    if args.format == "html":
        text = html_page(ptq, other)
    else:
        parts = []
        if ptq:
            parts.append(ptq_table(ptq, args.format))
            if args.format == "markdown":
                from quantlab.report.render import PTQ_NOTES

                parts.append("".join(f"- {n}\n" for n in PTQ_NOTES))
        tuned = [r for r in other if r.kind in ("finetune", "qat")]
        rest = [r for r in other if r.kind not in ("finetune", "qat")]
        if tuned:
            from quantlab.lab.finetune_report import NOTES, finetune_table

            parts.append(finetune_table(tuned, args.format if args.format in ("csv", "json") else "markdown"))
            if args.format == "markdown":
                parts.append("".join(f"- {n}\n" for n in NOTES))
        if rest:
            parts.append(generic_table(rest, args.format if args.format != "table" else "markdown"))
        text = "\n".join(parts)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        from quantlab.fileio import write_stdout

        write_stdout(text)
    return 0
