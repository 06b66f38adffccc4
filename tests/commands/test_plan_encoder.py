"""`quantlab plan --model ENCODER`: the encoder planner behind plan (quantlab/commands/encoder_plan.py)."""

import json

import pytest

from quantlab.cli import main


def run(capsys, *argv):
    rc = main(["plan", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv,head,labels,k,b,s", [
    (["--model", "bert-base-uncased"], "seq-cls", 8, 3, 16, 128),  # the defaults
    (["--model", "roberta-base", "--head", "tok-cls", "--num-labels", "9", "--train-last-k", "12",
      "--batch", "8", "--seq", "256"], "tok-cls", 9, 12, 8, 256),
    (["--model", "all-minilm-l6-v2", "--train-last-k", "0"], "seq-cls", 8, 0, 16, 128),
    (["--model", "modernbert-base", "--num-labels", "4", "--seq", "64"], "seq-cls", 4, 3, 16, 64),
])
def test_cli_plan_is_the_encoder_planner(capsys, argv, head, labels, k, b, s):
    from quantlab.encoder_profiles import load_encoder
    from quantlab.planner.encoder import EncoderPlanConfig, Head, plan_encoder

    rc, out, err = run(capsys, *argv, "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    p = plan_encoder(load_encoder(argv[1]), EncoderPlanConfig(head=Head(head), num_labels=labels, train_last_k=k,
                                                              batch=b, seq=s))
    assert doc["kind"] == "encoder" and doc["config"]["train_last_k"] == k and doc["config"]["batch"] == b
    assert doc["components"] == {"weights": p.weights_bytes, "gradients": p.gradients_bytes,
                                 "optimizer": p.optimizer_bytes, "activations": p.activations_bytes,
                                 "logits_loss": p.logits_loss_bytes}
    assert doc["total_bytes"] == p.total_bytes and doc["trainable_params"] == p.trainable_params


def test_bf16_is_the_planner_at_two_bytes(capsys):
    from quantlab.encoder_profiles import load_encoder
    from quantlab.planner.encoder import EncoderPlanConfig, plan_encoder

    rc, out, err = run(capsys, "--model", "bert-base-uncased", "--precision", "bf16", "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    p = plan_encoder(load_encoder("bert-base-uncased"), EncoderPlanConfig(param_bytes=2))
    assert doc["config"]["precision"] == "bf16" and doc["total_bytes"] == p.total_bytes
    rc, out, err = run(capsys, "--model", "bert-base-uncased", "--precision", "nf4")
    assert rc == 2 and "not planned for encoders" in err and len(err.strip().splitlines()) == 1


def test_table_reads_in_80_columns(capsys):
    rc, out, _ = run(capsys, "--model", "bert-base-uncased")
    assert rc == 0 and "sum of components" in out and "last 3 of 12 layers" in " ".join(out.split())
    assert max(len(line) for line in out.splitlines()) <= 80
    rc, csv, _ = run(capsys, "--model", "bert-base-uncased", "--format", "csv")
    assert rc == 0 and csv.splitlines()[0].startswith("model,head,num_labels,train_last_k")


def test_more_layers_trained_more_memory(capsys):
    docs = [json.loads(run(capsys, "--model", "bert-base-uncased", "--train-last-k", str(k), "--format", "json")[1])
            for k in (0, 3, 12)]
    tot = [d["total_bytes"] for d in docs]
    assert tot[0] < tot[1] < tot[2]
    assert docs[0]["components"]["activations"] < docs[1]["components"]["activations"]


@pytest.mark.parametrize("argv,words", [
    (["--model", "bert-base-uncased", "--lora-r", "8"], "--lora-r does not apply to an encoder plan"),
    (["--model", "bert-base-uncased", "--method", "lora"], "--method does not apply to an encoder plan"),
    (["--model", "bert-base-uncased", "--train-last-k", "40"], "exceeds the model's 12 layers"),
    (["--model", "bert-base-uncased", "--gpu", "h100"], "not available for encoder plans"),
    (["--model", "8b", "--method", "lora", "--train-last-k", "2"], "--train-last-k applies to encoder models"),
    (["--model", "8b", "--method", "lora", "--head", "seq-cls"], "--head applies to encoder models"),
])
def test_bad_encoder_input_is_one_line_exit_2(capsys, argv, words):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err, err
