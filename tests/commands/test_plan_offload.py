"""`quantlab plan --offload-activations`: the offload planner (quantlab/planner/offload.py) behind plan."""

import json

import pytest

from quantlab.cli import main

BASE = ["--model", "llama-3.2-1b", "--method", "full", "--precision", "bf16", "--batch", "4", "--seq", "2048"]


def run(capsys, *argv):
    try:
        rc = main(["plan", *argv])
    except SystemExit as e:  # argparse's own errors (an invalid choice)
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("mode", ["trl", "trl-no-streams", "save-on-cpu"])
def test_cli_is_offload_plan_and_keeps_the_host_apart(capsys, mode):
    from quantlab.planner.offload import OffloadConfig, offload_plan
    from quantlab.planner.offload import mode as M
    from quantlab.profiles import load_model
    from quantlab.specs import Method, PlanConfig, Precision

    rc, out, err = run(capsys, *BASE, "--offload-activations", mode, "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    cfg = PlanConfig(model=load_model("llama-3.2-1b").spec, method=Method.FULL, precision=Precision.BF16,
                     batch=4, seq=2048)
    op = offload_plan(cfg, OffloadConfig(M(mode)))
    assert doc["components"] == dict(op.plan.components)
    assert doc["peak_allocated_bytes"] == op.plan.peak_allocated_bytes
    host = doc["offload_activations"]
    assert host["mode"] == mode and host["host_pinned_bytes"] == op.host_pinned_bytes
    assert host["host_exact"] is (mode == "trl")
    rc, plain, _ = run(capsys, *BASE, "--format", "json")
    # the device plan is smaller than without offloading; the host bytes are not in the GPU totals
    assert json.loads(plain)["peak_allocated_bytes"] > doc["peak_allocated_bytes"]
    assert doc["process_bytes"] < json.loads(plain)["process_bytes"]


@pytest.mark.parametrize("argv,words", [
    (["--model", "8b", "--method", "lora", "--offload-activations", "trl"], "offload"),
    (["--model", "8b", "--method", "dpo", "--offload-activations", "trl"], "full fine-tuning only"),
    ([*BASE, "--min-offload-size", "10"], "--min-offload-size applies with --offload-activations"),
    ([*BASE, "--offload-activations", "trl", "--emit", "deepspeed"], "--emit writes no offloading"),
    ([*BASE, "--offload-activations", "zip"], "invalid choice"),
])
def test_bad_offload_input_is_one_line_exit_2(capsys, argv, words):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err, err
