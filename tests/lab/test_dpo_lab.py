"""quantlab.lab.preference (TRL 1.16 DPOTrainer + LoRA) and quantlab.commands.lab_preference (the measured step
beside preference_plan). The run test uses a tiny random llama with the embedded tokenizer's vocabulary (49152),
so it checks the instrument and the planner on the trainer's real step, not quality."""

import argparse

import pytest

from quantlab.errors import QuantlabError

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    from quantlab.lab.model import ensure_embedded, tiny_model

    try:
        tok = AutoTokenizer.from_pretrained(ensure_embedded(progress=False))
    except QuantlabError as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("tiny-dpo")
    tiny_model("llama", vocab_size=49152).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_dpo_run_scores_pairs_and_its_step_matches_the_plan(tiny_dir, tmp_path):
    """Policy = reference before training (LoRA B = 0): every implicit reward is 0 (D3). The static components and
    the bytes saved for backward match preference_plan for the measured step to the byte; the step's peak within
    5% (the allocator's transients)."""
    from quantlab.commands.lab_preference import compare_rows
    from quantlab.lab.preference import DPORun, run_dpo

    cfg = DPORun(model=str(tiny_dir), max_steps=2, batch=2, eval_batch=2, train_pairs=8, eval_pairs=4, lora_r=4,
                 lora_alpha=8)
    res = run_dpo(cfg, tmp_path, log=lambda s: None)
    assert res["reference"] == "adapter" and res["grad_checkpointing"] is True  # DPOConfig's default
    assert res["before_rewards/chosen"] == 0.0 and res["before_rewards/margins"] == 0.0
    assert res["before_rewards/accuracies"] == 0.0
    assert res["after_rewards/chosen"] != 0.0  # the adapter moved
    assert res["step_sequences"] == 4  # 2 pairs: chosen and rejected concatenated (preference P1)
    history = (tmp_path / "dpo-history.csv").read_text().splitlines()
    assert "loss" in history[0].split(",") and len(history) == 1 + cfg.max_steps  # one row per logged step
    rows = {r["component"].split(" ")[0]: r for r in compare_rows(res)}
    for k in ("weights", "adapters", "gradients", "optimizer", "activations"):
        assert rows[k]["pred_bytes"] == rows[k]["meas_bytes"], rows[k]
    assert abs(rows["allocated"]["error"]) < 0.05, rows["allocated"]


def test_config_is_checked():
    from quantlab.lab.preference import DPORun

    for kw, words in (({"max_steps": 0}, "max-steps"), ({"measure_step": 5, "max_steps": 3}, "after the last"),
                      ({"beta": 0.0}, "beta"), ({"lr": 0.0}, "lr"), ({"task": None}, "give a task")):
        with pytest.raises(QuantlabError, match=words):
            DPORun(**kw)
    with pytest.raises(QuantlabError, match="json-prefs"):
        DPORun(task="nope").paths()
    train, test = DPORun().paths()
    assert train.name == "data.jsonl" and test.name == "test.jsonl" and train.parent.name == "json-prefs"


def test_standard_pairs_become_one_turn_conversations_under_a_chat_template():
    from quantlab.data.preference import Pair
    from quantlab.lab.preference import trl_rows

    chat = argparse.Namespace(chat_template="{{ x }}")
    plain = argparse.Namespace(chat_template=None)
    p = Pair(1, '{"a": 1}', "{'a': 1}", "Give JSON.")
    assert trl_rows([p], chat)[0] == {"prompt": [{"role": "user", "content": "Give JSON."}],
                                      "chosen": [{"role": "assistant", "content": '{"a": 1}'}],
                                      "rejected": [{"role": "assistant", "content": "{'a': 1}"}]}
    assert trl_rows([p], plain)[0] == {"prompt": "Give JSON.", "chosen": '{"a": 1}', "rejected": "{'a': 1}"}


def test_lab_finetune_flags_map_to_the_run():
    """The flags lab finetune passes: given ones win, the rest are DPORun's defaults (a default exists once)."""
    from quantlab.commands.flags import GIVEN
    from quantlab.commands.lab_preference import config_from_args
    from quantlab.lab.preference import DPORun

    ns = argparse.Namespace(model="smollm2-135m", task=None, data=None, test_file=None, max_steps=12, lr=None,
                            beta=0.2, seed=None, batch=8, seq=2048, lora_r=8, lora_alpha=32,
                            lora_targets="q_proj,k_proj", **{GIVEN: {"batch", "lora_r", "lora_targets"}})
    cfg = config_from_args(ns)
    d = DPORun()
    assert (cfg.max_steps, cfg.beta, cfg.batch, cfg.lora_r, cfg.lora_targets) == (12, 0.2, 8, 8, ("q_proj", "k_proj"))
    assert cfg.max_length == d.max_length and cfg.lr == d.lr and cfg.task == d.task
