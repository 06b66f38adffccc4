"""``quantlab recommend --data FILE``: the job is sized from the data set (seq = the longest batch drawn, padded;
train tokens = one epoch of padded tokens unless --train-tokens)."""

import json

from conftest import write_jsonl

from quantlab.cli import main

ROWS = [{"prompt": f"Question number {i}: " + "word " * (i % 17), "response": f"Answer {i}."} for i in range(30)]


def _recommend(capsys, *argv):
    rc = main(["recommend", "--model", "smollm2-135m", "--method", "qlora", "--gpus", "rtx-4090", "--format",
               "json", *map(str, argv)])
    return rc, *capsys.readouterr()


def test_seq_is_the_longest_batch_and_tokens_one_epoch(tmp_path, capsys, smol_tokenizer):
    from quantlab.data.lengths import batch_sizes, batch_widths, token_lengths
    from quantlab.data.records import read_records

    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    lens = token_lengths(smol_tokenizer, read_records(p)[0])
    widths = batch_widths(lens, 4, 0)
    tokens = sum(w * s for w, s in zip(widths, batch_sizes(30, 4)))
    rc, out, err = _recommend(capsys, "--batch", "4", "--data", p)
    doc = json.loads(out)
    assert rc == 0 and f"planned at seq {max(widths)}" in err
    assert all(o["seq"] == max(widths) and o["batch"] == 4 for o in doc["options"])
    best = doc["options"][0]
    assert abs(best["time_s"] * best["tokens_per_s"] - tokens) < 1e-6 * tokens


def test_data_with_seq_or_inference_is_refused(tmp_path, capsys):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    rc, out, err = _recommend(capsys, "--data", p, "--seq", "512")
    assert rc == 2 and "drop --seq" in err and out == ""
    rc = main(["recommend", "--model", "smollm2-135m", "--data", str(p)])
    _, err = capsys.readouterr()
    assert rc == 2 and "training --method" in err
