"""preference_flags: a parser built from add_preference_arguments plans DPO end to end (the lead wires --method)."""

import argparse

import pytest

from quantlab.commands.preference_flags import add_preference_arguments, preference_from_args
from quantlab.planner.preference import Objective, Reference, preference_plan
from quantlab.profiles import load_model
from quantlab.specs import Method, PlanConfig, SpecError


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--method")
    add_preference_arguments(p)
    return p


def test_dpo_from_flags_plans_reference_and_both_sequences():
    args = _parser().parse_args(["--method", "dpo"])
    pref = preference_from_args(args)
    assert pref.objective is Objective.DPO and pref.reference is Reference.AUTO
    cfg = PlanConfig(model=load_model("8b").spec, method=Method.LORA, lora_r=16, batch=2, seq=2048)
    p = preference_plan(cfg, pref)
    assert {"reference_forward", "logits_both_sequences"} <= set(p.components)


def test_grpo_without_generations_is_one_line():
    with pytest.raises(SpecError, match="--num-generations"):
        preference_from_args(_parser().parse_args(["--method", "grpo"]))
    with pytest.raises(SpecError, match="PPO"):
        preference_from_args(_parser().parse_args(["--method", "ppo"]))
