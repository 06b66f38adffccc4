"""Encoder rows of the validation matrix (quantlab/validate_encoder.py, profiles/validation/encoder-matrix.yaml): a
few rows run by the lab's Trainer step on a CPU against the encoder planner, the matrix's coverage, the report
rendering the rows, and bad input as one line."""

import io
import json
from pathlib import Path

import pytest

from quantlab.errors import QuantlabError
from quantlab.validate import CPU_TARGETS
from quantlab.validate_encoder import COMPONENTS, load_encoder_cases, load_encoder_matrix, run_encoder_case

MATRIX = Path(__file__).resolve().parents[2] / "profiles" / "validation" / "encoder-matrix.yaml"
# one row per family, both heads, bf16 and fp32, padded and not (about a second of CPU each after imports)
RUN = ("bert-seqcls-k2-bf16", "roberta-tokcls-k4-fp32-padded", "modernbert-seqcls-k2-fp32-padded",
       "modernbert-tokcls-k4-bf16-padded")


@pytest.fixture(scope="module")
def rows():
    pytest.importorskip("torch")
    from quantlab.lab.measure import cuda_available

    if cuda_available():
        pytest.skip("encoder rows are CPU rows (validate_encoder assumption 4)")
    return [run_encoder_case(c) for c in load_encoder_matrix(MATRIX, RUN)]


def test_rows_meet_the_cpu_targets(rows):
    assert [r["id"] for r in rows] == list(RUN)
    for r in rows:
        for k in COMPONENTS:
            assert r[f"meas_{k}_bytes"] > 0, (r["id"], k)
            assert abs(r[f"err_{k}"]) <= CPU_TARGETS["tensor"], (r["id"], k, r[f"err_{k}"])
            assert r[f"diff_{k}_bytes"] == r[f"pred_{k}_bytes"] - r[f"meas_{k}_bytes"]
        assert r["pred_trainable_params"] == r["meas_trainable_params"]
        assert r["pred_params"] == r["meas_params"]
        assert r["ok"] is True


def test_the_allocator_peak_is_shown_not_judged(rows):
    """Encoder assumption 8: no planned peak, so no error, and no meas_allocated_bytes key that the summary or
    --append-measurements would read as a planned total."""
    for r in rows:
        assert r["pred_allocated_bytes"] is None and r["err_allocated"] is None and r["allocated_planned"] is False
        assert "meas_allocated_bytes" not in r
        assert r["meas_allocated_peak_bytes"] > 0
        assert any("assumption 8" in n for n in r["notes"])


def test_the_validate_report_renders_and_summarises_the_rows(rows, tmp_path):
    from quantlab.commands.validate import report
    from quantlab.validate import measurement_row, summarize

    summary = summarize(rows)
    assert {s["component"] for s in summary} == set(COMPONENTS)  # zeros and the unplanned peak left out
    assert all(s["ok"] for s in summary)
    for fmt in ("markdown", "json", "csv"):
        buf = io.StringIO()
        assert report(rows, fmt=fmt, stream=buf) == 0
        assert "modernbert-tokcls-k4-bf16-padded" in buf.getvalue()
    json.loads(_json(rows))
    assert all(measurement_row(r, source="test") is None for r in rows)  # no ground-truth row without a total


def _json(rows):
    buf = io.StringIO()
    from quantlab.commands.validate import report

    report(rows, fmt="json", stream=buf)
    return buf.getvalue()


def test_the_matrix_covers_the_families_heads_and_settings():
    cases = load_encoder_matrix(MATRIX)
    assert len({c.id for c in cases}) == len(cases)
    seen = {(c.spec.model_type, c.head) for c in cases}
    assert {("bert", "seq-cls"), ("bert", "tok-cls"), ("roberta", "seq-cls"), ("modernbert", "seq-cls"),
            ("modernbert", "tok-cls")} <= seen
    assert any(c.train_last_k == 0 for c in cases)
    assert any(c.train_last_k == c.spec.num_hidden_layers for c in cases)
    assert {c.precision for c in cases} == {"fp32", "bf16"}
    modern = {(c.head, c.padded) for c in cases if c.spec.model_type == "modernbert"}
    assert {("seq-cls", False), ("seq-cls", True), ("tok-cls", False), ("tok-cls", True)} <= modern
    bert = next(c for c in cases if c.id == "bert-seqcls-k2-fp32")
    assert (bert.train_last_k, bert.spec.num_hidden_layers) == (2, 4)  # last 2 of 4 layers


