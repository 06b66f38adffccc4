"""The CUDA caching allocator and the CUDA context (memory.py assumption 10).

``allocator(cfg, dynamic, comps)`` gives (caching-allocator reserve above the allocated peak, CUDA context) in
bytes for one plan; both are zero on a CPU (``device=cpu``), where the lab counts tensor bytes exactly.
``dynamic`` is the plan's non-static peak and ``comps`` its named components at that peak (``None`` where a
caller has none).

Today's rule (assumed): the caching allocator rounds blocks up to 2 MiB and keeps freed activation blocks of
sizes later requests cannot reuse, modelled as 25% of the dynamic peak plus four 2 MiB segments; the CUDA
context is 150 MiB per process (CUDA 12 with lazy module loading; the published T4 row shows 141 MiB between
NVML and reserved).
"""

from __future__ import annotations

from quantlab.specs import DeviceMode, PlanConfig

MiB = 1 << 20
CUDA_CONTEXT_BYTES = 150 * MiB
RESERVE_FRACTION = 0.25
SEGMENT = 2 * MiB


def allocator(cfg: PlanConfig, dynamic: int, comps: dict | None = None) -> tuple[int, int]:
    """(caching-allocator reserve, CUDA context) (assumption 10); both zero on a CPU."""
    if cfg.device is DeviceMode.CUDA:
        return int(RESERVE_FRACTION * dynamic) + SEGMENT * 4, CUDA_CONTEXT_BYTES
    return 0, 0
