"""``quantlab plan --method dpo|orpo|simpo|kto|reward|grpo`` and ``quantlab compare --methods``: the preference
planner (quantlab.planner.preference, TRL 1.16) behind the CLI, its JSON round trip and its one-line errors."""

import dataclasses
import json

import pytest

from quantlab.cli import main
from quantlab.planner import plan
from quantlab.planner.preference import Objective, PreferenceConfig, preference_fit, preference_plan
from quantlab.profiles import load_gpu, load_model
from quantlab.specs import Method, PlanConfig

DONE = ["--model", "8b", "--method", "dpo", "--lora-r", "16", "--batch", "2", "--seq", "2048", "--gpu", "a100-80gb"]


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def doc_of(capsys, *argv):
    rc, out, err = run(capsys, "plan", *argv, "--format", "json")
    assert rc == 0, err
    return json.loads(out)


def test_dpo_table_shows_the_reference_and_both_sequences(capsys):
    rc, out, err = run(capsys, "plan", *DONE)
    assert rc == 0, err
    assert "dpo (TRL 1.16) on a lora" in out
    assert "reference_forward" in out and "logits_both_sequences" in out
    assert "FITS on a100-80gb" in out or "DOES NOT FIT on a100-80gb" in out


def test_dpo_document_matches_the_planner_and_runs_2b_sequences(capsys):
    """P1: the policy runs chosen and rejected as 2B sequences, so its activations are at least those of a plain
    LoRA step at batch 4; the fused head (P2) keeps far less than the HF loss's 4 x 2048 x vocab logits."""
    doc = doc_of(capsys, *DONE)
    assert doc["config"]["method"] == "lora" and doc["config"]["batch"] == 2
    assert doc["preference"]["objective"] == "dpo"
    spec = load_model("8b").spec
    cfg = PlanConfig(model=spec, method=Method.LORA, lora_r=16, batch=2, seq=2048, grad_checkpointing=True)
    p = preference_plan(cfg, PreferenceConfig(Objective.DPO))
    assert doc["peak_allocated_bytes"] == p.peak_allocated_bytes
    sft4 = plan(dataclasses.replace(cfg, batch=4))  # checkpointed, as the TRL default plan is
    c = doc["components"]
    assert c["activations"] >= sft4.components["activations"]
    assert 0 < c["logits_both_sequences"] < sft4.components["logits_loss"]
    assert "reference_weights" not in c  # a LoRA policy's reference is the disabled adapter (P3)


def test_trl_trainer_default_checkpointing_unless_the_flag_says_otherwise(capsys):
    """TRL 1.16's _BaseConfig defaults gradient_checkpointing=True for every preference trainer: the plan takes it
    and says so; --no-grad-checkpointing gives the larger plan; a plain LoRA plan keeps PEFT's default (off)."""
    on = doc_of(capsys, *DONE)
    off = doc_of(capsys, *DONE, "--no-grad-checkpointing")
    lora = doc_of(capsys, *[a if a != "dpo" else "lora" for a in DONE])
    assert on["config"]["grad_checkpointing"] is True and off["config"]["grad_checkpointing"] is False
    assert lora["config"]["grad_checkpointing"] is False
    assert any("base_config.py" in n for n in on["notes"]) and not any("base_config.py" in n for n in off["notes"])
    assert on["components"]["activations"] < off["components"]["activations"] / 4
    rc, out, err = run(capsys, "compare", "--model", "8b", "--methods", "lora,dpo", "--batch", "2",
                       "--format", "json")
    rows = {r["method"]: r for r in json.loads(out)["rows"]}
    assert rows["dpo"]["grad_checkpointing"] is True and rows["lora"]["grad_checkpointing"] is False


