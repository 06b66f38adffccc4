"""quantlab.lab.grpo (TRL 1.16 GRPOTrainer, reward functions, both phases measured). The run test uses a tiny
random llama (2 layers, hidden 64, 2 KV heads of 16) with the embedded tokenizer's vocabulary (49152) and synthetic
8-token prompts, so it checks the instrument on the trainer's real step, not quality."""

import pytest

from quantlab.errors import QuantlabError

pytest.importorskip("trl")

SCALE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 49152, "tie_word_embeddings": True}


def test_json_valid_parses_objects_only():
    from quantlab.lab.grpo import json_valid

    done = [[{"role": "assistant", "content": '```json\n{"a": 1}\n```'}], '{"a": 1}', "[1, 2]", "not json", '{"a":']
    assert json_valid(done) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_json_fields_counts_the_reference_pairs_reproduced():
    from quantlab.lab.grpo import json_fields

    ref = '{"first_name": "Ravi", "age_years": 68, "home_city": "Hanoi"}'
    got = json_fields(['{"first_name": "Ravi", "age_years": 68, "city": "Hanoi"}', '{"name": "Ravi"}', "x"],
                      response=[ref, ref, ref])
    assert got == [pytest.approx(2 / 3), 0.0, 0.0]


@pytest.mark.parametrize("kw,msg", [
    (dict(batch=6, num_generations=4), "whole groups"),
    (dict(num_generations=1), "at least 2"),
    (dict(num_iterations=2, measure_step=2), "reuses an earlier generation"),
    (dict(measure_step=9, max_steps=8), "after the last step"),
    (dict(policy="qlora"), "lora or full"),
    (dict(task=None), "synthetic-prompt-tokens"),
    (dict(beta=-0.1), "non-negative"),
])
def test_bad_configs_are_one_line_errors(kw, msg):
    from quantlab.lab.grpo import GRPORun

    with pytest.raises(QuantlabError, match=msg):
        GRPORun(**kw)


@pytest.fixture(scope="module")
def tiny_run():
    from transformers import AutoTokenizer

    from quantlab.lab.grpo import GRPORun, run_grpo
    from quantlab.lab.model import ensure_embedded
    from quantlab.lab.peft_measured import tiny_from_profile

    try:
        tok = AutoTokenizer.from_pretrained(ensure_embedded(progress=False))
    except QuantlabError as e:
        pytest.skip(str(e))
    model = tiny_from_profile("llama-3.2-1b", SCALE)
    cfg = GRPORun(task=None, synthetic_prompt_tokens=8, train_prompts=8, eval_prompts=0, evaluate=False,
                  max_steps=2, batch=4, num_generations=2, max_completion_length=8, ignore_eos=True, lora_r=4,
                  lora_alpha=8)
    return run_grpo(cfg, log=lambda s: None, model=model, tokenizer=tok)


def test_generation_phase_is_measured_per_component(tiny_run):
    """Golden figures (G5). KV cache: 2 (K, V) x 2 layers x 4 rows x 2 KV heads x 16 x 15 positions (8 prompt +
    8 new - 1: generate never feeds back its last token) x 4 bytes = 30,720. TRL samples with top_k 0, top_p 1,
    temperature 1 (no logits processor): at a step the one-position logits, their fp32 copy, the softmax and
    torch.multinomial's exponential noise are 4 x 4 rows x 49152 x 4 bytes = 3,145,728 (the prefill phase; a
    decode step holds the previous step's copy and probabilities instead of its logits and noise at most): each
    phase's transient is that plus generate's few int64 id tensors."""
    g = tiny_run["generation"]
    assert (g["rows"], g["prompt_tokens"], g["new_tokens"], g["forwards"]) == (4, 8, 8, 8)
    assert not g["prompt_padded"]
    assert g["meas_kv_cache_bytes"] == 2 * 2 * 4 * 2 * 16 * 15 * 4
    BV4 = 4 * 4 * 49152 * 4
    assert 0 <= g["meas_prefill_transient_bytes"] - BV4 < 4096
    assert 0 <= g["meas_decode_transient_bytes"] - BV4 < 4096
    assert tiny_run["scoring"] == []  # beta 0, num_iterations 1: TRL runs no scoring forward
    assert tiny_run["meas_generation_allocated_bytes"] == g["meas_allocated_bytes"]


def test_training_phase_is_measured_per_component(tiny_run):
    """LoRA r 4 on q_proj (64 -> 64) and v_proj (64 -> 32) in 2 layers: (4 x 64 + 64 x 4) + (4 x 64 + 32 x 4) =
    896 parameters a layer, 1,792 in all, 7,168 fp32 bytes; gradients the same; AdamW's exp_avg and exp_avg_sq
    twice that plus one fp32 step counter per parameter tensor (8 tensors x 4 bytes)."""
    m = tiny_run["training"]
    assert m["meas_trainable_params"] == 1792
    assert m["meas_adapters_bytes"] == m["meas_gradients_bytes"] == 7168
    assert m["meas_optimizer_bytes"] == 2 * 7168 + 8 * 4
    assert (tiny_run["train_sequences"], tiny_run["train_tokens"]) == (4, 16) and not tiny_run["train_padded"]
    assert m["meas_activations_bytes"] > 0 and m["meas_logits_loss_bytes"] > 0  # backbone; TRL's fused head
    assert tiny_run["meas_allocated_bytes"] == max(tiny_run["meas_generation_allocated_bytes"],
                                                   tiny_run["meas_training_allocated_bytes"])
    assert tiny_run["grad_checkpointing"] is True  # GRPOConfig's default
