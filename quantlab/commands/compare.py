"""``quantlab compare``: one method planned at FP32, FP16, BF16, INT8 and NF4 side by side, or (``--methods``)
several methods at one precision: the PlanConfig methods, TRL 1.16's preference objectives
(:mod:`quantlab.planner.preference`; their policy trains as ``--policy``, default lora) and the PEFT variants and
distillation (:mod:`quantlab.planner.peft_methods` through :mod:`quantlab.commands.variant_flags`: bitfit, dora,
ptuning, distill; a row whose variant lacks a flag it needs, or refuses the model, says why in its note)."""

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
                       epilog="Examples:\n  quantlab compare --model 8b --method lora --seq 2048 --gpu rtx-4090\n"
                              "  quantlab compare --model 8b --methods lora,dpo,orpo,kto,reward --batch 2 --gpu h100\n"
                              "  quantlab compare --model qwen2.5-0.5b --methods lora,dora,bitfit,ptuning,dpo "
                              "--encoder-hidden-size 128 --gpu rtx-4090",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(p, preference=True)
    o = p.add_argument_group("output")
    o.add_argument("--precisions", default=None, metavar="A,B",
                   help=f"comma-separated weight precisions to compare (default: {','.join(PRECISIONS)})")
    o.add_argument("--methods", default=None, metavar="A,B",
                   help="compare these methods at one weight precision instead (e.g. lora,dpo,orpo,kto,grpo: a "
                        "preference objective plans its policy as --policy; lora,dora,bitfit,ptuning,distill: a "
                        "variant takes its flags, --encoder-hidden-size, --teacher, ...; a flag that one row's "
                        "method ignores is left out of that row) (default: none, compare precisions)")
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


def _plan_and_fit(cfg, pref, gpu, variant=None):
    """(plan, fit or None): the preference planner for a preference row, peft_methods for a variant row."""
    from quantlab.planner import fit, plan
    from quantlab.planner.preference import preference_fit, preference_plan

    if variant is not None:
        from quantlab.commands.variant_flags import variant_fit, variant_plan

        return variant_plan(cfg, variant), (variant_fit(cfg, variant, gpu) if gpu is not None else None)
    if pref is None:
        return plan(cfg), (fit(cfg, gpu, suggest=False) if gpu is not None else None)
    return preference_plan(cfg, pref), (preference_fit(cfg, pref, gpu) if gpu is not None else None)


def _measured(row: dict, p, f, gpu) -> dict:
    row.update({f"{k}_bytes": v for k, v in p.components.items() if v})
    row.update(peak_allocated_bytes=p.peak_allocated_bytes, peak_reserved_bytes=p.peak_reserved_bytes,
               process_bytes=p.process_bytes, trainable_params=p.trainable_params)
    if f is not None:
        row.update(gpu=gpu.name, fits=f.fits, margin_bytes=f.margin_bytes, max_batch=f.max_batch)
    return row


def method_list(text: str) -> list[str]:
    """The --methods list: PlanConfig methods, preference objectives or variants, at least one, each once."""
    from quantlab.commands.preference_flags import PREFERENCE_METHODS
    from quantlab.commands.variant_flags import VARIANT_METHODS
    from quantlab.errors import QuantlabError
    from quantlab.specs import Method

    known = tuple(m.value for m in Method) + PREFERENCE_METHODS + VARIANT_METHODS
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise QuantlabError(f"--methods is empty; give one or more of {', '.join(known)}")
    for name in names:
        if name not in known:
            raise QuantlabError(f"unknown method {name!r} in --methods (known: {', '.join(known)})")
    dup = [n for i, n in enumerate(names) if n in names[:i]]
    if dup:
        raise QuantlabError(f"--methods names {dup[0]} twice")
    return names


