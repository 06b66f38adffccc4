"""The preference planner's rules for ORPO, SimPO and reward models (quantlab/planner/preference.py P2, P5, P9;
trl_head.py H7-H9), with golden numbers derived here; the measurements behind them are the validation-matrix rows
``*-orpo-*``, ``*-simpo-*``, ``*-reward-*`` (tests/validate/test_matrix_methods.py runs them)."""

import dataclasses

import pytest

from quantlab.planner import memory as M
from quantlab.planner import trl_head
from quantlab.planner.preference import (Objective, PreferenceConfig, logits_loss_saved, preference_plan,
                                         reward_backward)
from quantlab.groundtruth import model_spec
from quantlab.specs import DType, DeviceMode, Method, PlanConfig, Precision


def tiny(method=Method.LORA, **kw):
    spec = model_spec("llama-3.2-1b", dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4,
                                           num_key_value_heads=1, head_dim=64, intermediate_size=1024,
                                           vocab_size=49152, max_position_embeddings=512))  # matrix.yaml's scale
    lora = dict(lora_r=8, lora_alpha=16, lora_targets=("q_proj", "v_proj")) if method is Method.LORA else {}
    base = dict(model=spec, method=method, precision=Precision.FP32, compute_dtype=DType.FP32, batch=2, seq=95,
                padding_mask=True, device=DeviceMode.CPU, **lora)
    base.update(kw)
    return PlanConfig(**base)


def test_logits_head_golden_numbers():
    """2 pairs (P = 4 sequences) of 95 tokens, vocabulary 49152, fp32 logits (H7-H9):
    kept = 4·95·49152·4 = 74,711,040; SimPO saves 13 bytes a position (int64 index, fp32 logsumexp, bool mask)
    over 4·94 = 376 positions, 8 a sequence and 8 a pair: 4,888 + 32 + 16 = 4,936; ORPO adds the chosen half's
    log-softmax 2·94·49152·4 = 36,962,304, its int64 targets 1,504 and 4, and 24 a pair instead of 8:
    36,962,304 + 1,508 + 4,888 + 32 + 48 = 36,968,780 (measured: 36,968,816, tiny Llama, this CPU); the backward
    holds 2·376·49152·4 = 147,849,216."""
    kept, saved, transient = trl_head.logits_head(pairs=2, seq=95, vocab=49152, logits_bytes=4, nll=False)
    assert (kept, saved, transient) == (74_711_040, 4_936, 147_849_216)
    kept, saved, transient = trl_head.logits_head(pairs=2, seq=95, vocab=49152, logits_bytes=4, nll=True)
    assert (kept, saved, transient) == (74_711_040, 36_968_780, 147_849_216)
    with pytest.raises(ValueError, match="seq must be at least 2"):
        trl_head.logits_head(pairs=1, seq=1, vocab=8, logits_bytes=4, nll=True)


def test_orpo_and_simpo_heads_are_their_own_rule_not_the_hf_loss():
    """ORPO's head = its logits + saved + transient (H7-H9), below memory.py's HF-loss rule at 2B (whose fp32
    log-softmax of every sequence and two T x V backward gradients TRL's experimental trainers do not hold)."""
    cfg = tiny()
    for obj in (Objective.ORPO, Objective.SIMPO):
        p = preference_plan(cfg, PreferenceConfig(obj))
        kept, saved, tr = trl_head.logits_head(pairs=2, seq=95, vocab=49152, logits_bytes=4,
                                               nll=obj is Objective.ORPO)
        assert p.components["logits_both_sequences"] == kept + saved + tr
        assert logits_loss_saved(cfg, PreferenceConfig(obj)) == kept + saved
        hf = M.plan(dataclasses.replace(cfg, batch=4)).components["logits_loss"]
        assert p.components["logits_both_sequences"] < hf
    assert logits_loss_saved(cfg, PreferenceConfig(Objective.DPO)) is None


def test_reward_head_backward_and_static_golden_numbers():
    """LoRA reward model, 2 pairs x 94 tokens (T = 376): the score head (256 x 1 fp32 = 1,024 bytes) in the
    weights, its PEFT copy trains (adapters + 1,024, gradients + 1,024, AdamW 2,048 + a 4-byte step); the head saves
    its input, 376 x 256 x 4 = 385,024 bytes; the backward transient is 376 x 4 x (3 x 1024 - 256) = 4,235,264."""
    cfg = tiny(seq=94)
    p = preference_plan(cfg, PreferenceConfig(Objective.REWARD))
    dpo = preference_plan(cfg, PreferenceConfig(Objective.DPO))
    c, d = p.components, dpo.components
    assert c["weights"] - d["weights"] == 1_024
    assert (c["adapters"] - d["adapters"], c["gradients"] - d["gradients"], c["optimizer"] - d["optimizer"]) == \
        (1_024, 1_024, 2_052)
    assert p.trainable_params == dpo.trainable_params + 256
    assert c["backward_transient"] == reward_backward(cfg, 4) == 4_235_264
    base = M.plan(dataclasses.replace(cfg, batch=4)).components["activations"]
    assert c["activations"] == base + 385_024
    assert "block_recompute" not in c
    ck = preference_plan(dataclasses.replace(cfg, grad_checkpointing=True), PreferenceConfig(Objective.REWARD))
    assert ck.components["block_recompute"] > 0  # one block recomputed beside the kept inputs
    # its own backward buffers are inside the recompute phase (memory.py 5b): not added a second time
    assert "backward_transient" not in ck.components


def test_full_reward_model_peaks_with_its_gradients_not_an_optimizer_transient():
    """P9 (Trainer's fused AdamW: no step temporaries) and P5 (an untied classifier embedding, gradients freed
    before the forward): the full policy's peak is weights + states + gradients + the embedding backward's
    incoming 376 x 256 x 4 gradient."""
    cfg = tiny(method=Method.FULL, seq=94)
    p = preference_plan(cfg, PreferenceConfig(Objective.REWARD))
    c = p.components
    assert c["optimizer_step"] == 0
    assert p.peak_allocated_bytes == c["weights"] + c["optimizer"] + c["gradients"] + 385_024


def test_fused_adamw_is_not_applied_to_grpo():
    """GRPO keeps memory.py's optimizer step until it is measured (another helper's row)."""
    cfg = tiny(method=Method.FULL, seq=64)
    g = preference_plan(cfg, PreferenceConfig(Objective.GRPO, num_generations=2, max_completion_length=16))
    assert g.components["optimizer_step"] == M.plan(dataclasses.replace(cfg, batch=2)).components["optimizer_step"] > 0
    for obj in (Objective.DPO, Objective.ORPO, Objective.SIMPO, Objective.KTO, Objective.REWARD):
        assert preference_plan(cfg, PreferenceConfig(obj)).components["optimizer_step"] == 0
