"""The planner against published GPU measurements (and the lab's own rows in reports/measurements.jsonl).

Targets (issue #2): transformers-stack rows: allocated within 5% on every row, reserved and process within 10%,
every fit verdict right; LitGPT-stack rows within 15%.
"""

import pytest

from quantlab.groundtruth import MEASUREMENTS, PUBLISHED, check_row, load_rows, summarize

ROWS = load_rows(PUBLISHED) + load_rows(MEASUREMENTS)


def test_published_file_is_there():
    assert PUBLISHED.exists(), f"{PUBLISHED} missing: CI keeps shared/ beside the repo"
    assert len(load_rows(PUBLISHED)) >= 20


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_row_within_target(row):
    c = check_row(row)
    assert c.ok, f"{c.id}: predicted {c.predicted:,.0f} vs measured {c.measured:,.0f} ({c.error})"


def test_summary_printed(capsys):
    checks = [check_row(r) for r in ROWS]
    for s in summarize(checks):
        print(s)
        assert s["ok"]
    assert "allocated" in capsys.readouterr().out


def test_row_fields_map_onto_the_plan_config():
    from quantlab.groundtruth import row_to_config
    from quantlab.specs import DeviceMode, Method, Offload, Optimizer

    row = {"id": "x", "model": "smollm2-135m", "method": "lora", "weights": "fp32", "compute_dtype": "fp32",
           "training_precision": "pure", "optimizer": "adamw-8bit", "lora_r": 8, "lora_targets": ["q_proj"],
           "lora_dropout": 0.05, "batch": 4, "seq": 256, "device": "cpu", "offload": "none", "gpu": "t4",
           "metric": "allocated", "value_bytes": 1}
    c = row_to_config(row)
    assert (c.method, c.optimizer, c.lora_r, c.lora_targets, c.lora_dropout, c.device, c.offload) == \
        (Method.LORA, Optimizer.ADAMW_8BIT, 8, ("q_proj",), 0.05, DeviceMode.CPU, Offload.NONE)
    assert c.flash_attention is False  # a T4 has no FlashAttention


def test_bad_row_is_one_line():
    from quantlab.errors import QuantlabError
    from quantlab.groundtruth import row_to_config

    with pytest.raises(QuantlabError, match="measurement row r1"):
        row_to_config({"id": "r1", "model": "smollm2-135m", "method": "lora", "weights": "fp33", "batch": 1, "seq": 8})
    with pytest.raises(QuantlabError, match="measurement row r2"):
        row_to_config({"id": "r2", "model": "smollm2-135m"})


def test_row_translation_is_one_table_into_from_dict():
    """A row's keys are PlanConfig field names except ``weights`` (precision); training_precision's published
    spellings (amp-bf16, pure-bf16) map onto the enum; nulls are absent; a misspelt key is an error."""
    from quantlab.errors import QuantlabError
    from quantlab.groundtruth import row_config_dict, row_to_config
    from quantlab.specs import PlanConfig, Precision, TrainingPrecision

    row = {"id": "t", "model": "smollm2-135m", "method": "full", "weights": "fp32", "compute_dtype": "bf16",
           "training_precision": "amp-bf16", "batch": 2, "seq": 64, "optimizer": None, "metric": "allocated",
           "value_bytes": 1, "source": "x"}
    assert row_config_dict(row) == {"method": "full", "precision": "fp32", "compute_dtype": "bf16",
                                    "training_precision": "amp", "batch": 2, "seq": 64}
    c = row_to_config(row)
    assert (c.precision, c.training_precision) == (Precision.FP32, TrainingPrecision.AMP)
    assert c == PlanConfig.from_dict(row_config_dict(row), model=c.model)
    with pytest.raises(QuantlabError, match="measurement row t: unknown configuration field 'lora_rank'"):
        row_to_config({**row, "lora_rank": 8})
    with pytest.raises(QuantlabError, match="measurement row t: training_precision 'mixed'"):
        row_to_config({**row, "training_precision": "mixed"})
    with pytest.raises(QuantlabError, match="measurement row t: grad_checkpointing must be true or false"):
        row_to_config({**row, "grad_checkpointing": "yes"})
