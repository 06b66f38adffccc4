"""preference_plan: properties, one golden figure, bad input (TRL 1.16 trainers, quantlab.planner.preference)."""

import pytest

from quantlab.planner import memory as M
from quantlab.planner import trl_head
from quantlab.planner.preference import Objective, PreferenceConfig, Reference, objective, preference_plan
from quantlab.profiles import load_model
from quantlab.specs import Method, PlanConfig, SpecError

L8 = load_model("llama-3.1-8b").spec


def lora(**kw):
    return PlanConfig(**{**dict(model=L8, method=Method.LORA, lora_r=16, batch=2, seq=2048), **kw})


def test_dpo_copy_reference_costs_more_than_the_adapter():
    adapter = preference_plan(lora(), PreferenceConfig(Objective.DPO))
    copy = preference_plan(lora(), PreferenceConfig(Objective.DPO, reference=Reference.COPY))
    assert "reference_weights" not in adapter.components and "reference_forward" in adapter.components
    # the copy is an inference plan's bf16 weights of the same model
    assert copy.components["reference_weights"] == M.plan(PlanConfig(model=L8, batch=4)).components["weights"]
    assert copy.peak_allocated_bytes - adapter.peak_allocated_bytes == copy.components["reference_weights"]


def test_precomputed_has_no_reference():
    p = preference_plan(lora(), PreferenceConfig(Objective.DPO, reference=Reference.PRECOMPUTED))
    assert not {"reference_weights", "reference_forward"} & set(p.components)


def test_dpo_head_is_the_fused_head_not_full_logits():
    """Policy at 2B = 4 sequences of 2048 on CUDA (Triton): N = 4 x 2047 = 8,188 scored rows; the backward holds
    fp32 grad_hidden 8,188 x 4096 x 4 = 134,152,192 and mm_buf 4,096 x 32,768 x 2 = 268,435,456 bytes; the HF loss
    would hold about 8,188 x 128,256 x 14 bytes (14.7 GB)."""
    p = preference_plan(lora(), PreferenceConfig(Objective.DPO))
    fh = trl_head.fused_head(batch=4, seq=2048, hidden=4096, vocab=128256, hidden_bytes=2, compute_bytes=2,
                             weight_bytes=2, head_trains=False, triton=True, outputs=trl_head.TRAINER_OUTPUTS["dpo"])
    assert fh.tokens == 8188 and fh.backward_transient >= 134_152_192 + 268_435_456
    assert p.components["logits_both_sequences"] == max(fh.forward_transient, fh.backward_peak) + fh.outputs_kept
    orpo = preference_plan(lora(), PreferenceConfig(Objective.ORPO))
    assert orpo.components["logits_both_sequences"] > 10 * p.components["logits_both_sequences"]


def test_grpo_kv_grows_with_generations():
    a = preference_plan(lora(batch=8), PreferenceConfig(Objective.GRPO, num_generations=8))
    b = preference_plan(lora(batch=16), PreferenceConfig(Objective.GRPO, num_generations=8))
    assert b.components["generation_kv_cache"] == 2 * a.components["generation_kv_cache"]
    assert "reference_forward" not in a.components  # beta 0.0: no reference (GRPOConfig default)


def test_grpo_scoring_forwards_are_in_the_generation_phase():
    """P4: TRL scores the reference (beta > 0) and, when grad_accum % (steps_per_generation x num_iterations) != 0,
    the old policy under no_grad in _generate_and_score_completions: the generation phase holds them
    (generation_scoring), not the policy's activations. Both forwards are the same no-grad pass over B rows."""
    base = PreferenceConfig(Objective.GRPO, num_generations=8)
    p0 = preference_plan(lora(batch=8), base)
    assert "generation_scoring" not in p0.components and "old_policy_forward" not in p0.components
    ref = preference_plan(lora(batch=8), PreferenceConfig(Objective.GRPO, num_generations=8, beta=0.04))
    old = preference_plan(lora(batch=8), PreferenceConfig(Objective.GRPO, num_generations=8, num_iterations=2))
    assert ref.components["generation_scoring"] == ref.components["reference_forward"]
    assert old.components["generation_scoring"] == old.components["old_policy_forward"] \
        == ref.components["reference_forward"]
    # aligned: grad_accum 4 = steps_per_generation 2 x num_iterations 2 runs no old-policy forward
    aligned = preference_plan(lora(batch=8, grad_accum=4),
                              PreferenceConfig(Objective.GRPO, num_generations=8, num_iterations=2,
                                               steps_per_generation=2))
    assert "old_policy_forward" not in aligned.components
    # the training phase is unchanged by a scoring forward that runs before it
    assert old.components["activations"] == p0.components["activations"]


