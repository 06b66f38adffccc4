"""``quantlab lab ptq``: post-training quantization of a real model, measured side by side."""

from __future__ import annotations

import argparse
import sys


DEFAULT_PRECISIONS = "fp32,bf16,int8,nf4"

# The configuration flags lab ptq shares with plan (same names, parsing and defaults: quantlab.commands.flags):
# the formats' own settings. The formats themselves are --precisions, compare's flag (a list: PTQ measures several
# formats side by side, where plan's --precision names one). No other plan flag applies, and why:
# - method (PTQ is inference), training and sharding flags: one process loads and scores each format;
# - batch / seq: the evaluation workload is fixed per figure (perplexity windows of --eval-tokens, prefill lengths,
#   decode tokens: quantlab.lab.ptq.EvalSizes), recorded with every row;
# - compute dtype: the device's (fp32 on a CPU, where bf16/fp16 matmuls are emulated; bf16 on a GPU; casts compute
#   in their own dtype), recorded in each method's plan (PTQMethod.plan_dict); kv dtype: the KV cache is not measured.
SHARED = ("double_quant", "group_size")


def register(sub) -> None:
    from quantlab.lab.ptq import REGISTRY

    methods = "\n".join(f"  {n:<14} {m.description}" for n, m in REGISTRY.items())
    p = sub.add_parser(
        "ptq", help="quantize a real model several ways and measure memory, speed and quality",
        description="Load the model once per weight format (casts, bitsandbytes INT8/NF4/FP4, GPTQ, torchao), count "
                    "the bytes its tensors hold, time prefill and decode, and score perplexity, KL divergence and "
                    "top-1 agreement against FP32, per-layer SQNR and cloze-task accuracy. Formats are named as in "
                    "'quantlab plan' / 'quantlab compare' (--precisions with --double-quant and --group-size), or "
                    "by method name (--methods). Each is a row in the results store; 'quantlab report' renders them.",
        epilog="Examples:\n  quantlab lab ptq --precisions fp32,bf16,int8,nf4,int4\n"
               "  quantlab lab ptq --precisions fp32,nf4,fp4 --double-quant --quick\n"
               "  quantlab lab ptq --methods fp32,nf4,nf4-dq,gptq-int4,torchao-intx4\n"
               "--precisions: fp32/fp16/bf16 cast at load; int8 bitsandbytes LLM.int8; nf4/fp4 bitsandbytes (with "
               "--double-quant: nf4-dq/fp4-dq); int4 GPTQ in --group-size groups (64: the method gptq-int4).\n"
               "Methods (--methods, a list of these names):\n" + methods,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from quantlab.commands.flags import add_config_arguments

    add_config_arguments(p, model_required=False, model_default="smollm2-135m", only=SHARED,
                         model_help="smollm2-135m (the embedded real model), a local transformers folder "
                                    "(safetensors) or a .gguf (default: smollm2-135m)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--precisions", default=None, metavar="A,B",
                      help="comma-separated weight precisions, the plan's names (fp32, fp16, bf16, int8, nf4, fp4, "
                           f"int4) (default: {DEFAULT_PRECISIONS})")
    what.add_argument("--methods", default=None, metavar="A,B",
                      help="comma-separated method names (listed below), each a backend with its format fixed; "
                           "instead of --precisions")
    p.add_argument("--quick", action="store_true",
                   help="small evaluation sizes (about a minute per method on 2 CPU cores): for a demo, not a report")
    p.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens for perplexity (default 2048; fp16/bf16 get 512 on a CPU where a quick probe measures their matmuls 4x or more slower than fp32: emulated, not native)")
    p.add_argument("--store", default=None, help="results database (default reports/quantlab.sqlite)")
    p.add_argument("--cloze-items", type=int, default=None, help="cloze task items to score (default 40 of 120; a quarter of that for fp16/bf16 on a CPU)")
    p.add_argument("--redo", action="store_true", help="run again even if the store has this configuration")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.set_defaults(func=run)


def methods_from_args(args):
    """The PTQ methods of the flags: --methods by name, else --precisions (the plan's names) with --double-quant and
    --group-size as the plan reads them (a flag no listed format uses is a one-line error)."""
    from quantlab.commands.flags import config_dict_from_args
    from quantlab.errors import QuantlabError
    from quantlab.lab.ptq import methods_for_precisions, parse_methods

    d = config_dict_from_args(args)
    if args.methods is not None:
        if d:
            raise QuantlabError("--double-quant and --group-size set the formats of --precisions; a --methods name "
                                "fixes its own (nf4-dq, gptq-int4)")
        return parse_methods(args.methods)
    from quantlab.commands.compare import precision_list

    return methods_for_precisions(precision_list(args.precisions or DEFAULT_PRECISIONS),
                                  double_quant=d.get("double_quant", False), group_size=d.get("group_size"))


def run(args) -> int:
    import dataclasses
    import os

    # Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a machine whose
    # cores are shared with other jobs, spinning threads made a 64-token forward of the embedded model 3-20x
    # slower (2 threads, load average 4-8); on an idle machine the difference is small. Export
    # OMP_WAIT_POLICY=ACTIVE to override; the setting is stored with every run's environment.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from quantlab import validate_lab
    from quantlab.errors import QuantlabError
    from quantlab.lab.ptq import EvalSizes, run_ptq
    from quantlab.report.store import ResultStore

    methods = methods_from_args(args)
    sizes = EvalSizes.quick() if args.quick else EvalSizes()
    if args.eval_tokens is not None:
        if args.eval_tokens < sizes.window:
            raise QuantlabError(f"--eval-tokens must be at least one window ({sizes.window})")
        sizes = dataclasses.replace(sizes, eval_tokens=args.eval_tokens, half_tokens=min(sizes.half_tokens, args.eval_tokens))
    if args.cloze_items is not None:
        if not 1 <= args.cloze_items <= 120:
            raise QuantlabError("--cloze-items must be in 1..120")
        sizes = dataclasses.replace(sizes, cloze_items=args.cloze_items)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    store = ResultStore(args.store)
    records, skipped = run_ptq(methods, args.model, store=store, redo=args.redo, sizes=sizes,
                               log=lambda s: print(s, file=sys.stderr),
                               predict=validate_lab.ptq_predictions)  # the planner's weights beside each row
    if not records and skipped:
        raise QuantlabError(skipped[0])
    from quantlab.report.render import ptq_table

    print(ptq_table([r for r in records if r.kind == "ptq"], "table"))
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    print(f"stored in {store.path}; render with: quantlab report --store {store.path}", file=sys.stderr)
    return 0 if records else 1
