"""``quantlab recommend``: which GPU kind, how many and which sharding, ranked by cost (or time).

Thin: parse, call :func:`quantlab.planner.recommend.recommend`, render. The model, method and
workload flags are ``quantlab plan``'s own (``add_plan_arguments``), so a recommendation and a plan
describe the same configuration. matplotlib is imported only when a plot is written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from quantlab.errors import QuantlabError
from quantlab.units import fmt_seconds

FORMATS = ("table", "json", "csv", "markdown")


def register(sub) -> None:
    try:
        from quantlab.commands.plan import add_plan_arguments
    except ModuleNotFoundError as e:  # the planner's CLI is absent: skip, as cli.py skips absent commands
        if e.name != "quantlab.commands.plan":
            raise
        return
    p = sub.add_parser(
        "recommend", conflict_handler="resolve",
        help="rank GPU kind x count x sharding by time and cost for a training or serving job",
        description="Rank every configuration (GPU kind x count x sharding: DDP, ZeRO-1/2/3, FSDP, offload; tensor "
                    "parallel for inference) that fits in memory (the planner) by cost or time (a roofline at stated "
                    "utilisations, priced from the GPU profiles), and mark the Pareto front of time against cost.",
        epilog="Example:\n  quantlab recommend --model 70b --method qlora --seq 4096 --train-tokens 1e8 --plot rec.png\n"
               "  quantlab recommend --model 8b --method inference --seq 4096 --serve-tokens-per-day 1e9",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(p)
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--train-tokens", type=float, default=None, metavar="T",
                      help="tokens to train on (e.g. 1e8): time and cost are for the whole run (default: none; "
                           "without a goal, time and cost are per million tokens)")
    goal.add_argument("--serve-tokens-per-day", type=float, default=None, metavar="T",
                      help="tokens to generate per day: time is GPU time per day, cost is per day (default: "
                           "none)")
    p.add_argument("--max-gpus", type=int, default=8,
                   help="largest GPU count to consider (1, 2, 4, ... up to it; above 8 spans nodes and pays the "
                        "slower inter-node network); --num-gpus N considers exactly N (default: 8)")
    p.add_argument("--budget-per-hour", type=float, default=None, metavar="USD",
                   help="drop configurations whose GPUs cost more than this per hour (drops unpriced GPUs too) "
                        "(default: no budget)")
    p.add_argument("--gpus", default=None, metavar="A,B",
                   help="only these GPU kinds (profile names or aliases) (default: every GPU profile)")
    p.add_argument("--sort", choices=("cost", "time"), default="cost",
                   help="rank cheapest first or fastest first; the Pareto front is marked either way "
                        "(default: cost)")
    p.add_argument("--all-shardings", action="store_true",
                   help="rank every fitting sharding, not only the best one per GPU kind and count "
                        "(default: off)")
    p.add_argument("--top", type=int, default=15,
                   help="rows in the table/markdown (json and csv hold every option) (default: 15)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="write the output here instead of stdout, and the plot beside it as .png unless --plot "
                        "(default: stdout, no plot)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="write the time-vs-cost plot (Pareto front) here (default: none)")
    s = p.add_argument_group("serving: rent or buy (--method inference)")
    s.add_argument("--buy", action="store_true",
                   help="also price buying the GPUs: purchase (profiles' purchase_usd, assumed and dated), power at "
                        "the stated fraction of the TDP, break-even months against renting (default: off)")
    s.add_argument("--headroom", type=float, default=None, metavar="X",
                   help="fraction of every GPU's memory kept free (default: 0.1)")
    s.add_argument("--electricity-usd-per-kwh", type=float, default=None, metavar="USD",
                   help="--buy: electricity price (default: 0.15, assumed)")
    s.add_argument("--power-fraction", type=float, default=None, metavar="X",
                   help="--buy: average board power while serving, as a fraction of the TDP (default: 0.7, assumed)")
    from quantlab.commands.serve_flags import add_serving_arguments

    add_serving_arguments(p)
    dg = p.add_argument_group("plan from a data set (quantlab data inspect)")
    dg.add_argument("--data", default=None, metavar="FILE.jsonl",
                    help="size the job from a fine-tuning data set: its records (quality-filtered, exact and near "
                         "duplicates removed, as 'quantlab data inspect' keeps them) are drawn in seeded batches of "
                         "--batch with dynamic padding; --seq becomes the longest batch (the peak must fit) and "
                         "--train-tokens one epoch of padded tokens unless given (default: none)")
    dg.add_argument("--tokenizer", default=None, metavar="M",
                    help="--data: count tokens with this tokenizer (embedded smollm2-135m, a model folder or a "
                         ".gguf) when --model is a profile without local files (default: --model's)")
    for a in p._actions:  # recommend searches the batch when none is given
        if a.dest == "batch":
            a.help = ("sequences per micro-batch per GPU (default: the largest that fits each option, up to what "
                      "saturates it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quantlab import profiles
    from quantlab.commands.plan import config_from_args
    from quantlab.planner.recommend import Goal, recommend

    from quantlab.commands.flags import given_fields
    from quantlab.fileio import check_writable_file, write_stdout

    given = given_fields(args)
    auto_batch = "batch" not in given
    if args.max_gpus < 1:
        raise QuantlabError(f"--max-gpus must be at least 1, got {args.max_gpus}")
    if args.top < 1:
        raise QuantlabError(f"--top must be at least 1, got {args.top}")
    if args.budget_per_hour is not None and not args.budget_per_hour > 0:
        raise QuantlabError(f"--budget-per-hour must be positive, got {args.budget_per_hour}")
    for flag in ("train_tokens", "serve_tokens_per_day"):
        v = getattr(args, flag)
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise QuantlabError(f"--{flag.replace('_', '-')} must be a positive number, got {v}")
    for flag in ("zero", "fsdp", "offload", "tp", "device"):
        if flag in given:
            raise QuantlabError(f"recommend chooses the sharding itself (DDP, ZeRO, FSDP, offload, tensor parallel); "
                                f"drop --{flag}, or plan that one configuration with 'quantlab plan'")
    names = list(profiles.list_gpus())
    if args.gpus is not None:
        names = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if not names:
            raise QuantlabError("--gpus is empty; give GPU profile names (see 'quantlab profiles')")
    plot_path = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if args.out:
        check_writable_file(args.out, "--out")
    if plot_path:
        check_writable_file(plot_path, "--plot")
    counts = [args.num_gpus] if args.num_gpus != 1 else None
    args.num_gpus = 1
    cfg = config_from_args(args)
    data_tokens = None
    if args.data:
        cfg, data_tokens = config_from_data(args, cfg, given)
    if not cfg.method.is_training:
        return run_serving(args, cfg, names, counts, given)
    from quantlab.commands.serve_flags import serving_given

    extra = serving_given(args) + [f for f in ("buy", "headroom", "electricity_usd_per_kwh", "power_fraction")
                                   if getattr(args, f, None) not in (None, False)]
    if extra:
        raise QuantlabError(f"--{extra[0].replace('_', '-')} is a serving flag; it applies to --method inference")
    if cfg.method.is_training and args.serve_tokens_per_day is not None:
        raise QuantlabError("--serve-tokens-per-day is for --method inference; a training method takes --train-tokens")
    if not cfg.method.is_training and args.train_tokens is not None:
        raise QuantlabError("--train-tokens is for training methods; --method inference takes --serve-tokens-per-day")
    gpus = [profiles.load_gpu(n) for n in names]
    if not gpus:
        raise QuantlabError("no GPU kinds to consider")
    train_tokens = args.train_tokens if args.train_tokens is not None else data_tokens
    rec = recommend(cfg, gpus, Goal(train_tokens, args.serve_tokens_per_day), max_gpus=args.max_gpus,
                    budget_per_hour=args.budget_per_hour, sort=args.sort, auto_batch=auto_batch,
                    all_shardings=args.all_shardings, counts=counts)
    text = render(rec, args.format, args.top)
    png = plot(rec) if plot_path and rec.options else None  # rendered before anything is written or printed
    if args.out:
        from quantlab.fileio import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        write_stdout(text)
    if plot_path:
        if png is None:
            print("no configuration fits: no plot written", file=sys.stderr)
        else:
            from quantlab.fileio import atomic_write_bytes

            atomic_write_bytes(plot_path, png)
            print(f"wrote {plot_path}", file=sys.stderr)
    return 0 if rec.options else 1


def config_from_data(args: argparse.Namespace, cfg, given):
    """``--data``: (the configuration at the longest batch the dataloader draws, one epoch of padded tokens).

    The records are those ``quantlab data inspect`` keeps (filters, exact and near dedup at its defaults); the
    batches are its dynamic-padding simulation at ``cfg.batch`` (``quantlab.data.lengths``, seed 0), planned with
    the padding mask (``--padded``) at the widest batch. What was derived is said on stderr."""
    import dataclasses

    from quantlab.commands.data import tokenizer_source
    from quantlab.data.inspection import InspectOptions, inspect, kept_lengths
    from quantlab.data.lengths import batch_sizes, batch_widths, percentile

    if not cfg.method.is_training:
        raise QuantlabError("--data sizes a fine-tune; give a training --method (qlora, lora, full, ...)")
    if "seq" in given:
        raise QuantlabError("--data sets --seq to the longest batch the data set draws; drop --seq")
    ins = inspect(InspectOptions(path=args.data, model=tokenizer_source(args), progress=False))
    lens = kept_lengths(ins)
    if not lens:
        raise QuantlabError(f"{args.data}: no records left after the quality filters and dedup")
    widths = batch_widths(lens, cfg.batch, 0)
    tokens = sum(w * s for w, s in zip(widths, batch_sizes(len(lens), cfg.batch)))
    cfg = dataclasses.replace(cfg, seq=max(widths), padding_mask=True)
    print(f"data: {args.data}: {len(lens)} of {len(ins.records)} records kept; {len(widths)} batches of "
          f"{cfg.batch}, widths p50 {percentile(widths, 50)}, p95 {percentile(widths, 95)}, max {max(widths)}: "
          f"planned at seq {cfg.seq} (padded); one epoch = {tokens:,} padded tokens"
          + ("" if args.train_tokens is None else " (--train-tokens given: used instead)"), file=sys.stderr)
    return cfg, float(tokens)


def run_serving(args: argparse.Namespace, cfg, names: list[str], counts, given) -> int:
    """``recommend --method inference``: rent or buy serving layouts (planner.recommend.recommend_serving)."""
    from quantlab import profiles
    from quantlab.commands.serve_flags import serve_config_from_args
    from quantlab.fileio import atomic_write_text, write_stdout
    from quantlab.planner.recommend import DEFAULT_HEADROOM, BuyCosts, recommend_serving

    if args.train_tokens is not None:
        raise QuantlabError("--train-tokens is for training methods; --method inference takes --serve-tokens-per-day")
    if args.plot:
        raise QuantlabError("--plot draws training time against cost; a serving recommendation has no plot")
    headroom = DEFAULT_HEADROOM if args.headroom is None else args.headroom
    if not 0 <= headroom < 1:
        raise QuantlabError(f"--headroom must be in [0, 1), got {headroom}")
    kw = {}
    for flag, name in (("electricity_usd_per_kwh", "electricity_usd_per_kwh"), ("power_fraction", "power_fraction")):
        v = getattr(args, flag)
        if v is not None:
            if not (v > 0 and math.isfinite(v)) or (flag == "power_fraction" and v > 1):
                raise QuantlabError(f"--{flag.replace('_', '-')} must be a positive number"
                                    + (" of at most 1" if flag == "power_fraction" else "") + f", got {v}")
            kw[name] = v
    if kw and not args.buy:
        raise QuantlabError(f"--{next(iter(kw)).replace('_', '-')} prices buying; add --buy")
    explicit = args.concurrency if args.concurrency is not None else (cfg.batch if "batch" in given else None)
    base = serve_config_from_args(args, cfg)
    gpus = [profiles.load_gpu(n) for n in names]
    buy = {}
    for g in gpus:
        try:
            d = profiles.gpu_doc(g.name)
            buy[g.name] = (d["purchase_usd"]["value"], d["power_watts"]["value"], d["purchase_usd"]["source"],
                           d["power_watts"]["source"])
        except (KeyError, TypeError, QuantlabError):
            buy[g.name] = (None, None, None, None)
    rec = recommend_serving(base, gpus, tokens_per_day=args.serve_tokens_per_day, max_gpus=args.max_gpus,
                            counts=counts, headroom=headroom, concurrency=explicit,
                            budget_per_hour=args.budget_per_hour, buy=buy,
                            costs=BuyCosts(**kw) if args.buy else None)
    text = render_serving(rec, args.format, args.top)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        write_stdout(text)
    return 0 if rec.options else 1


def _dated(source: str | None, basis: str | None) -> str:
    """'assumed, recorded 2026-11-22' from a profile's source line."""
    import re

    m = re.search(r"recorded (\d{4}-\d{2}-\d{2})", source or "")
    return f"{basis or 'assumed'}, recorded {m.group(1)}" if m else (basis or "assumed")