@pytest.mark.parametrize("argv,has,lacks", [
    (["--method", "grpo", "--num-generations", "8", "--batch", "8", "--seq", "1024"],
     ("generation_kv_cache", "generation_transient", "logits"), ("reference_forward",)),
    (["--method", "grpo", "--num-generations", "8", "--grad-accum", "8", "--beta", "0.04"],
     ("generation_kv_cache", "reference_forward"), ()),
    (["--method", "orpo", "--batch", "2"], ("logits_both_sequences",), ("reference_forward", "reference_weights")),
    (["--method", "kto", "--batch", "2"], ("logits", "reference_forward"), ("logits_both_sequences",)),
    (["--method", "reward", "--batch", "2"], ("reward_scores",), ("logits", "logits_both_sequences")),
    (["--method", "dpo", "--policy", "full"], ("reference_weights", "reference_forward"), ()),
    (["--method", "grpo", "--num-generations", "2", "--batch", "2", "--reward-model", "qwen2.5-0.5b"],
     ("reward_model", "generation_kv_cache"), ()),
    (["--method", "grpo", "--num-generations", "4", "--batch", "4", "--num-iterations", "2"],
     ("old_policy_forward", "generation_scoring"), ("reference_forward",)),
    (["--method", "grpo", "--num-generations", "4", "--batch", "4", "--grad-accum", "2", "--steps-per-generation",
      "2"], ("generation_kv_cache",), ("old_policy_forward", "generation_scoring")),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_each_objective_plans_its_components(capsys, argv, has, lacks):
    c = doc_of(capsys, "--model", "8b", *argv)["components"]
    assert all(c.get(k) for k in has), (has, c)
    assert not any(c.get(k) for k in lacks), (lacks, c)


def test_full_policy_reference_is_a_copy_of_the_weights(capsys):
    c = doc_of(capsys, "--model", "8b", "--method", "dpo", "--policy", "full")["components"]
    assert c["reference_weights"] == c["weights"]
    c2 = doc_of(capsys, "--model", "8b", "--method", "dpo", "--policy", "full", "--reference", "precomputed")
    assert "reference_weights" not in c2["components"] and "reference_forward" not in c2["components"]


@pytest.mark.parametrize("argv", [
    DONE,
    ["--model", "8b", "--method", "grpo", "--num-generations", "4", "--batch", "4", "--seq", "1024",
     "--max-completion-length", "256", "--beta", "0.04", "--policy", "full", "--gpu", "h100"],
    ["--model", "8b", "--method", "reward", "--batch", "2", "--policy", "qlora"],
    ["--model", "8b", "--method", "grpo", "--num-generations", "4", "--batch", "4", "--seq", "1024",
     "--max-completion-length", "256", "--num-iterations", "2", "--steps-per-generation", "2"],
], ids=("dpo", "grpo", "reward", "grpo-iterations"))
def test_from_json_reproduces_a_preference_plan(capsys, tmp_path, argv):
    rc, first, err = run(capsys, "plan", *argv, "--format", "json")
    assert rc == 0, err
    path = tmp_path / "p.json"
    path.write_text(first)
    rc, again, err = run(capsys, "plan", "--from-json", str(path), "--format", "json")
    assert rc == 0, err
    assert again == first
    assert run(capsys, "plan", "--from-json", str(path))[1] == run(capsys, "plan", *argv)[1]


def test_from_json_refuses_a_bad_preference_key(capsys, tmp_path):
    doc = doc_of(capsys, *DONE)
    doc["preference"]["objective"] = "ppo"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    rc, out, err = run(capsys, "plan", "--from-json", str(path))
    assert rc == 2 and out == "" and "PPO" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,words", [
    (["--method", "grpo"], "--num-generations"),
    (["--method", "grpo", "--num-generations", "8"], "whole groups"),  # batch 1 cannot hold a group of 8
    (["--method", "reward", "--num-labels", "0"], "classification head"),
    (["--method", "reward", "--num-labels", "2"], "classification head"),
    (["--method", "ppo"], "no PPO trainer"),
    (["--method", "lora", "--beta", "0.1"], "--beta applies to the preference methods"),
    (["--method", "lora", "--policy", "full"], "--policy applies to the preference methods"),
    (["--method", "dpo", "--num-generations", "4"], "--num-generations applies to --method grpo"),
    (["--method", "orpo", "--reference", "copy"], "--reference applies to --method dpo or kto or grpo"),
    (["--method", "dpo", "--policy", "full", "--reference", "adapter"], "needs a PEFT policy"),
    (["--method", "dpo", "--new-tokens", "64"], "serving flag"),
    (["--method", "grpo", "--num-generations", "2", "--batch", "2", "--seq", "256"], "leaves no prompt"),
    (["--method", "dpo", "--num-iterations", "2"], "--num-iterations applies to --method grpo"),
    (["--method", "grpo", "--num-generations", "2", "--batch", "2", "--num-iterations", "0"],
     "num-iterations must be a positive integer"),
    (["--method", "grpo", "--num-generations", "4", "--batch", "2", "--steps-per-generation", "1"], "whole groups"),
])
def test_bad_preference_input_is_one_line_exit_2(capsys, argv, words):
    rc, out, err = run(capsys, "plan", "--model", "8b", *argv)
    assert rc == 2 and out == ""
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_preference_fit_searches_match_the_planner():
    """max_batch fits and the next batch (GRPO: the next whole group) does not; likewise max_seq."""
    gpu = load_gpu("a100-80gb")
    spec = load_model("8b").spec
    for cfg, pref, step in (
            (PlanConfig(model=spec, method=Method.LORA, batch=2, seq=2048), PreferenceConfig(Objective.DPO), 1),
            (PlanConfig(model=spec, method=Method.LORA, batch=8, seq=1024),
             PreferenceConfig(Objective.GRPO, num_generations=8, max_completion_length=256), 8)):
        f = preference_fit(cfg, pref, gpu)
        assert f.max_batch % step == 0 and f.max_batch > 0

        def process(**kw):
            return preference_plan(dataclasses.replace(cfg, **kw), pref).process_bytes

        assert process(batch=f.max_batch) <= gpu.memory_bytes < process(batch=f.max_batch + step)
        assert process(seq=f.max_seq) <= gpu.memory_bytes < process(seq=f.max_seq + 1)
        assert f.fits == (process() <= gpu.memory_bytes)