def test_scale_overrides_reach_the_planner_and_the_lab():
    (c,) = load_encoder_cases([{"id": "x", "model": "bert", "scale": {"num_hidden_layers": 2, "hidden_size": 64,
                                                                      "num_attention_heads": 2},
                                "train-last-k": 1}])
    assert c.model == "bert-base-uncased" and c.spec.num_hidden_layers == 2 and c.spec.hidden_size == 64
    assert c.hf_config["num_hidden_layers"] == 2 and c.hf_config["intermediate_size"] == 3072
    from quantlab.commands.encoder_plan import DEFAULTS

    assert (c.head, c.num_labels, c.batch, c.seq) == (DEFAULTS["head"], DEFAULTS["num_labels"], DEFAULTS["batch"],
                                                      DEFAULTS["seq"])  # quantlab plan's encoder defaults


@pytest.mark.parametrize("entry, says", [
    ({"model": "gpt-bert-9000"}, "unknown encoder 'gpt-bert-9000'"),
    ({"model": "bert-base-uncased", "scale": {"num_hidden_layers": 4}, "train-last-k": 5}, "exceeds"),
    ({"model": "bert-base-uncased", "head": "mlm"}, "unknown head 'mlm'"),
    ({"model": "bert-base-uncased", "precision": "nf4"}, "precision must be one of fp32, bf16"),
    ({"model": "bert-base-uncased", "method": "lora"}, "unknown key 'method'"),
    ({"model": "bert-base-uncased", "train-last-k": -1}, "train-last-k must be a non-negative integer"),
    ({"model": "bert-base-uncased", "batch": 0}, "batch must be a positive integer"),
    ({"model": "bert-base-uncased", "scale": "tiny"}, "unknown scale 'tiny'"),
    ({"model": "bert-base-uncased", "seq": 600}, "beyond"),
    ({"model": "bert-base-uncased", "expect": {"allocated": 0.1}}, "unknown component 'allocated'"),
])
def test_bad_entries_are_one_line(entry, says):
    with pytest.raises(QuantlabError) as e:
        load_encoder_cases([{"id": "bad", **entry}])
    msg = str(e.value)
    assert says in msg and "\n" not in msg and "bad" in msg


def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(QuantlabError, match="known: .*bert-base-uncased"):
        load_encoder_cases([{"model": "nope"}])


def test_module_entry_point_runs_rows_and_refuses_bad_input(capsys, tmp_path):
    pytest.importorskip("torch")
    from quantlab.lab.measure import cuda_available
    from quantlab.validate_encoder import main

    if cuda_available():
        pytest.skip("encoder rows are CPU rows (validate_encoder assumption 4)")
    assert main([str(MATRIX), "--only", "bert-seqcls-k0-fp32", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in doc["configurations"]] == ["bert-seqcls-k0-fp32"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("configurations:\n  - {id: x, model: bert-base-uncased, head: mlm}\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown head 'mlm'" in err


def test_quantlab_validate_runs_an_encoder_row(capsys):
    """`quantlab validate --matrix` dispatches an encoder profile's row to the encoder lab and planner."""
    import json as _json

    from quantlab.cli import main

    rc = main(["validate", "--matrix", "profiles/validation/encoder-matrix.yaml", "--only", "bert-seqcls-k0-fp32",
               "--format", "json", "--no-progress"])
    doc = _json.loads(capsys.readouterr().out)
    row = doc["configurations"][0]
    assert rc == 0 and row["method"] == "encoder-seq-cls" and row["ok"] is True
    assert row["err_activations"] == 0.0 and row["pred_allocated_bytes"] is None