def _k(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x / 1e6:.1f}M" if x >= 1e6 else f"${x / 1e3:.0f}k" if x >= 1e4 else f"${x:,.0f}"


SERVE_HEADERS = ["#", "GPU", "GPUs", "layout", "conc", "GiB/GPU", "tok/s", "$/day", "$/Mtok"]
BUY_HEADERS = ["buy", "kW", "even"]


def _serve_rows(rec, top: int | None):
    from quantlab.units import GiB

    for i, o in enumerate(rec.options[:top] if top else rec.options):
        rent = o.rent_usd_per_hour
        row = [str(i + 1), o.gpu, f"{o.copies}x{o.count}" if o.copies > 1 else str(o.count), o.layout,
               str(o.concurrency), f"{o.memory_per_gpu_bytes / GiB:.0f}/{o.gpu_memory_bytes / GiB:.0f}",
               f"{o.tokens_per_s:,.0f}", fmt_usd(None if rent is None else rent * 24),
               "-" if o.rent_usd_per_m_tokens is None else f"{o.rent_usd_per_m_tokens:.2f}"]
        if rec.costs is not None:
            b = o.buy(rec.costs)
            row += ["-", "-", "-"] if b is None else [
                _k(b["purchase_usd"]), f"{b['power_kw']:.1f}",
                "-" if b["break_even_months"] is None else f"{b['break_even_months']:.0f}mo"]
        yield row


