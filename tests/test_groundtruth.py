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