def method_rows(args) -> list[dict]:
    """One row per --methods entry, at the flags' precision (the recipe's when not given: nf4 for qlora)."""
    from quantlab.commands.flags import given_fields
    from quantlab.commands.plan import config_from_args, resolve_gpu
    from quantlab.commands.preference_flags import POLICY_DEFAULT, is_preference, preference_for, trainer_defaults
    from quantlab.commands.variant_flags import base_method, check_recipe, is_variant, variant_for
    from quantlab.errors import QuantlabError
    from quantlab.specs import PlanConfig, SpecError

    names = method_list(args.methods)
    if args.precisions is not None:
        raise QuantlabError("give --methods or --precisions, not both (one axis at a time)")
    if "method" in given_fields(args):
        raise QuantlabError("--methods names the methods; drop --method (a preference row's policy is --policy)")
    from quantlab.commands.variant_flags import unused_variant_flag

    unused = unused_variant_flag(args, names)
    if unused:
        raise QuantlabError(unused)
    policy = args.policy or POLICY_DEFAULT
    args.method = policy
    gpu, _ = resolve_gpu(args.gpu, args)
    base = config_from_args(args, gpu=gpu, any_precision=True)
    given = given_fields(args)
    out = []
    for name in names:
        pref_row = is_preference(name)
        row = {"precision": None, "method": name, "policy": policy if pref_row else None}
        if is_variant(name):
            row["planned_over"] = base_method(name, args)
        try:
            pref = preference_for(args, name) if pref_row else None
            variant = variant_for(args, name) if is_variant(name) else None
            d = dict(base.to_dict(), method=policy if pref_row else row.get("planned_over", name))
            for k in ("precision", "grad_checkpointing", "double_quant"):  # each row is its own recipe
                if k not in given:
                    d.pop(k, None)
            if pref_row:  # the TRL trainer's own defaults (preference_flags.TRAINER_DEFAULTS)
                d.update(trainer_defaults(given))
            cfg = PlanConfig.from_dict(d)
            row["precision"], row["grad_checkpointing"] = cfg.precision.value, cfg.grad_checkpointing
            if variant is not None:
                check_recipe(cfg, variant, given)
            p, f = _plan_and_fit(cfg, pref, gpu, variant)
        except SpecError as e:
            row["precision"] = row["precision"] or base.precision.value
            row["note"] = str(e)
            out.append(row)
            continue
        out.append(_measured(row, p, f, gpu))
    return out


def rows(args) -> list[dict]:
    from quantlab.commands.flags import given_fields
    from quantlab.commands.plan import config_from_args, resolve_gpu
    from quantlab.commands.preference_flags import take_preference
    from quantlab.specs import Method, PlanConfig, Precision, SpecError

    if args.methods is not None:
        return method_rows(args)
    from quantlab.commands.variant_flags import check_recipe, take_variant

    names = precision_list(",".join(PRECISIONS) if args.precisions is None else args.precisions)
    args._objective = args.method
    variant = take_variant(args)  # a variant --method: args.method becomes the method it plans over
    pref = take_preference(args)  # a preference --method: its policy (--policy) is what changes precision
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
        row = {"precision": name, "method": variant.name if variant else method.value}
        if variant is not None:
            row["planned_over"] = method.value
        try:
            # each row is its own recipe (specs assumption 4): a QLoRA row turns checkpointing on, a LoRA row
            # leaves it off, unless the user gave --(no-)grad-checkpointing
            d = dict(base.to_dict(), precision=prec.value, method=method.value,
                     double_quant=base.double_quant and prec in (Precision.NF4, Precision.FP4))
            if "grad_checkpointing" not in given:
                del d["grad_checkpointing"]
            cfg = PlanConfig.from_dict(d)
            row["grad_checkpointing"] = cfg.grad_checkpointing
            if variant is not None:
                check_recipe(cfg, variant, given)
            p, f = _plan_and_fit(cfg, pref, gpu, variant)
        except SpecError as e:
            row["note"] = str(e)
            out.append(row)
            continue
        out.append(_measured(row, p, f, gpu))
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
          ("ref.\nmodel", ("reference_weights_bytes", "reward_model_bytes")),
          ("teacher", ("teacher_weights_bytes",)),
          ("act. +\nbuffers", ("activations_bytes", "logits_loss_bytes", "prefill_transient_bytes",
                              "optimizer_step_bytes", "logits_bytes", "logits_both_sequences_bytes",
                              "reward_scores_bytes", "reference_forward_bytes", "generation_transient_bytes",
                              "dora_forward_transient_bytes", "teacher_forward_bytes", "distill_logits_bytes",
                              "distill_loss_bytes")),
          ("KV\ncache", ("kv_cache_bytes", "generation_kv_cache_bytes", "teacher_kv_cache_bytes")),
          ("peak\nalloc.", ("peak_allocated_bytes",)), ("peak\nreserv.", ("peak_reserved_bytes",)),
          ("process", ("process_bytes",))]


def render(args, data: list[dict]) -> str:
    from quantlab.units import GiB

    if args.format == "json":
        head = {"methods": [r["method"] for r in data]} if args.methods else \
            {"method": getattr(args, "_objective", args.method)}
        return json.dumps({"model": args._resolved.name, "model_resolution": args._resolved.resolved_from,
                           **head, "rows": data}, indent=2) + "\n"
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

    if args.methods:
        policies = sorted({r["policy"] for r in data if r.get("policy")})
        title = f"{args._resolved.resolved_from}: methods side by side" + \
            (f" (preference rows: a {policies[0]} policy)" if policies else "") + " (GiB = 2^30 bytes)"
    else:
        what = getattr(args, "_objective", args.method)
        from quantlab.commands.variant_flags import is_variant

        if what != args.method:
            what += f" (over {args.method})" if is_variant(what) else f" (a {args.method} policy)"
        title = f"{args._resolved.resolved_from}: {what} by weight precision (GiB = 2^30 bytes)"
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
