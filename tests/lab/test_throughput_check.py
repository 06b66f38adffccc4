"""The CPU probe and the roofline-vs-measured check: the probe's peaks are plausible and labelled measured, and
the roofline is an upper bound on what the embedded model really does on this machine."""

import pytest

from quantlab.lab import cpu_probe, throughput_check as tc
from quantlab.planner import throughput as tp


def test_probe_measures_plausible_peaks_and_labels_them_measured():
    res = cpu_probe.probe(threads=1, repeats=2, matmul_n=512, bf16=False)
    assert 1e9 < res.read_bytes_per_s < 1e12  # any CPU of the last decade, one thread
    assert 1e9 < res.copy_bytes_per_s < 1e12
    assert 1e8 < res.flops["fp32"] < 1e13
    dev = cpu_probe.as_device(res)
    assert dev.memory_bandwidth_bytes_per_s == res.read_bytes_per_s
    assert dev.sources["memory_bandwidth_bytes_per_s"].basis == "measured"
    assert tp.roof(dev, tp.DType.FP32).flops_per_s == res.flops["fp32"]


@pytest.mark.slow
def test_roofline_bounds_the_embedded_model_from_above():
    """On the embedded SmolLM2-135M, every measured speed stays under the ideal roofline (utilisation 1.0 on
    the probed peaks), and none is absurdly (100x) below it. The margins (1.25 above, 0.01 below) allow for the probe
    running while other jobs share the machine: batch-1 decode measured 0.025 of its roofline with a test run and
    another job on the 2 cores, 0.19 on a quiet machine."""
    cc = tc.CheckConfig(decode_batches=(1,), prompt=64, new_tokens=10, prefill_seqs=(512,), train_batch=2,
                        train_seq=128, train_methods=("lora",), train_steps=2)
    doc = tc.run(cc, probe_kwargs={"repeats": 3})
    phases = {r["phase"] for r in doc["rows"]}
    assert phases == {"prefill", "decode", "train"}
    for r in doc["rows"]:
        assert 0.01 < r["meas_over_pred"] < 1.25, r
    decode = next(r for r in doc["rows"] if r["phase"] == "decode")
    assert decode["pred_bound"] == "memory"  # batch-1 decode reads every weight per token
    prefill = next(r for r in doc["rows"] if r["phase"] == "prefill")
    assert prefill["pred_bound"] == "compute"
    u = doc["utilisation_derived"]
    assert 0 < u["mbu"] <= 1 and 0 < u["train_mfu"] <= 1 and u["basis"] == "measured"
