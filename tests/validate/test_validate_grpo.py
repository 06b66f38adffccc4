"""quantlab.validate_grpo: TRL 1.16 GRPOTrainer measured by the lab beside preference_plan, one row in validate's
schema. Tiny random llama (2 layers, hidden 64, vocab 49152: the embedded tokenizer's), 4 completions of 8 prompt
+ 8 new tokens, two steps, the second measured (num_iterations 2: three, the third measured). The targets are
validate's (tensor components 2%, totals 3%), every component and phase asserted (the misses once recorded in
/work/notes/grpo-requests.md R1-R3 are planned now: serving S1b's no-logits-processor rule, preference P4's
scoring forwards in the generation phase)."""

import pytest

from quantlab.errors import QuantlabError

pytest.importorskip("trl")

SCALE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 49152, "tie_word_embeddings": True}


def _row(policy: str, beta: float, ckpt: bool):
    from quantlab.lab.model import ensure_embedded
    from quantlab.planner.preference import Objective, PreferenceConfig
    from quantlab.validate_grpo import grpo_case, validate_grpo

    try:
        ensure_embedded(progress=False)
    except QuantlabError as e:
        pytest.skip(str(e))
    pref = PreferenceConfig(Objective.GRPO, num_generations=2, max_completion_length=8, beta=beta)
    kw = dict(method=policy, precision="fp32", compute_dtype="fp32", batch=4, seq=16, grad_checkpointing=ckpt)
    if policy == "lora":
        kw.update(lora_r=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"])
    return validate_grpo(grpo_case(f"tiny-grpo-{policy}", "llama-3.2-1b", SCALE, pref, **kw))


@pytest.fixture(scope="module")
def lora_row():
    return _row("lora", 0.0, True)


@pytest.fixture(scope="module")
def full_ref_row():
    return _row("full", 0.04, False)


def _within(row, k, tol):
    assert row[f"meas_{k}_bytes"] is not None, k
    assert abs(row[f"err_{k}"]) <= tol, (k, row[f"pred_{k}_bytes"], row[f"meas_{k}_bytes"], row[f"err_{k}"])


def test_row_is_in_validates_schema(lora_row):
    from quantlab.validate import TENSOR_COMPONENTS

    for k in TENSOR_COMPONENTS + ("allocated",):
        assert f"pred_{k}_bytes" in lora_row and f"err_{k}" in lora_row
    assert lora_row["method"] == "grpo" and lora_row["plans_over"] == "lora"
    assert (lora_row["batch"], lora_row["seq"], lora_row["max_completion_length"]) == (4, 16, 8)
    assert lora_row["ok"] is True


@pytest.mark.parametrize("k", ["weights", "adapters", "gradients", "optimizer", "activations", "kv_cache",
                               "prefill_transient"])
def test_lora_components_within_2_percent(lora_row, k):
    _within(lora_row, k, 0.02)


@pytest.mark.parametrize("k", ["training_allocated", "allocated"])
def test_lora_totals_within_3_percent(lora_row, k):
    """The step's peak is the training phase here (TRL's fused head's chunk buffers, 60 x 32768 fp32)."""
    _within(lora_row, k, 0.03)


def test_lora_decode_transient_within_2_percent(lora_row):
    """TRL's GRPOConfig samples with top_k 0, top_p 1, temperature 1: no logits processor (serving S1b,
    ``logits_warpers=False``): 12 bytes per row and vocabulary entry at a decode step, 8 held (top-k 50: 17, 12)."""
    _within(lora_row, "decode_transient", 0.02)


def test_lora_generation_phase_within_3_percent(lora_row):
    _within(lora_row, "generation_allocated", 0.03)


@pytest.mark.parametrize("k", ["weights", "gradients", "optimizer", "activations", "reference_weights",
                               "reference_forward", "kv_cache"])
def test_full_policy_with_reference_components_within_2_percent(full_ref_row, k):
    """beta 0.04 on a full policy: TRL loads a second model (create_model_from_path) and runs its no-grad forward
    over the generation batch; its transient is what preference_plan plans as reference_forward."""
    _within(full_ref_row, k, 0.02)


def test_full_policy_training_phase_within_3_percent(full_ref_row):
    _within(full_ref_row, "training_allocated", 0.03)


def test_reference_forward_runs_in_the_generation_phase(full_ref_row):
    """TRL runs the reference's log-probs in _generate_and_score_completions under no_grad (grpo_trainer.py
    2709-2737), before the policy's training forward: the generation phase holds it, no activations beside it."""
    sc = full_ref_row["meas_scoring"]
    assert [s["what"] for s in sc] == ["reference"] and sc[0]["rows"] == 4 and sc[0]["tokens"] == 16
    assert full_ref_row["meas_generation_allocated_bytes"] == sc[0]["meas_allocated_bytes"]


def test_full_policy_generation_phase_within_3_percent(full_ref_row):
    """preference P4: the reference forward is planned in the generation phase (generation_scoring)."""
    assert full_ref_row["pred_components"]["generation_scoring"] == full_ref_row["pred_reference_forward_bytes"]
    _within(full_ref_row, "generation_allocated", 0.03)


def test_full_policy_row_is_ok(full_ref_row):
    _within(full_ref_row, "allocated", 0.03)
    assert full_ref_row["ok"] is True


@pytest.fixture(scope="module")
def old_policy_row():
    from quantlab.planner.preference import Objective, PreferenceConfig
    from quantlab.validate_grpo import grpo_case, measure_grpo, compare_grpo

    pref = PreferenceConfig(Objective.GRPO, num_generations=2, max_completion_length=8, num_iterations=2)
    case = grpo_case("tiny-grpo-iter2", "llama-3.2-1b", SCALE, pref, method="lora", precision="fp32",
                     compute_dtype="fp32", batch=4, seq=16, lora_r=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"])
    try:
        return compare_grpo(case, measure_grpo(case))
    except QuantlabError as e:
        pytest.skip(str(e))


def test_num_iterations_adds_the_old_policy_forward_to_the_generation_phase(old_policy_row):
    """num_iterations 2: TRL scores the old policy under no_grad (grpo_trainer.py 2642-2657) after generate; the
    window's growth is the same no-grad fused-head forward over the same rows as a reference forward (planned as
    reference_forward for beta > 0: within 2% of it). The training phase is unchanged."""
    from quantlab.planner.preference import Objective, PreferenceConfig, preference_plan
    from quantlab.validate_grpo import planned_step

    sc = old_policy_row["meas_scoring"]
    assert [s["what"] for s in sc] == ["old_policy"] and old_policy_row["num_iterations"] == 2
    cfg, _ = planned_step(_case_config(old_policy_row), PreferenceConfig(Objective.GRPO, num_generations=2,
                                                                         max_completion_length=8), old_policy_row)
    ref_fwd = preference_plan(cfg, PreferenceConfig(Objective.GRPO, num_generations=2, max_completion_length=8,
                                                    beta=0.04)).components["reference_forward"]
    assert abs(old_policy_row["meas_old_policy_forward_bytes"] - ref_fwd) <= 0.02 * ref_fwd
    _within(old_policy_row, "training_allocated", 0.03)


def test_old_policy_forward_is_planned(old_policy_row):
    """preference P4: grad_accum 1 % (steps_per_generation 1 x num_iterations 2) != 0, so TRL scores the old policy
    (grpo_trainer.py 2642-2657); planned in the generation phase."""
    _within(old_policy_row, "old_policy_forward", 0.02)
    _within(old_policy_row, "generation_allocated", 0.03)
    _within(old_policy_row, "allocated", 0.03)
    assert old_policy_row["ok"] is True


def _case_config(row):
    from quantlab.groundtruth import model_spec
    from quantlab.specs import PlanConfig

    return PlanConfig.from_dict({"method": "lora", "precision": "fp32", "compute_dtype": "fp32", "batch": 4,
                                 "seq": 16, "lora_r": 4, "lora_alpha": 8, "lora_targets": ["q_proj", "v_proj"],
                                 "device": "cpu"}, model=model_spec("llama-3.2-1b", SCALE))


@pytest.fixture(scope="module")
def spg_row():
    from quantlab.planner.preference import Objective, PreferenceConfig
    from quantlab.validate_grpo import grpo_case, validate_grpo

    pref = PreferenceConfig(Objective.GRPO, num_generations=2, max_completion_length=8, steps_per_generation=2)
    case = grpo_case("tiny-grpo-spg2", "llama-3.2-1b", SCALE, pref, method="lora", precision="fp32",
                     compute_dtype="fp32", batch=4, seq=16, lora_r=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"])
    try:
        return validate_grpo(case)
    except QuantlabError as e:
        pytest.skip(str(e))


def test_steps_per_generation_generates_the_larger_batch_and_scores_the_old_policy(spg_row):
    """steps_per_generation 2 (grad_accum 1): generate makes batch x 2 = 8 completions at once (grpo_config.py
    __post_init__), and 1 % (2 x 1) != 0 so TRL scores the old policy over them, in chunks of the 4-row batch
    (preference P4); the training step is still 4 sequences."""
    assert spg_row["meas_generation_rows"] == 8 and spg_row["batch"] == 4
    assert [(s["what"], s["rows"]) for s in spg_row["meas_scoring"]] == [("old_policy", 8)]
    for k in ("kv_cache", "prefill_transient", "decode_transient", "old_policy_forward"):
        _within(spg_row, k, 0.02)
    for k in ("generation_allocated", "training_allocated", "allocated"):
        _within(spg_row, k, 0.03)
    assert spg_row["ok"] is True
