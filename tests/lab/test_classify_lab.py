"""The multi-label classification lab: metrics against hand-computed cases, last-k freezing, and a whole Trainer
run on a tiny random BERT whose measured step the encoder planner matches byte for byte."""

import json
import shutil

import pytest

from quantlab.errors import QuantlabError

Y = [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
P = [[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.7, 0.6, 0.6]]


def test_metrics_against_a_hand_computed_case():
    """Predicted at 0.5: [1,0,0], [0,1,0], [1,1,1].
    Jaccard per record 1/2, 1/1, 2/3 -> 13/18. Micro F1: TP 4, FP 1, FN 1 -> 8/10. Macro F1: labels 0 and 1
    perfect, label 2 has TP 0 -> (1 + 1 + 0)/3. Subset accuracy: only record 2 matches -> 1/3.
    ROC-AUC per label: 1, 1, and 0.5 (label 2's positive 0.4 beats 0.3, loses to 0.6) -> macro 5/6. Micro: 5
    positives x 4 negatives = 20 pairs, 18 won and one tie (0.6 vs 0.6) -> 18.5/20."""
    pytest.importorskip("sklearn")
    from quantlab.lab.classify import multilabel_metrics

    m = multilabel_metrics(Y, P, 0.5)
    assert m["jaccard_samples"] == pytest.approx(13 / 18)
    assert m["f1_micro"] == pytest.approx(0.8)
    assert m["f1_macro"] == pytest.approx(2 / 3)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["roc_auc_macro"] == pytest.approx(5 / 6)
    assert m["roc_auc_micro"] == pytest.approx(0.925)


def test_threshold_moves_the_set_metrics_not_roc_auc():
    pytest.importorskip("sklearn")
    from quantlab.lab.classify import multilabel_metrics

    lo, hi = multilabel_metrics(Y, P, 0.35), multilabel_metrics(Y, P, 0.95)
    assert lo["roc_auc_macro"] == hi["roc_auc_macro"]
    assert hi["f1_micro"] == 0.0 and hi["jaccard_samples"] == 0.0  # nothing predicted
    assert lo["f1_micro"] != multilabel_metrics(Y, P, 0.5)["f1_micro"]


def test_roc_auc_is_none_when_a_label_has_one_class():
    pytest.importorskip("sklearn")
    from quantlab.lab.classify import multilabel_metrics

    m = multilabel_metrics([[1, 0], [1, 1]], [[0.9, 0.2], [0.8, 0.7]])
    assert m["roc_auc_macro"] is None and m["f1_micro"] == 1.0


def _tiny_bert(layers=4, vocab=100, labels=5):
    from transformers import BertConfig, BertForSequenceClassification

    c = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=128, num_labels=labels,
                   problem_type="multi_label_classification")
    return BertForSequenceClassification(c)


def test_freeze_all_but_last_k_trains_the_top_blocks_and_the_head():
    """Per block 4*32^2 + 2*32*64 + 9*32 + 64 = 8,544 parameters; pooler 32^2 + 32 = 1,056; classifier
    32*5 + 5 = 165."""
    pytest.importorskip("torch")
    from quantlab.lab.classify import freeze_all_but_last_k

    model = _tiny_bert()
    assert freeze_all_but_last_k(model, 3) == 3 * 8_544 + 1_056 + 165
    trained = {n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad and ".layer." in n}
    assert trained == {"1", "2", "3"}
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert freeze_all_but_last_k(model, 0) == 1_056 + 165  # the head alone
    assert freeze_all_but_last_k(model, 4) == 4 * 8_544 + 1_056 + 165
    with pytest.raises(QuantlabError, match="exceeds"):
        freeze_all_but_last_k(model, 5)


def test_a_model_folder_without_safetensors_is_refused(tmp_path):
    from quantlab.lab.classify import ClassifyConfig, model_dir

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(QuantlabError, match="safetensors"):
        model_dir(ClassifyConfig(model=str(tmp_path)))


@pytest.mark.parametrize("kw, says", [(dict(train_last_k=-1), "train-last-k"), (dict(batch=0), "batch"),
                                      (dict(threshold=1.0), "threshold"), (dict(epochs=0), "epochs")])
def test_bad_config_is_one_line(kw, says):
    from quantlab.lab.classify import ClassifyConfig

    with pytest.raises(QuantlabError, match=says):
        ClassifyConfig(**kw)


def test_trainer_run_on_a_tiny_bert_matches_the_planner(tmp_path):
    """A whole run (Trainer, metrics before/after, step 2 measured) on a random 4-block BERT with the embedded
    MiniLM tokenizer; the encoder planner is byte-exact on every component of the measured step."""
    pytest.importorskip("torch")
    from quantlab.commands.lab_classify import plan_rows
    from quantlab.data.dedup import embedder_path
    from quantlab.lab.classify import TASK_DIR, ClassifyConfig, run_classify

    d = tmp_path / "tiny"
    _tiny_bert(vocab=30522, labels=8).save_pretrained(d, safe_serialization=True)
    for f in embedder_path().iterdir():
        if f.name.startswith(("tokenizer", "special", "vocab")):
            shutil.copy(f, d / f.name)
    for split, n in (("train", 48), ("test", 40)):
        rows = (TASK_DIR / f"{split}.jsonl").read_text().splitlines()[:n]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    cfg = ClassifyConfig(model=str(d), train=str(tmp_path / "train.jsonl"), val=None,
                         test=str(tmp_path / "test.jsonl"), train_last_k=2, epochs=1, batch=8, max_len=32)
    r = run_classify(cfg, log=lambda s: None)
    assert r.steps == 6 and r.num_layers == 4 and r.train_last_k == 2
    assert set(r.before) == set(r.after) >= {"jaccard_samples", "f1_micro", "f1_macro", "subset_accuracy",
                                             "roc_auc_macro"}
    m = r.measurement
    assert (m.batch, m.device) == (8, "cpu") and m.seq <= 32
    rows, plan = plan_rows(r)
    by = {x["component"]: x for x in rows}
    for k in ("weights", "gradients", "optimizer", "activations", "logits_loss"):
        assert by[k]["diff_bytes"] == 0, (k, by[k])
    assert plan.trainable_params == r.trainable_params
    json.dumps(rows)


def test_help_lists_the_flags_with_their_defaults(capsys):
    from quantlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["lab", "classify", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--train-last-k", "3"), ("--epochs", "6.0"), ("--batch", "16"), ("--lr", "0.0005"),
                          ("--max-len", "96"), ("--threshold", "0.5"), ("--measure-step", "2")):
        assert flag in out and f"(default: {default})" in out, flag
