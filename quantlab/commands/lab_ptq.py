"""``quantlab lab ptq``: post-training quantization of a real model, measured side by side."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "ptq", help="quantize a real model several ways and measure memory, speed and quality",
        description="Load the model once per method (casts, bitsandbytes INT8/NF4/FP4, GPTQ, torchao), count the "
                    "bytes its tensors hold, time prefill and decode, and score perplexity, KL divergence and top-1 "
                    "agreement against FP32, per-layer SQNR and cloze-task accuracy. Each method is a row in the "
                    "results store; 'quantlab report' renders them.",
        epilog="Examples:\n  quantlab lab ptq --methods fp32,bf16,int8,nf4,gptq-int4\n"
               "  quantlab lab ptq --methods fp32,nf4,nf4-dq,fp4 --quick\n"
               "Methods: fp32 fp16 bf16 int8 nf4 nf4-dq fp4 gptq-int4 torchao-int8 torchao-intx4 torchao-int4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from quantlab.commands.flags import add_config_arguments

    # The model flag as every configuration command takes it; the weight formats, their block and group sizes
    # and the evaluation workload are what --methods names (each method maps onto PlanConfig fields:
    # quantlab.lab.ptq.PTQMethod.plan_dict), so no other configuration flag applies here.
    add_config_arguments(p, model_required=False, model_default="smollm2-135m", only=(),
                         model_help="smollm2-135m (the embedded real model), a local transformers folder "
                                    "(safetensors) or a .gguf (default: smollm2-135m)")
    p.add_argument("--methods", default="fp32,bf16,int8,nf4", help="comma-separated methods (see below) (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="small evaluation sizes (about a minute per method on 2 CPU cores): for a demo, not a report")
    p.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens for perplexity (default 2048; fp16/bf16 get 512 on a CPU where a quick probe measures their matmuls 4x or more slower than fp32: emulated, not native)")
    p.add_argument("--store", default=None, help="results database (default reports/quantlab.sqlite)")
    p.add_argument("--cloze-items", type=int, default=None, help="cloze task items to score (default 40 of 120; a quarter of that for fp16/bf16 on a CPU)")
    p.add_argument("--redo", action="store_true", help="run again even if the store has this configuration")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses
    import os

    # Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a machine whose
    # cores are shared with other jobs, spinning threads made a 64-token forward of the embedded model 3-20x
    # slower (2 threads, load average 4-8); on an idle machine the difference is small. Export
    # OMP_WAIT_POLICY=ACTIVE to override; the setting is stored with every run's environment.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from quantlab.errors import QuantlabError
    from quantlab.lab.ptq import EvalSizes, parse_methods, run_ptq
    from quantlab.report.store import ResultStore

    methods = parse_methods(args.methods)
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
                               log=lambda s: print(s, file=sys.stderr))
    if not records and skipped:
        raise QuantlabError(skipped[0])
    from quantlab.report.render import ptq_table

    print(ptq_table([r for r in records if r.kind == "ptq"], "table"))
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    print(f"stored in {store.path}; render with: quantlab report --store {store.path}", file=sys.stderr)
    return 0 if records else 1
