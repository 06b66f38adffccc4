"""quantlab.planner.preference rules added with the CLI wiring: P6 (reference / generation plans drop the policy's
sharding and training-only settings), P7 (TRL's disable_dropout default), the user's batch on the plan, and the
PreferenceConfig document round trip."""

import dataclasses

import pytest

from quantlab.planner.preference import Objective, PreferenceConfig, Reference, preference_plan
from quantlab.profiles import load_model
from quantlab.specs import Method, PlanConfig, SpecError

GPT2 = load_model("gpt2").spec
L8 = load_model("8b").spec


def test_dropout_is_planned_off_where_trl_disables_it():
    """P7: DPO/ORPO/KTO/reward plan GPT-2 (dropout 0.1 in its config) as with dropout 0; GRPO (disable_dropout
    False by default) keeps the masks."""
    assert GPT2.hidden_dropout > 0
    cfg = PlanConfig(model=GPT2, method=Method.LORA, lora_targets=("c_attn",), batch=2, seq=128, lora_dropout=0.05)
    off = dataclasses.replace(cfg, model=dataclasses.replace(GPT2, attention_dropout=0.0, hidden_dropout=0.0,
                                                             embd_dropout=0.0), lora_dropout=0.0)
    for obj in (Objective.DPO, Objective.ORPO, Objective.KTO, Objective.REWARD):
        a, b = preference_plan(cfg, PreferenceConfig(obj)), preference_plan(off, PreferenceConfig(obj))
        assert a.components["activations"] == b.components["activations"], obj
        assert a.config == cfg  # the plan carries what was asked
    g = PreferenceConfig(Objective.GRPO, num_generations=2, max_completion_length=64)
    assert preference_plan(cfg, g).components["activations"] > preference_plan(off, g).components["activations"]


def test_plan_carries_the_users_batch_and_runs_2b():
    cfg = PlanConfig(model=L8, method=Method.LORA, batch=3, seq=512)
    p = preference_plan(cfg, PreferenceConfig(Objective.DPO))
    assert p.config.batch == 3


@pytest.mark.parametrize("kw", [dict(zero=3, num_gpus=4), dict(fsdp="full_shard", num_gpus=2),
                                dict(grad_checkpointing=True, grad_accum=4)])
def test_reference_and_generation_plans_drop_training_settings(kw):
    """P6: a sharded or checkpointed policy still plans its reference copy and GRPO's generation."""
    cfg = PlanConfig(model=L8, method=Method.FULL, batch=4, seq=1024, **kw)
    p = preference_plan(cfg, PreferenceConfig(Objective.DPO))
    assert p.components["reference_weights"] > 0
    g = preference_plan(cfg, PreferenceConfig(Objective.GRPO, num_generations=4, max_completion_length=256,
                                              beta=0.04))
    assert g.components["generation_kv_cache"] > 0 and g.components["reference_weights"] > 0


def test_preference_config_round_trip_and_bad_documents():
    pref = PreferenceConfig(Objective.GRPO, reference=Reference.COPY, num_generations=4, beta=0.04,
                            reward_model=load_model("qwen2.5-0.5b").spec, num_iterations=2, steps_per_generation=4)
    assert PreferenceConfig.from_dict(pref.to_dict()) == pref
    for d, words in (({"objective": "ppo"}, "PPO"), ({"objective": "dpo", "colour": 1}, "unknown preference field"),
                     ({"objective": "dpo", "reference": "twin"}, "reference must be"),
                     ({"objective": "dpo", "beta": "x"}, "beta must be a number"),
                     ({"objective": "grpo", "num_generations": 2.5}, "must be an integer"),
                     ({"objective": "grpo", "num_generations": 2, "num_iterations": True}, "must be an integer")):
        with pytest.raises(SpecError, match=words):
            PreferenceConfig.from_dict(d)