def test_grpo_steps_per_generation_sets_the_generation_batch():
    """P4: generate produces batch x steps_per_generation completions (grpo_config.py __post_init__), whatever the
    accumulation; the KV cache scales with it; the batch must hold whole groups."""
    a = preference_plan(lora(batch=4), PreferenceConfig(Objective.GRPO, num_generations=4))
    b = preference_plan(lora(batch=4), PreferenceConfig(Objective.GRPO, num_generations=4, steps_per_generation=2))
    c = preference_plan(lora(batch=4, grad_accum=2), PreferenceConfig(Objective.GRPO, num_generations=4))
    assert b.components["generation_kv_cache"] == 2 * a.components["generation_kv_cache"] \
        == c.components["generation_kv_cache"]
    assert "old_policy_forward" in b.components  # grad_accum 1 % steps_per_generation 2
    with pytest.raises(SpecError, match="steps-per-generation"):
        preference_plan(lora(batch=2), PreferenceConfig(Objective.GRPO, num_generations=8, steps_per_generation=2))


@pytest.mark.parametrize("kw,words", [
    (dict(objective=Objective.GRPO, num_generations=2, num_iterations=0), "num-iterations must be a positive"),
    (dict(objective=Objective.GRPO, num_generations=2, steps_per_generation=0), "steps-per-generation must be"),
    (dict(objective=Objective.DPO, num_iterations=2), "apply to grpo"),
])
def test_grpo_iteration_fields_are_checked(kw, words):
    with pytest.raises(SpecError, match=words):
        PreferenceConfig(**kw)


def test_reward_has_no_lm_head_logits():
    p = preference_plan(lora(), PreferenceConfig(Objective.REWARD))
    assert not any("logits" in k for k in p.components)
    # llama-3.1-8b's untied lm_head (128,256 x 4,096 bf16) is gone from the weights
    # lm_head (128,256 x 4,096 bf16) is gone; the 1-label score head (4,096 x 1 bf16) is there (preference P5)
    assert M.plan(lora(batch=4)).components["weights"] - p.components["weights"] == 128256 * 4096 * 2 - 4096 * 2


def test_kto_plans():
    p = preference_plan(lora(), PreferenceConfig(Objective.KTO))
    assert p.components["logits"] > 0 and "reference_forward" in p.components


@pytest.mark.parametrize("make", [
    lambda: PreferenceConfig(Objective.GRPO),
    lambda: PreferenceConfig(Objective.GRPO, num_generations=1),
    lambda: PreferenceConfig(Objective.REWARD, num_labels=3),
    lambda: PreferenceConfig(Objective.ORPO, reference=Reference.COPY),
    lambda: PreferenceConfig(Objective.DPO, num_generations=4),
    lambda: objective("ppo"),
    lambda: objective("nonsense"),
    lambda: preference_plan(lora(batch=2), PreferenceConfig(Objective.GRPO, num_generations=8)),
    lambda: preference_plan(PlanConfig(model=L8, method=Method.FULL), PreferenceConfig(Objective.DPO,
                                                                                       reference=Reference.ADAPTER)),
])
def test_bad_input(make):
    with pytest.raises(SpecError) as e:
        make()
    assert "\n" not in str(e.value)