def serving_summary(rec) -> list[str]:
    from quantlab.units import fmt_bytes

    if not rec.options:
        why = ", ".join(f"{k}: {v}" for k, v in rec.rejected.items()) or "no GPU profiles"
        return [f"Nothing fits ({rec.considered} layouts planned; {why}). Try --max-gpus higher, a shorter context, "
                "a k-bit --precision, or --headroom lower."]
    lines = []
    priced = [o for o in rec.options if o.rent_usd_per_m_tokens is not None]
    day = f" to serve {rec.tokens_per_day:.3g} tokens a day" if rec.tokens_per_day else ""
    if priced:
        o = priced[0]
        per_m = (o.rent_usd_per_hour * 24 / (rec.tokens_per_day / 1e6) if rec.tokens_per_day
                 else o.rent_usd_per_m_tokens)
        lines.append(f"Rent: {o.gpus} x {o.gpu} ({o.layout}{f', {o.copies} copies' if o.copies > 1 else ''}){day}: "
                     f"{fmt_usd(o.rent_usd_per_hour * 24)}/day, ${per_m:.2f} per M tokens"
                     f"{' served' if rec.tokens_per_day else ''}; "
                     f"{fmt_bytes(o.memory_per_gpu_bytes)} of {fmt_bytes(o.gpu_memory_bytes)} per GPU, "
                     f"{fmt_bytes(o.headroom_bytes)} kept free ({rec.headroom:.0%} headroom).")
    if rec.costs is not None:
        owned = [(o, o.buy(rec.costs, rec.tokens_per_day)) for o in rec.options]
        owned = [(o, b) for o, b in owned if b is not None]
        if owned:
            o, b = min(owned, key=lambda t: t[1]["own_usd_per_m_tokens"])
            lines.append(f"Buy: {o.gpus} x {o.gpu} ({o.layout}){day}: {_k(b['purchase_usd'])} up front, "
                         f"{b['power_kw']:.1f} kW ({fmt_usd(b['power_usd_per_month'])}/month), "
                         f"${b['own_usd_per_m_tokens']:.2f} per M tokens{' served' if rec.tokens_per_day else ''} "
                         f"over {rec.costs.amortize_months} months"
                         + (f"; breaks even against renting it after {b['break_even_months']:.0f} months."
                            if b["break_even_months"] else "; renting it is never dearer than its power."))
    lines.append(f"{rec.considered} layouts planned, {len(rec.options)} ranked (the best layout per GPU kind and "
                 "count)" + (" (left out: " + "; ".join(f"{k}: {v}" for k, v in rec.rejected.items()) + ")"
                             if rec.rejected else "") + ".")
    return lines


