"""``quantlab plan --model ENCODER``: the encoder planner (:mod:`quantlab.planner.encoder`) behind ``plan``.

A ``--model`` that names an encoder profile (``profiles/encoders/``: all-minilm-l6-v2, bert-base-uncased,
roberta-base, modernbert-base, their aliases and Hugging Face ids) is planned here: a sequence- or
token-classification head, the last ``--train-last-k`` layers trained, AdamW in fp32 (the lab's recipe,
``quantlab lab classify``) or, with ``--precision bf16``, pure bf16 (weights, gradients, states and compute; as
validated in profiles/validation/encoder-matrix.yaml). The decoder flags do not apply and are refused in one line.
"""

from __future__ import annotations

import argparse
import json

from quantlab.errors import QuantlabError

HEADS = ("seq-cls", "tok-cls")
DEFAULTS = {"head": "seq-cls", "train_last_k": 3, "num_labels": 8, "batch": 16, "seq": 128}
# the decoder-plan fields an encoder plan takes (everything else the user gives is refused)
TAKES = frozenset({"batch", "seq", "precision"})
PRECISIONS = {"fp32": 4, "bf16": 2}  # bytes per element; pure precision (weights = compute dtype)


def is_encoder(name: str | None) -> bool:
    """Whether ``--model`` names an encoder profile (name, alias or Hugging Face id)."""
    if not name:
        return False
    from quantlab import profiles
    from quantlab.encoder_profiles import KIND

    return name.strip().lower() in profiles._index(KIND)


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder models (--model bert-base-uncased, roberta-base, modernbert-base, "
                             "all-minilm-l6-v2)")
    g.add_argument("--head", choices=HEADS, default=None,
                   help="encoder: the classification head, seq-cls (multi-label, BCEWithLogitsLoss) or tok-cls "
                        f"(token labels, cross-entropy) (default: {DEFAULTS['head']})")
    g.add_argument("--train-last-k", type=int, default=None, metavar="K",
                   help="encoder: train the last K layers plus the head; the embeddings and the layers below are "
                        f"frozen (0: the head only) (default: {DEFAULTS['train_last_k']})")


def encoder_given(args) -> list[str]:
    return [k for k in ("head", "train_last_k") if getattr(args, k, None) is not None]


def run_encoder(args) -> int:
    """Plan the encoder ``args.model`` names; print the table or the JSON document."""
    from quantlab.commands.flags import flag_name, given_fields
    from quantlab.encoder_profiles import encoder_doc, load_encoder
    from quantlab.planner.encoder import EncoderPlanConfig, Head, plan_encoder

    extra = sorted(given_fields(args) - TAKES)
    if extra:
        raise QuantlabError(f"{flag_name(extra[0])} does not apply to an encoder plan ({args.model}: the encoder "
                            "planner takes --head, --num-labels, --train-last-k, --batch, --seq, --precision)")
    for k in ("gpu", "emit", "from_trainer_args"):
        if getattr(args, k, None):
            raise QuantlabError(f"--{k.replace('_', '-')} is not available for encoder plans yet (the allocator "
                                "and launch configs are modelled for decoders only)")
    doc = encoder_doc(args.model)
    spec = load_encoder(args.model)
    given = given_fields(args)
    precision = str(getattr(getattr(args, "precision", None), "value", getattr(args, "precision", None))) \
        if "precision" in given else "fp32"
    if precision not in PRECISIONS:
        raise QuantlabError(f"--precision {precision} is not planned for encoders (fp32 or bf16: pure precision)")
    kw = {"head": Head(args.head or DEFAULTS["head"]),
          "train_last_k": DEFAULTS["train_last_k"] if args.train_last_k is None else args.train_last_k,
          "num_labels": DEFAULTS["num_labels"] if getattr(args, "num_labels", None) is None else args.num_labels,
          "batch": args.batch if "batch" in given else DEFAULTS["batch"],
          "seq": args.seq if "seq" in given else DEFAULTS["seq"], "param_bytes": PRECISIONS[precision]}
    try:
        pc = EncoderPlanConfig(**kw)
        p = plan_encoder(spec, pc)
    except ValueError as e:
        raise QuantlabError(f"{args.model}: {e}") from None
    comps = {"weights": p.weights_bytes, "gradients": p.gradients_bytes, "optimizer": p.optimizer_bytes,
             "activations": p.activations_bytes, "logits_loss": p.logits_loss_bytes}
    document = {"kind": "encoder", "model": doc["name"], "source": doc.get("source"),
                "config": {"head": pc.head.value, "num_labels": pc.num_labels, "train_last_k": pc.train_last_k,
                           "batch": pc.batch, "seq": pc.seq, "precision": precision, "optimizer": "adamw"},
                "params": p.params, "trainable_params": p.trainable_params, "components": comps,
                "total_bytes": p.total_bytes, "notes": list(p.notes)}
    fmt = getattr(args, "format", "table")
    if fmt == "json":
        text = json.dumps(document, indent=2) + "\n"
    elif fmt == "csv":
        cols = ["model", "head", "num_labels", "train_last_k", "batch", "seq", "params", "trainable_params"] + \
            [f"{k}_bytes" for k in comps] + ["total_bytes"]
        c = document["config"]
        vals = [doc["name"], c["head"], c["num_labels"], c["train_last_k"], c["batch"], c["seq"], p.params,
                p.trainable_params] + list(comps.values()) + [p.total_bytes]
        text = ",".join(cols) + "\n" + ",".join(str(v) for v in vals) + "\n"
    else:
        text = _table(document, spec)
    from quantlab.fileio import write_stdout

    write_stdout(text)
    return 0


def _table(d: dict, spec) -> str:
    from rich.table import Table

    from quantlab.fileio import render_text
    from quantlab.units import fmt_count

    c = d["config"]
    head = (f"[bold]{d['model']}[/] (encoder, {spec.model_type}, {spec.num_hidden_layers} layers): "
            f"{fmt_count(d['params'])} parameters, {fmt_count(d['trainable_params'])} trainable")
    what = (f"{c['head']} head, {c['num_labels']} labels; last {c['train_last_k']} of {spec.num_hidden_layers} "
            f"layers + head trained; {c['precision']} AdamW; batch {c['batch']} x seq {c['seq']}")
    t = Table(title="Memory of one training step (GiB = 2^30 bytes)", title_justify="left")
    t.add_column("component")
    t.add_column("GiB", justify="right", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    for k, v in d["components"].items():
        t.add_row(k, f"{v / 2**30:.2f}", f"{v:,}")
    t.add_section()
    t.add_row("sum of components", f"{d['total_bytes'] / 2**30:.2f}", f"{d['total_bytes']:,}")
    notes = d["notes"] + ["the sum of components, not an allocator peak: the encoder planner models no CUDA "
                          "context or allocator reserve (quantlab/planner/encoder.py assumption 8)"]
    return render_text(head, what, t, *[f"note: {n}" for n in notes])
