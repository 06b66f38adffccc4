"""``quantlab lab finetune``: fine-tune a real model and measure memory per component, speed and task quality."""

from __future__ import annotations

import argparse
import sys

# bump when what a stored fine-tune row means changes (its key then changes: no stale reuse); 5: on Trainer
HARNESS = 5


# The PlanConfig fields lab finetune takes as 'quantlab plan' flags (same names, parsing and defaults:
# quantlab.commands.flags), i.e. every field a one-process lab run can act on. Not taken, and why:
# - num_gpus, zero, fsdp, offload, tp, stack: one process on the transformers stack (quantlab.lab.distributed runs
#   sharded plans); device: the lab's own device; kv_dtype: inference only; adapter_size: no bottleneck adapters;
# - flash_attention: what the lab's GPU runs (resolved from it, quantlab.lab.finetune_plan assumption 2);
# - group_size: int4 storage, which no lab fine-tune holds (QAT's int4 group is --qat-group-size);
# - padding_mask: the lab's batch layout decides it (--packing: none; padded batches: a mask; finetune_plan
#   assumption 3).
SHARED = ("method", "precision", "compute_dtype", "training_precision", "double_quant", "kbit_upcast", "optimizer",
          "batch", "seq", "lora_r", "lora_alpha", "lora_targets", "lora_dropout", "freeze_last_layers",
          "freeze_modules", "num_virtual_tokens", "grad_checkpointing", "grad_accum", "attn")


# What the defaults resolve to where the lab's device decides (quantlab.lab.finetune_plan assumption 2).
DEFAULT_TEXT = {"compute_dtype": "fp32 on a CPU (bf16/fp16 matmuls are emulated there), bf16 on a GPU with bf16, "
                                 "fp16 on one without",
                "precision": "nf4 for qlora; otherwise the compute dtype (pure) or fp32 (amp: master weights)"}


HELPS = {"method": "qlora: 4-bit base + LoRA (least memory); lora; full (all weights: most memory); freeze (last "
                   "blocks); ia3/prefix/prompt (fewest trainable parameters); qat (int4 fake-quant full fine-tune, "
                   "planned as --method full, compared with PTQ of a plain fine-tune)",
         "seq": "tokens per sequence: the longest record the run accepts (a longer one is an error), and the row "
                "width with --packing / --pad-to-max-len (the measured step is planned at its own width)"}


