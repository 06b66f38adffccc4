"""quantlab plan --from-trainer-args: the same job planned before it runs."""

import json

import pytest

from quantlab.cli import main

ARGS = {"output_dir": "out", "per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "bf16": True,
        "fp16": False, "gradient_checkpointing": True, "optim": "adamw_torch_fused", "learning_rate": 2e-4}


def run(capsys, *argv):
    rc = main(list(argv))
    o = capsys.readouterr()
    return rc, o.out, o.err


def _file(tmp_path, d, name="args.json"):
    p = tmp_path / name
    p.write_text(d if isinstance(d, str) else json.dumps(d))
    return str(p)


def test_plans_the_arguments(tmp_path, capsys):
    f = _file(tmp_path, ARGS)
    rc, out, err = run(capsys, "plan", "--from-trainer-args", f, "--model", "smollm2-135m", "--method", "lora",
                       "--precision", "fp32", "--seq", "512", "--format", "json")
    assert rc == 0
    c = json.loads(out)["config"]
    assert (c["batch"], c["grad_accum"], c["grad_checkpointing"], c["optimizer"]) == (8, 4, True, "adamw")
    assert (c["training_precision"], c["compute_dtype"], c["precision"], c["seq"]) == ("amp", "bf16", "fp32", 512)
    assert c["loop"] == "trainer"  # a TrainingArguments file is a Trainer job (memory assumption 19)
    rc, out2, _ = run(capsys, "plan", "--model", "smollm2-135m", "--method", "lora", "--precision", "fp32", "--seq",
                      "512", "--batch", "8", "--grad-accum", "4", "--grad-checkpointing", "--training-precision",
                      "amp", "--compute-dtype", "bf16", "--format", "json")
    manual = json.loads(out2)
    assert manual["config"]["loop"] == "manual"
    assert manual["peak_allocated_bytes"] > json.loads(out)["peak_allocated_bytes"]  # the logits through backward
    rc, out, err = run(capsys, "plan", "--from-trainer-args", f, "--model", "smollm2-135m", "--method", "lora",
                       "--format", "json")
    c = json.loads(out)["config"]
    assert c["training_precision"] == "pure" and c["precision"] == "bf16"
    assert "weights' dtype is not in TrainingArguments" in err and "sequence length" in err


def test_the_file_transformers_writes(tmp_path, capsys):
    pytest.importorskip("torch")
    from transformers import TrainingArguments

    a = TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=3, optim="adamw_bnb_8bit",
                          use_cpu=True, report_to="none")
    f = _file(tmp_path, a.to_json_string())
    rc, out, _ = run(capsys, "plan", "--from-trainer-args", f, "--model", "smollm2-135m", "--method", "lora",
                     "--format", "json")
    c = json.loads(out)["config"]
    assert rc == 0 and c["batch"] == 3 and c["optimizer"] == "adamw-8bit" and c["grad_accum"] == 1


@pytest.mark.parametrize("argv, content, msg", [
    ((), ARGS, "needs --model"),
    (("--model", "smollm2-135m", "--batch", "2"), ARGS, "--batch 2 contradicts"),
    (("--model", "smollm2-135m"), "{", "not valid JSON"),
    (("--model", "smollm2-135m"), {"lr": 1}, "not a TrainingArguments file"),
    (("--model", "smollm2-135m"), dict(ARGS, fp16=True), "both true"),
    (("--model", "smollm2-135m", "--from-json", "x.json"), ARGS, "not both"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, content, msg):
    f = _file(tmp_path, content)
    rc, out, err = run(capsys, "plan", "--from-trainer-args", f, *argv)
    assert rc == 2 and out == ""
    lines = [ln for ln in err.splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1 and msg in lines[0], err


def test_missing_file_is_one_line(tmp_path, capsys):
    rc, _, err = run(capsys, "plan", "--from-trainer-args", str(tmp_path / "nope.json"), "--model", "smollm2-135m")
    assert rc == 2 and "cannot read it" in err and len(err.strip().splitlines()) == 1


def test_plans_evaluation_during_training(tmp_path, capsys):
    """eval_strategy steps: the plan has the evaluation phase (memory assumption 20, derive assumption 8); a large
    eval batch makes it the peak, as --eval-batch on the command line plans it."""
    f = _file(tmp_path, dict(ARGS, eval_strategy="steps", per_device_eval_batch_size=64, gradient_accumulation_steps=1))
    common = ("--model", "smollm2-135m", "--method", "full", "--precision", "fp32", "--seq", "512", "--format", "json")
    rc, out, err = run(capsys, "plan", "--from-trainer-args", f, *common)
    assert rc == 0
    p = json.loads(out)
    assert p["config"]["eval_batch"] == 64 and "eval_forward" in p["components"]
    assert "per_device_eval_batch_size = 64" in err
    assert any("evaluation forward is the peak" in n for n in p["notes"])
    rc, out2, _ = run(capsys, "plan", *common, "--batch", "8", "--grad-checkpointing", "--training-precision", "amp",
                      "--compute-dtype", "bf16", "--loop", "trainer", "--eval-batch", "64")
    assert rc == 0 and json.loads(out2)["peak_allocated_bytes"] == p["peak_allocated_bytes"]
    f = _file(tmp_path, dict(ARGS, eval_strategy="no", per_device_eval_batch_size=64), "no.json")
    rc, out, _ = run(capsys, "plan", "--from-trainer-args", f, *common)
    assert json.loads(out)["config"]["eval_batch"] is None and "eval_forward" not in json.loads(out)["components"]
