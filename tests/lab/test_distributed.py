"""The fine-tune under `accelerate launch` with two CPU processes (gloo): per-process bytes counted from tensors
follow the sharding: DDP replicates weights, gradients and optimizer states; FSDP holds half of each."""

import pytest

from quantlab.errors import QuantlabError
from quantlab.lab import distributed as D


def _full_bytes():
    """Bytes of the tiny model's tensors in one process: weights (+ rotary buffer), fp32 gradients of every
    parameter, AdamW's two fp32 moments per parameter."""
    from quantlab.lab.model import tiny_model

    m = tiny_model("llama")
    params = sum(p.numel() * 4 for p in m.parameters())
    buffers = sum(b.numel() * b.element_size() for b in m.buffers())
    return params + buffers, params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for sharding in ("ddp", "fsdp"):
        cfg = D.DistConfig(model="tiny", method="full", sharding=sharding, processes=2, steps=3)
        out[sharding] = D.launch(cfg, tmp_path_factory.mktemp(sharding), timeout_s=300)
    return out


def test_two_gloo_processes_under_accelerate_launch(runs):
    for recs in runs.values():
        assert [r["rank"] for r in recs] == [0, 1]
        assert all(r["world_size"] == 2 and r["backend"] == "gloo" and r["distributed_type"].endswith("MULTI_CPU")
                   for r in recs)
        assert all(r["replicas_agree"] for r in recs)
        assert all(r["losses"][-1] < r["losses"][0] for r in recs)  # each rank's repeated batch is learned
        assert recs[0]["launch_command"].startswith("accelerate launch --config_file")


def test_ddp_replicates_every_component(runs):
    weights, params = _full_bytes()
    for r in runs["ddp"]:
        assert r["weights_bytes"] == weights
        assert r["gradients_bytes"] == params  # gradients are views into DDP's buckets: counted once
        assert r["optimizer_bytes"] == 2 * params
    assert runs["ddp"][0]["losses"] != runs["ddp"][1]["losses"]  # different data per rank ...
    # ... yet identical parameters after the steps (replicas_agree): the gradients were all-reduced


def test_fsdp_holds_one_shard_per_process(runs):
    weights, params = _full_bytes()
    recs = runs["fsdp"]
    for r in recs:
        assert r["params_local"] * 2 == pytest.approx(params / 4, rel=0.01)  # half the parameters, up to padding
        assert r["gradients_bytes"] == pytest.approx(params / 2, rel=0.01)
        assert r["optimizer_bytes"] == pytest.approx(params, rel=0.01)
    assert sum(r["params_local"] for r in recs) >= params // 4  # the shards cover the model


def test_bad_config_is_a_one_line_error():
    with pytest.raises(QuantlabError, match="sharding"):
        D.DistConfig(sharding="zero9")
    with pytest.raises(QuantlabError, match="method"):
        D.DistConfig(method="qat")
