"""``quantlab data inspect`` end to end (in process): the JSON names, the cleaned file and its removal record,
--plan, and the bad inputs (one line, exit 2, nothing written)."""

import json

import pytest
from conftest import write_jsonl

from quantlab.cli import main

ROWS = [
    {"prompt": "What is the capital of France?", "response": "Paris is the capital of France."},
    {"prompt": "what is the  capital of FRANCE?", "response": "Paris is the capital of France. "},  # exact
    {"prompt": "Name a large mammal that lives in the ocean and breathes air.", "response": "The blue whale does."},
    {"prompt": "Name a large mammal that lives in the ocean and breathes air.", "response": "The blue whale does!"},
    {"prompt": "   ", "response": "x"},  # empty
    {"prompt": "Give me a prime number larger than ten.", "response": "Eleven is prime."},
]


def run(capsys, *argv):
    rc = main(["data", "inspect", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_names_the_counts(tmp_path, capsys):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS, raw_lines=(b'{"prompt": "caf\xe9", "response": "r"}',))
    rc, out, err = run(capsys, p, "--format", "json", "--max-len", "1000")
    doc = json.loads(out)
    assert rc == 0
    assert (doc["records"], doc["records_kept"], doc["exact_duplicates"], doc["near_duplicates"]) == (7, 3, 1, 1)
    assert doc["semantic_duplicates"] is None and doc["kind"] == "prompt"
    assert doc["filtered"] == {"non_utf8": 1, "empty": 1, "template_only": 0, "charset_mix": 0, "too_long": 0}
    assert doc["near_method"]["num_perm"] == 128 and doc["tokens"]["count"] == 3
    assert sum(doc["histogram"]["counts"]) == 3
    assert {r["line"]: r["reason"] for r in doc["removed"]} == {2: "exact_duplicate", 4: "near_duplicate",
                                                               5: "empty", 7: "non_utf8"}


def test_table_has_the_histogram(tmp_path, capsys):
    rc, out, _ = run(capsys, write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert rc == 0 and "near_duplicates" in out and "tokens per kept record" in out and "#" in out


def test_write_clean_copies_kept_lines_and_records_removals(tmp_path, capsys):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    clean = tmp_path / "out" / "clean.jsonl"
    hist = tmp_path / "out" / "h.png"
    rc, _, err = run(capsys, p, "--write-clean", clean, "--hist", hist)
    assert rc == 0 and f"wrote {clean}" in err
    lines = p.read_bytes().split(b"\n")
    assert clean.read_bytes() == b"".join(lines[i] + b"\n" for i in (0, 2, 5))
    removed = [json.loads(x) for x in (tmp_path / "out" / "clean.removed.jsonl").read_text().splitlines()]
    assert removed[0] == {"line": 2, "reason": "exact_duplicate", "of_line": 1, "similarity": 1.0}
    assert [r["line"] for r in removed] == [2, 4, 5] and removed[1]["of_line"] == 3
    assert hist.read_bytes()[:4] == b"\x89PNG"
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["clean.jsonl", "clean.removed.jsonl", "h.png"]


def test_plan_from_the_data(tmp_path, capsys):
    import dataclasses

    from quantlab.planner import fit
    from quantlab.profiles import load_gpu, load_model
    from quantlab.specs import PlanConfig

    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    rc, out, _ = run(capsys, p, "--format", "json", "--plan", "--method", "qlora", "--batch", "2", "--gpu",
                     "rtx-4090", "--epochs", "2")
    pl = json.loads(out)["plan"]
    assert rc == 0 and pl["batches_per_epoch"] == 2 and pl["longest_batch_fits"] is True
    c = PlanConfig.from_dict({"method": "qlora", "batch": 2, "seq": pl["widths"]["max"], "padding_mask": True},
                             model=load_model("smollm2-135m").spec)
    assert pl["plans"][-1]["process_bytes"] == fit(c, load_gpu("rtx-4090"), suggest=False).plan.process_bytes
    assert pl["total_s"] == pytest.approx(2 * pl["epoch_s"]) and pl["cost_usd"] > 0


def _one_line_exit_2(rc, out, err, match):
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("quantlab: error: ") and match in err


@pytest.mark.parametrize("flag,value", [("--near", "0"), ("--near", "1.5"), ("--semantic", "0"),
                                        ("--semantic", "-1"), ("--near", "nan")])
def test_threshold_outside_0_1(tmp_path, capsys, flag, value):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    _one_line_exit_2(*run(capsys, p, flag, value, "--write-clean", tmp_path / "c.jsonl"), "must be in (0, 1]")
    assert not (tmp_path / "c.jsonl").exists()


def test_missing_file(tmp_path, capsys):
    _one_line_exit_2(*run(capsys, tmp_path / "nope.jsonl", "--write-clean", tmp_path / "c.jsonl"), "not found")
    assert sorted(tmp_path.iterdir()) == []


def test_record_without_its_fields_leaves_the_old_clean_file(tmp_path, capsys):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS + [{"prompt": "no response"}])
    clean = tmp_path / "c.jsonl"
    clean.write_text("old\n")
    _one_line_exit_2(*run(capsys, p, "--write-clean", clean), "line 7: a prompt record needs")
    assert clean.read_text() == "old\n" and not (tmp_path / "c.removed.jsonl").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.jsonl", "d.jsonl"]  # no temporary left


def test_tokenizer_that_cannot_load(tmp_path, capsys):
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"")
    (model / "tokenizer.json").write_text("{not a tokenizer")
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    _one_line_exit_2(*run(capsys, p, "--model", model, "--write-clean", tmp_path / "c.jsonl"),
                     "cannot load the tokenizer of")
    assert not (tmp_path / "c.jsonl").exists()


def test_plan_flags_need_plan(tmp_path, capsys):
    p = write_jsonl(tmp_path / "d.jsonl", ROWS)
    _one_line_exit_2(*run(capsys, p, "--method", "qlora"), "add --plan")
    _one_line_exit_2(*run(capsys, p, "--plan", "--packing", "--method", "qlora"), "--packing needs --max-len")
    _one_line_exit_2(*run(capsys, p, "--plan", "--model", "8b"), "no local tokenizer")


def test_no_file_given(capsys):
    _one_line_exit_2(*run(capsys), "give the data set")


def test_text_records_are_planned_packed(tmp_path, capsys):
    """Text records (continued pre-training) are planned as the lab runs them: packed rows of --max-len, no padding
    mask, every batch at batch x max-len; asked for dynamic padding, the command says so in one line and exits 2."""
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": f"record {i} of some domain prose, " * (3 + i)} for i in range(40)])
    rc, out, err = run(capsys, p, "--plan", "--method", "full", "--batch", "2")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "add --packing --max-len N" in err
    rc, out, err = run(capsys, p, "--plan", "--method", "full", "--batch", "2", "--packing", "--max-len", "64",
                       "--format", "json")
    assert rc == 0, err
    pl = json.loads(out)["plan"]
    assert pl["packing"] is True and {r["seq"] for r in pl["plans"]} == {64} and {r["batch"] for r in pl["plans"]} == {2}
    from quantlab.planner import plan
    from quantlab.profiles import load_model
    from quantlab.specs import PlanConfig

    ref = plan(PlanConfig.from_dict({"method": "full", "batch": 2, "seq": 64, "padding_mask": False},
                                    model=load_model("smollm2-135m").spec))
    assert pl["plans"][-1]["peak_allocated_bytes"] == ref.peak_allocated_bytes
