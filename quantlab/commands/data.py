"""``quantlab data inspect FILE.jsonl``: counts, duplicates (exact, near, semantic), quality filters, token lengths,
a cleaned copy, and with ``--plan`` the memory, fit and epoch time/cost of the batches the dataloader draws.

Thin: parse, call :mod:`quantlab.data`, render. The plan flags are the shared configuration flags
(:mod:`quantlab.commands.flags`), so ``data inspect --plan`` plans what ``quantlab plan`` would at each batch width.
Outputs (``--hist``, ``--write-clean`` and its removal record) are checked writable before any work, written
atomically after it, and before stdout: a bad input is one line, exit 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from quantlab.errors import QuantlabError

FORMATS = ("table", "json")
DEFAULT_MODEL = "smollm2-135m"
MODEL_HELP = ("the model: its tokenizer counts the tokens (the embedded smollm2-135m, a local transformers folder "
              "or a .gguf), and with --plan its architecture is planned (a profile name works there too, with "
              "--tokenizer)")


def _threshold(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect a fine-tuning data set: duplicates, quality, token lengths, the plan",
                       description="Fine-tuning data sets: what is in them, what to remove, what they cost to train.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", parser_class=type(p))
    q = data_sub.add_parser(
        "inspect", help="counts, exact/near/semantic duplicates, quality filters, token lengths, --plan",
        description="Inspect a JSONL data set (prompt/response, chat messages, plain text or preference pairs): "
                    "record counts, exact, near (MinHash LSH) and semantic (all-MiniLM-L6-v2) duplicates, quality "
                    "filters, the token-length histogram with the model's tokenizer, a cleaned copy with the record "
                    "of what was removed and why, and with --plan the memory at the p50/p95/max batch widths the "
                    "dataloader draws, whether the longest fits, and an epoch's time and cost.",
        epilog="Examples:\n  quantlab data inspect tasks/json-extract/data.jsonl --hist lengths.png\n"
               "  quantlab data inspect data.jsonl --semantic 0.85 --write-clean clean.jsonl --format json\n"
               "  quantlab data inspect data.jsonl --plan --method qlora --batch 8 --gpu rtx-4090\n"
               "  quantlab data inspect data.jsonl --plan --packing --max-len 2048 --model 8b --tokenizer DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # optional to argparse (the shared flag tests parse every config parser with flags alone); required in run
    q.add_argument("file", metavar="FILE.jsonl", nargs="?", default=None, help="the data set, one JSON record a line")
    d = q.add_argument_group("data")
    d.add_argument("--kind", choices=("prompt", "chat", "text", "preference"), default=None,
                   help="record format (default: detected from the first record: messages -> chat, chosen -> "
                        "preference, prompt -> prompt, text -> text)")
    d.add_argument("--tokenizer", default=None, metavar="M",
                   help="count tokens with this model's tokenizer (embedded name, folder or .gguf) when --model is a "
                        "planner profile without local files (default: --model's)")
    d.add_argument("--near", type=_threshold, default=0.9, metavar="X",
                   help="near-duplicate threshold: Jaccard similarity of character 5-gram sets, in (0, 1]; lower "
                        "removes more (and more that differ) (default: 0.9)")
    d.add_argument("--semantic", type=_threshold, nargs="?", const=0.85, default=None, metavar="X",
                   help="also remove semantic duplicates: cosine similarity of all-MiniLM-L6-v2 embeddings, in "
                        "(0, 1]; a hyperparameter: lower removes paraphrases and more false matches; slow on a CPU "
                        "(about 100-300 records/s on 2 cores) (default: off; a bare --semantic is 0.85)")
    d.add_argument("--max-len", type=int, default=None, metavar="N",
                   help="drop records longer than N tokens (truncation would teach cut answers); with --packing, the "
                        "row width instead (packing splits long records across rows, as quantlab lab finetune "
                        "does, so none is dropped) (default: no length filter)")
    d.add_argument("--hist", default=None, metavar="PNG", help="write the token-length histogram as PNG (default: none)")
    d.add_argument("--write-clean", default=None, metavar="OUT.jsonl",
                   help="write the kept records (their lines, byte for byte) here, and what was removed and why to "
                        "OUT.removed.jsonl (default: none)")
    d.add_argument("--removed", default=None, metavar="PATH",
                   help="where the removal record goes (default: OUT.removed.jsonl beside --write-clean)")
    d.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    d.add_argument("--quiet", action="store_true", help="no progress bars on stderr (default: shown)")
    pl = q.add_argument_group("plan from the data (--plan)")
    pl.add_argument("--plan", action="store_true",
                    help="plan the batches the dataloader draws: memory at the p50/p95/max widths, the fit of the "
                         "longest, an epoch's time and cost (default: off)")
    pl.add_argument("--packing", action="store_true",
                    help="pack records into rows of --max-len (no padding, every batch at the peak width) instead "
                         "of dynamic padding to each batch's longest record (default: dynamic padding)")
    pl.add_argument("--epochs", type=float, default=1.0, metavar="X", help="epochs to time and price (default: 1)")
    pl.add_argument("--seed", type=int, default=0, help="seed of the sampler's shuffle (default: 0)")
    pl.add_argument("--gpu", default=None, metavar="NAME|auto",
                    help="GPU to fit and price on (profile name or alias, or auto) (default: none: memory only)")
    from quantlab.commands.flags import add_config_arguments

    add_config_arguments(q, model_required=False, model_default=DEFAULT_MODEL, model_help=MODEL_HELP)
    q.set_defaults(func=run_inspect)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def tokenizer_source(args) -> str:
    """What the tokenizer loads from: --tokenizer, else --model when it is local or the embedded model."""
    import os

    from quantlab.lab.model import EMBEDDED_NAMES

    if args.tokenizer:
        return args.tokenizer
    m = args.model
    if str(m).lower() in EMBEDDED_NAMES or os.path.exists(os.path.expanduser(str(m))):
        return m
    raise QuantlabError(f"--model {m} has no local tokenizer here (a planner profile); give --tokenizer (the "
                        f"embedded {DEFAULT_MODEL}, a model folder or a .gguf)")


def first_kind(path) -> str | None:
    """The kind the first record of ``path`` says (records assumption 2), or None where it cannot tell (the
    reader then reports why)."""
    from quantlab.data.records import detect_kind

    try:
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    return detect_kind(json.loads(raw.decode("utf-8", errors="replace")))
    except (OSError, ValueError):
        return None
    return None


def plan_model(model: str) -> str:
    """The --model the planner reads: a .gguf is planned from its converted folder (its config.json)."""
    if str(model).lower().endswith(".gguf"):
        from quantlab.lab import model as lm

        return str(lm.model_path(lm.resolve(model)))
    return model


def _check_outputs(args) -> tuple:
    from quantlab.data.inspection import removed_path
    from quantlab.fileio import check_writable_file

    removed = None
    if args.removed and not args.write_clean:
        raise QuantlabError("--removed goes with --write-clean")
    if args.hist:
        check_writable_file(args.hist, "--hist")
    if args.write_clean:
        check_writable_file(args.write_clean, "--write-clean")
        removed = args.removed or str(removed_path(args.write_clean))
        check_writable_file(removed, "--removed")
        import os

        same = {os.path.abspath(x) for x in (args.file, args.write_clean, removed)}
        if len(same) < 3:
            raise QuantlabError("--write-clean, its removal record and the input must be three different files")
    return removed


def run_inspect(args) -> int:
    from quantlab.commands.flags import given_fields
    from quantlab.data.inspection import InspectOptions, clean_bytes, inspect, kept_lengths, removal_bytes

    if not args.file:
        raise QuantlabError("give the data set: quantlab data inspect FILE.jsonl (see --help)")
    given = given_fields(args)
    if given and not args.plan:
        from quantlab.commands.flags import flag_name

        raise QuantlabError(f"{flag_name(sorted(given)[0])} is a plan flag; add --plan (or drop it)")
    for flag in ("packing", "gpu"):
        if getattr(args, flag) and not args.plan:
            raise QuantlabError(f"--{flag} goes with --plan")
    if args.packing and not args.max_len:
        raise QuantlabError("--packing needs --max-len (the row width the records are packed to)")
    if args.plan and not args.packing and (args.kind or first_kind(args.file)) == "text":
        raise QuantlabError("text records (continued pre-training) train on packed rows, as quantlab lab finetune "
                            "runs them: add --packing --max-len N to plan them")
    opts = InspectOptions(path=args.file, kind=args.kind, model=tokenizer_source(args), near=args.near,
                          semantic=args.semantic, progress=not args.quiet,
                          max_len=None if args.packing else args.max_len)  # packing cuts long records into rows
    removed_file = _check_outputs(args)
    cfg = gpu = None
    if args.plan:  # resolved before the work: a bad plan flag costs nothing
        from quantlab.commands.plan import config_from_args, resolve_gpu

        args.model = plan_model(args.model)
        if "method" not in given:
            raise QuantlabError("--plan needs a training --method (qlora, lora, full, ...)")
        gpu, _ = resolve_gpu(args.gpu, args)
        cfg = config_from_args(args, gpu=gpu)
        if args.packing and "padding_mask" in given:
            raise QuantlabError("--padded plans dynamic padding; --packing has no padding (drop one)")
    ins = inspect(opts)
    doc = dict(ins.doc)
    doc["removed"] = ins.removal_lines()[:20]  # the first few; the whole record goes to --write-clean's file
    doc["plan"] = None
    if args.plan:
        from quantlab.data.dataplan import data_plan

        lens = kept_lengths(ins)
        if not lens:
            raise QuantlabError("no records are left to plan from")
        doc["plan"] = data_plan(cfg, lens, gpu, packing=args.packing, max_len=args.max_len, epochs=args.epochs,
                                seed=args.seed, preference=doc["kind"] == "preference")
        doc["plan"]["model"] = cfg.model.name if hasattr(cfg.model, "name") else args.model
        doc["plan"]["method"] = cfg.method.value
    png = None
    if args.hist:
        from quantlab.data.lengths import histogram_png

        lens = kept_lengths(ins)
        if not lens:
            raise QuantlabError("no token lengths to plot (no records kept)")
        png = histogram_png(lens, f"{args.file}: {len(lens)} records kept, tokenizer {doc['tokenizer']}",
                            args.max_len)
    text = json.dumps(doc, indent=2) + "\n" if args.format == "json" else render_table(doc)
    from quantlab.fileio import atomic_write_bytes, write_stdout

    written = []
    if png is not None:
        written.append(atomic_write_bytes(args.hist, png))
    if args.write_clean:
        written.append(atomic_write_bytes(args.write_clean, clean_bytes(ins)))
        written.append(atomic_write_bytes(removed_file, removal_bytes(ins)))
    write_stdout(text)
    for w in written:
        print(f"wrote {w}", file=sys.stderr)
    return 0


def render_table(doc: dict) -> str:
    from rich.table import Table

    from quantlab.data.lengths import Histogram, histogram_text
    from quantlab.fileio import render_text
    from quantlab.units import fmt_bytes, fmt_seconds

    out = [f"[bold]{doc['file']}[/]: {doc['records']} {doc['kind']} records, {doc['records_kept']} kept, "
           f"{doc['records_removed']} removed"]
    t = Table(title="Removed (each record for its first reason)", title_justify="left")
    t.add_column("reason")
    t.add_column("records", justify="right")
    t.add_column("how")
    nm = doc["near_method"]
    for k, v in doc["filtered"].items():
        how = {"too_long": f"more than --max-len {doc['max_len']} tokens" if doc["max_len"] else "off (no --max-len)"
               }.get(k, "")
        t.add_row(k, str(v), how)
    t.add_row("exact_duplicates", str(doc["exact_duplicates"]), "equal normalised text (NFKC, case, whitespace)")
    t.add_row("near_duplicates", str(doc["near_duplicates"]),
              f"Jaccard >= {doc['near_threshold']} of char 5-grams; MinHash LSH {nm['num_perm']} perms, "
              f"{nm['bands']}x{nm['rows_per_band']} bands, verified exactly")
    t.add_row("semantic_duplicates", "off" if doc["semantic_duplicates"] is None else str(doc["semantic_duplicates"]),
              f"cosine >= {doc['semantic_threshold']}, all-MiniLM-L6-v2" if doc["semantic_threshold"] else
              "off (--semantic 0.85 turns it on)")
    out.append(t)
    if doc["tokens"]:
        s = doc["tokens"]
        out.append(f"tokens per kept record ({doc['tokenizer']}, EOS included): min {s['min']}, p50 {s['p50']}, "
                   f"p95 {s['p95']}, max {s['max']}, mean {s['mean']:.1f}, total {s['total']:,}")
        h = Histogram(tuple(doc["histogram"]["edges"]), tuple(doc["histogram"]["counts"]))
        out.append(histogram_text(h))
    if doc["removed"]:
        out.append("first removed: " + "; ".join(
            f"line {r['line']} {r['reason']}" + (f" of line {r['of_line']} ({r['similarity']:.3f})" if "of_line" in r
                                                else "") for r in doc["removed"][:5]))
    pl = doc.get("plan")
    if pl:
        out.append(f"[bold]plan[/]: {pl['method']} on {pl['model']}; {pl['order']}; {pl['batches_per_epoch']} batches, "
                   f"{pl['optimizer_steps_per_epoch']} optimizer steps per epoch (grad-accum {pl['grad_accum']}, "
                   f"{pl['num_gpus']} GPU{'s' if pl['num_gpus'] > 1 else ''})")
        pt = Table(title="Memory per GPU at the batch widths drawn (GiB = 2^30 bytes)", title_justify="left")
        for c in ("width", "batch x seq", "peak allocated", "process (nvidia-smi)", "fits" + (f" {pl['gpu']}" if pl[
                "gpu"] else "")):
            pt.add_column(c, justify="right")
        for r in pl["plans"]:
            fits = "-" if r["fits"] is None else ("yes, margin " if r["fits"] else "NO, short by ") + fmt_bytes(
                abs(r["margin_bytes"]))
            pt.add_row(r["point"], f"{r['batch']} x {r['seq']}", fmt_bytes(r["peak_allocated_bytes"]),
                       fmt_bytes(r["process_bytes"]), fits)
        out.append(pt)
        if pl["longest_batch_fits"] is not None:
            out.append(("[green bold]the longest batch fits[/]" if pl["longest_batch_fits"] else
                        "[red bold]the longest batch does NOT fit[/]") + f" on {pl['gpu']}")
        if pl["epoch_s"] is not None:
            c = pl["cost_usd"]
            cost = "no price" if c is None else f"${c:.2f}" if c >= 0.01 else f"${c:.2g}"
            out.append(f"epoch {fmt_seconds(pl['epoch_s'])}; {pl['epochs']:g} epoch(s) {fmt_seconds(pl['total_s'])}, {cost} "
                       f"(roofline, {pl['bound']}-bound; {pl['tokens_per_s']:,.0f} real tokens/s; "
                       f"{pl['padded_tokens_per_epoch']:,} padded tokens per epoch for "
                       f"{pl['real_tokens_per_epoch']:,} real)")
        for n in pl["notes"]:
            out.append(f"[dim]note: {n}[/]")
    return render_text(*out)


