"""The CPU probe and the roofline-vs-measured check: the probe's peaks are measured and labelled so, and the check
produces one row per phase with the bound the roofline names. How fast this machine is against its roofline
depends on what else runs on it, so that is a benchmark (``scripts/bench_throughput_check.py``), not a test."""

import math

import pytest

from quantlab import validate_lab
from quantlab.lab import cpu_probe, throughput_check as tc
from quantlab.planner import throughput as tp


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_probe_measures_peaks_and_labels_them_measured():
    res = cpu_probe.probe(threads=1, repeats=2, matmul_n=512, bf16=False)
    assert _positive(res.read_bytes_per_s) and _positive(res.copy_bytes_per_s) and _positive(res.flops["fp32"])
    dev = cpu_probe.as_device(res)
    assert dev.memory_bandwidth_bytes_per_s == res.read_bytes_per_s
    assert dev.sources["memory_bandwidth_bytes_per_s"].basis == "measured"
    assert tp.roof(dev, tp.DType.FP32).flops_per_s == res.flops["fp32"]


@pytest.mark.slow
def test_roofline_check_rows_on_the_embedded_model():
    """On the embedded SmolLM2-135M the check gives a prefill, a decode and a train row, each with a measured
    speed and the roofline's bound: batch-1 decode reads every weight per token (memory-bound), a 512-token
    prefill is compute-bound. The measured/roofline ratio itself is the benchmark's business."""
    cc = tc.CheckConfig(decode_batches=(1,), prompt=64, new_tokens=10, prefill_seqs=(512,), train_batch=2,
                        train_seq=128, train_methods=("lora",), train_steps=2)
    doc = validate_lab.throughput_run(cc, probe_kwargs={"repeats": 3})
    phases = {r["phase"] for r in doc["rows"]}
    assert phases == {"prefill", "decode", "train"}
    for r in doc["rows"]:
        assert _positive(float(r["meas_over_pred"])), r
    decode = next(r for r in doc["rows"] if r["phase"] == "decode")
    assert decode["pred_bound"] == "memory"  # batch-1 decode reads every weight per token
    prefill = next(r for r in doc["rows"] if r["phase"] == "prefill")
    assert prefill["pred_bound"] == "compute"
    u = doc["utilisation_derived"]
    assert u["mbu"] > 0 and u["train_mfu"] > 0 and u["basis"] == "measured"


def test_quick_check_rows_keep_the_committed_report_columns():
    """The lab measures (``Timed`` records, no planner figures); ``validate_lab`` sets the roofline beside them.
    The rows it builds carry the committed report's columns in the same order (reports/throughput-cpu), so the
    report's readers keep working. A tiny random model, the peaks of one short probe (no re-probe per row)."""
    from pathlib import Path

    cc = tc.CheckConfig(tiny=True, decode_batches=(1,), prompt=16, new_tokens=6, prefill_seqs=(32,), train_batch=1,
                        train_seq=32, train_methods=("full", "lora+ckpt"), train_steps=1, threads=1, reprobe=False)
    dev = cpu_probe.as_device(cpu_probe.probe(threads=1, repeats=2, matmul_n=256, bf16=False))
    timed = tc.measure_rows(cc, dev)
    assert [t.phase for t in timed] == ["prefill", "decode", "train", "train"]
    assert all(t.meas_s > 0 and t.device is dev for t in timed)
    assert not any(k.startswith("pred_") for t in timed for k in t.extra)  # measurements only
    doc = validate_lab.throughput_run(cc, device=dev)
    header = (Path(__file__).resolve().parents[2] / "reports/throughput-cpu/throughput.csv").read_text().split("\n")[0]
    import pandas as pd

    def cols(names):  # env_ columns follow the installed packages, probe_ ones come with re-probing
        return [c for c in names if not c.startswith(("env_", "probe_"))]

    assert cols(pd.DataFrame(doc["rows"]).columns) == cols(header.split(","))  # the CSV the report writes
    for r in doc["rows"]:
        # the ratio is measured tokens/s over the roofline's, both from this row's own figures
        assert r["meas_over_pred"] == pytest.approx(r["tokens_per_step"] / r["meas_s"] / r["pred_ideal_tok_per_s"])
    train = [r for r in doc["rows"] if r["phase"] == "train"]
    assert train[0]["trainable_params"] > train[1]["trainable_params"] > 0  # full vs LoRA
    assert train[1]["pred_flops_per_step"] > 0
