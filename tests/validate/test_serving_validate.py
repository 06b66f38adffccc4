"""``quantlab validate`` on serving configurations (issue #11, validate.py assumption 9): generate and score measured
on a tiny random Llama on this CPU against the serving planner, and the bad input of the serving flags."""

import pytest

from quantlab.cli import main

TINY = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 32, "intermediate_size": 512, "vocab_size": 1024}
TINY_FLAG = ",".join(f"{k}={v}" for k, v in TINY.items())


def run(capsys, *argv):
    rc = main(["validate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def tiny_case(id, serve, **cfg):
    from quantlab.commands.validate import case_from_dict

    return case_from_dict("llama-3.2-1b", {"precision": "bf16", "compute_dtype": "bf16", "attn": "sdpa", **cfg},
                          id=id, weights=None, scale=dict(TINY), serve=serve)


@pytest.fixture(scope="module")
def rows():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from quantlab.commands.validate import run_cases

    cases = [tiny_case("gen-c2", {"mode": "generate", "new_tokens": 6}, batch=2, seq=48),
             tiny_case("gen-greedy-static", {"mode": "generate", "new_tokens": 4, "greedy": True, "cache": "static"},
                       batch=1, seq=40),
             tiny_case("score-c3", {"mode": "score"}, batch=3, seq=32),
             tiny_case("gen-lora2", {"mode": "generate", "new_tokens": 4, "adapters": 2}, batch=2, seq=32,
                       lora_r=4)]
    return {r["id"]: r for r in run_cases(cases)}


def test_generate_and_score_meet_the_targets_per_component(rows):
    """Every tensor component (weights, adapters, KV cache, the prefill and decode transients) within 2% and the
    total within 3% (assumption 9; the same targets as the training rows)."""
    misses = []
    for r in rows.values():
        for k in ("weights", "adapters", "kv_cache", "prefill_transient", "decode_transient", "allocated"):
            e = r.get(f"err_{k}")
            if e is not None and abs(e) > (0.03 if k == "allocated" else 0.02):
                misses.append(f"{r['id']} {k}: {r[f'pred_{k}_bytes']:,} vs {r[f'meas_{k}_bytes']:,} ({100 * e:+.2f}%)")
    assert not misses, "\n".join(misses)
    assert all(r["ok"] for r in rows.values())


def test_what_each_mode_measures(rows):
    """generate: prompt + new - 1 cached positions (the last sampled token is never fed back), 2 x 1 KV head x 32
    x 2 bytes = 128 bytes per position and layer, 2 layers; a decode phase exists. score: the prompt's positions,
    one forward, no decode phase. The adapters: 2 fp32 LoRA pairs of r 4 on q_proj (128 -> 128) and v_proj
    (128 -> 32) per layer: 2 x 2 x 4 x (128 + 128 + 128 + 32) x 4 = 26,624 bytes."""
    g = rows["gen-c2"]
    assert g["meas_kv_cache_bytes"] == 2 * 2 * (42 + 6 - 1) * 128 == g["pred_kv_cache_bytes"]
    assert g["meas_forwards"] == 6 and g["meas_decode_transient_bytes"] > 0
    s = rows["score-c3"]
    assert s["meas_kv_cache_bytes"] == 3 * 2 * 32 * 128 and s["meas_forwards"] == 1
    assert s.get("meas_decode_transient_bytes") is None
    # every token's logits (3 x 32 x 1024 bf16) are in the score transient
    assert s["meas_prefill_transient_bytes"] >= 3 * 32 * 1024 * 2
    st = rows["gen-greedy-static"]
    assert st["meas_kv_cache_bytes"] == 2 * (36 + 4 - 1) * 128 and st["cache"] == "static"
    lo = rows["gen-lora2"]
    assert lo["meas_adapters_bytes"] == lo["pred_adapters_bytes"] == 26_624 and lo["adapters"] == 2


@pytest.mark.parametrize("argv,says", [
    (("--mode", "score", "--new-tokens", "8"), "--new-tokens applies to --mode generate"),
    (("--new-tokens", "8", "--engine", "vllm"), "vLLM is not installed here"),
    (("--new-tokens", "8", "--cache", "quantized"), "optimum-quanto"),
    (("--new-tokens", "8", "--concurrency", "0"), "concurrency must be a positive integer"),
    (("--new-tokens", "8", "--concurrency", "4", "--batch", "2"), "disagree"),
    (("--new-tokens", "8", "--adapters", "2", "--lora-targets", "c_attn"), "match no linear"),
    (("--method", "lora", "--new-tokens", "8"), "serving flag"),
    (("--lora-r", "8"), "--lora-r applies to --method lora or qlora"),
    (("--new-tokens", "8", "--replicas", "2", "--num-gpus", "2"), "one process"),
])
def test_bad_serving_input_is_one_line_exit_2(capsys, argv, says):
    rc, _, err = run(capsys, "--model", "llama-3.2-1b", "--scale", TINY_FLAG, "--seq", "64", *argv)
    assert rc == 2 and says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_seq_beyond_the_model_context_is_one_line_exit_2(capsys):
    """GPT-2's learned positions have 1024 rows: --seq 2048 used to die in the lab with an IndexError."""
    rc, _, err = run(capsys, "--model", "gpt2", "--seq", "2048")
    assert rc == 2 and "beyond gpt2's max_position_embeddings (1024)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("entry,says", [
    ("{id: a, model: gpt2, seq: 64, mode: generate, greedy: 1}", "greedy must be true or false"),
    ("{id: a, model: gpt2, seq: 64, mode: sample}", "mode must be one of generate, score, prefill"),
    ("{id: a, model: gpt2, seq: 64, mode: generate, new-tokens: '8'}", "new-tokens must be an integer"),
    ("{id: a, model: gpt2, seq: 64, mode: score, new-tokens: 8}", "configuration a: --new-tokens applies"),
])
def test_bad_serving_matrix_entry_is_one_line_exit_2(capsys, tmp_path, entry, says):
    f = tmp_path / "m.yaml"
    f.write_text(f"configurations:\n  - {entry}\n")
    rc, _, err = run(capsys, "--matrix", str(f))
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_matrix_serving_entry_equals_the_same_flags():
    """A matrix entry's serving keys build the same ServeConfig as the flags (one vocabulary)."""
    import argparse

    from quantlab.commands.validate import case_from_flags, load_matrix, register

    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["validate", "--model", "smollm2-135m", "--precision", "fp32", "--compute-dtype", "fp32",
                         "--mode", "generate", "--batch", "4", "--seq", "64", "--new-tokens", "8"])
    a = case_from_flags(args, id="x", weights=args.weights, scale={})
    b = [c for c in load_matrix("profiles/validation/matrix.yaml", ("smollm2-gen-fp32-c4",))][0]
    assert a.serve == b.serve and a.config == b.config
