"""``quantlab compare``: one method planned at FP32, FP16, BF16, INT8 and NF4 side by side."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "nf4")


def register(sub) -> None:
    from quantlab.commands.plan import add_plan_arguments

    p = sub.add_parser("compare", conflict_handler="resolve",
                       help="the same plan at fp32/fp16/bf16/int8/nf4 side by side",
                       description="Plan one method at several weight precisions side by side (memory per component "
                                   "and totals; with --gpu, the fit and margin of each).",
                       epilog="Example:\n  quantlab compare --model 8b --method lora --seq 2048 --gpu rtx-4090",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(p)
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated precisions to compare")
    p.add_argument("--gpu", default=None, metavar="NAME|auto", help="also show the fit on this GPU")
    p.add_argument("--format", choices=("table", "json", "csv", "markdown"), default="table", help="output format")
    p.set_defaults(func=run)


def rows(args) -> list[dict]:
    import dataclasses

    from quantlab.commands.plan import config_from_args, resolve_gpu
    from quantlab.errors import QuantlabError
    from quantlab.planner import fit, plan
    from quantlab.specs import Method, Precision, SpecError

    gpu, _ = resolve_gpu(args.gpu)
    base = config_from_args(args, gpu=gpu)
    out = []
    for name in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        try:
            prec = Precision(name)
        except ValueError:
            raise QuantlabError(f"unknown precision {name!r} (known: {', '.join(p.value for p in Precision)})")
        method = base.method
        if method is Method.QLORA and not prec.is_kbit:
            method = Method.LORA
        if method is Method.LORA and prec in (Precision.NF4, Precision.FP4):
            method = Method.QLORA
        row = {"precision": name, "method": method.value}
        try:
            cfg = dataclasses.replace(base, precision=prec, method=method,
                                      double_quant=base.double_quant and prec in (Precision.NF4, Precision.FP4))
            p = plan(cfg)
        except SpecError as e:
            row["note"] = str(e)
            out.append(row)
            continue
        row.update({f"{k}_bytes": v for k, v in p.components.items() if v})
        row.update(peak_allocated_bytes=p.peak_allocated_bytes, peak_reserved_bytes=p.peak_reserved_bytes,
                   process_bytes=p.process_bytes, trainable_params=p.trainable_params)
        if gpu is not None:
            f = fit(cfg, gpu, suggest=False)
            row.update(gpu=gpu.name, fits=f.fits, margin_bytes=f.margin_bytes, max_batch=f.max_batch)
        out.append(row)
    return out


def run(args) -> int:
    from quantlab.units import GiB

    data = rows(args)
    if args.format == "json":
        json.dump({"model": args._resolved.name, "model_resolution": args._resolved.resolved_from,
                   "method": args.method, "rows": data}, sys.stdout, indent=2)
        print()
        return 0
    keys = list(dict.fromkeys(k for r in data for k in r))
    if args.format == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=keys)
        w.writeheader()
        w.writerows(data)
        return 0
    groups = [("weights GiB", ("weights_bytes", "quant_constants_bytes")),
              ("trainable states GiB", ("adapters_bytes", "gradients_bytes", "optimizer_bytes")),
              ("activations + buffers GiB", ("activations_bytes", "logits_loss_bytes", "prefill_transient_bytes",
                                             "optimizer_step_bytes")),
              ("KV cache GiB", ("kv_cache_bytes",)),
              ("allocated GiB", ("peak_allocated_bytes",)), ("reserved GiB", ("peak_reserved_bytes",)),
              ("process GiB", ("process_bytes",))]
    groups = [(h, ks) for h, ks in groups if any(r.get(k) for r in data for k in ks)]
    with_fit = any("fits" in r for r in data)
    header = ["precision", "method"] + [h for h, _ in groups] + (["fits", "margin GiB"] if with_fit else [])

    def cells(r):
        if "note" in r:
            return [r["precision"], r["method"], "n/a: " + r["note"]] + [""] * (len(header) - 3)
        vals = [r["precision"], r["method"]] + [f"{sum(r.get(k) or 0 for k in ks) / GiB:.2f}" for _, ks in groups]
        if with_fit:
            vals += ["yes" if r.get("fits") else "no", f"{r['margin_bytes'] / GiB:+.2f}"]
        return vals

    if args.format == "markdown":
        buf = io.StringIO()
        buf.write(f"{args._resolved.resolved_from}, method {args.method} (GiB = 2^30 bytes)\n\n")
        buf.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for r in data:
            buf.write("| " + " | ".join(cells(r)) + " |\n")
        sys.stdout.write(buf.getvalue())
        return 0
    from rich.table import Table

    from quantlab.units import console

    t = Table(title=f"{args._resolved.resolved_from}: {args.method} by weight precision (GiB = 2^30 bytes)")
    for h in header:
        t.add_column(h, justify="left" if h in ("precision", "method") else "right")
    for r in data:
        t.add_row(*cells(r))
    console().print(t)
    return 0
