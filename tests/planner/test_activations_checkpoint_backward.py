"""Gradient checkpointing's backward (memory.py assumptions 5b-5d, activations A14).

Golden figures on the tiny Llama the Trainer integration test runs (tests/integrations/test_trainer_loop_plan.py,
measured there to 0.03% on this CPU): hidden h = 64, intermediate I = 128, 2 layers, 4 heads / 2 KV heads of 16,
vocab 256, untied; batch 2 x 32 tokens, so T = 64; fp32 weights (r = a = 4 bytes).

- dY, the last block output's gradient: 4·T·h = 16,384 B; down_proj's input gradient 4·T·I = 32,768 B; its weight's
  gradient 4·I·h = 32,768 B; a gated product's two factor gradients 2·4·T·I = 65,536 B.
- One block saves 280,064 B (activations A2-A6); the recompute reuses the checkpoint's saved input (the fp32 norm's
  saved input is the input itself), 4·T·h = 16,384 B, so it makes 263,680 B anew (the profiler's allocation events
  listed exactly these 263,680 B).
- The head's saved tensors freed before the last block's backward: the final norm's fp32 input 16,384, rsqrt 256,
  normed output 16,384, and lm_head's input 16,384: 49,408 B.
"""

import itertools

import pytest

from quantlab.planner import memory
from quantlab.planner.activations import Act, amp_weight_cache, block_backward_points, recompute_reused
from quantlab.planner.params import count_params
from quantlab.profiles import load_model
from quantlab.specs import (Attention, DeviceMode, Loop, Method, ModelSpec, Optimizer, PlanConfig, Precision,
                            TrainingPrecision)

LORA = frozenset({"q_proj", "v_proj"})


def _tiny():
    from quantlab.lab.model import tiny_config

    return ModelSpec.from_hf_config(tiny_config("llama").to_dict(), name="tiny")


def _x(r=4, a=4, c=4, amp=False, **kw):
    return Act(b=2, s=32, kv_s=32, r=r, a=a, c=c, amp=amp, eager=False, cuda=False, flash=True, **kw)


def _cfg(**kw):
    base = dict(model=_tiny(), method=Method.FULL, precision=Precision.FP32, device=DeviceMode.CPU, batch=2, seq=32,
                grad_checkpointing=True, grad_accum=2, loop=Loop.TRAINER)
    base.update(kw)
    return PlanConfig(**base)


def test_backward_points_of_a_trained_fp32_block():
    """down_proj's MmBackward: dY + its input gradient + its weight gradient = 16,384 + 32,768 + 32,768; the product's
    backward: dY + 32,768 + 65,536 - down_proj's saved input 32,768 (freed) = 81,920 as well; where the step had no
    gradients (grads_kept False) down_proj's weight gradient stays as .grad beside the product's: 114,688."""
    m = _tiny()
    assert block_backward_points(m, _x(), True, frozenset(), True, 4, True) == (81_920, 81_920)
    assert block_backward_points(m, _x(), True, frozenset(), True, 4, False) == (81_920, 114_688)


def test_backward_points_of_a_frozen_lora_block():
    """LoRA on q/v: down_proj is frozen, so it saves no input and makes no weight gradient: 16,384 + 32,768, then the
    product's 16,384 + 32,768 + 65,536 = 114,688."""
    assert block_backward_points(_tiny(), _x(), False, LORA, True, 4, True) == (49_152, 114_688)


def test_backward_points_under_autocast_see_the_weight_cast_copy():
    """AMP (r = 4, a = c = 2): MmBackward holds the bf16 weight gradient (2·I·h = 16,384) beside dY 16,384 and the
    bf16 input gradient 16,384; the cast's ToCopyBackward the fp32 copy (4·I·h = 32,768) with down_proj's saved
    input (16,384) freed: 16,384 + 16,384 + 32,768 - 16,384 = 49,152; the product: 16,384 + 16,384 + 32,768 -
    16,384 - down_proj's weight cast 16,384 = 32,768."""
    x = _x(r=4, a=2, c=2, amp=True)
    assert block_backward_points(_tiny(), x, True, frozenset(), True, 4, True) == (49_152, 49_152, 32_768)