def render_serving(rec, fmt: str, top: int = 15) -> str:
    if fmt == "json":
        return json.dumps(rec.to_dict(), indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ["rank", "gpu", "count", "copies_to_keep_up", "gpus", "layout", "tp", "replicas", "engine",
                "concurrency", "memory_per_gpu_bytes", "gpu_memory_bytes", "headroom_bytes", "tokens_per_s",
                "cost_per_hour_usd", "rent_usd_per_m_tokens", "purchase_usd", "power_kw", "break_even_months"]
        w.writerow(cols)
        for i, o in enumerate(rec.options):
            d = dict(o.to_dict(rec.costs, rec.tokens_per_day), rank=i + 1)
            d.update({k: (d["buy"] or {}).get(k) for k in ("purchase_usd", "power_kw", "break_even_months")})
            w.writerow(["" if d[c] is None else d[c] for c in cols])
        return buf.getvalue()
    b = rec.base
    title = (f"{b.plan.model.name} serving on {b.engine.value} ({b.plan.precision.value}), prompt {b.prompt_tokens}"
             f" + new {b.new_tokens}" + (f": {rec.tokens_per_day:.3g} tokens/day" if rec.tokens_per_day else ""))
    headers = SERVE_HEADERS + (BUY_HEADERS if rec.costs is not None else [])
    right = set(headers) - {"GPU", "layout"}
    assumptions = list(rec.assumptions)
    shown = list(dict.fromkeys(o.gpu for o in rec.options[:top]))
    for name in shown:
        f = rec.gpu_facts[name]
        line = (f"{name}: rent ${f['price_usd_per_hour']}/GPU-h ({_dated(f['price_source'], f['price_basis'])})"
                if f["price_usd_per_hour"] is not None else f"{name}: no rent price")
        if rec.costs is not None:
            line += ("; buy " + (f"${f['purchase_usd']:,.0f}/GPU ({_dated(f['purchase_source'], 'assumed')})"
                                 if f.get("purchase_usd") is not None else "unpriced")
                     + (f"; {f['power_watts']:.0f} W TDP (datasheet)" if f.get("power_watts") is not None else ""))
        assumptions.append(line)
    assumptions.append("sources of every price: --format json (assumptions.gpus)")
    if fmt == "markdown":
        lines = [f"# Serving: {title}", ""] + [f"- {x}" for x in serving_summary(rec)] + [""]
        if rec.options:
            lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(r) + " |" for r in _serve_rows(rec, top)]
        lines += ["", "Assumptions:", ""] + [f"- {a}" for a in assumptions] + [""]
        return "\n".join(lines)
    from rich import box
    from rich.table import Table

    from quantlab.fileio import render_text

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
              collapse_padding=True, show_edge=False)
    for h in headers:
        t.add_column(h, justify="right" if h in right else "left", no_wrap=True)
    for r in _serve_rows(rec, top):
        t.add_row(*r)
    out: list = []
    if rec.options:
        out.append(t)
        legend = ("GPUs: copies x GPUs per copy; conc: sequences per replica; GiB/GPU: used/total; tok/s: decode, "
                  "one copy; $/Mtok: renting, at full load")
        if rec.costs is not None:
            legend += "; buy: GPUs + host; kW: power drawn; even: months to break even against renting"
        out.append(legend + (f" ({len(rec.options) - top} more rows in --format json/csv)"
                             if len(rec.options) > top else ""))
    out += serving_summary(rec)
    out.append("Assumptions:")
    out += [f"  - {a}" for a in assumptions]
    return render_text(*out)


