"""``quantlab lab finetune``: fine-tune a real model and measure memory per component, speed and task quality."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    from quantlab.lab.finetune import METHODS, OPTIMIZERS, PRECISIONS

    p = sub.add_parser(
        "finetune", help="fine-tune (QLoRA, LoRA, full, freeze, prefix, prompt, QAT) and measure it",
        description="Fine-tune the model on a shipped task or your JSONL, measuring parameters, gradients, optimizer "
                    "states and bytes saved for backward (per component), seconds per step, loss curves, and exact "
                    "match / token F1 before and after. Results go to the results store; 'quantlab report' renders "
                    "them next to the PTQ runs.",
        epilog="Examples:\n  quantlab lab finetune --method qlora --task json-extract\n"
               "  quantlab lab finetune --method lora --data my.jsonl --max-steps 200 --grad-checkpointing\n"
               "  quantlab lab finetune --method qat --max-steps 60   # QAT vs PTQ at int4\n"
               "Data: JSONL with {\"prompt\", \"response\"} or {\"messages\": [...]} per line.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (embedded) or a local model folder")
    p.add_argument("--method", choices=METHODS, default="qlora",
                   help="qlora: 4-bit base + LoRA (least memory); lora; full (all weights: most memory); freeze; "
                        "prefix; prompt; qat (int4 fake-quant fine-tune vs PTQ)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", default=None, help="a shipped task under tasks/ (default json-extract)")
    src.add_argument("--data", default=None, help="your JSONL file")
    p.add_argument("--max-steps", type=int, default=120, help="optimizer steps (early stopping may end sooner)")
    p.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per method: 1e-3 LoRA, 5e-5 full)")
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine", help="LR schedule after warm-up")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (scale alpha/r)")
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", help="modules that get adapters")
    p.add_argument("--double-quant", action="store_true", help="QLoRA: double-quantize the NF4 constants")
    p.add_argument("--freeze-last-layers", type=int, default=2, help="freeze: the last k blocks train")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="adamw-8bit/paged-adamw need bitsandbytes kernels")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (right on a CPU), bf16 (pure), amp-bf16 / amp-fp16 (fp32 master weights, autocast)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory, ~30%% slower")
    p.add_argument("--max-len", type=int, default=128, help="longest record in tokens (longer is an error)")
    p.add_argument("--prompt-loss-weight", type=float, default=0.0, help="0: learn the response only; 1: prompt too")
    p.add_argument("--eval-every", type=int, default=20, help="steps between validation losses (early stopping)")
    p.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    p.add_argument("--eval-items", type=int, default=40, help="test items for exact match / F1")
    p.add_argument("--checkpoint-dir", default=None, help="save resumable checkpoints here; rerun to resume")
    p.add_argument("--out", default="reports/finetune", help="folder for loss curves and adapters")
    p.add_argument("--store", default=None, help="results database (default reports/quantlab.sqlite)")
    p.add_argument("--no-eval-before", dest="eval_before", action="store_false",
                   help="skip scoring the base model first (saves a minute when the base score is already known)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from quantlab.lab.finetune import FinetuneConfig, loss_curve_png, run_finetune
    from quantlab.report.env import environment
    from quantlab.report.store import ResultStore, RunRecord, config_key

    task = args.task if (args.task or args.data) else "json-extract"
    cfg = FinetuneConfig(method=args.method, model=args.model, task=None if args.data else task, data=args.data,
                         lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                         lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
                         double_quant=args.double_quant, freeze_last_layers=args.freeze_last_layers,
                         optimizer=args.optimizer, precision=args.precision, lr=args.lr, schedule=args.schedule,
                         batch=args.batch, grad_accum=args.grad_accum, max_steps=args.max_steps, max_len=args.max_len,
                         grad_checkpointing=args.grad_checkpointing, eval_every=args.eval_every,
                         patience=args.patience, prompt_loss_weight=args.prompt_loss_weight, seed=args.seed,
                         eval_items=args.eval_items, checkpoint_dir=args.checkpoint_dir)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    out = Path(args.out)
    store = ResultStore(args.store)
    import dataclasses

    conf = dataclasses.asdict(cfg)
    name = f"{cfg.method}-{Path(cfg.data).stem if cfg.data else cfg.task}"
    if cfg.method == "qat":
        from quantlab.lab.qat_compare import compare

        rows = compare(cfg, log=log, out=out)
    else:
        res = run_finetune(cfg, log=log, keep_model=cfg.method in ("lora", "qlora"), evaluate_before=args.eval_before)
        png = loss_curve_png(res.history, out / f"{name}-loss.png", f"{cfg.method} on {cfg.data or cfg.task}")
        artifacts = {"loss_curve": str(png)}
        if res.model is not None:
            from quantlab.lab.adapters import merge_check, save_adapter
            from quantlab.lab.model import resolve

            adir = save_adapter(res.model, out / f"{name}-adapter")
            diff, _ = merge_check(resolve(cfg.model), adir, res.tokenizer)
            res.metrics["meas_merge_max_abs_logit_diff"] = diff
            artifacts["adapter"] = str(adir)
            log(f"adapter saved to {adir}; merged model vs base+adapter: max |logit diff| {diff:.2e}")
        rows = [(cfg.method, res.metrics, artifacts)]
    env = environment()
    for method, metrics, artifacts in rows:
        key = config_key("finetune", cfg.model, method, conf)
        store.put(RunRecord(key=key, kind="finetune", model=cfg.model, method=method, config=conf, env=env,
                            metrics=metrics, artifacts=artifacts))
        keys = ("meas_exact_match_before", "meas_exact_match", "meas_token_f1", "meas_s_per_step",
                "meas_activation_bytes", "meas_gradient_bytes", "meas_optimizer_bytes", "meas_weight_bytes",
                "meas_trainable_params", "meas_peak_rss_bytes", "meas_perplexity")
        print(f"{method}: " + ", ".join(f"{k[5:]}={metrics[k]:.4g}" if isinstance(metrics.get(k), float)
                                        else f"{k[5:]}={metrics.get(k)}" for k in keys if k in metrics))
    print(f"stored in {store.path}; render with: quantlab report --kind finetune", file=sys.stderr)
    return 0