def register(sub) -> None:
    import dataclasses

    from quantlab.commands.flags import add_config_arguments
    from quantlab.lab.finetune import LAB_PLAN_DEFAULTS, METHODS, SCHEDULES, FinetuneConfig

    d = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}  # the lab's defaults exist once, there
    p = sub.add_parser(
        "finetune", help="fine-tune (QLoRA, LoRA, full, freeze, IA3, prefix, prompt, QAT) and measure it",
        description="Fine-tune the model on a shipped task or your JSONL, measuring memory per component "
                    "(weights, quantization constants, adapters, gradients, optimizer states, activations saved for "
                    "backward, logits + loss) beside the planner's prediction, seconds per step, tokens/s, loss "
                    "curves, and exact match / token F1 before and after. Results go to the results store; "
                    "'quantlab report' renders them next to the PTQ runs. The configuration flags (method, "
                    "precision, compute dtype, training precision, optimizer, batch, seq, LoRA, freeze, "
                    "checkpointing, attention, ...) are those of 'quantlab plan' with the same defaults, except "
                    "--method (the lab trains: qlora, and the lab-only qat) and --batch (the lab recipe's "
                    f"{LAB_PLAN_DEFAULTS['batch']}); the compute dtype left open is fp32 on a CPU (bf16 is emulated "
                    "there), bf16 on a GPU. QLoRA runs with gradient checkpointing, as PEFT's "
                    "prepare_model_for_kbit_training does, unless --no-grad-checkpointing.",
        epilog="Examples:\n  quantlab lab finetune --method qlora --task json-extract\n"
               "  quantlab lab finetune --method lora --data my.jsonl --max-steps 200 --grad-checkpointing\n"
               "  quantlab lab finetune --method full --precision bf16 --compute-dtype bf16   # pure bf16\n"
               "  quantlab lab finetune --method lora --training-precision amp --compute-dtype bf16  # fp32 masters\n"
               "  quantlab lab finetune --method qat --max-steps 60   # QAT vs PTQ at int4\n"
               "  quantlab lab finetune --method full --task quantlab-docs --packing --seq 256   # continued "
               "pre-training\n"
               "  quantlab lab finetune --method lora --data train.jsonl --val-file val.jsonl --test-file test.jsonl\n"
               "Data: JSONL with {\"prompt\", \"response\"}, {\"messages\": [...]} or {\"text\"} per line (one kind a "
               "file).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, model_required=False, model_default=d["model"], only=SHARED,
                         defaults=LAB_PLAN_DEFAULTS, choices={"method": METHODS + PREFERENCE_RUNS},
                         default_text=DEFAULT_TEXT,
                         helps=HELPS,
                         model_help=f"{d['model']} (embedded) or a local model folder (default: {d['model']})")
    lab = p.add_argument_group("the lab's run")
    lab.add_argument("--beta", type=float, default=None,
                     help="--method dpo|orpo|simpo|kto: the loss's beta (dpo/kto: the KL coefficient; orpo: the odds-"
                     "ratio weight lambda; simpo: the reward scale; default: 0.1, TRL's DPOConfig / ORPOConfig / "
                     "CPOConfig / KTOConfig); --method reward has none")
    src = lab.add_mutually_exclusive_group()
    src.add_argument("--task", default=None, help=f"a shipped task under tasks/ (default: {d['task']})")
    src.add_argument("--data", default=None, help="your JSONL file: prompt/response, chat messages, or text (continued "
                     "pre-training, with --packing); split into train/validation/test by --val-ratio/--test-ratio")
    dg = p.add_argument_group("data (the reader, filters and dedup of 'quantlab data inspect')")
    dg.add_argument("--near", type=float, default=d["near_threshold"], metavar="X",
                    help="near-duplicate threshold: Jaccard similarity of character 5-gram sets (MinHash LSH, "
                         "verified), in (0, 1]; lower removes more, 1 keeps near duplicates (default: %(default)s)")
    dg.add_argument("--semantic", type=float, nargs="?", const=0.85, default=d["semantic_threshold"], metavar="X",
                    help="also remove semantic duplicates (all-MiniLM-L6-v2 cosine, in (0, 1]; a hyperparameter: "
                         "lower removes paraphrases and more false matches; slow on a CPU) (default: off; a bare "
                         "--semantic is 0.85)")
    dg.add_argument("--val-ratio", type=float, default=None, metavar="X",
                    help="share of the records held out for validation (early stopping) (default: 0.1; 0 with "
                         "--val-file)")
    dg.add_argument("--test-ratio", type=float, default=None, metavar="X",
                    help="share held out for the test scores (exact match / F1, or perplexity for text) (default: "
                         "0.1; 0 with --test-file or a task that ships test.jsonl)")
    dg.add_argument("--val-file", default=None, metavar="JSONL",
                    help="your own validation set (the training data's format) instead of a split (default: none)")
    dg.add_argument("--test-file", default=None, metavar="JSONL",
                    help="your own test set (the training data's format) instead of a split; training records that "
                         "duplicate a validation/test record are removed (default: none)")
    lab.add_argument("--max-steps", type=int, default=d["max_steps"],
                     help="optimizer steps (early stopping may end sooner) (default: %(default)s)")
    lab.add_argument("--lr", type=float, default=d["lr"], help="learning rate (default per method: 1e-3 LoRA/QLoRA, "
                     "5e-5 full/QAT, 1e-4 freeze, 3e-3 IA3/prefix/prompt)")
    lab.add_argument("--schedule", choices=SCHEDULES, default=d["schedule"],
                     help="learning-rate decay after the linear warm-up (default: %(default)s)")
    lab.add_argument("--warmup-steps", type=int, default=d["warmup_steps"], help="linear warm-up steps (default: "
                     "%(default)s)")
    lab.add_argument("--qat-group-size", type=int, default=d["qat_group_size"],
                     help="QAT/PTQ: int4 weights per scale group (default: %(default)s)")
    lab.add_argument("--pad-to-max-len", action="store_true",
                     help="pad every batch to --seq tokens (a fixed shape; padding makes the model keep an attention "
                          "mask) instead of to its longest record")
    lab.add_argument("--packing", action="store_true",
                     help="concatenate examples into rows of exactly --seq tokens: no padding (the shape the "
                          "planner assumes, fewer wasted tokens), but an example may attend to the one before it")
    lab.add_argument("--prompt-loss-weight", type=float, default=d["prompt_loss_weight"],
                     help="0: learn the response only; 1: prompt too (default: %(default)s)")
    lab.add_argument("--eval-every", type=int, default=d["eval_every"],
                     help="steps between validation losses (early stopping) (default: %(default)s)")
    lab.add_argument("--patience", type=int, default=d["patience"],
                     help="evaluations without improvement before stopping (default: %(default)s)")
    lab.add_argument("--eval-items", type=int, default=d["eval_items"],
                     help="test items scored for exact match / F1 (default: %(default)s)")
    lab.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"],
                     help="answer length limit when scoring (default: %(default)s)")
    lab.add_argument("--checkpoint-dir", default=None, help="save resumable checkpoints here; rerun to resume")
    lab.add_argument("--out", default="reports/finetune",
                     help="folder for loss curves, histories and adapters (default: %(default)s)")
    lab.add_argument("--store", default=None, help="results database (default: reports/quantlab.sqlite)")
    lab.add_argument("--redo", action="store_true", help="run again even if the store holds this configuration")
    lab.add_argument("--no-eval-before", dest="eval_before", action="store_false",
                     help="skip scoring the base model first (saves a minute when the base score is already known)")
    lab.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    lab.add_argument("--seed", type=int, default=d["seed"], help="(default: %(default)s)")
    p.set_defaults(func=run)