# ---- rendering ------------------------------------------------------------------------------------

def fmt_usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def _label(o) -> str:
    return f"{o.count}x {o.gpu} {o.sharding}"


def summary_lines(rec) -> list[str]:
    """The explanation: what answers the question, and the trade-off the front offers."""
    from quantlab.units import fmt_bytes

    if not rec.options:
        why = ", ".join(f"{k}: {v}" for k, v in rec.rejected.items()) or "no GPU profiles"
        return [f"Nothing fits ({rec.considered} configurations planned; {why}). Try --max-gpus higher, a smaller "
                "--batch/--seq, --grad-checkpointing, or a k-bit precision."]
    priced = [o for o in rec.options if o.cost_usd is not None]
    lines = []
    if priced:
        cheap = min(priced, key=lambda o: (o.cost_usd, o.time_s))
        fast = min(priced, key=lambda o: (o.time_s, o.cost_usd))
        lines.append(f"Cheapest: {_label(cheap)}: {fmt_seconds(cheap.time_s)}, {fmt_usd(cheap.cost_usd)} "
                     f"({fmt_bytes(cheap.memory_per_gpu_bytes)} of {fmt_bytes(cheap.gpu_memory_bytes)} per GPU, "
                     f"{cheap.bound}-bound).")
        lines.append(f"Fastest:  {_label(fast)}: {fmt_seconds(fast.time_s)}, {fmt_usd(fast.cost_usd)} "
                     f"({fast.bound}-bound).")
        if rec.goal.serve_tokens_per_day:
            lines.append(f"To keep up with {rec.goal.serve_tokens_per_day:.3g} tokens a day, run "
                         f"{cheap.replicas_to_keep_up} cop{'y' if cheap.replicas_to_keep_up == 1 else 'ies'} of the "
                         f"cheapest all day ({cheap.replicas_to_keep_up * cheap.count} GPUs), or "
                         f"{fast.replicas_to_keep_up} of the fastest ({fast.replicas_to_keep_up * fast.count} GPUs).")
        front = rec.pareto
        if len(front) > 2:
            lines.append("Pareto front (no option is both faster and cheaper): "
                         + "; ".join(f"{_label(o)} {fmt_seconds(o.time_s)} {fmt_usd(o.cost_usd)}" for o in front) + ".")
    lines.append(f"{rec.considered} configurations planned, {rec.fitting} fit"
                 + (" (left out: " + "; ".join(f"{k}: {v}" for k, v in rec.rejected.items()) + ")"
                    if rec.rejected else "")
                 + (f"; ranked: the best sharding of each GPU kind and count ({len(rec.options)}; --all-shardings "
                    "ranks every one)." if len(rec.options) < rec.fitting else "."))
    return lines