def test_compare_methods_side_by_side(capsys):
    rc, out, err = run(capsys, "compare", "--model", "8b", "--methods", "lora,dpo,orpo,kto,reward,grpo,ppo",
                       "--batch", "2", "--num-generations", "2", "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    rows = {r["method"]: r for r in doc["rows"]}
    assert doc["methods"] == ["lora", "dpo", "orpo", "kto", "reward", "grpo", "ppo"]
    assert rows["dpo"]["policy"] == "lora" and rows["lora"]["policy"] is None
    assert rows["dpo"]["reference_forward_bytes"] > 0 and "logits_both_sequences_bytes" in rows["orpo"]
    assert rows["grpo"]["generation_kv_cache_bytes"] > 0
    assert "PPO" in rows["ppo"]["note"]
    # the ORPO row builds every logit of both sequences, the DPO row's fused head does not (P2)
    assert rows["orpo"]["peak_allocated_bytes"] > rows["dpo"]["peak_allocated_bytes"]
    rc, table, _ = run(capsys, "compare", "--model", "8b", "--methods", "lora,dpo", "--gpu", "h100")
    assert rc == 0 and "dpo" in table and "lora policy" in " ".join(table.split())


def test_compare_dpo_by_precision_switches_the_policy(capsys):
    rc, out, err = run(capsys, "compare", "--model", "8b", "--method", "dpo", "--batch", "2", "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["method"] == "dpo"
    rows = {r["precision"]: r for r in doc["rows"]}
    assert rows["nf4"]["method"] == "qlora" and rows["bf16"]["method"] == "lora"
    assert all("reference_forward_bytes" in r for r in doc["rows"]), doc["rows"]


@pytest.mark.parametrize("argv,words", [
    (["--methods", "dpo", "--precisions", "fp32"], "not both"),
    (["--methods", "dpo", "--method", "lora"], "drop --method"),
    (["--methods", "dpo,sft"], "unknown method 'sft'"),
    (["--methods", "dpo,dpo"], "twice"),
])
def test_compare_methods_bad_input(capsys, argv, words):
    rc, out, err = run(capsys, "compare", "--model", "8b", *argv)
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1
