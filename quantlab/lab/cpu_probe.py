"""This machine as a roofline device: memory bandwidth and FLOP/s measured by a short probe.

The planner's roofline (``quantlab.planner.throughput``) needs a device's peaks. For a GPU they
come from its datasheet; for the CPU the lab runs on, this module measures them (a few seconds)
and returns them as a :class:`~quantlab.specs.GPUSpec` whose every number says ``basis: measured``
and how it was measured, so the same roofline can be checked against the lab's own runs
(``quantlab.lab.throughput_check``).

Probes (torch, ``threads`` intra-op threads, median of ``repeats`` after one warm-up):

1. Memory bandwidth: a STREAM-style read of a 256 MiB fp32 tensor (``tensor.sum()``: bytes read /
   seconds) and a copy (read + write). The read figure is the roof: decode and weight passes read.
   The probe tensor is much larger than the caches, so caches do not inflate it.
2. Matrix-vector bandwidth: ``W @ x`` on a 256 MiB fp32 matrix (bytes of W / seconds): what a
   batch-1 decode's matmuls actually reach. Recorded for reference (it is *below* the read roof;
   the gap is the decode utilisation a CPU run derives).
3. Compute: an n×n×n matmul (2·n³ FLOPs / seconds) per dtype, fp32 by default (n = 2048), bf16
   (n = 1024) when the CPU runs it natively.

Other jobs on the machine lower what the probe sees; the figures are of this run, not a datasheet.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from quantlab.report.env import _cpu_name  # the lab's one reader of /proc/cpuinfo
from quantlab.specs import GPUSpec, Sourced

PROBE_BYTES = 256 << 20


@dataclass(frozen=True)
class ProbeResult:
    read_bytes_per_s: float
    copy_bytes_per_s: float
    gemv_bytes_per_s: float
    flops: dict  # dtype -> FLOP/s
    threads: int
    cpu_name: str
    memory_bytes: int
    seconds: float  # probe wall time

    def to_dict(self) -> dict:
        return {"read_bytes_per_s": self.read_bytes_per_s, "copy_bytes_per_s": self.copy_bytes_per_s,
                "gemv_bytes_per_s": self.gemv_bytes_per_s, "flops": dict(self.flops), "threads": self.threads,
                "cpu_name": self.cpu_name, "memory_bytes": self.memory_bytes, "probe_seconds": self.seconds}


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def probe(threads: int = 2, repeats: int = 5, matmul_n: int = 2048, bf16: bool = True) -> ProbeResult:
    """Run the probes (a few seconds on 2 cores) and return what they measured."""
    import torch

    from quantlab.lab.measure import median_time

    t_start = time.perf_counter()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            n = PROBE_BYTES // 4
            a = torch.ones(n)
            b = torch.empty(n)
            read = PROBE_BYTES / median_time(lambda: a.sum(), repeat=repeats)
            copy = 2 * PROBE_BYTES / median_time(lambda: b.copy_(a), repeat=repeats)
            del b
            w = a.view(8192, n // 8192)  # the same 256 MiB as a matrix
            x = torch.ones(w.shape[1])
            gemv = PROBE_BYTES / median_time(lambda: w @ x, repeat=repeats)
            del a, w
            flops = {}
            m = torch.randn(matmul_n, matmul_n)
            flops["fp32"] = 2 * matmul_n ** 3 / median_time(lambda: m @ m, repeat=repeats)
            if bf16:
                nb = 1024
                mb = torch.randn(nb, nb, dtype=torch.bfloat16)
                flops["bf16"] = 2 * nb ** 3 / median_time(lambda: mb @ mb, repeat=max(2, repeats // 2))
    finally:
        torch.set_num_threads(old)
    return ProbeResult(read, copy, gemv, flops, threads, _cpu_name(), total_memory_bytes(),
                       time.perf_counter() - t_start)


def as_device(res: ProbeResult, name: str = "this-cpu") -> GPUSpec:
    """The probe as a roofline device (a CPU "GPU" profile: every number measured here)."""
    how = f"quantlab.lab.cpu_probe on {res.cpu_name}, {res.threads} threads, torch, median of runs"
    sources = {
        "memory_bandwidth_bytes_per_s": Sourced(res.read_bytes_per_s, "measured",
                                                f"{how}: sum() over a {PROBE_BYTES >> 20} MiB fp32 tensor"),
        "flops": Sourced(res.flops.get("fp32"), "measured", f"{how}: square matmuls (2n^3 FLOPs)"),
        "memory_bytes": Sourced(res.memory_bytes, "measured", "os.sysconf physical pages"),
    }
    return GPUSpec(name=name, vendor="cpu", memory_bytes=res.memory_bytes or 1,
                   memory_bandwidth_bytes_per_s=res.read_bytes_per_s,
                   flops={"fp32": res.flops.get("fp32"), "tf32": None, "bf16": res.flops.get("bf16"),
                          "fp16": None, "int8": None, "fp8": None},
                   bf16_supported="bf16" in res.flops, fp8_supported=False, interconnect="none",
                   interconnect_bandwidth_bytes_per_s=None, price_usd_per_hour=None, sources=sources)
