"""Renderers for stored runs: rich table, CSV, JSON, Markdown, and a self-contained HTML page with PNG plots.

Memory is shown in MiB (2^20 bytes) for these small lab models; the stored values are integer bytes.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json

PTQ_COLUMNS = [  # (column, header, formatter)
    ("method", "method", str),
    ("meas_weight_bytes", "weights MiB", lambda v: f"{v / 2**20:.1f}"),
    ("pred_weight_bytes", "planner MiB", lambda v: f"{v / 2**20:.1f}"),
    ("meas_weight_after_eval_bytes", "serving MiB", lambda v: f"{v / 2**20:.1f}"),
    ("meas_perplexity", "perplexity", lambda v: f"{v:.2f}"),
    ("meas_ppl_ratio", "ppl / fp32", lambda v: f"{v:.3f}"),
    ("meas_ppl_tokens", "ppl tokens", lambda v: f"{int(v)}"),
    ("meas_kl_nats", "KL nats", lambda v: f"{v:.4f}"),
    ("meas_top1_agreement", "top-1 agree", lambda v: f"{100 * v:.1f}%"),
    ("meas_sqnr_mean_db", "SQNR dB", lambda v: f"{v:.1f}"),
    ("meas_cloze_accuracy", "cloze acc", lambda v: f"{100 * v:.1f}%"),
    ("meas_cloze_items", "cloze n", lambda v: f"{int(v)}"),
    ("meas_load_s", "load s", lambda v: f"{v:.1f}"),
    ("meas_ttft_s", "TTFT ms", lambda v: f"{1000 * v:.0f}"),
    ("meas_prefill_64_tok_per_s", "prefill64 tok/s", lambda v: f"{v:.0f}"),
    ("meas_prefill_256_tok_per_s", "prefill256 tok/s", lambda v: f"{v:.0f}"),
    ("meas_decode_tok_per_s", "decode tok/s", lambda v: f"{v:.1f}"),
    ("meas_peak_rss_bytes", "peak RSS MiB", lambda v: f"{v / 2**20:.0f}"),
    ("meas_loadavg_1m", "load avg", lambda v: f"{v:.1f}"),
]

PTQ_NOTES = [
    "weights MiB: bytes of the distinct parameter/buffer storages the loaded model holds, bitsandbytes' "
    "quantization state included, before any forward pass; serving MiB: the same count after evaluation "
    "(bitsandbytes 0.50 repacks 4-bit weights for CPU inference at the first forward on AVX512-BF16 CPUs: "
    "absmax in bf16, double quantization undone).",
    "planner MiB: quantlab plan's weights + quantization constants for the same precision; '-' where the planner "
    "has no model of the layout (torchao) or no profile for the model.",
    "quality vs the fp32 reference of the same model: perplexity on the shipped held-out text ('ppl tokens' scored; "
    "'ppl / fp32' divides by the fp32 reference's perplexity on exactly those tokens, so rows with a smaller "
    "budget stay comparable); "
    "KL(reference || method) in nats per token and top-1 agreement on the first reference windows; SQNR = mean over "
    "block linears of 10 log10(|W|^2/|W - W_q|^2); cloze accuracy over 'cloze n' 4-choice items (chance 25%).",
    "speed: medians after a warm-up (load avg: the machine's 1-minute load average right after the row's "
    "timings; above the core count, other jobs shared the cores and the speed figures are low); TTFT = one prefill of the 64-token prompt (or the shortest measured); decode = "
    "greedy next tokens with the KV cache. peak RSS is the process resident set (sampled every 5 ms), which also "
    "holds the tokenizer, the fp32 reference logits and allocator leftovers of earlier methods in the same run.",
]


def _rows(records) -> list[dict]:
    out = []
    for r in records:
        sizes = r.config.get("sizes") or {}
        budget = f"{sizes.get('eval_tokens')} tok / {sizes.get('cloze_items')} items" if sizes else None
        row = {"method": r.method, "model": r.model, "kind": r.kind, "created_at": r.created_at,
               "device": r.env.get("device_name"), "config_budget": budget, **r.metrics}
        out.append(row)
    return out


def _cell(row, col, f):
    v = row.get(col)
    return "-" if v is None else f(v)


def _ptq_columns(rows) -> list:
    """PTQ_COLUMNS, led by model / device / eval-budget columns when the rows differ in them (a --quick run or a
    second model in the same store must not show two indistinguishable 'fp32' rows)."""
    lead = []
    for col, head in (("model", "model"), ("device", "device"), ("config_budget", "budget")):
        if len({r.get(col) for r in rows}) > 1:
            lead.append((col, head, str))
    return lead + PTQ_COLUMNS


def ptq_table(records, fmt: str = "table") -> str:
    rows = _rows(records)
    columns = _ptq_columns(rows)
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    if fmt == "csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "markdown":
        heads = [h for _, h, _ in columns]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r, c, f) for c, _, f in columns) + " |")
        return "\n".join(lines) + "\n"
    from rich.table import Table

    from quantlab.units import console

    t = Table(title="Post-training quantization (MiB = 2^20 bytes; quality vs the fp32 reference)")
    for _, h, _ in columns:
        t.add_column(h, justify="left" if h == "method" else "right")
    for r in rows:
        t.add_row(*(_cell(r, c, f) for c, _, f in columns))
    con = console()
    with con.capture() as cap:
        con.print(t)
    return cap.get()


def generic_table(records, fmt: str) -> str:
    """Any other kind of run (fine-tunes, validation): every meas_/pred_ column."""
    rows = _rows(records)
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    if fmt == "csv":
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    keys = ["method"] + [k for k in keys if k.startswith(("meas_", "pred_"))]
    fmtv = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    buf.write("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n")
    for r in rows:
        buf.write("| " + " | ".join(fmtv(r.get(k)) for k in keys) + " |\n")
    return buf.getvalue()


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def ptq_plots(records) -> list[tuple[str, bytes]]:
    """(title, PNG bytes): memory vs quality, speed vs precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _rows(records) if r.get("meas_weight_bytes")]
    out = []
    if not rows:
        return out
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        x, y = r["meas_weight_bytes"] / 2**20, r.get("meas_perplexity")
        if y is not None:
            ax.scatter(x, y)
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("weight bytes held (MiB)")
    ax.set_ylabel("perplexity (held-out text)")
    ax.set_title("Memory vs quality")
    ax.grid(alpha=0.3)
    out.append(("Memory vs quality", base64.b64decode(_png(fig))))
    plt.close(fig)
    names = [r["method"] for r in rows]
    prefill_cols = sorted({k for r in rows for k in r if k.startswith("meas_prefill_") and k.endswith("_tok_per_s")},
                          key=lambda k: int(k.split("_")[2]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(prefill_cols))
    for i, col in enumerate(prefill_cols):
        axes[0].bar([j + i * width for j in range(len(rows))], [r.get(col) or 0 for r in rows], width,
                    label=f"{col.split('_')[2]}-token prompt")
    axes[0].set_xticks([j + width * (len(prefill_cols) - 1) / 2 for j in range(len(rows))], names, rotation=30)
    axes[0].set_ylabel("prefill tokens/s (median)")
    if prefill_cols:
        axes[0].legend()
    axes[1].bar(names, [r.get("meas_decode_tok_per_s") or 0 for r in rows])
    axes[1].set_ylabel("decode tokens/s (median)")
    axes[1].tick_params(axis="x", rotation=30)
    fig.suptitle(f"Speed vs precision ({rows[0].get('device')})")
    out.append(("Speed vs precision", base64.b64decode(_png(fig))))
    plt.close(fig)
    return out


TUNED_KINDS = ("finetune", "qat")  # rendered by quantlab.lab.finetune_report.finetune_table


def html_page(ptq_records, other_records) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>quantlab report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}</style></head><body>",
             "<h1>quantlab report</h1>"]
    if ptq_records:
        env = ptq_records[0].env
        parts.append(f"<p>Device: {html.escape(str(env.get('device_name')))}; torch {env.get('torch')}, transformers "
                     f"{env.get('transformers')}, bitsandbytes {env.get('bitsandbytes')}, git {env.get('git_commit')}."
                     "</p><h2>Post-training quantization</h2>")
        parts.append(_md_to_html(ptq_table(ptq_records, "markdown")))
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in PTQ_NOTES) + "</ul>")
        for title, png in ptq_plots(ptq_records):
            parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                         f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    tuned = [r for r in other_records if r.kind in TUNED_KINDS]
    if tuned:  # the fine-tune table the markdown report shows: named columns in MiB, planned beside measured
        from quantlab.lab.finetune_report import NOTES, finetune_table

        parts.append("<h2>Fine-tunes</h2>")
        parts.append(_md_to_html(finetune_table(tuned, "markdown")))
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in NOTES) + "</ul>")
    kinds = sorted({r.kind for r in other_records})
    for k in kinds:
        recs = [r for r in other_records if r.kind == k]
        if k not in TUNED_KINDS:
            parts.append(f"<h2>{html.escape(k)} runs</h2>")
            parts.append(_md_to_html(generic_table(recs, "markdown")))
        for r in recs:
            for name, path in (r.artifacts or {}).items():
                if str(path).endswith(".png"):
                    try:
                        data = open(path, "rb").read()
                    except OSError:
                        continue
                    parts.append(f"<h3>{html.escape(r.method)}: {html.escape(name)}</h3>"
                                 f"<img src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_to_html(md: str) -> str:
    lines = [l for l in md.strip().splitlines() if l.strip()]
    if len(lines) < 2:
        return ""
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for l in lines[2:]:
        out.append("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in l.strip("|").split("|")) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
