"""The environment snapshot every stored run carries: device, library versions, git commit."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

LIBS = ("torch", "transformers", "peft", "bitsandbytes", "torchao", "gptqmodel", "accelerate", "quantlab")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> subprocess.CompletedProcess | None:
    """``git args`` run in this checkout, or None where git (or the checkout) is not there."""
    repo = Path(__file__).resolve().parent.parent.parent
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    r = _git("rev-parse", "--short", "HEAD")
    return (r.stdout.strip() or None) if r is not None else None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (a row measured with uncommitted code says so)."""
    r = _git("status", "--porcelain", "--untracked-files=no")
    return bool(r.stdout.strip()) if r is not None and r.returncode == 0 else None


def loadavg_1m() -> float | None:
    """The machine's 1-minute load average (other jobs sharing the cores show up here), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions, device and the CPU conditions a timing depends on: thread settings, core count and the load
    average when the snapshot was taken (a shared machine's other jobs show up there)."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "git_commit": git_commit(),
           "git_dirty": git_dirty(), "cpu_count": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "loadavg_1m": loadavg_1m()}
    env.update({lib: _version(lib) for lib in LIBS})
    try:
        import torch

        if torch.cuda.is_available():
            env["device"] = "cuda"
            env["device_name"] = torch.cuda.get_device_name(0)
        else:
            env["device"] = "cpu"
            env["device_name"] = _cpu_name()
        env["threads"] = torch.get_num_threads()
    except ImportError:
        env["device"] = "cpu"
        env["device_name"] = _cpu_name()
    return env
