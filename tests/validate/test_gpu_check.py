"""scripts/gpu-check: the dry run states its plan and budget on a CPU, a run without a GPU is a one-line exit 2,
and the CUDA comparison it relies on is exercised here with injected readings (no GPU is lent to this project)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/gpu-check"
MATRIX = ROOT / "profiles/validation/gpu-matrix.yaml"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_dry_run_lists_every_row_with_its_plan_and_the_budget():
    from quantlab.commands.validate import load_matrix

    ids = [c.id for c in load_matrix(MATRIX)]
    r = _run("--dry-run", "--gpu", "h100-sxm")
    assert r.returncode == 0, r.stderr
    for i in ids:
        assert i in r.stdout
    assert "within budget" in r.stdout and "budget of 480 s" in r.stdout
    assert "assumed, not measured" in r.stdout


def test_dry_run_over_a_tight_budget_says_so():
    r = _run("--dry-run", "--gpu", "h100-sxm", "--budget-s", "30")
    assert r.returncode == 1 and "OVER budget" in r.stdout


def test_run_without_a_gpu_is_one_line_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the real run is scripts/gpu-check itself")
    r = _run()
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--dry-run" in r.stderr


def test_cuda_comparison_with_injected_readings():
    """Every GPU row is compared on allocated (3%), reserved and process (6%) with the plan's CUDA terms."""
    from quantlab.commands.validate import load_matrix
    from quantlab.specs import DeviceMode
    from quantlab.validate import TENSOR_COMPONENTS, compare, predict

    for case in load_matrix(MATRIX):
        pc = dataclasses.replace(case.config, device=DeviceMode.CUDA)
        pred = predict(pc)
        assert pred["pred_reserved_bytes"] > pred["pred_allocated_bytes"]  # the allocator reserve is planned
        meas = {f"meas_{k}_bytes": pred[f"pred_{k}_bytes"] for k in TENSOR_COMPONENTS}
        meas.update(device="cuda", meas_allocated_bytes=round(pred["pred_allocated_bytes"] / 1.02),
                    meas_reserved_bytes=round(pred["pred_reserved_bytes"] / 1.05),
                    meas_process_bytes=round(pred["pred_process_bytes"] / 0.95))
        row = compare(case, meas)
        assert row["ok"], case.id
        assert abs(row["err_reserved"] - 0.05) < 1e-6 and abs(row["err_process"] + 0.05) < 1e-6
        meas["meas_reserved_bytes"] = round(pred["pred_reserved_bytes"] / 1.07)  # 7% over: beyond 6%
        assert not compare(case, meas)["ok"], case.id
