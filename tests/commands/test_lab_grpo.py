"""quantlab lab grpo: the parser maps its flags onto GRPORun (a default exists once: the dataclass's), bad values
are one-line errors (exit 2), and the table shows each phase's rows. The run itself is tested in
tests/lab/test_grpo_lab.py and tests/validate/test_validate_grpo.py."""

import pytest

pytest.importorskip("trl")


def _parse(argv):
    import argparse

    from quantlab.commands import lab_grpo

    p = argparse.ArgumentParser()
    lab_grpo.register(p.add_subparsers())
    return p.parse_args(["grpo"] + argv)


def test_defaults_are_grpo_runs():
    from quantlab.commands.lab_grpo import config_from_args
    from quantlab.lab.grpo import GRPORun

    assert config_from_args(_parse([])) == GRPORun()


def test_flags_map_onto_the_run():
    from quantlab.commands.lab_grpo import config_from_args

    cfg = config_from_args(_parse(["--batch", "4", "--num-generations", "2", "--policy", "full", "--beta", "0.04",
                                   "--no-grad-checkpointing", "--lora-targets", "q_proj, k_proj", "--eval-prompts",
                                   "0", "--ignore-eos"]))
    assert (cfg.batch, cfg.num_generations, cfg.policy, cfg.beta) == (4, 2, "full", 0.04)
    assert cfg.grad_checkpointing is False and cfg.lora_targets == ("q_proj", "k_proj")
    assert cfg.evaluate is False and cfg.ignore_eos is True


def test_bad_batch_is_a_one_line_error(capsys):
    from quantlab.cli import main

    assert main(["lab", "grpo", "--batch", "6", "--num-generations", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "whole groups of num-generations 4" in err[0]


def test_table_has_both_phases():
    from quantlab.commands.lab_grpo import table_rows, table_text

    row = {"pred_weights_bytes": 100, "meas_weights_bytes": 100, "err_weights": 0.0,
           "pred_kv_cache_bytes": 10, "meas_kv_cache_bytes": 8, "err_kv_cache": 0.25,
           "pred_generation_allocated_bytes": 200, "meas_generation_allocated_bytes": 210,
           "err_generation_allocated": -10 / 210, "pred_training_allocated_bytes": 300,
           "meas_training_allocated_bytes": 300, "err_training_allocated": 0.0,
           "pred_allocated_bytes": 300, "meas_allocated_bytes": 300, "err_allocated": 0.0}
    rows = table_rows(row)
    assert [r["phase"] for r in rows] == ["both", "generation", "generation", "training", "step"]
    text = table_text(rows)
    assert "+25.00%" in text and "-4.76%" in text


@pytest.mark.parametrize("run", ["reports/grpo-cpu", "reports/grpo-cpu/beta-0.04"])
def test_stored_smollm2_runs_meet_the_targets(run):
    """The stored SmolLM2-135M runs (reports/grpo-cpu: 8 left-padded prompts of 66 tokens, 32 new tokens, LoRA r 16,
    measured on this CPU) compared again with the planner of this tree: every component and phase within
    validate's targets, the padded prefill within 0.01% (serving S1d: SDPA's 8 x 66 x 66 bool mask)."""
    import json
    from pathlib import Path

    from quantlab.commands.lab_grpo import compare

    res = json.loads((Path(__file__).resolve().parents[2] / run / "grpo.json").read_text())
    res.pop("comparison", None)
    row = compare(res, res["model_spec"])
    assert res["generation"]["prompt_padded"] and row["ok"] is True
    assert abs(row["err_prefill_transient"]) < 1e-4
    assert abs(row["err_generation_allocated"]) < 1e-3 and abs(row["err_allocated"]) < 1e-3