def test_eager_attention_backward_point():
    """Eager attention at 512 tokens (T = 1,024; S = b·H·s² = 2·4·512² = 2,097,152 scores): at the softmax's backward
    the fp32 probabilities' gradient and the fp32 output, 8·S = 16,777,216 B, beside dY (262,144), with the MLP's
    saved tensors (norm 528,384 + its output 262,144 + gate, activation, up 1,572,864 + down_proj's input 524,288 =
    2,887,680) and o_proj's saved input (262,144) freed: 13,889,536; where the step had no gradients the MLP's,
    o_proj's and the post-attention norm's gradients, 4·(3·8,192 + 4,096 + 64) = 114,944 B, are live too. In bf16
    8·S less the freed bf16 probabilities 2·S beside dY 131,072, less the MLP's 1,576,960 and o_proj's 131,072:
    11,005,952."""
    m = _tiny()
    x = Act(b=2, s=512, kv_s=512, r=4, a=4, c=4, amp=False, eager=True, cuda=False, flash=True)
    assert block_backward_points(m, x, True, frozenset(), True, 4, True)[-1] == 13_889_536
    assert block_backward_points(m, x, True, frozenset(), True, 4, False)[-1] == 14_004_480
    x = x._replace(r=2, a=2, c=2)
    assert block_backward_points(m, x, True, frozenset(), True, 2, True)[-1] == 11_005_952
    sdpa = x._replace(eager=False)
    assert len(block_backward_points(m, sdpa, True, frozenset(), True, 2, True)) == 2  # (no s^2 point)


def test_recompute_reuses_only_an_input_the_norm_saves_as_is():
    m = _tiny()
    assert recompute_reused(m, _x(), True, True) == 4 * 64 * 64  # fp32: x.to(float32) is x
    assert recompute_reused(m, _x(r=2, a=2, c=2), True, True) == 0  # bf16: the norm's fp32 copy is new
    gpt2 = load_model("gpt2").spec  # LayerNorm saves its input itself, in the residual dtype
    assert recompute_reused(gpt2, _x(r=2, a=2, c=2), True, True) == 2 * 64 * gpt2.hidden_size


def test_autocast_cache_holds_trainable_casts_only():
    """Per block: q 64·64, k and v 64·32, o 64·64, gate/up/down 64·128: 36,864 weights, 73,728 B in bf16 when they
    train; frozen under LoRA only the adapters' casts stay cached, 2·4·(64+64 + 64+32) = 1,792 B; none without AMP."""
    m = _tiny()
    amp = _x(r=4, a=2, c=2, amp=True, rank=4)
    assert amp_weight_cache(m, amp, True, frozenset()) == 73_728
    assert amp_weight_cache(m, amp, False, LORA) == 1_792
    assert amp_weight_cache(m, _x(), True, frozenset()) == 0


def test_trainer_checkpointed_plan_is_the_last_blocks_backward():
    """static (weights 427,328 + gradients 427,264 + AdamW states 854,612 = 1,709,204) + activations 87,040 + two
    CPU RNG states 10,112 + (block 1's 263,680 new tensors + 81,920 - the head's 49,408) = 2,102,548 (measured
    2,103,080: the labels, the num_items_in_batch tensor and the loss scalars, 532 B, are not planned)."""
    p = memory.plan(_cfg())
    assert p.components["activations"] == 87_040
    assert p.peak_allocated_bytes == 2_102_548


