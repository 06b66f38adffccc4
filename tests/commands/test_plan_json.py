"""``quantlab plan --format json`` is the whole plan, and ``--from-json`` reproduces it byte for byte."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab.cli import main
from quantlab.specs import PlanConfig

ROOT = Path(__file__).resolve().parents[2]


def ql(*argv, cwd=ROOT, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "quantlab", *argv], cwd=cwd, env=e, capture_output=True)


CONFIGS = [
    ["--model", "8b", "--method", "lora", "--lora-targets", "q_proj,k_proj,v_proj,o_proj", "--gpu", "rtx-a6000"],
    ["--model", "13b", "--method", "qlora", "--double-quant", "--gpu", "t4"],  # fp16 compute, no FlashAttention
    ["--model", "7b", "--method", "freeze", "--freeze-last-layers", "3", "--freeze-modules", "lm_head"],
    ["--model", "70b", "--method", "full", "--num-gpus", "8", "--zero", "3", "--offload", "optimizer", "--gpu", "h100"],
    ["--model", "8b", "--method", "lora", "--device", "cpu", "--padded", "--lora-dropout", "0.05"],
    ["--model", "8b", "--seq", "8192", "--kv-dtype", "fp8", "--gpu", "auto"],
    ["--model", "gemma-2-9b", "--method", "lora", "--lora-targets", "all-linear", "--grad-checkpointing",
     "--training-precision", "amp", "--optimizer", "adamw-8bit", "--gpu", "v100"],
]


@pytest.mark.parametrize("argv", CONFIGS, ids=lambda a: " ".join(a[1:4]))
def test_from_json_reproduces_the_plan_byte_for_byte(tmp_path, argv):
    first = ql("plan", *argv, "--format", "json")
    assert first.returncode == 0, first.stderr
    path = tmp_path / "p.json"
    path.write_bytes(first.stdout)
    again = ql("plan", "--from-json", str(path), "--format", "json")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    # and the table from the file is the table from the flags
    assert ql("plan", "--from-json", str(path)).stdout == ql("plan", *argv).stdout


def test_document_holds_every_field_resolved(capsys):
    """The config is PlanConfig.to_dict() with the defaults filled in, the GPU choices applied (T4: no bf16)."""
    assert main(["plan", "--model", "8b", "--method", "qlora", "--gpu", "t4", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    from quantlab import __version__

    assert doc["schema"] == 1 and doc["quantlab_version"] == __version__
    fields = [f.name for f in dataclasses.fields(PlanConfig)]
    assert list(doc["config"]) == fields
    c = doc["config"]
    assert c["precision"] == "nf4" and c["compute_dtype"] == "fp16" and c["flash_attention"] is False
    assert c["lora_targets"] == ["q_proj", "v_proj"] and c["lora_r"] == 16 and c["batch"] == 1
    assert c["model"]["name"] == "llama-3.1-8b" and c["model"]["hidden_size"] == 4096
    assert doc["model"] == "llama-3.1-8b" and doc["model_resolution"] == "8b -> llama-3.1-8b (alias)"
    assert doc["gpu"] == "t4" and doc["gpu_profile"] == "t4" and doc["gpu_bf16_supported"] is False
    assert isinstance(doc["gpu_memory_bytes"], int)
    # the QLoRA recipe turns checkpointing on (prepare_model_for_kbit_training), and with it 8B fits a 16 GB T4
    assert c["grad_checkpointing"] is True and c["kbit_upcast"] is True
    assert doc["recipe"].startswith("PEFT QLoRA (prepare_model_for_kbit_training: checkpointing on, fp32 upcast)")
    assert doc["fits"] is True and isinstance(doc["suggestions"], list)
    assert "t4 has no bf16: compute dtype fp16" in doc["notes"]
    cfg = PlanConfig.from_dict(doc["config"])
    from quantlab.planner import plan

    assert plan(cfg).process_bytes == doc["process_bytes"]


def test_without_gpu_the_fit_keys_are_null(capsys):
    assert main(["plan", "--model", "7b", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["gpu"] is None and doc["fits"] is None and doc["max_batch"] is None


def test_auto_detected_gpu_memory_survives_the_round_trip(tmp_path, monkeypatch, capsys):
    """--gpu auto checks against the driver's memory: the document keeps it, --from-json reuses it, also for a
    device outside the catalog."""
    from tests.test_hardware import _fake_nvml

    for name, mem in (("NVIDIA GeForce RTX 4090", 25_757_220_864), ("Imaginary Accelerator 9000", 12 << 30)):
        monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([(name, mem)]))
        assert main(["plan", "--model", "7b", "--method", "qlora", "--gpu", "auto", "--format", "json"]) == 0
        out = capsys.readouterr().out
        doc = json.loads(out)
        assert doc["gpu_memory_bytes"] == mem and "detected 1 x" in doc["gpu_detection"]
        p = tmp_path / "p.json"
        p.write_text(out)
        monkeypatch.delitem(sys.modules, "pynvml")
        assert main(["plan", "--from-json", str(p), "--format", "json"]) == 0
        assert capsys.readouterr().out == out


@pytest.mark.parametrize("content,needle", [
    ("{oops", "not valid JSON"),
    ("[1, 2]", "not a plan document"),
    ('{"schema": 99, "config": {}}', "version 99"),
    ('{"config": {}}', "version None"),
])
def test_malformed_or_unknown_version_is_one_line_exit_2(tmp_path, content, needle):
    p = tmp_path / "p.json"
    p.write_text(content)
    r = ql("plan", "--from-json", str(p), "--format", "json")
    err = r.stderr.decode()
    assert r.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1 and r.stdout == b""


def _doc(tmp_path, **change):
    r = ql("plan", "--model", "8b", "--method", "lora", "--gpu", "a100", "--format", "json")
    doc = json.loads(r.stdout)
    for k, v in change.items():
        if k.startswith("config_"):
            doc["config"][k[len("config_"):]] = v
        else:
            doc[k] = v
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize("change,needle", [
    ({"config_lora_r": "x"}, "lora_r"),
    ({"config_colour": "red"}, "unknown configuration field 'colour'"),
    ({"gpu_memory_bytes": -1}, "gpu_memory_bytes"),
    ({"gpu_profile": "h1000"}, "h1000"),
])
def test_bad_fields_are_one_line_exit_2(tmp_path, change, needle):
    r = ql("plan", "--from-json", str(_doc(tmp_path, **change)))
    err = r.stderr.decode()
    assert r.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1 and r.stdout == b""


@pytest.mark.parametrize("extra", [["--batch", "4"], ["--model", "7b"], ["--gpu", "h100"], ["--padded"]])
def test_from_json_with_config_flags_is_an_error(tmp_path, extra):
    r = ql("plan", "--from-json", str(_doc(tmp_path)), *extra)
    err = r.stderr.decode()
    assert r.returncode == 2 and f"drop {extra[0]}" in err and r.stdout == b""


def test_from_json_help_says_so():
    out = ql("plan", "--help", env={"COLUMNS": "200"}).stdout.decode()
    assert "--from-json FILE" in out and "configuration flags" in out and "are an error" in out


def test_from_json_accepts_output_flags(tmp_path):
    r = ql("plan", "--from-json", str(_doc(tmp_path)), "--format", "csv")
    assert r.returncode == 0 and r.stdout.decode().startswith("model,")
