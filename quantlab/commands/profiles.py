"""``quantlab profiles``: list the model and GPU profiles (data with sources, under profiles/)."""

from __future__ import annotations

import csv
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("profiles", help="list known models and GPUs",
                       description="List the model profiles (architecture copied from config.json, with its source) "
                                   "and GPU profiles (memory, bandwidth, throughput, price, each with its basis).")
    p.add_argument("--kind", choices=("all", "models", "gpus"), default="all", help="which profiles to list (default: all)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="output format (default: table)")
    p.set_defaults(func=run)


def _rows(kind: str) -> list[dict]:
    from quantlab.profiles import gpu_doc, list_gpus, list_models, load_gpu, load_model, model_doc

    rows = []
    if kind in ("all", "models"):
        for name in list_models():
            doc, spec = model_doc(name), load_model(name).spec
            rows.append(dict(kind="model", name=name, aliases=",".join(doc.get("aliases") or []),
                             hf_id=doc.get("hf_id"), layers=spec.num_hidden_layers, hidden_size=spec.hidden_size,
                             kv_heads=spec.kv_heads, experts=spec.num_local_experts or None, source=doc.get("source")))
    if kind in ("all", "gpus"):
        for name in list_gpus():
            g = load_gpu(name)
            rows.append(dict(kind="gpu", name=name, aliases=",".join(g.aliases), memory_bytes=g.memory_bytes,
                             bandwidth_bytes_per_s=g.memory_bandwidth_bytes_per_s, bf16_flops=g.flops.get("bf16"),
                             price_usd_per_hour=g.price_usd_per_hour, interconnect=g.interconnect,
                             interconnect_bytes_per_s_per_direction=g.interconnect_bandwidth_bytes_per_s,
                             source=gpu_doc(name)["memory_bandwidth_bytes_per_s"]["source"]))
    return rows


def _gbs(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:,.1f}"


def run(args) -> int:
    from quantlab.fileio import write_stdout

    write_stdout(render(_rows(args.kind), args.format))
    return 0


def render(rows: list[dict], fmt: str) -> str:
    import io

    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    from rich import box
    from rich.table import Table

    from quantlab.fileio import output_width, render_text

    def table(title):
        return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                     collapse_padding=True, show_edge=False)

    out = []
    models = [r for r in rows if r["kind"] == "model"]
    gpus = [r for r in rows if r["kind"] == "gpu"]
    if models:
        wide = output_width() >= 120  # the HF ids need the room; narrower, they are in --format json/csv
        t = table("Models (architecture from config.json" + ("" if wide else "; HF ids: --format csv") + ")")
        cols = ("name", "aliases") + (("HF id",) if wide else ()) + ("layers", "hidden", "kv\nheads", "experts")
        for c in cols:
            t.add_column(c, justify="right" if c in ("layers", "hidden", "kv\nheads", "experts") else "left",
                         overflow="fold", no_wrap=c != "aliases")
        for r in models:
            t.add_row(r["name"], r["aliases"].replace(",", ", "), *((r["hf_id"] or "-",) if wide else ()),
                      str(r["layers"]), str(r["hidden_size"]), str(r["kv_heads"]), str(r["experts"] or "-"))
        out.append(t)
    if gpus:
        t = table("GPUs (memory in GiB = 2^30 bytes; dense BF16; price is indicative, assumed)")
        for c in ("name", "aliases", "GiB", "GB/s", "BF16\nTFLOPS", "$/h", "interconnect", "link GB/s\nper dir"):
            t.add_column(c, justify="left" if c in ("name", "aliases", "interconnect") else "right",
                         overflow="fold", no_wrap=c not in ("aliases", "interconnect"))
        for r in gpus:
            bf = r["bf16_flops"]
            t.add_row(r["name"], r["aliases"].replace(",", ", "), f"{r['memory_bytes'] / 2**30:.1f}",
                      f"{r['bandwidth_bytes_per_s'] / 1e9:,.0f}", "-" if bf is None else f"{bf / 1e12:,.0f}",
                      f"{r['price_usd_per_hour']:.2f}", r["interconnect"],
                      _gbs(r["interconnect_bytes_per_s_per_direction"]))
        out.append(t)
    return render_text(*out)
