"""quantlab.lab.preference beyond DPO (ORPO, SimPO = CPO with loss_type simpo, KTO, reward models: TRL 1.16's
trainers, one runner and one table of objectives) and quantlab.commands.lab_preference's comparison with
preference_plan. Each run is 2 optimizer steps on a tiny random llama with the embedded tokenizer's vocabulary
(49152), so the tests check the trainers, the instrument and the planner on the real step, not quality."""

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
    d = tmp_path_factory.mktemp("tiny-prefs")
    tiny_model("llama", vocab_size=49152).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _run(tiny_dir, objective, **kw):
    from quantlab.commands.lab_preference import compare_rows
    from quantlab.lab.preference import PreferenceRun, run_preference

    cfg = PreferenceRun(model=str(tiny_dir), objective=objective, max_steps=2, batch=2, eval_batch=2, train_pairs=4,
                        eval_pairs=2, lora_r=4, lora_alpha=8, grad_checkpointing=False, beta=None, **kw)
    res = run_preference(cfg, None, log=lambda s: None)
    return res, {r["component"].split(" ")[0]: r for r in compare_rows(res)}


STATIC = ("weights", "adapters", "gradients", "optimizer", "activations")


@pytest.mark.parametrize("objective", ["orpo", "simpo"])
def test_orpo_and_simpo_build_every_logit_and_match_the_plan(tiny_dir, objective):
    """Both return the 4 x S x 49152 logits (trl_head H7); ORPO's NLL term also saves the chosen half's log-softmax
    (H8), SimPO (cpo_alpha=0) only per-token terms. The saved parts equal the plan within 0.1%, the static
    components and the backbone's saved tensors to the byte, the step's peak within 1%."""
    res, rows = _run(tiny_dir, objective)
    assert res["objective"] == objective and res["reference"] == "none" and res["step_sequences"] == 4
    S, V = res["step_seq"], 49152
    assert res["measurement"]["meas_logits_loss_bytes"] == 4 * S * V * 4  # the logits of both sequences, fp32
    if objective == "orpo":
        assert res["loss_saved_bytes"] > 2 * (S - 1) * V * 4  # the chosen log-softmax
        assert res["before_nll_loss"] is not None and res["before_log_odds_ratio"] is not None
    else:
        assert res["loss_saved_bytes"] < 20 * 4 * S  # per-token terms only
    for k in STATIC:
        assert rows[k]["pred_bytes"] == rows[k]["meas_bytes"], rows[k]
    assert abs(rows["logits_loss_saved"]["error"]) < 0.001, rows["logits_loss_saved"]
    assert abs(rows["allocated"]["error"]) < 0.01, rows["allocated"]
    assert res["before_rewards/accuracies"] is not None and res["after_rewards/margins"] is not None


def test_kto_runs_unpaired_rows_with_a_reference(tiny_dir):
    """Each pair gives two rows (chosen True, rejected False); B completions a step, not 2B (preference P1); the
    reference is the disabled adapter, so every reward is 0 before training."""
    res, rows = _run(tiny_dir, "kto")
    assert res["train_rows"] == 2 * res["train_pairs"] and res["step_sequences"] == 2
    assert res["reference"] == "adapter"
    assert res["before_rewards/chosen"] == 0.0 and res["before_rewards/margins"] == 0.0
    assert "before_rewards/accuracies" not in res  # KTO reports no accuracy (unpaired)
    for k in STATIC:
        assert rows[k]["pred_bytes"] == rows[k]["meas_bytes"], rows[k]
    assert abs(rows["allocated"]["error"]) < 0.01, rows["allocated"]


