"""``quantlab profiles``: list the model and GPU profiles (data with sources, under profiles/)."""

from __future__ import annotations

import csv
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("profiles", help="list known models and GPUs",
                       description="List the model profiles (architecture copied from config.json, with its source) "
                                   "and GPU profiles (memory, bandwidth, throughput, price, each with its basis).")
    p.add_argument("--kind", choices=("all", "models", "gpus"), default="all", help="which profiles to list")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
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
    rows = _rows(args.kind)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if args.format == "csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(sys.stdout, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        return 0
    from rich.table import Table

    from quantlab.units import console as make_console, fmt_bytes

    console = make_console()
    models = [r for r in rows if r["kind"] == "model"]
    gpus = [r for r in rows if r["kind"] == "gpu"]
    if models:
        t = Table(title="Models (architecture from config.json)")
        for c in ("name", "aliases", "HF id", "layers", "hidden", "kv heads", "experts"):
            t.add_column(c)
        for r in models:
            t.add_row(r["name"], r["aliases"], r["hf_id"] or "-", str(r["layers"]), str(r["hidden_size"]),
                      str(r["kv_heads"]), str(r["experts"] or "-"))
        console.print(t)
    if gpus:
        t = Table(title="GPUs (memory in GiB = 2^30 bytes; dense BF16; price is indicative, assumed)")
        for c in ("name", "aliases", "memory", "bandwidth GB/s", "BF16 TFLOPS", "$/h", "interconnect", "link GB/s per dir"):
            t.add_column(c)
        for r in gpus:
            bf = r["bf16_flops"]
            t.add_row(r["name"], r["aliases"], fmt_bytes(r["memory_bytes"]), f"{r['bandwidth_bytes_per_s'] / 1e9:,.0f}",
                      "-" if bf is None else f"{bf / 1e12:,.0f}", f"{r['price_usd_per_hour']:.2f}", r["interconnect"],
                      _gbs(r["interconnect_bytes_per_s_per_direction"]))
        console.print(t)
    return 0