def _rows(rec, top: int | None):
    from quantlab.units import GiB, fmt_bytes

    for i, o in enumerate(rec.options[:top] if top else rec.options):
        yield [f"{i + 1}{'*' if o.pareto else ''}", o.gpu, str(o.count), o.sharding, str(o.batch),
               f"{fmt_bytes(o.memory_per_gpu_bytes, digits=1).split()[0]}/{o.gpu_memory_bytes / GiB:.0f}",
               f"{o.tokens_per_s:,.0f}", fmt_seconds(o.time_s), fmt_usd(o.cost_usd), fmt_usd(o.cost_per_hour_usd),
               o.bound]


# "#" carries "*" for the Pareto front; memory is GiB used / GiB on the GPU (narrow enough for 80 columns)
HEADERS = ["#", "GPU", "n", "sharding", "batch", "GiB/GPU", "tok/s", "time", "cost", "$/h", "bound"]
RIGHT = ("#", "n", "batch", "GiB/GPU", "tok/s", "time", "cost", "$/h")


def _assumption_lines(rec, top: int = 15) -> list[str]:
    """The recommender's assumptions, then the interconnect and price of each GPU kind in the shown rows, with
    the price's source (once when the profiles share it)."""
    out = list(rec.assumptions)
    shown = []
    for o in rec.options[:top]:
        if o.gpu not in shown:
            shown.append(o.gpu)
    facts = [(n, rec.gpu_facts[n]) for n in shown]
    sources = {f["price_source"] for _, f in facts if f["price_usd_per_hour"] is not None}
    for name, f in facts:
        link = f["interconnect_bandwidth_bytes_per_s"]
        price = f["price_usd_per_hour"]
        out.append(f"{name}: {f['interconnect'] or 'no peer link'}" + (f" {link / 1e9:.0f} GB/s" if link else "")
                   + (f"; ${price}/GPU-hour" if price is not None else "; no price")
                   + (f" ({f['price_source']})" if price is not None and len(sources) > 1 else ""))
    if len(sources) == 1:
        out.append(f"prices: {sources.pop()}")
    return out