def test_dynamic_gradients_move_the_peak_to_the_first_block():
    """grad accum 1 (Trainer's set_to_none zeroing): at block 0's backward block 1's input (16,384) and RNG state
    (5,056) are freed and its gradients (147,968 B: seven linears and two norms) live, beside lm_head's and the final
    norm's (65,792) and block 0's product point with down_proj's gradient kept (114,688): static 1,281,940 + 87,040 -
    49,408 - 16,384 + 5,056 + 65,792 + 147,968 + 263,680 + 114,688 = 1,900,372 (measured 1,900,900 by the Trainer)."""
    p = memory.plan(_cfg(grad_accum=1))
    assert p.peak_allocated_bytes == 1_900_372


def test_rng_states_are_cpu_memory_only():
    cpu, cuda = _cfg(), _cfg(device=DeviceMode.CUDA)
    for cfg, want in ((cpu, 2 * memory.CPU_RNG_STATE_BYTES), (cuda, 0)):
        st = memory._static(cfg)
        parts, _ = memory._train_terms(cfg, count_params(cfg.model), st.attn, st.dtypes, [], cfg.batch, cfg.seq)
        assert parts[3] == want


def test_manual_loop_keeps_the_logits_in_the_backward_phase():
    """The manual loop's out.logits (T·V·4 = 65,536 B) stay through the last block's backward: its plan is the
    trainer plan plus the logits where that phase is the peak."""
    t, m = memory.plan(_cfg()), memory.plan(_cfg(loop=Loop.MANUAL))
    assert m.peak_allocated_bytes - t.peak_allocated_bytes == 65_536


VARIANTS = [dict(), dict(training_precision=TrainingPrecision.AMP, compute_dtype="bf16"), dict(device=DeviceMode.CPU),
            dict(grad_accum=4), dict(keep_grads=True), dict(attn=Attention.EAGER), dict(optimizer=Optimizer.SGD),
            dict(device=DeviceMode.CPU, training_precision=TrainingPrecision.AMP, compute_dtype="bf16")]
METHODS = [(Method.FULL, Precision.BF16), (Method.FREEZE, Precision.BF16), (Method.LORA, Precision.BF16),
           (Method.QLORA, Precision.NF4), (Method.IA3, Precision.BF16), (Method.FULL, Precision.FP32)]


@pytest.mark.parametrize("name", ["llama-3.1-8b", "gemma-2-9b", "mixtral-8x7b", "gpt2"])
def test_checkpointed_plans_keep_their_closed_form(name):
    """The backward candidates are each a polynomial in batch and sequence (the maximum is taken after), so plan()'s
    closed form (memory._bipoly) equals the op-by-op plan for every checkpointed variant."""
    m = load_model(name).spec
    n = 0
    for (method, precision), v, (b, s) in itertools.product(METHODS, VARIANTS, ((1, 1), (3, 17), (2, 4097))):
        v = dict(v)
        if "compute_dtype" in v:
            from quantlab.specs import DType

            v["compute_dtype"] = DType(v["compute_dtype"])
        try:
            cfg = PlanConfig(model=m, method=method, precision=precision, batch=b, seq=s, grad_checkpointing=True, **v)
        except Exception:  # a combination the spec refuses
            continue
        assert memory.plan(cfg) == memory.plan_direct(cfg), cfg
        n += 1
    assert n > 50


def test_eager_attention_backward_without_checkpointing():
    """Without checkpointing (5e) the last block's softmax backward is beside every block's saved tensors: at 512
    tokens the plan exceeds the loss phase by the point 13,889,536 less the head's freed tensors (4·T·h + 4·T +
    4·T·h + 4·T·h = 790,528): the figure the Trainer measured to 0.02% (tests/integrations)."""
    cfg = _cfg(grad_checkpointing=False, seq=512, attn=Attention.EAGER)
    st = memory._static(cfg)
    parts, _ = memory._train_terms(cfg, count_params(cfg.model), st.attn, st.dtypes, [], cfg.batch, cfg.seq)
    assert parts[3] == 13_889_536 - 790_528
    sdpa = _cfg(grad_checkpointing=False, seq=512)
    st = memory._static(sdpa)
    assert memory._train_terms(sdpa, count_params(sdpa.model), st.attn, st.dtypes, [], 2, 512)[0][3] == 0
