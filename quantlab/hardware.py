"""GPU detection: NVML first (the ``nvidia-ml-py`` package), torch.cuda only when NVML is not installed.

No GPU is a normal answer: the result is an empty list and the caller plans against the catalog. torch is
never imported when NVML answers (importing it costs a second, and ``quantlab plan`` must start fast).

``--gpu auto`` plans the machine as it is (:func:`resolve_auto`): every detected GPU (``--num-gpus`` may ask
for fewer), each with the *free* memory of the least free device, since memory other processes hold is not
this job's (NVML ``nvmlDeviceGetMemoryInfo().free``; NVML creates no CUDA context, so the free figure does not
include one of ours). The torch fallback reads ``torch.cuda.mem_get_info`` after torch has created its own
context on the device, so there the planned CUDA context is counted on top of one already taken: the verdict
errs on the safe side by one context (about 0.3-0.5 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectedGPU:
    index: int
    name: str  # the device name as the driver reports it
    memory_bytes: int  # total memory the driver reports
    via: str  # "nvml" or "torch"
    free_bytes: int | None = None  # free memory the driver reports (None where it gave none)

    @property
    def usable_bytes(self) -> int:
        """What a job here can plan against: the free memory, or the total where the driver gives no free figure."""
        return self.memory_bytes if self.free_bytes is None else self.free_bytes


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
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            free = getattr(mem, "free", None)
            out.append(DetectedGPU(i, name, int(mem.total), "nvml", None if free is None else int(free)))
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
                        "torch", int(torch.cuda.mem_get_info(i)[0])) for i in range(torch.cuda.device_count())]


def resolve_auto():
    """(GPUSpec or None, count, message) for ``--gpu auto``.

    The detected device maps onto a catalog profile (for bandwidth and throughput); an unknown device keeps its
    own name. Its memory is the free memory of the least free device (the total where the driver gives no free
    figure), and the count is every detected device; the message says both, with what the devices hold.
    """
    import dataclasses

    from quantlab.profiles import match_gpu_by_device_name
    from quantlab.specs import GPUSpec
    from quantlab.units import fmt_bytes

    found = detect()
    if not found:
        return None, 0, "no GPU detected (NVML/torch.cuda): planning against the catalog; name one with --gpu NAME"
    least = min(found, key=lambda d: (d.usable_bytes, d.index))
    memory = least.usable_bytes
    spec = match_gpu_by_device_name(least.name)
    if spec is None:
        spec = GPUSpec(name=least.name, vendor="unknown", memory_bytes=memory,
                       memory_bandwidth_bytes_per_s=0.0, flops={}, bf16_supported=True, fp8_supported=False,
                       interconnect="unknown", interconnect_bandwidth_bytes_per_s=None, price_usd_per_hour=None)
        how = "not in the catalog: its reported memory is used"
    else:
        spec = spec.with_memory(memory)
        how = f"profile {spec.name}"
    names = sorted({d.name for d in found})
    which = (f"{len(found)} x {least.name}" if len(names) == 1 else
             f"{len(found)} GPUs ({', '.join(f'{sum(d.name == n for d in found)} x {n}' for n in names)}; planned "
             f"as the least free, GPU {least.index} {least.name})")
    if least.free_bytes is None:
        mem = f"its total memory {fmt_bytes(memory)} (the driver gave no free figure)"
    else:
        mem = f"free memory {fmt_bytes(memory)} of {fmt_bytes(least.memory_bytes)}"
        if len(found) > 1:
            mem += " (the least free device)"
    count = f"; plans all {len(found)} (--num-gpus asks for fewer)" if len(found) > 1 else ""
    return spec, len(found), f"detected {which} via {least.via} ({how}); planning against the {mem}{count}"
