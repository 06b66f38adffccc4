"""`quantlab lab finetune --method dpo` goes to the TRL DPOTrainer run (quantlab.commands.lab_preference), with the
lab's flags; --beta belongs to DPO only (one line, exit 2 elsewhere)."""

import pytest

from quantlab.cli import main


def test_dpo_dispatches_to_the_preference_run(monkeypatch):
    import quantlab.commands.lab_preference as lp

    seen = {}

    def fake(args):
        seen.update(method=args.method, beta=args.beta, max_steps=args.max_steps)
        return 0

    monkeypatch.setattr(lp, "run_from_args", fake)
    assert main(["lab", "finetune", "--method", "dpo", "--beta", "0.2", "--max-steps", "3"]) == 0
    assert seen == {"method": "dpo", "beta": 0.2, "max_steps": 3}


def test_beta_outside_dpo_is_one_line(capsys):
    assert main(["lab", "finetune", "--method", "qlora", "--beta", "0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--beta applies to --method dpo" in err


def test_help_lists_dpo(capsys):
    with pytest.raises(SystemExit):
        main(["lab", "finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "dpo" in out and "--beta" in out and "TRL's DPOConfig" in out


@pytest.mark.parametrize("method", ["orpo", "simpo", "kto", "reward"])
def test_the_other_objectives_dispatch_to_the_same_run(monkeypatch, method):
    """lab finetune --method orpo|simpo|kto|reward goes to the one preference runner with its objective."""
    import quantlab.commands.lab_preference as lp

    seen = {}

    def fake(cfg, out, command, *, log):
        seen.update(objective=cfg.objective, beta=cfg.resolved_beta, out=str(out), steps=cfg.max_steps)
        (out / f"{cfg.objective}.md").write_text("report\n")
        return {"objective": cfg.objective}

    monkeypatch.setattr(lp, "run_config", fake)
    monkeypatch.setattr(lp, "PREFERENCE_OUT", "unused")
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp())
    assert main(["lab", "finetune", "--method", method, "--max-steps", "3", "--out", str(out)]) == 0
    assert seen == {"objective": method, "beta": None if method == "reward" else 0.1, "out": str(out), "steps": 3}


def test_beta_is_refused_for_the_reward_model(capsys):
    assert main(["lab", "finetune", "--method", "reward", "--beta", "0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--beta does not apply to --method reward" in err