def render(rec, fmt: str, top: int = 15) -> str:
    if fmt == "json":
        return json.dumps(rec.to_dict(), indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ["rank", "pareto", "gpu", "count", "sharding", "tp", "dp", "zero", "fsdp", "offload", "batch", "seq",
                "memory_per_gpu_bytes", "gpu_memory_bytes", "tokens_per_s", "time_s", "cost_usd",
                "price_usd_per_gpu_hour", "bound"]
        w.writerow(cols)
        for i, o in enumerate(rec.options):
            d = dict(o.to_dict(), rank=i + 1)
            w.writerow(["" if d[c] is None else d[c] for c in cols])
        return buf.getvalue()
    b = rec.base
    title = (f"{b.model.name}, {b.method.value} ({b.precision.value} weights, {b.compute_dtype.value} compute), "
             f"seq {b.seq}: {rec.goal.described}")
    if fmt == "markdown":
        lines = [f"# GPU recommendation: {title}", ""]
        lines += [f"- {s}" for s in summary_lines(rec)] + [""]
        if rec.options:
            lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
            lines += ["| " + " | ".join(r) + " |" for r in _rows(rec, top)]
        lines += ["", "Assumptions:", ""] + [f"- {a}" for a in _assumption_lines(rec, top)] + [""]
        return "\n".join(lines)
    # table (rich), at the output's width (80 columns in a log)
    from rich import box
    from rich.table import Table

    from quantlab.fileio import render_text

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
              collapse_padding=True, show_edge=False)
    for h in HEADERS:
        t.add_column(h, justify="right" if h in RIGHT else "left", no_wrap=h != "sharding")
    for r in _rows(rec, top):
        t.add_row(*r)
    out: list = []
    if rec.options:
        out.append(t)
        if len(rec.options) > top:
            out.append(f"({len(rec.options) - top} more in --format json/csv; * = on the Pareto front of time vs "
                       "cost)")
        else:
            out.append("(* = on the Pareto front of time vs cost)")
    out += summary_lines(rec)
    out.append("Assumptions:")
    out += [f"  - {a}" for a in _assumption_lines(rec, top)]
    return render_text(*out)


def plot(rec) -> bytes:
    """Time against cost, one colour per GPU kind, the Pareto front as a line (matplotlib, Agg): PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = [o for o in rec.options if o.cost_usd is not None]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    kinds = sorted({o.gpu for o in priced})
    cmap = plt.get_cmap("tab20", max(len(kinds), 1))
    for k, kind in enumerate(kinds):
        pts = [o for o in priced if o.gpu == kind]
        ax.scatter([o.time_s / 3600 for o in pts], [o.cost_usd for o in pts], s=[18 + 10 * o.count for o in pts],
                   color=cmap(k), alpha=0.75, label=kind, edgecolors="none")
    front = rec.pareto
    if front:
        ax.plot([o.time_s / 3600 for o in front], [o.cost_usd for o in front], "k--", lw=1, drawstyle="steps-post",
                label="Pareto front")
        for o in front:
            ax.annotate(f"{o.count}x{o.gpu} {o.sharding}", (o.time_s / 3600, o.cost_usd), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time (hours, log)")
    ax.set_ylabel("cost (USD, log; indicative on-demand prices)")
    b = rec.base
    ax.set_title(f"{b.model.name} {b.method.value}, seq {b.seq}: {rec.goal.described}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best", title="marker size: GPU count", title_fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
