"""The serving CLI (quantlab/commands/serve_flags.py) end to end, through a parser built here as 'quantlab plan'
builds its own (the configuration flags, --gpu, --format, then add_serving_arguments)."""

from __future__ import annotations

import argparse
import json

import pytest

from quantlab.commands import serve_flags
from quantlab.commands.flags import add_config_arguments
from quantlab.errors import QuantlabError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_arguments(p, model_required=False)
    p.add_argument("--gpu", default=None)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    serve_flags.add_serving_arguments(p)
    return p


def run(argv: list[str], capsys) -> str:
    args = parser().parse_args(argv)
    assert serve_flags.run(args) == 0
    return capsys.readouterr().out


def doc(argv, capsys) -> dict:
    return json.loads(run(argv + ["--format", "json"], capsys))


def test_done_when_8b_32k_prompt_on_4090_keeps_one_position_of_logits(capsys):
    d = doc(["--model", "8b", "--prompt-tokens", "32000", "--new-tokens", "768", "--gpu", "rtx-4090"], capsys)
    one_position = 128256 * (2 + 12)  # logits + fp32 copy, top-k masked copy, softmax (S1b), one sequence
    every_token = 32768 * 128256 * 2
    # the cache ends at prompt + new - 1 positions: the last sampled token is never fed back (S1)
    assert d["serve"]["context"] == 32768 and d["components"]["kv_cache"] == 32767 * 131072
    assert d["components"]["prefill_transient"] < every_token / 2
    assert all(v < every_token / 2 for k, v in d["components"].items() if "transient" in k or "logits" in k)
    assert d["max_prompt_tokens"] > 0 and d["speed"]["decode_tok_s_per_seq"] > 0
    assert one_position < d["components"]["prefill_transient"]


def test_done_when_70b_on_four_a100_is_split_with_the_placement(capsys):
    out = run(["--model", "70b", "--num-gpus", "4", "--gpu", "a100-80gb"], capsys)
    assert "Placement" in out and "embed, blocks 0-" in out and "lm_head" in out and "FITS" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    d = doc(["--model", "70b", "--num-gpus", "4", "--gpu", "a100-80gb"], capsys)
    per_gpu = [g["process_bytes"] / 2**30 for g in d["gpus"]]
    assert len(per_gpu) == 4 and all(28 < x < 36 for x in per_gpu)  # 128.5 GiB of weights / 4, blocks whole


def test_done_when_vllm_prints_blocks_and_concurrency(capsys):
    out = run(["--model", "8b", "--engine", "vllm", "--max-model-len", "8192", "--gpu", "l40s"], capsys)
    assert "# GPU blocks:" in out and "GPU KV cache size:" in out
    assert "Maximum concurrency for 8,192 tokens per request:" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_json_and_csv(capsys):
    d = doc(["--model", "8b", "--engine", "vllm", "--gpu", "h100", "--seq", "4096", "--tp", "2", "--num-gpus", "2"],
            capsys)
    assert d["vllm"]["max_num_batched_tokens"] == 8192 and d["vllm"]["num_blocks"] > 0 and d["fits"] is True
    out = run(["--model", "8b", "--seq", "4096", "--gpu", "l40s", "--format", "csv"], capsys)
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and int(rows[0]["max_concurrency"]) >= 1 and rows[0]["engine"] == "transformers"


def test_modes_adapters_and_rope(capsys):
    score = doc(["--model", "8b", "--mode", "score", "--seq", "8192"], capsys)
    gen = doc(["--model", "8b", "--seq", "8192"], capsys)
    assert score["process_bytes"] > gen["process_bytes"]
    ad = doc(["--model", "8b", "--seq", "8192", "--adapters", "4", "--lora-r", "32"], capsys)
    assert ad["components"]["adapters"] > 0
    rope = doc(["--model", "70b", "--seq", "16384"], capsys)
    assert any("beyond" in n for n in rope["notes"])
    assert not any("beyond" in n for n in doc(["--model", "70b", "--seq", "16384", "--rope-scaling", "yarn:4"],
                                              capsys)["notes"])
    assert doc(["--model", "8b"], capsys)["serve"]["rope_scaling"]["type"] == "llama3"  # read from config.json


@pytest.mark.parametrize("argv,msg", [
    (["--mode", "score", "--new-tokens", "5"], "--new-tokens applies to --mode generate"),
    (["--engine", "vllm", "--device", "cpu"], "--device cpu"),
    (["--concurrency", "0"], "concurrency"),
    (["--adapters", "2", "--lora-targets", "c_attn"], "match no linear"),
    (["--rope-scaling", "yarn"], "TYPE:FACTOR"),
    (["--concurrency", "4", "--batch", "2"], "disagree"),
])
def test_bad_input_is_one_line_and_exit_2(argv, msg, capsys):
    with pytest.raises(QuantlabError, match=msg):
        serve_flags.run(parser().parse_args(["--model", "8b"] + argv))
    assert serve_flags.main(["--model", "8b"] + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg.split()[0] in err and "Traceback" not in err


def test_help_shows_defaults():
    text = parser().format_help()
    for flag in ("--mode", "--engine", "--block-size", "--gpu-memory-utilization", "--adapters", "--replicas"):
        line = text[text.index("  " + flag + " "):]
        assert "default" in line[:400], flag


ROUND_TRIPS = [
    ["--model", "8b", "--method", "inference", "--prompt-tokens", "32000", "--new-tokens", "768", "--gpu", "rtx-4090"],
    ["--model", "70b", "--method", "inference", "--num-gpus", "4", "--gpu", "a100-80gb"],
    ["--model", "8b", "--method", "inference", "--engine", "vllm", "--max-model-len", "8192", "--gpu", "l40s"],
    ["--model", "8b", "--method", "inference", "--adapters", "3", "--mode", "score", "--seq", "4096"],
    ["--model", "70b", "--method", "inference", "--rope-scaling", "yarn:4", "--seq", "16000", "--tp", "2",
     "--num-gpus", "2", "--gpu", "h100-sxm"],
]


@pytest.mark.parametrize("argv", ROUND_TRIPS)
def test_from_json_reproduces_a_serving_plan(argv, tmp_path, capsys):
    """`quantlab plan ... --method inference --format json > p.json && quantlab plan --from-json p.json --format
    json` gives the same bytes, as for training plans."""
    from quantlab.cli import main

    assert main(["plan", *argv, "--format", "json"]) == 0
    first = capsys.readouterr().out
    path = tmp_path / "p.json"
    path.write_text(first)
    assert main(["plan", "--from-json", str(path), "--format", "json"]) == 0
    assert capsys.readouterr().out == first
    assert main(["plan", "--from-json", str(path)]) == 0  # the table renders from the document too
    assert "Memory per GPU" in capsys.readouterr().out


def test_from_json_refuses_a_broken_serving_document(tmp_path, capsys):
    from quantlab.cli import main

    assert main(["plan", "--model", "8b", "--method", "inference", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for change in ({"mode": "chat"}, {"surprise": 1}, {"context": 1}):
        bad = dict(doc, serve={**doc["serve"], **change})
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        assert main(["plan", "--from-json", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--from-json" in err, err


def test_vllm_table_names_the_budget_base(capsys):
    out = run(["--model", "8b", "--method", "inference", "--engine", "vllm", "--gpu", "h100-sxm"], capsys)
    assert "79.22 GiB CUDA total): weights 14.96" in " ".join(out.split())
    out = run(["--model", "8b", "--method", "inference", "--engine", "vllm", "--gpu", "l40s"], capsys)
    assert "(0.9 x 44.99 GiB): weights 14.96" in " ".join(out.split())