def test_reward_model_scores_pairs_and_its_head_is_planned(tiny_dir):
    """A 1-label classifier: no vocabulary logits; the LoRA reward model trains the score head too (PEFT
    modules_to_save: adapters, gradients and AdamW states of H more parameters, preference P5); the score head
    saves its input. The step's peak, with no logits to dominate it, is the last block's MLP backward (P5)."""
    res, rows = _run(tiny_dir, "reward")
    assert res["beta"] is None and res["reference"] == "none" and res["step_sequences"] == 4
    assert res["before_accuracy"] is not None and res["after_margin"] is not None
    from quantlab.commands.lab_preference import planned_step
    from quantlab.planner.preference import preference_plan

    assert preference_plan(*planned_step(res)).trainable_params == res["trainable_params"]  # LoRA + the score head
    assert res["trainable_params"] * 4 == res["measurement"]["meas_adapters_bytes"]  # fp32, all of them PEFT's
    assert res["measurement"]["meas_logits_loss_bytes"] < 1000  # the pooled scores, no vocabulary logits
    for k in STATIC:
        assert rows[k]["pred_bytes"] == rows[k]["meas_bytes"], rows[k]
    assert abs(rows["allocated"]["error"]) < 0.01, rows["allocated"]


def test_config_is_checked_per_objective():
    from quantlab.lab.preference import OBJECTIVES, PreferenceRun

    with pytest.raises(QuantlabError, match="unknown preference objective 'ppo'"):
        PreferenceRun(objective="ppo")
    with pytest.raises(QuantlabError, match="kto needs a batch of at least 2"):
        PreferenceRun(objective="kto", batch=1)
    assert PreferenceRun(objective="reward").resolved_beta is None  # RewardTrainer has no beta
    assert PreferenceRun(objective="orpo", beta=None).resolved_beta == 0.1  # ORPOConfig's default
    assert dict(OBJECTIVES["simpo"].fixed) == {"loss_type": "simpo", "cpo_alpha": 0.0}
    assert set(OBJECTIVES) == {"dpo", "orpo", "simpo", "kto", "reward"}


def test_every_trainer_in_the_table_imports():
    """The table names TRL 1.16's classes where they live (trl, trl.experimental.orpo / cpo)."""
    from quantlab.lab.preference import OBJECTIVES, _trainer

    for spec in OBJECTIVES.values():
        trainer, config = _trainer(spec)
        assert trainer.__name__ == spec.trainer and config.__name__ == spec.config
        for k, _ in spec.fixed:
            assert k in {f.name for f in __import__("dataclasses").fields(config)}


def test_kto_rows_are_unpaired_conversations_under_a_chat_template():
    import argparse

    from quantlab.data.preference import Pair
    from quantlab.lab.preference import trl_rows

    chat = argparse.Namespace(chat_template="{{ x }}")
    p = Pair(1, '{"a": 1}', "{'a': 1}", "Give JSON.")
    rows = trl_rows([p], chat, "unpaired")
    assert rows == [{"prompt": [{"role": "user", "content": "Give JSON."}],
                     "completion": [{"role": "assistant", "content": '{"a": 1}'}], "label": True},
                    {"prompt": [{"role": "user", "content": "Give JSON."}],
                     "completion": [{"role": "assistant", "content": "{'a': 1}"}], "label": False}]


def test_the_command_writes_each_objective_and_the_collected_readme(tiny_dir, tmp_path, monkeypatch):
    """run_config writes <objective>.json / .md / -history.csv; in reports/preference-cpu (here a stand-in) the
    README collects every objective's section; --replan rewrites them from the stored run."""
    import json

    import quantlab.commands.lab_preference as lp
    from quantlab.lab.preference import PreferenceRun

    monkeypatch.setattr(lp, "PREFERENCE_OUT", str(tmp_path))
    cfg = PreferenceRun(model=str(tiny_dir), objective="reward", max_steps=2, batch=2, eval_batch=2, train_pairs=4,
                        eval_pairs=2, lora_r=4, lora_alpha=8, grad_checkpointing=False, beta=None)
    res = lp.run_config(cfg, tmp_path, "quantlab lab finetune --method reward (test)", log=lambda s: None)
    assert {p.name for p in tmp_path.iterdir()} >= {"reward.json", "reward.md", "reward-history.csv", "README.md"}
    text = (tmp_path / "README.md").read_text()
    assert "## Reward model" in text and "quantlab lab finetune --method reward (test)" in text
    assert "reward accuracy (chosen score > rejected score)" in text and "| allocated (peak over the step) |" in text
    stored = json.loads((tmp_path / "reward.json").read_text())
    assert stored["comparison"] == res["comparison"]
    lp.rewrite_report(tmp_path)
    assert "recomputed at git" in (tmp_path / "reward.md").read_text()
