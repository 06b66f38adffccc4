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
