"""Real DeepSpeed 0.19.8 ZeRO engines, built on CPU processes (gloo, DeepSpeed's CPU accelerator) from the JSON
quantlab emits, against the plan's DeepSpeed buffers (memory assumption 9a-9h).

``scripts/ds_engine_buffers.py`` builds an engine per (stage 1/2/3; pure bf16 / AMP full fine-tune / AMP freeze of
all but the last block) on a tiny random Llama (h=64, 2 layers, vocab 256: 106,816 parameters), runs two steps and
reads the engine's tensors: the 16-bit model, the master partition, the 16-bit gradient partition, the reduce
buckets, the optimizer states, the master gradient the inner optimizer steps on, the CPU allocator's peak over the
step and, at stage 3, the gathered parameters. One process (dp=1) and two (dp=2, where the partitioning shows: the
worst rank's whole parameters that overlap its partition, the persistent copies). The first run on a machine builds
DeepSpeed's shm comm op (~90 s); then about 85 s for both (2-core CPU machine, op cached).

Worked figures (dp=2, AMP, stage 1/2): N = 106,816 is a multiple of 2·dp, so P = 53,408; masters 4·P = 213,632
bytes; AdamW states 2·4·P + the 4-byte step = 427,268; rank 0's gradient partition holds embed (16,384) plus
every parameter up to and across element 53,408 whole: 57,472 elements, 114,944 bytes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest



def test_the_modelled_deepspeed_is_installed():
    """Assumption 9a-9h read DeepSpeed 0.19.8's code: another version needs the rules re-read, not a silent pass."""
    import deepspeed

    assert deepspeed.__version__ == "0.19.8", \
        f"memory assumption 9a-9h model DeepSpeed 0.19.8, found {deepspeed.__version__}"

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("weights16", "masters", "gradients16", "buckets", "optimizer")


def _run(world: int, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp(f"ds{world}") / "buffers.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    port = str(29700 + world + os.getpid() % 200)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ds_engine_buffers.py"), "--world-size", str(world),
                        "--port", port, "--out", str(out)], env=env, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module", params=[1, 2], ids=["dp1", "dp2"])
def engines(request, tmp_path_factory):
    return _run(request.param, tmp_path_factory)


def test_engine_buffers_match_the_plan(engines):
    """Every buffer's bytes: the plan's figure is the engine's (per rank; gradients: the plan is the worst rank)."""
    plans = {(p["stage"], p["precision"]): p for p in engines["planned"]}
    assert len(engines["measured"]) == 9 * engines["planned"][0]["world_size"]
    for m in engines["measured"]:
        p = plans[(m["stage"], m["precision"])]
        where = f"ZeRO-{m['stage']} {m['precision']} rank {m['rank']}/{m['world_size']}"
        assert m["optimizer_class"] == ("DeepSpeedZeroOptimizer_Stage3" if m["stage"] == 3 else
                                        "DeepSpeedZeroOptimizer"), where
        for f in FIELDS:
            if f == "gradients16":
                assert m[f + "_bytes"] <= p[f + "_bytes"], where
            else:
                assert m[f + "_bytes"] == p[f + "_bytes"], (where, f)
        worst = max(x["gradients16_bytes"] for x in engines["measured"]
                    if (x["stage"], x["precision"]) == (m["stage"], m["precision"]))
        assert worst == p["gradients16_bytes"], where
        if m["stage"] == 3:  # the plan counts the live bound the emitted JSON sets (two blocks)
            assert 0 < m["gathered_bytes"] <= p["gathered_bytes"], where
        # the master gradient the inner optimizer steps on: P elements in the master dtype
        assert m["master_grad_bytes"] == p["masters_bytes"], where
        # the step's transient: the CPU allocator's peak over engine.step() above its start is the plan's, up to the
        # grad-norm and overflow scalars (a few dozen bytes; 1 KiB allowed)
        assert 0 <= m["step_peak_bytes"] - p["step_transient_bytes"] <= 1024, (where, m["step_peak_bytes"],
                                                                             p["step_transient_bytes"])


def test_engine_dtypes_follow_the_precision_recipe(engines):
    """Pure bf16 plans: bf16 masters, gradients and states; AMP plans: fp32 masters and states over a bf16 model and
    bf16 gradient buffers (DeepSpeed casts the model; memory assumptions 9a, 9b)."""
    for m in engines["measured"]:
        master = "bfloat16" if m["precision"] == "pure" else "float32"  # amp, amp-freeze
        assert m["weights16_dtypes"] == ["bfloat16", "float32"]  # float32: RoPE's inv_freq buffers
        assert m["masters_dtypes"] == [master] and m["master_grad_dtypes"] == [master]
        assert m["gradients16_dtypes"] == ["bfloat16"] and m["buckets_dtypes"] == ["bfloat16"]
        assert set(m["optimizer_dtypes"]) == {master, "float32"}  # (+ the fp32 step counter)
