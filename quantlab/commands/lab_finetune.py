"""``quantlab lab finetune``: fine-tune a real model and measure memory per component, speed and task quality."""

from __future__ import annotations

import argparse
import sys

HARNESS = 2  # bump when what a stored fine-tune row means changes (its key then changes: no stale reuse)


def register(sub) -> None:
    from quantlab.lab.finetune import METHODS, OPTIMIZERS, PRECISIONS

    p = sub.add_parser(
        "finetune", help="fine-tune (QLoRA, LoRA, full, freeze, IA3, prefix, prompt, QAT) and measure it",
        description="Fine-tune the model on a shipped task or your JSONL, measuring memory per component "
                    "(weights, quantization constants, adapters, gradients, optimizer states, activations saved for "
                    "backward, logits + loss) beside the planner's prediction, seconds per step, tokens/s, loss "
                    "curves, and exact match / token F1 before and after. Results go to the results store; "
                    "'quantlab report' renders them next to the PTQ runs.",
        epilog="Examples:\n  quantlab lab finetune --method qlora --task json-extract\n"
               "  quantlab lab finetune --method lora --data my.jsonl --max-steps 200 --grad-checkpointing\n"
               "  quantlab lab finetune --method qat --max-steps 60   # QAT vs PTQ at int4\n"
               "Data: JSONL with {\"prompt\", \"response\"} or {\"messages\": [...]} per line.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (embedded) or a local model folder")
    p.add_argument("--method", choices=METHODS, default="qlora",
                   help="qlora: 4-bit base + LoRA (least memory); lora; full (all weights: most memory); freeze (last "
                        "blocks); ia3/prefix/prompt (fewest trainable parameters); qat (int4 fake-quant fine-tune, "
                        "compared with PTQ of a plain fine-tune)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", default=None, help="a shipped task under tasks/ (default json-extract)")
    src.add_argument("--data", default=None, help="your JSONL file (split 80/10/10 into train/validation/test)")
    p.add_argument("--max-steps", type=int, default=40, help="optimizer steps (early stopping may end sooner)")
    p.add_argument("--batch", type=int, default=8, help="sequences per micro-batch (memory grows with it)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step: a larger effective "
                   "batch for no more activation memory, at proportionally more time per step")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per method: 1e-3 LoRA/QLoRA, 5e-5 "
                   "full/QAT, 1e-4 freeze, 3e-3 IA3/prefix/prompt)")
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine",
                   help="learning-rate decay after the linear warm-up")
    p.add_argument("--warmup-steps", type=int, default=5, help="linear warm-up steps")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (adapter size and memory grow with it)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (the update is scaled by alpha/r)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter input (saves a mask per "
                   "adapter for backward)")
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj",
                   help="modules that get adapters, comma-separated, or all-linear")
    p.add_argument("--quant-type", choices=("nf4", "fp4"), default="nf4", help="QLoRA's 4-bit format")
    p.add_argument("--double-quant", action="store_true",
                   help="QLoRA: quantize the NF4 absmax constants too (~0.4 bit/weight less, slower dequantization)")
    p.add_argument("--freeze-last-layers", type=int, default=2, help="freeze: the last k blocks train")
    p.add_argument("--freeze-modules", default="", help="freeze: also train these named modules (e.g. model.norm)")
    p.add_argument("--num-virtual-tokens", type=int, default=20, help="prefix/prompt tuning: virtual tokens")
    p.add_argument("--qat-group-size", type=int, default=32, help="QAT/PTQ: int4 weights per scale group")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="adamw (2 fp32 states per weight); adamw-8bit / paged-* (bitsandbytes: 8-bit states, paged "
                        "memory on CUDA); lion / sgd-momentum (one state); adafactor (factored); sgd (none)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (right on a CPU); bf16/fp16 pure (half the weight memory, fp16 may overflow); "
                        "amp-bf16 / amp-fp16 (fp32 master weights, autocast; fp16 with gradient scaling)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward: far fewer saved bytes, ~30%% slower steps")
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                   help="sdpa (fused, no seq^2 scores kept) or eager (keeps heads x seq^2 scores)")
    p.add_argument("--max-len", type=int, default=128, help="longest record in tokens (a longer one is an error)")
    p.add_argument("--pad-to-max-len", action="store_true",
                   help="pad every batch to --max-len (a fixed shape; padding makes the model keep an attention mask) "
                        "instead of to its longest record")
    p.add_argument("--packing", action="store_true",
                   help="concatenate examples into rows of exactly --max-len tokens: no padding (the shape the "
                        "planner assumes, fewer wasted tokens), but an example may attend to the one before it")
    p.add_argument("--prompt-loss-weight", type=float, default=0.0, help="0: learn the response only; 1: prompt too")
    p.add_argument("--eval-every", type=int, default=10, help="steps between validation losses (early stopping)")
    p.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    p.add_argument("--eval-items", type=int, default=40, help="test items scored for exact match / F1")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit when scoring")
    p.add_argument("--checkpoint-dir", default=None, help="save resumable checkpoints here; rerun to resume")
    p.add_argument("--out", default="reports/finetune", help="folder for loss curves, histories and adapters")
    p.add_argument("--store", default=None, help="results database (default reports/quantlab.sqlite)")
    p.add_argument("--redo", action="store_true", help="run again even if the store holds this configuration")
    p.add_argument("--no-eval-before", dest="eval_before", action="store_false",
                   help="skip scoring the base model first (saves a minute when the base score is already known)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def config_from_args(args):
    from quantlab.lab.finetune import FinetuneConfig

    split = lambda s: tuple(t.strip() for t in s.split(",") if t.strip())  # noqa: E731
    task = args.task if (args.task or args.data) else "json-extract"
    return FinetuneConfig(
        method=args.method, model=args.model, task=None if args.data else task, data=args.data, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, lora_targets=split(args.lora_targets),
        quant_type=args.quant_type, double_quant=args.double_quant, freeze_last_layers=args.freeze_last_layers,
        freeze_modules=split(args.freeze_modules), num_virtual_tokens=args.num_virtual_tokens,
        qat_group_size=args.qat_group_size, optimizer=args.optimizer, precision=args.precision, lr=args.lr,
        schedule=args.schedule, warmup_steps=args.warmup_steps, batch=args.batch, grad_accum=args.grad_accum,
        max_steps=args.max_steps, max_len=args.max_len, pad_to_max_len=args.pad_to_max_len, packing=args.packing,
        grad_checkpointing=args.grad_checkpointing, attn=args.attn, eval_every=args.eval_every,
        patience=args.patience, prompt_loss_weight=args.prompt_loss_weight, seed=args.seed,
        eval_items=args.eval_items, max_new_tokens=args.max_new_tokens, checkpoint_dir=args.checkpoint_dir)


def run(args) -> int:
    import dataclasses
    from pathlib import Path

    from quantlab.errors import QuantlabError
    from quantlab.lab.finetune_report import summary
    from quantlab.report.store import ResultStore, RunRecord, config_key

    cfg = config_from_args(args)
    if not cfg.data_path.is_file():  # an unknown task raises here; a missing file before any model loads
        raise QuantlabError(f"data file {cfg.data_path} not found")
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    store = ResultStore(args.store)
    conf = dataclasses.asdict(cfg)
    conf.pop("checkpoint_dir")  # where checkpoints go does not change the result
    if cfg.data:
        conf["data"] = str(Path(cfg.data).resolve())
    conf["harness"] = HARNESS
    kind = "qat" if cfg.method == "qat" else "finetune"
    first_key = config_key(kind, cfg.model, "qat-int4" if kind == "qat" else cfg.method, conf)
    old = store.get(first_key)
    if old is not None and not args.redo:
        log(f"this configuration is already in {store.path} (from {old.created_at}); --redo runs it again")
        olds = [r for r in store.records(kind, cfg.model) if r.config == old.config]
        for r in olds:
            print(summary(r.method, r.metrics, r.artifacts))
        return 0
    rows = run_config(cfg, Path(args.out), log=log, progress=args.progress, evaluate_before=args.eval_before)
    from quantlab.report.env import environment

    env = environment()
    for method, metrics, artifacts in rows:
        key = config_key(kind, cfg.model, method, conf)
        store.put(RunRecord(key=key, kind=kind, model=cfg.model, method=method, config=conf, env=env,
                            metrics=metrics, artifacts=artifacts))
        print(summary(method, metrics, artifacts))
    print(f"stored in {store.path}; render with: quantlab report --kind {kind}", file=sys.stderr)
    return 0


def run_config(cfg, out, *, log, progress=True, evaluate_before=True):
    """Run one configuration (QAT: the QAT-vs-PTQ comparison); [(method, metrics, artifacts)]."""
    from pathlib import Path

    from quantlab.lab.finetune import PEFT_METHODS, history_csv, loss_curve_png, run_finetune

    name = f"{cfg.method}-{Path(cfg.data).stem if cfg.data else cfg.task}"
    if cfg.method == "qat":
        from quantlab.lab.qat_compare import compare

        return compare(cfg, log=log, out=out, progress=progress, evaluate_before=evaluate_before)
    keep = cfg.method in ("lora", "qlora")
    res = run_finetune(cfg, log=log, keep_model=keep, evaluate_before=evaluate_before, progress=progress)
    artifacts = {"loss_curve": str(loss_curve_png(res.history, out / f"{name}-loss.png",
                                                  f"{cfg.method} on {cfg.data or cfg.task}")),
                 "history": str(history_csv(res.history, out / f"{name}-history.csv"))}
    if keep and cfg.method in PEFT_METHODS:
        from quantlab.lab.adapters import merge_check, save_adapter
        from quantlab.lab.model import resolve

        adir = save_adapter(res.model, out / f"{name}-adapter")
        check = merge_check(resolve(cfg.model), adir, res.tokenizer)
        res.metrics["meas_merge_max_abs_logit_diff"] = check.max_abs_diff
        res.metrics["meas_merged_argmax_agreement"] = check.argmax_agreement
        artifacts["adapter"] = str(adir)
        log(f"adapter saved to {adir} ({check.adapter_bytes:,} bytes of safetensors), reloaded onto the fp32 base and "
            f"merged (W + alpha/r BA): max |logit difference| merged vs base+adapter {check.max_abs_diff:.2e}")
    return [(cfg.method, res.metrics, artifacts)]