def config_from_args(args, *, device: str | None = None, bf16: bool | None = None):
    """The FinetuneConfig of the flags: the plan's as ``quantlab plan`` reads them (``config_dict_from_args``,
    then PlanConfig.from_dict through :func:`quantlab.lab.finetune_plan.finetune_config`), the lab's own as given.
    A plan flag the configuration ignores is a one-line error, as in ``quantlab plan`` (``flags.check_given``).
    ``device`` / ``bf16``: the lab's device (default: the one found)."""
    from quantlab.commands.flags import check_given, config_dict_from_args, given_fields
    from quantlab.lab.finetune import FinetuneConfig
    from quantlab.lab.finetune_plan import finetune_config

    plan = config_dict_from_args(args)
    task = args.task if (args.task or args.data) else FinetuneConfig.task
    cfg = finetune_config(
        model=args.model, device=device, bf16=bf16, task=None if args.data else task, data=args.data,
        qat_group_size=args.qat_group_size, lr=args.lr, schedule=args.schedule, warmup_steps=args.warmup_steps,
        max_steps=args.max_steps, pad_to_max_len=args.pad_to_max_len, packing=args.packing,
        eval_every=args.eval_every, patience=args.patience, prompt_loss_weight=args.prompt_loss_weight,
        seed=args.seed, eval_items=args.eval_items, max_new_tokens=args.max_new_tokens,
        checkpoint_dir=args.checkpoint_dir, near_threshold=args.near, semantic_threshold=args.semantic,
        val_ratio=args.val_ratio, test_ratio=args.test_ratio, val_file=args.val_file, test_file=args.test_file, **plan)
    check_given(cfg.plan, given_fields(args))
    return cfg


