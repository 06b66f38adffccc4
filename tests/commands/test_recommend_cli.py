"""`quantlab recommend`: the ranked, explained answer in every format, the plot, and one-line errors."""

import json
import subprocess
import sys

import pytest

from quantlab.cli import main

Q70 = ["recommend", "--model", "70b", "--method", "qlora", "--seq", "4096", "--train-tokens", "1e8"]


def test_table_answers_with_cheapest_fastest_and_assumptions(capsys):
    assert main(Q70) == 0
    out = capsys.readouterr().out
    assert "Cheapest:" in out and "Fastest:" in out and "Pareto" in out
    assert "Assumptions:" in out and "25%" in out  # the k-bit training utilisation it used
    assert "/GPU-hour" in out and "2026-11" in out  # each shown GPU's price with its dated source (GPU profiles)


def test_json_document_holds_the_ranked_options(tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert main(Q70 + ["--format", "json", "--out", str(out), "--plot", str(tmp_path / "rec.png")]) == 0
    doc = json.loads(out.read_text())
    opts = doc["options"]
    assert opts and [o["rank"] for o in opts] == list(range(1, len(opts) + 1))
    for o in opts:
        assert o["memory_per_gpu_bytes"] <= o["gpu_memory_bytes"]
        assert o["time_s"] == pytest.approx(1e8 / o["tokens_per_s"])
        assert o["cost_usd"] == pytest.approx(o["time_h"] * o["count"] * o["price_usd_per_gpu_hour"])
    costs = [o["cost_usd"] for o in opts]
    assert costs == sorted(costs)
    assert doc["assumptions"]["utilisation"]["kbit_train_mfu"] == 0.25
    assert "h100-sxm" in doc["assumptions"]["gpus"] and doc["assumptions"]["gpus"]["h100-sxm"]["price_source"]
    # a 70B model in NF4 is ~38 GiB of weights: no single 24 GiB card holds it without offloading the weights
    assert not any(o["count"] == 1 and o["gpu_memory_bytes"] <= 24 << 30 and o["offload"] != "params" for o in opts)
    png = (tmp_path / "rec.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_csv_and_markdown(capsys):
    assert main(Q70 + ["--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rank,pareto,gpu,count,sharding") and len(lines) > 10
    assert main(Q70 + ["--format", "markdown", "--top", "5"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# GPU recommendation") and md.count("\n| ") == 6  # header + 5 rows


def test_serving_budget_and_gpu_subset(capsys):
    args = ["recommend", "--model", "8b", "--method", "inference", "--seq", "4096", "--serve-tokens-per-day", "1e9",
            "--gpus", "l40s,h100", "--budget-per-hour", "10", "--format", "json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {o["gpu"] for o in doc["options"]} <= {"l40s", "h100-sxm"}
    assert all(o["cost_per_hour_usd"] <= 10 for o in doc["options"])
    assert all(o["copies_to_keep_up"] >= 1 and o["batch"] >= 1 for o in doc["options"])


def test_num_gpus_fixes_the_count(capsys):
    assert main(Q70 + ["--num-gpus", "4", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["options"] and {o["count"] for o in doc["options"]} == {4}


@pytest.mark.parametrize("extra,msg", [
    (["--zero", "3"], "chooses the sharding itself"),
    (["--tp", "2"], "--tp"),
    (["--max-gpus", "0"], "max-gpus"),
    (["--train-tokens", "-5"], "train-tokens"),
    (["--gpus", "h1000"], "unknown GPU"),
    (["--budget-per-hour", "0"], "budget"),
])
def test_bad_input_is_one_line_exit_2(capsys, extra, msg):
    base = ["recommend", "--model", "70b", "--method", "qlora", "--seq", "4096"]
    assert main(base + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err


def test_goal_must_match_the_method(capsys):
    assert main(["recommend", "--model", "8b", "--method", "qlora", "--serve-tokens-per-day", "1e9"]) == 2
    assert "--train-tokens" in capsys.readouterr().err


def test_nothing_fits_says_why_and_exits_1(capsys):
    assert main(["recommend", "--model", "405b", "--method", "full", "--seq", "8192", "--max-gpus", "1",
                 "--gpus", "rtx-4090"]) == 1
    out = capsys.readouterr().out
    assert "Nothing fits" in out and "--max-gpus" in out


def test_matplotlib_only_when_a_plot_is_asked_for():
    code = ("import sys; from quantlab.cli import main; "
            "main(['recommend', '--model', '8b', '--method', 'lora', '--format', 'json']); "
            "print('MPL', 'matplotlib' in sys.modules, 'torch' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "MPL False False" in r.stderr


# ---- serving: rent or buy ---------------------------------------------------------------------------------------

SERVE70 = ["recommend", "--model", "70b", "--method", "inference", "--serve-tokens-per-day", "1e9"]


def test_done_when_70b_serving_ranks_rent_and_buy(capsys):
    assert main(SERVE70 + ["--buy"]) == 0
    out = capsys.readouterr().out
    assert "$/Mtok" in out and "buy" in out and "even" in out and "Rent:" in out and "Buy:" in out
    assert "headroom" in out and "recorded 2026-" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert main(SERVE70 + ["--buy", "--format", "json", "--gpus", "h100,a100-80gb"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["question"]["buy"] and doc["options"]
    for o in doc["options"]:
        assert o["buy"]["purchase_usd"] > 0 and o["memory_per_gpu_bytes"] <= 0.9 * o["gpu_memory_bytes"]
    assert doc["assumptions"]["gpus"]["h100-sxm"]["purchase_source"]


def test_serving_headroom_and_csv(capsys):
    assert main(SERVE70 + ["--headroom", "0.3", "--format", "csv", "--gpus", "h100"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rank,gpu,count,copies_to_keep_up") and len(lines) > 1


@pytest.mark.parametrize("extra,msg", [
    (["--headroom", "1.5"], "--headroom"),
    (["--electricity-usd-per-kwh", "0.2"], "add --buy"),
    (["--train-tokens", "1e6"], "--train-tokens is for training methods"),
])
def test_serving_bad_input(extra, msg, capsys):
    argv = [a for a in SERVE70 if not (a in ("--serve-tokens-per-day", "1e9") and "--train-tokens" in extra)]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_serving_flags_need_inference(capsys):
    assert main(["recommend", "--model", "7b", "--method", "lora", "--train-tokens", "1e6", "--buy"]) == 2
    assert "serving flag" in capsys.readouterr().err
