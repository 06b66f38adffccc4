"""The HTML report's fine-tune section uses the named fine-tune table (MiB columns), not raw result keys."""

from quantlab.report.render import html_page
from quantlab.report.store import RunRecord, config_key


def test_html_finetune_section_has_named_mib_columns():
    cfg = {"method": "lora", "precision": "fp32", "task": "json-extract"}
    metrics = {"meas_activations_bytes": 3 * 2**20, "pred_activations_bytes": 3 * 2**20,
               "meas_weights_bytes": 100 * 2**20, "meas_steps": 4, "meas_exact_match": 0.5}
    r = RunRecord(key=config_key("finetune", "m", "lora", cfg), kind="finetune", model="m", method="lora",
                  config=cfg, env={"device": "cpu"}, metrics=metrics)
    page = html_page([], [r])
    assert "meas_" not in page and "pred_" not in page
    assert "<th>activations MiB</th>" in page and "<td>3.0</td>" in page and "<td>100.0</td>" in page
