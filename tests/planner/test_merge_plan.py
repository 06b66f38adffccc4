"""The merge planner (quantlab.planner.merge) and mergekit configs as models (quantlab.merge_config)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab.errors import QuantlabError
from quantlab.planner import merge as pm
from quantlab.planner.params import count_params
from quantlab.profiles import load_model

ROOT = Path(__file__).resolve().parents[2]


def spec(name="smollm2-135m"):
    return load_model(name).spec


def test_smollm2_linear_and_ties_golden():
    """SmolLM2-135M: N = 134,515,008, largest tensor the tied embedding 49,152 x 576 = 28,311,552 (T).
    fp32 (b = 4), K = 2. linear: writer N*4 = 538,060,032 + inputs 2*4T = 226,492,416 + fp32 result 4T =
    113,246,208 -> 877,798,656. ties: inputs 3*4T (base too) = 339,738,624; kernel = the trim phase: deltas 2*4T,
    one delta 4T, |delta| 4T, argsort 8T + sorted 4T, mask 4T = 32T = 905,969,664 -> 1,783,768,320."""
    s = spec()
    assert count_params(s).total == 134_515_008 and pm.largest_tensor(s) == 28_311_552
    lin = pm.mergekit_memory(s, "linear", k=2, dtype_bytes=4)
    assert lin.ram_peak_bytes == 877_798_656 and lin.disk_bytes == 538_060_032 and lin.vram_peak_bytes == 0
    ties = pm.mergekit_memory(s, "ties", k=2, dtype_bytes=4)
    assert ties.ram_peak_bytes == 1_783_768_320
    assert dict(ties.components)["kernel"] == 32 * 28_311_552


def test_merge_memory_properties():
    s = spec("llama-3.1-8b")
    lin = pm.mergekit_memory(s, "linear", k=2, dtype_bytes=2)
    ties = pm.mergekit_memory(s, "ties", k=2, dtype_bytes=2)
    ties3 = pm.mergekit_memory(s, "ties", k=3, dtype_bytes=2)
    assert lin.ram_peak_bytes < ties.ram_peak_bytes < ties3.ram_peak_bytes
    # the writer holds one 5e9-byte shard, not the 16 GB output: RAM far below the model
    assert dict(lin.components)["writer_shard"] == pm.OUT_SHARD_BYTES < lin.disk_bytes
    assert lin.ram_peak_bytes < lin.disk_bytes
    gpu = pm.mergekit_memory(s, "ties", k=2, dtype_bytes=2, cuda=True)
    # with --cuda the kernel's working set moves to the GPU: RAM keeps the writer and the inputs
    assert gpu.ram_peak_bytes < ties.ram_peak_bytes
    assert gpu.vram_peak_bytes == dict(ties.components)["inputs"] + dict(ties.components)["kernel"] + \
        dict(gpu.components)["cuda_context"]
    with pytest.raises(ValueError, match="slerp merges two"):
        pm.mergekit_memory(s, "slerp", k=3)
    with pytest.raises(ValueError, match="unknown"):
        pm.mergekit_memory(s, "soup")


def test_peft_merge_memory():
    """LoRA r=16 on every block linear of SmolLM2: per layer (576+576)+2(576+192)+(576+576)+3(576+1536) = 10,176
    x 16 x 4 bytes, x 30 layers = 19,537,920 bytes; cat of two doubles the rank."""
    s = spec()
    assert pm.lora_adapter_bytes(s, 16) == 19_537_920
    lin = pm.peft_merge_memory(s, "linear", [16, 16])
    cat = pm.peft_merge_memory(s, "cat", [16, 16])
    svd = pm.peft_merge_memory(s, "svd", [16, 16])
    assert lin.disk_bytes == 19_537_920 and cat.disk_bytes == 2 * 19_537_920 and svd.disk_bytes == 19_537_920
    assert dict(svd.components)["transient"] > dict(lin.components)["transient"]
    with pytest.raises(ValueError, match="equal rank"):
        pm.peft_merge_memory(s, "ties", [8, 16])
    pm.peft_merge_memory(s, "cat", [8, 16])


SOLAR = """slices:
  - sources:
      - model: mistral-7b-v0.1
        layer_range: [0, 24]
  - sources:
      - model: mistral-7b-v0.1
        layer_range: [8, 32]
merge_method: passthrough
dtype: bfloat16
"""


def test_depth_upscaling_is_solar_10_7b(tmp_path):
    """SOLAR-10.7B (Kim et al. 2023): Mistral-7B's layers 0-24 and 8-32 -> 48 layers. Mistral per block: q, o 4096^2,
    k, v 4096 x 1024, MLP 3 x 4096 x 14336, two norms: 218,112,000; embedding + head 2 x 32000 x 4096, final norm
    4096: 262,148,096 + 48 x 218,112,000 = 10,731,524,096."""
    p = tmp_path / "solar.yaml"
    p.write_text(SOLAR)
    rm = load_model(str(p))
    assert rm.spec.num_hidden_layers == 48 and count_params(rm.spec).total == 10_731_524_096
    assert "48 layers" in rm.resolved_from and rm.config["num_hidden_layers"] == 48


def test_merge_models_keep_the_architecture(tmp_path):
    p = tmp_path / "ties.yaml"
    p.write_text("models:\n  - model: qwen2.5-0.5b\n  - model: qwen2.5-0.5b\nmerge_method: ties\n"
                 "base_model: qwen2.5-0.5b\n")
    assert load_model(str(p)).spec.num_hidden_layers == spec("qwen2.5-0.5b").num_hidden_layers


@pytest.mark.parametrize("text, msg", [
    (SOLAR.replace("[8, 32]", "[8, 40]"), "outside the model's 0..32 layers"),
    (SOLAR.replace("      - model: mistral-7b-v0.1\n        layer_range: [0, 24]",
                   "      - model: mistral-7b-v0.1\n        layer_range: [0, 24]\n      - model: mistral-7b-v0.1\n"
                   "        layer_range: [0, 24]"), "one source per slice"),
    (SOLAR.replace("model: mistral-7b-v0.1\n        layer_range: [8, 32]", "model: llama-3.1-8b\n        "
                   "layer_range: [8, 32]"), "mergekit merges models of one architecture"),
    ("slices: [\n", "not valid YAML"),
    ("a: 1\n", "not a mergekit configuration"),
    (SOLAR.replace("mistral-7b-v0.1", "no-such-model"), "no-such-model"),
])
def test_bad_merge_configs(tmp_path, text, msg):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(QuantlabError, match=msg):
        load_model(str(p))


def test_plan_cli_on_a_merge_config(tmp_path):
    p = tmp_path / "solar.yaml"
    p.write_text(SOLAR)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "quantlab", "plan", "--model", str(p)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "48 layers" in ok.stdout and "10.73 B parameters" in ok.stdout, ok.stdout
    p.write_text(SOLAR.replace("[8, 32]", "[8, 40]"))
    bad = subprocess.run([sys.executable, "-m", "quantlab", "plan", "--model", str(p)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
