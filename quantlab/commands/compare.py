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
    o = p.add_argument_group("output")
    o.add_argument("--precisions", default=",".join(PRECISIONS), metavar="A,B",
                   help=f"comma-separated weight precisions to compare (default: {','.join(PRECISIONS)})")
    o.add_argument("--gpu", default=None, metavar="NAME|auto",
                   help="also show the fit on this GPU (default: none, no fit)")
    o.add_argument("--format", choices=("table", "json", "csv", "markdown"), default="table",
                   help="output format (default: table)")
    p.set_defaults(func=run)


def precision_list(text: str) -> list[str]:
    """The --precisions list: known names, at least one, each once (a one-line error otherwise)."""
    from quantlab.errors import QuantlabError
    from quantlab.specs import Precision

    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise QuantlabError(f"--precisions is empty; give one or more of {', '.join(p.value for p in Precision)}")
    for name in names:
        if name not in {p.value for p in Precision}:
            raise QuantlabError(f"unknown precision {name!r} in --precisions "
                                f"(known: {', '.join(p.value for p in Precision)})")
    dup = [n for i, n in enumerate(names) if n in names[:i]]
    if dup:
        raise QuantlabError(f"--precisions names {dup[0]} twice")
    return names


def rows(args) -> list[dict]:
    from quantlab.commands.flags import given_fields
    from quantlab.commands.plan import config_from_args, resolve_gpu
    from quantlab.planner import fit, plan
    from quantlab.specs import Method, PlanConfig, Precision, SpecError

    names = precision_list(args.precisions)
    gpu, _ = resolve_gpu(args.gpu, args)
    base = config_from_args(args, gpu=gpu, any_precision=True)
    given = given_fields(args)
    out = []
    for name in names:
        prec = Precision(name)
        method = base.method
        if method is Method.QLORA and prec not in (Precision.NF4, Precision.FP4):  # LoRA on int8: PEFT's 8-bit
            method = Method.LORA
        if method is Method.LORA and prec in (Precision.NF4, Precision.FP4):
            method = Method.QLORA
        row = {"precision": name, "method": method.value}
        try:
            # each row is its own recipe (specs assumption 4): a QLoRA row turns checkpointing on, a LoRA row
            # leaves it off, unless the user gave --(no-)grad-checkpointing
            d = dict(base.to_dict(), precision=prec.value, method=method.value,
                     double_quant=base.double_quant and prec in (Precision.NF4, Precision.FP4))
            if "grad_checkpointing" not in given:
                del d["grad_checkpointing"]
            cfg = PlanConfig.from_dict(d)
            row["grad_checkpointing"] = cfg.grad_checkpointing
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
    from quantlab.fileio import write_stdout

    data = rows(args)
    write_stdout(render(args, data))
    return 0


# (header, keys summed): the columns a table shows, the empty ones dropped
# (two-line headers keep the table inside 80 columns)
GROUPS = [("weights", ("weights_bytes", "quant_constants_bytes")),
          ("train\nstate", ("adapters_bytes", "gradients_bytes", "optimizer_bytes")),
          ("act. +\nbuffers", ("activations_bytes", "logits_loss_bytes", "prefill_transient_bytes",
                              "optimizer_step_bytes")),
          ("KV\ncache", ("kv_cache_bytes",)),
          ("peak\nalloc.", ("peak_allocated_bytes",)), ("peak\nreserv.", ("peak_reserved_bytes",)),
          ("process", ("process_bytes",))]


def render(args, data: list[dict]) -> str:
    from quantlab.units import GiB

    if args.format == "json":
        return json.dumps({"model": args._resolved.name, "model_resolution": args._resolved.resolved_from,
                           "method": args.method, "rows": data}, indent=2) + "\n"
    keys = list(dict.fromkeys(k for r in data for k in r))
    if args.format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(data)
        return buf.getvalue()
    groups = [(h, ks) for h, ks in GROUPS if any(r.get(k) for r in data for k in ks)]
    with_fit = any("fits" in r for r in data)
    header = ["precision", "method"] + [h for h, _ in groups] + (["fits", "margin"] if with_fit else [])

    notes: list[str] = []

    def cells(r, plain=False):
        if "note" in r:
            if plain:
                return [r["precision"], r["method"], "n/a: " + r["note"]] + [""] * (len(header) - 3)
            notes.append(f"{r['precision']}: n/a: {r['note']}")
            return [r["precision"], r["method"], f"n/a [{len(notes)}]"] + [""] * (len(header) - 3)
        method = r["method"] + ("+ckpt" if r.get("grad_checkpointing") else "")
        vals = [r["precision"], method] + [f"{sum(r.get(k) or 0 for k in ks) / GiB:.2f}" for _, ks in groups]
        if with_fit:
            vals += ["yes" if r.get("fits") else "no", f"{r['margin_bytes'] / GiB:+.2f}"]
        return vals

    title = f"{args._resolved.resolved_from}: {args.method} by weight precision (GiB = 2^30 bytes)"
    if args.format == "markdown":
        buf = io.StringIO()
        buf.write(f"{title}\n\n")
        buf.write("| " + " | ".join(h.replace("\n", " ") for h in header) + " |\n|" + "---|" * len(header) + "\n")
        for r in data:
            buf.write("| " + " | ".join(cells(r, plain=True)) + " |\n")
        return buf.getvalue()
    from rich import box
    from rich.table import Table

    from quantlab.fileio import render_text

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
              collapse_padding=True, show_edge=False)
    for h in header:
        left = h in ("precision", "method")
        t.add_column(h, justify="left" if left else "right", no_wrap=True)
    for r in data:
        t.add_row(*cells(r))
    return render_text(t, *(f"[{i}] {n}" for i, n in enumerate(notes, 1)))
