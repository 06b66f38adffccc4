import dataclasses
import sqlite3

import pytest

from quantlab.report.render import generic_table, html_page, ptq_table
from quantlab.report.store import ResultStore, RunRecord, config_key


def rec(method="nf4", **metrics):
    cfg = {"precision": method}
    return RunRecord(key=config_key("ptq", "m", method, cfg), kind="ptq", model="m", method=method, config=cfg,
                     env={"device": "cpu", "torch": "2.13"}, metrics={"meas_weight_bytes": 100, **metrics})


def test_key_is_stable_and_config_sensitive():
    assert config_key("ptq", "m", "a", {"x": 1, "y": 2}) == config_key("ptq", "m", "a", {"y": 2, "x": 1})
    assert config_key("ptq", "m", "a", {"x": 1}) != config_key("ptq", "m", "a", {"x": 2})


def test_round_trip_and_frame(tmp_path):
    s = ResultStore(tmp_path / "s.sqlite")
    r = rec(meas_perplexity=30.5)
    s.put(r)
    got = s.get(r.key)
    assert got == r
    s.put(rec("int8", meas_perplexity=24.0))
    df = s.frame("ptq")
    assert list(df["method"]) == ["nf4", "int8"]
    assert "config_precision" in df.columns and "env_torch" in df.columns and "meas_perplexity" in df.columns


def test_replace_keeps_one_row(tmp_path):
    s = ResultStore(tmp_path / "s.sqlite")
    s.put(rec(meas_perplexity=1.0))
    s.put(rec(meas_perplexity=2.0))
    assert len(s.records()) == 1 and s.records()[0].metrics["meas_perplexity"] == 2.0


def test_interrupted_write_leaves_no_row(tmp_path, monkeypatch):
    """A failure inside the write's transaction rolls it back whole."""
    s = ResultStore(tmp_path / "s.sqlite")
    real = s._connect

    class Boom(sqlite3.Connection):
        def execute(self, *a, **k):
            super().execute(*a, **k)
            raise KeyboardInterrupt  # interrupted right after the INSERT, before the commit

    monkeypatch.setattr(s, "_connect", lambda: sqlite3.connect(s.path, factory=Boom))
    with pytest.raises(KeyboardInterrupt):
        s.put(rec())
    monkeypatch.setattr(s, "_connect", real)
    assert s.records() == []


def test_renderers(tmp_path):
    recs = [rec("fp32", meas_perplexity=24.0, meas_decode_tok_per_s=20.0),
            rec("nf4", meas_perplexity=33.0, meas_decode_tok_per_s=40.0)]
    assert "nf4" in ptq_table(recs, "markdown") and "| method |" in ptq_table(recs, "markdown")
    assert ptq_table(recs, "csv").startswith("method,")
    assert '"method": "nf4"' in ptq_table(recs, "json")
    page = html_page(recs, [])
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "nf4" in generic_table(recs, "markdown")


def test_environment_snapshot_has_the_contract_keys():
    from quantlab.report.env import environment

    env = environment()
    for k in ("device", "device_name", "torch", "transformers", "peft", "bitsandbytes", "torchao", "gptqmodel",
              "python", "git_commit", "cpu_count", "loadavg_1m"):
        assert k in env, k
    assert env["device"] in ("cpu", "cuda")


def test_report_command_renders_every_format(tmp_path, capsys):
    from quantlab.cli import main

    p = tmp_path / "s.sqlite"
    s = ResultStore(p)
    s.put(rec("fp32", meas_perplexity=24.0, meas_decode_tok_per_s=20.0, meas_prefill_64_tok_per_s=100.0))
    s.put(rec("nf4", meas_perplexity=33.0, meas_decode_tok_per_s=40.0, meas_prefill_64_tok_per_s=300.0))
    ft = RunRecord(key="ft1", kind="finetune", model="m", method="lora", config={}, env={"device": "cpu"},
                   metrics={"meas_step_s": 5.0, "meas_exact_match": 0.9, "meas_s_per_step": 3.0})
    s.put(ft)
    out = tmp_path / "r.html"
    assert main(["report", "--store", str(p), "--format", "html", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2 and "<h2>Fine-tunes</h2>" in page and "<th>s/step</th>" in page
    assert "meas_" not in page  # named columns, not raw result keys
    capsys.readouterr()
    assert main(["report", "--store", str(p), "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "| fp32 |" in md and "ppl / fp32" in md and "- weights MiB:" in md and "| lora |" in md
    assert "| EM after |" in md and "| 0.90 |" in md and "- EM / F1:" in md  # the fine-tune comparison table
    assert main(["report", "--store", str(p), "--format", "csv", "--kind", "ptq"]) == 0
    assert capsys.readouterr().out.startswith("method,")
    assert main(["report", "--store", str(p), "--kind", "qat"]) == 2


def test_ptq_table_names_model_and_budget_when_rows_differ():
    """Two 'fp32' rows of different models (or evaluation budgets) must not look the same."""
    a, b = rec("fp32", meas_perplexity=24.0), rec("fp32", meas_perplexity=30.0)
    b = dataclasses.replace(b, model="other-model", key="k2")
    md = ptq_table([a, b], "markdown")
    assert md.startswith("| model | method |") and "other-model" in md
    assert ptq_table([a], "markdown").startswith("| method |")  # one model: no extra column


def test_environment_says_whether_the_tree_was_dirty():
    from quantlab.report.env import environment

    assert environment()["git_dirty"] in (True, False, None)


def _corrupt(path, key, **columns):
    con = sqlite3.connect(path)
    with con:
        for col, text in columns.items():
            con.execute(f"UPDATE runs SET {col} = ? WHERE key = ?", (text, key))
    con.close()


@pytest.mark.parametrize("columns, why", [
    ({"metrics": "{not json"}, "metrics column is not valid JSON"),
    ({"config": "[1, 2]"}, "config column is a JSON list"),
    ({"metrics": '{"meas_weight_bytes": "lots"}'}, "metric meas_weight_bytes is 'lots', not a number"),
    ({"metrics": '{"meas_decode_tok_per_s": [1]}'}, "not a number"),
])
def test_a_corrupt_row_is_one_error_naming_it(tmp_path, columns, why):
    from quantlab.errors import QuantlabError

    p = tmp_path / "s.sqlite"
    s = ResultStore(p)
    good, broken = rec("fp32"), rec("nf4")
    s.put(good)
    s.put(broken)
    _corrupt(p, broken.key, **columns)
    with pytest.raises(QuantlabError) as e:
        s.records()
    msg = str(e.value)
    assert "\n" not in msg and why in msg and broken.key in msg and str(p) in msg
    assert s.get(good.key) == good  # the other rows stay readable one by one
    with pytest.raises(QuantlabError):
        s.get(broken.key)


def test_report_on_a_corrupt_row_exits_2_with_one_line(tmp_path, capsys):
    from quantlab.cli import main

    p = tmp_path / "s.sqlite"
    s = ResultStore(p)
    r = rec("fp32", meas_perplexity=24.0)
    s.put(r)
    _corrupt(p, r.key, metrics='{"meas_perplexity": "n/a"}')
    assert main(["report", "--store", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and r.key in err and "internal error" not in err


def test_text_and_flag_metrics_stay_allowed(tmp_path):
    """Only measured/predicted quantities must be numbers: labels (weight_dtypes) and flags stay as stored."""
    s = ResultStore(tmp_path / "s.sqlite")
    r = rec("fp32", weight_dtypes="bf16,nf4", meas_stopped_early=True, meas_perplexity=None)
    s.put(r)
    assert s.records() == [r]
