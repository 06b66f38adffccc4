"""The fine-tune under `accelerate launch` with two CPU processes (gloo): per-process bytes counted from tensors
follow the sharding: DDP replicates weights, gradients and optimizer states; FSDP holds half of each."""

import pytest

from quantlab.errors import QuantlabError
from quantlab import validate_lab
from quantlab.lab import distributed as D


def _full_bytes():
    """Bytes of the tiny model's tensors in one process: weights (+ rotary buffer), fp32 gradients of every
    parameter, AdamW's two fp32 moments per parameter."""
    from quantlab.lab.model import tiny_model

    m = tiny_model("llama")
    params = sum(p.numel() * 4 for p in m.parameters())
    buffers = sum(b.numel() * b.element_size() for b in m.buffers())
    return params + buffers, params


CASES = (("ddp", "full"), ("fsdp", "full"), ("ddp", "lora"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for sharding, method in CASES:
        cfg = D.DistConfig(model="tiny", method=method, sharding=sharding, processes=2, steps=3)
        out[sharding, method] = (cfg, D.launch(cfg, tmp_path_factory.mktemp(f"{sharding}-{method}"), timeout_s=300))
    return out


def test_two_gloo_processes_under_accelerate_launch(runs):
    for _, recs in runs.values():
        assert [r["rank"] for r in recs] == [0, 1]
        assert all(r["world_size"] == 2 and r["backend"] == "gloo" and r["distributed_type"].endswith("MULTI_CPU")
                   for r in recs)
        assert all(r["replicas_agree"] for r in recs)
        assert all(r["losses"][-1] < r["losses"][0] for r in recs)  # each rank's repeated batch is learned
        assert recs[0]["launch_command"].startswith("accelerate launch --config_file")
        # peak RSS is sampled (measure.track_rss) while the counted tensors are resident, so it holds them all
        for r in recs:
            held = r["weights_bytes"] + r["gradients_bytes"] + r["optimizer_bytes"] + r["ddp_buckets_bytes"]
            assert r["peak_rss_bytes"] > held, r


def test_ddp_replicates_every_component(runs):
    weights, params = _full_bytes()
    _, recs = runs["ddp", "full"]
    for r in recs:
        assert r["weights_bytes"] == weights
        assert r["gradients_bytes"] == params
        assert r["ddp_buckets_bytes"] == params  # DDP's buckets beside the gradients (its default)
        assert r["optimizer_bytes"] == 2 * params
    assert recs[0]["losses"] != recs[1]["losses"]  # different data per rank ...
    # ... yet identical parameters after the steps (replicas_agree): the gradients were all-reduced


def test_fsdp_holds_one_shard_per_process(runs):
    weights, params = _full_bytes()
    _, recs = runs["fsdp", "full"]
    for r in recs:
        assert r["params_local"] * 4 == pytest.approx(params / 2, rel=0.01)  # half the parameters, up to padding
        assert r["gradients_bytes"] == pytest.approx(params / 2, rel=0.01)
        assert r["optimizer_bytes"] == pytest.approx(params, rel=0.01)
        assert r["ddp_buckets_bytes"] == 0
    assert sum(r["params_local"] for r in recs) * 4 >= params  # the shards cover the model


@pytest.mark.parametrize("case", CASES)
def test_per_process_bytes_follow_the_planners_per_gpu_numbers(runs, case):
    """The planner's per-GPU components for the same plan (FP32, AdamW, 2 GPUs, DDP or FSDP full_shard) against
    each process's bytes: equal to within buffers and shard padding (0.5%)."""
    cfg, recs = runs[case]
    rows = validate_lab.distributed_rows(cfg, recs)
    assert {r["component"] for r in rows} == set(D.COMPONENTS)
    for r in rows:
        if r["pred_at_rest_bytes"]:
            assert r["meas_over_pred"] == pytest.approx(1.0, abs=0.005), r
        else:
            assert r["meas_bytes"] == 0, r


@pytest.mark.slow
def test_the_lab_finetune_of_the_embedded_model_on_two_processes(tmp_path):
    """The lab's fine-tune (its LoRA builder, the json-extract task's data, batch order and loss) on the embedded
    SmolLM2-135M under accelerate launch, DDP on 2 gloo processes: replicas agree and each process holds what the
    planner predicts per GPU."""
    cfg = D.DistConfig(model="smollm2-135m", method="lora", sharding="ddp", processes=2, batch=2, seq=256, steps=2,
                       task="json-extract")
    recs = D.launch(cfg, tmp_path, timeout_s=400)
    assert all(r["replicas_agree"] and all(0 < x < 20 for x in r["losses"]) for r in recs)
    assert recs[0]["losses"] != recs[1]["losses"]  # disjoint batches per rank
    for row in validate_lab.distributed_rows(cfg, recs):
        assert row["meas_over_pred"] == pytest.approx(1.0, abs=0.005), row


def test_storage_bytes_calibration():
    """Known sizes: Linear(10, 20) holds 200 + 20 fp32 = 880 bytes; tied weights count once; None is skipped."""
    import torch

    lin = torch.nn.Linear(10, 20)
    assert D.storage_bytes(list(lin.parameters()) + [None]) == 880
    tied = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16, bias=False))
    tied[1].weight = tied[0].weight
    assert D.storage_bytes(tied.parameters()) == 16 * 8 * 4


def test_bad_config_is_a_one_line_error():
    with pytest.raises(QuantlabError, match="sharding"):
        D.DistConfig(sharding="zero9")
    with pytest.raises(QuantlabError, match="method"):
        D.DistConfig(method="qat")
