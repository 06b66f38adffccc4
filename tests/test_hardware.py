"""GPU detection: NVML first, torch.cuda only when NVML is not installed, no GPU is a normal answer.

A fake ``pynvml`` module stands in for the driver (this machine has no GPU), so every branch runs here.
"""

import sys
import types

import pytest

from quantlab import hardware
from quantlab.cli import main

GIB = 1 << 30


def _fake_nvml(devices=None, init_error=None):
    """A stand-in for nvidia-ml-py: ``devices`` is a list of (name, total bytes); ``init_error`` raised at init."""
    mod = types.ModuleType("pynvml")
    calls = []

    def nvmlInit():
        calls.append("init")
        if init_error is not None:
            raise init_error

    mod.nvmlInit = nvmlInit
    mod.nvmlShutdown = lambda: calls.append("shutdown")
    mod.nvmlDeviceGetCount = lambda: len(devices or [])
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: devices[h][0].encode()  # older bindings return bytes
    # (name, total) or (name, total, free): older fakes give no free figure
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=devices[h][1], **(
        {"free": devices[h][2]} if len(devices[h]) > 2 else {}))
    mod.calls = calls
    return mod


def test_nvml_devices_are_listed_and_nvml_shut_down(monkeypatch):
    fake = _fake_nvml([("NVIDIA GeForce RTX 4090", 24 * GIB), ("NVIDIA GeForce RTX 4090", 24 * GIB)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = hardware.detect()
    assert [(d.index, d.name, d.memory_bytes, d.via) for d in found] == \
        [(0, "NVIDIA GeForce RTX 4090", 24 * GIB, "nvml"), (1, "NVIDIA GeForce RTX 4090", 24 * GIB, "nvml")]
    assert fake.calls == ["init", "shutdown"]


def test_nvml_without_driver_is_no_gpu_and_torch_is_not_asked(monkeypatch):
    """NVML installed but no driver: the answer is 'no GPU' (torch is not imported to ask again)."""
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_error=RuntimeError("NVML Shared Library Not Found")))
    monkeypatch.setattr(hardware, "_detect_torch", lambda: pytest.fail("torch asked although NVML is installed"))
    assert hardware.detect() == []


def test_torch_only_when_nvml_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    sentinel = [hardware.DetectedGPU(0, "NVIDIA A100-SXM4-80GB", 80 * GIB, "torch")]
    monkeypatch.setattr(hardware, "_detect_torch", lambda: sentinel)
    assert hardware.detect() == sentinel


def test_auto_maps_onto_the_catalog_with_the_reported_memory(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([("NVIDIA A100-SXM4-80GB", 85_899_345_920)]))
    spec, n, msg = hardware.resolve_auto()
    assert spec.name == "a100-80gb" and spec.memory_bytes == 85_899_345_920 and n == 1
    assert "via nvml" in msg and "profile a100-80gb" in msg


def test_auto_keeps_an_unknown_device_with_its_memory(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([("Imaginary Accelerator 9000", 12 * GIB)]))
    spec, n, msg = hardware.resolve_auto()
    assert spec.name == "Imaginary Accelerator 9000" and spec.memory_bytes == 12 * GIB
    assert "not in the catalog" in msg


def test_plan_gpu_auto_without_a_gpu_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_error=RuntimeError("no driver")))
    assert main(["plan", "--model", "7b", "--gpu", "auto"]) == 0
    out = capsys.readouterr().out
    assert "no GPU detected" in out and "FIT" not in out


def test_plan_gpu_auto_with_a_gpu_gives_a_verdict(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([("NVIDIA GeForce RTX 4090", 25_757_220_864)]))
    assert main(["plan", "--model", "13b", "--method", "qlora", "--gpu", "auto", "--format", "json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["gpu"] == "rtx-4090" and doc["gpu_memory_bytes"] == 25_757_220_864
    assert "detected 1 x NVIDIA GeForce RTX 4090 via nvml" in doc["gpu_detection"]


def test_auto_plans_every_detected_gpu_against_the_least_free_memory(monkeypatch, capsys):
    """--gpu auto: the count is what the machine has, the memory what the least free device has free (other
    processes' memory is not this job's), and the message says both; it round-trips through --from-json."""
    import json

    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([("NVIDIA A100-SXM4-80GB", 80 * GIB, 70 * GIB),
                                                           ("NVIDIA A100-SXM4-80GB", 80 * GIB, 60 * GIB)]))
    spec, n, msg = hardware.resolve_auto()
    assert (spec.name, spec.memory_bytes, n) == ("a100-80gb", 60 * GIB, 2)
    assert "free memory 60.00 GiB of 80.00 GiB (the least free device)" in msg and "plans all 2" in msg
    assert main(["plan", "--model", "8b", "--method", "lora", "--gpu", "auto", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["num_gpus"] == 2 and doc["gpu_memory_bytes"] == 60 * GIB
    assert main(["plan", "--model", "8b", "--method", "lora", "--gpu", "auto", "--num-gpus", "1",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["num_gpus"] == 1  # --num-gpus asks for fewer


def test_auto_refuses_more_gpus_than_detected(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([("NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB)]))
    assert main(["plan", "--model", "8b", "--method", "lora", "--gpu", "auto", "--num-gpus", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 GPU detected" in err


def test_auto_with_mixed_devices_names_them_and_plans_the_least_free(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([("NVIDIA GeForce RTX 4090", 24 * GIB, 20 * GIB),
                                                           ("NVIDIA A100-SXM4-80GB", 80 * GIB, 79 * GIB)]))
    spec, n, msg = hardware.resolve_auto()
    assert (spec.name, spec.memory_bytes, n) == ("rtx-4090", 20 * GIB, 2)
    assert "1 x NVIDIA A100-SXM4-80GB, 1 x NVIDIA GeForce RTX 4090" in msg and "GPU 0" in msg