def run(args) -> int:
    from pathlib import Path

    from quantlab.errors import QuantlabError
    from quantlab.lab.finetune_report import summary
    from quantlab.report.store import ResultStore, RunRecord, config_key

    if args.method in PREFERENCE_RUNS:  # a TRL preference trainer on a preference task (commands.lab_preference)
        from quantlab.commands.lab_preference import run_from_args

        return run_from_args(args)
    if getattr(args, "beta", None) is not None:
        raise QuantlabError(f"--beta applies to --method {'|'.join(PREFERENCE_RUNS)}, not {args.method}")
    cfg = config_from_args(args)
    if not cfg.data_path.is_file():  # an unknown task raises here; a missing file before any model loads
        raise QuantlabError(f"data file {cfg.data_path} not found")
    for name, f in (("--val-file", cfg.val_path), ("--test-file", cfg.test_path)):
        if f is not None and not f.is_file():
            raise QuantlabError(f"{name} {f} not found")
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    from quantlab.report.store import DEFAULT_STORE

    store_path = Path(args.store) if args.store else DEFAULT_STORE  # opened (created) once there is a result
    conf = cfg.to_dict()
    conf.pop("checkpoint_dir")  # where checkpoints go does not change the result
    if cfg.data:
        conf["data"] = str(Path(cfg.data).resolve())
    for k in ("val_file", "test_file"):
        if conf.get(k):
            conf[k] = str(Path(conf[k]).resolve())
    conf["harness"] = HARNESS
    kind = "qat" if cfg.method == "qat" else "finetune"
    first_key = config_key(kind, cfg.model, "qat-int4" if kind == "qat" else cfg.method, conf)
    store = ResultStore(store_path) if store_path.exists() else None
    old = store.get(first_key) if store is not None else None
    if old is not None and not args.redo:
        log(f"this configuration is already in {store.path} (from {old.created_at}); --redo runs it again")
        olds = [r for r in store.records(kind, cfg.model) if r.config == old.config]
        for r in olds:
            print(summary(r.method, r.metrics, r.artifacts))
        return 0
    rows = run_config(cfg, Path(args.out), log=log, progress=args.progress, evaluate_before=args.eval_before)
    from quantlab.report.env import environment

    env = environment()
    store = ResultStore(store_path)
    for method, metrics, artifacts in rows:
        key = config_key(kind, cfg.model, method, conf)
        store.put(RunRecord(key=key, kind=kind, model=cfg.model, method=method, config=conf, env=env,
                            metrics=metrics, artifacts=artifacts))
        print(summary(method, metrics, artifacts))
    print(f"stored in {store.path}; render with: quantlab report --kind {kind}", file=sys.stderr)
    return 0


def run_config(cfg, out, *, log, progress=True, evaluate_before=True):
    """Run one configuration: [(method, metrics, artifacts)]. The one dispatch by method: ``RUNNERS[cfg.method]``
    where a method has its own runner (QAT: the QAT-vs-PTQ comparison; a preference method such as DPO registers
    its runner here, taking the same parsed config), else the supervised fine-tune on Trainer (:func:`run_sft`)."""
    runner = RUNNERS.get(cfg.method, run_sft)
    return runner(cfg, out, log=log, progress=progress, evaluate_before=evaluate_before)


def run_qat(cfg, out, *, log, progress=True, evaluate_before=True):
    from quantlab.lab.qat_compare import compare

    return compare(cfg, log=log, out=out, progress=progress, evaluate_before=evaluate_before)


def run_sft(cfg, out, *, log, progress=True, evaluate_before=True):
    """One supervised fine-tune (or continued pre-training) on Trainer, its loss curve, history and adapter."""
    from pathlib import Path

    from quantlab.lab.finetune import PEFT_METHODS, history_csv, loss_curve_png, run_finetune

    name = f"{cfg.method}-{Path(cfg.data).stem if cfg.data else cfg.task}"
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


# preference objectives the lab runs (TRL 1.16's DPO, ORPO, CPO/SimPO, KTO and reward trainers:
# quantlab/lab/preference.py OBJECTIVES)
PREFERENCE_RUNS = ("dpo", "orpo", "simpo", "kto", "reward")
RUNNERS = {"qat": run_qat}  # method -> runner(cfg, out, *, log, progress, evaluate_before); others: run_sft
