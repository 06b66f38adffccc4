"""GPU detection: NVML first (the ``nvidia-ml-py`` package), torch.cuda only when NVML is not installed.

No GPU is a normal answer: the result is an empty list and the caller plans against the catalog. torch is
never imported when NVML answers (importing it costs a second, and ``quantlab plan`` must start fast).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectedGPU:
    index: int
    name: str  # the device name as the driver reports it
    memory_bytes: int  # total memory the driver reports
    via: str  # "nvml" or "torch"


def detect() -> list[DetectedGPU]:
    try:
        import pynvml  # type: ignore
    except ImportError:
        return _detect_torch()
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver / no NVIDIA GPU (a normal answer)
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            out.append(DetectedGPU(i, name, int(pynvml.nvmlDeviceGetMemoryInfo(h).total), "nvml"))
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _detect_torch() -> list[DetectedGPU]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [DetectedGPU(i, torch.cuda.get_device_name(i), int(torch.cuda.get_device_properties(i).total_memory),
                        "torch") for i in range(torch.cuda.device_count())]


def resolve_auto():
    """(GPUSpec or None, count, message) for ``--gpu auto``.

    The detected device maps onto a catalog profile (for bandwidth and throughput) with the memory the driver
    reports; an unknown device keeps its reported memory under its own name.
    """
    import dataclasses

    from quantlab.profiles import match_gpu_by_device_name
    from quantlab.specs import GPUSpec

    found = detect()
    if not found:
        return None, 0, "no GPU detected (NVML/torch.cuda): planning against the catalog; name one with --gpu NAME"
    first = found[0]
    spec = match_gpu_by_device_name(first.name)
    if spec is None:
        spec = GPUSpec(name=first.name, vendor="unknown", memory_bytes=first.memory_bytes,
                       memory_bandwidth_bytes_per_s=0.0, flops={}, bf16_supported=True, fp8_supported=False,
                       interconnect="unknown", interconnect_bandwidth_bytes_per_s=None, price_usd_per_hour=None)
        how = "not in the catalog: its reported memory is used"
    else:
        spec = dataclasses.replace(spec, memory_bytes=first.memory_bytes)
        how = f"profile {spec.name}"
    return spec, len(found), f"detected {len(found)} x {first.name} via {first.via} ({how})"
