"""The lab's instruments: bytes held by a model's tensors, process memory, CUDA allocator peaks, timing.

1. Weight bytes are counted from the tensors actually held: every parameter and buffer, deduplicated by
   storage (tied embeddings count once), with tensor subclasses (torchao) flattened to their inner tensors and
   bitsandbytes' quantization state (absmax, nested absmax, code tables, LLM.int8 row scales ``SCB``) included,
   since bitsandbytes keeps those outside the module's parameters and buffers.
2. On a CPU, process memory is the *current* resident set size (``/proc/self/statm``, field 2 x page size;
   psutil elsewhere). A phase's peak is the largest value a background thread samples every ``interval``
   seconds (an allocation freed between two samples can be missed), reported absolute and as the delta over
   the RSS at the start of the phase. ``getrusage().ru_maxrss`` is deliberately not used: it is the peak over
   the whole life of the process, so after the first large phase it no longer moves and cannot give a phase's
   peak. RSS counts pages touched, not bytes allocated: freed memory the allocator keeps, shared libraries
   and the interpreter are in it, which is why the tensor-byte count (1) is reported beside it.
3. On a GPU: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` after ``reset_peak_memory_stats``,
   and the NVML figure for this process (CUDA context included), kept apart.
4. Timing: warm-up runs, then the median of timed runs, synchronising the device around each.
5. Scopes nest: ``torch.cuda.reset_peak_memory_stats`` resets the device's one pair of peak counters, so a scope
   folds the peak so far into every open scope before it resets them, and again when it closes. An outer scope's
   peak is then the largest reading over its whole span, whatever scopes ran inside it (optimum-benchmark's
   ``MemoryTracker`` keeps the same rule). On a CPU the RSS samplers are per scope and independent.
6. One record per measured step, :class:`Measurement`, with fixed field names: the ``meas_<component>_bytes`` keys
   :mod:`quantlab.validate` compares (:meth:`Measurement.meas`), for the lab and for users' own jobs
   (:mod:`quantlab.integrations`).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _flatten(t):
    """Yield plain tensors inside ``t`` (tensor subclasses are flattened)."""
    import torch

    inner = getattr(type(t), "__tensor_flatten__", None)
    if inner is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        try:
            names, _ = t.__tensor_flatten__()
        except Exception:
            names = []
        if names:
            for n in names:
                yield from _flatten(getattr(t, n))
            return
    yield t


def _quant_state_tensors(param):
    """bitsandbytes keeps quantization constants beside the weight, not as parameters or buffers."""
    import torch

    qs = getattr(param, "quant_state", None)
    seen = []
    while qs is not None:
        for name in ("absmax", "code", "offset"):
            v = getattr(qs, name, None)
            if isinstance(v, torch.Tensor):
                seen.append(v)
        qs = getattr(qs, "state2", None)
    scb = getattr(param, "SCB", None)
    if isinstance(scb, torch.Tensor):
        seen.append(scb)
    return seen


def _storage_key(t) -> tuple:
    try:
        s = t.untyped_storage()
        return (s.data_ptr(), s.nbytes(), str(t.device)) if s.data_ptr() else ("id", id(s))
    except (RuntimeError, NotImplementedError):
        return ("id", id(t))


def _nbytes(t) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


@dataclass
class TensorBytes:
    total: int = 0
    by_dtype: dict = field(default_factory=dict)
    quant_constants: int = 0  # absmax / scales / zeros / code tables
    params: int = 0  # parameter elements (logical, as the model defines them)
    trainable_params: int = 0


def tensor_bytes(tensors, constants=()) -> TensorBytes:
    """Bytes of distinct storages among ``tensors`` (plus ``constants``, counted as quantization constants)."""
    out = TensorBytes()
    seen = set()
    for group, is_const in ((tensors, False), (constants, True)):
        for t in group:
            for leaf in _flatten(t):
                k = _storage_key(leaf)
                if k in seen:
                    continue
                seen.add(k)
                n = _nbytes(leaf)
                out.total += n
                d = str(leaf.dtype).replace("torch.", "")
                out.by_dtype[d] = out.by_dtype.get(d, 0) + n
                if is_const:
                    out.quant_constants += n
    return out


def _module_state_tensors(model):
    """LLM.int8 row scales that left the weight: at its first forward bitsandbytes' ``Linear8bitLt`` moves ``SCB``
    (and ``CB``, which then shares the weight's storage) from ``weight`` to ``module.state``
    (``init_8bit_state``, bitsandbytes 0.50 ``nn/modules.py``), so reading ``weight.SCB`` alone misses them."""
    import torch

    for m in model.modules():
        scb = getattr(getattr(m, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            yield scb


def model_bytes(model) -> TensorBytes:
    """All parameter and buffer storages of ``model`` plus bitsandbytes quantization state (assumption 1)."""
    params = list(model.parameters())
    consts = [c for p in params for c in _quant_state_tensors(p)] + list(_module_state_tensors(model))
    tb = tensor_bytes(params + list(model.buffers()), consts)
    tb.params = sum(p.numel() for p in params)
    tb.trainable_params = sum(p.numel() for p in params if p.requires_grad)
    return tb


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - not Linux
        import psutil

        return int(psutil.Process().memory_info().rss)


@dataclass
class PeakRSS:
    start: int = 0
    peak: int = 0

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.start)


@contextmanager
def track_rss(interval: float = 0.005):
    """Sample the process RSS in a background thread; yields a PeakRSS filled in on exit (assumption 2)."""
    res = PeakRSS(start=rss_bytes())
    res.peak = res.start
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            res.peak = max(res.peak, rss_bytes())
            stop.wait(interval)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        yield res
    finally:
        stop.set()
        th.join()
        res.peak = max(res.peak, rss_bytes())


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _nvml_handle(pynvml):
    """NVML's handle of torch's current device. NVML numbers GPUs as the host does, torch after
    CUDA_VISIBLE_DEVICES: match by UUID (index 0 only where torch gives none)."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    except Exception:
        return pynvml.nvmlDeviceGetHandleByIndex(0)


def nvml_process_bytes() -> int | None:
    """This process's GPU memory as NVML reports it (CUDA context included), or None: also None in a container
    whose PID namespace hides the host PID NVML reports (then only the allocator figures are shown)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = _nvml_handle(pynvml)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == os.getpid():
                    return int(p.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return None


@dataclass(frozen=True)
class MemoryReading:
    """Peak memory of a phase: CPU RSS always; CUDA allocator and NVML figures on a GPU (kept apart)."""

    rss_delta_bytes: int
    rss_peak_bytes: int
    cuda_allocated_bytes: int | None = None
    cuda_reserved_bytes: int | None = None
    nvml_process_bytes: int | None = None


class _TorchCuda:
    """The CUDA readings a scope takes (torch.cuda's own functions); tests inject a fake with the same methods."""

    @staticmethod
    def _c():
        import torch

        return torch.cuda

    def synchronize(self):
        self._c().synchronize()

    def max_memory_allocated(self) -> int:
        return int(self._c().max_memory_allocated())

    def max_memory_reserved(self) -> int:
        return int(self._c().max_memory_reserved())

    def reset_peak_memory_stats(self):
        self._c().reset_peak_memory_stats()

    def process_bytes(self) -> int | None:
        return nvml_process_bytes()


_OPEN: list["Scope"] = []  # the CUDA scopes open now, outermost first (assumption 5)


class Scope:
    """One measured phase (assumption 5). CUDA's peak counters are one per device, so a scope opened inside
    another must reset them to see its own peak; before it does, the peak so far is folded into every open
    scope, so an inner scope never loses an outer scope's peak (the bug this replaces: the fine-tune's step
    measurement reset the run's peaks, which then missed the load, the first evaluation and step 1).
    Filled in on exit: ``reading`` is the frozen :class:`MemoryReading`; its fields read through the scope."""

    def __init__(self, cuda=None):
        self.cuda = cuda
        self.reading: MemoryReading | None = None
        self._alloc = self._reserved = 0

    def _fold(self):
        a, r = self.cuda.max_memory_allocated(), self.cuda.max_memory_reserved()
        for s in _OPEN:
            s._alloc, s._reserved = max(s._alloc, a), max(s._reserved, r)

    def __enter__(self):
        if self.cuda is not None:
            self.cuda.synchronize()
            self._fold()
            self.cuda.reset_peak_memory_stats()
            _OPEN.append(self)
        self._rss = track_rss()
        self._rss_res = self._rss.__enter__()
        return self

    def __exit__(self, *exc):
        self._rss.__exit__(None, None, None)
        rss = self._rss_res
        if self.cuda is None:
            self.reading = MemoryReading(rss.delta, rss.peak)
            return False
        self.cuda.synchronize()
        self._fold()  # this scope's own peak since the last reset; outer scopes keep it too
        if self in _OPEN:
            _OPEN.remove(self)
        self.reading = MemoryReading(rss.delta, rss.peak, self._alloc, self._reserved, self.cuda.process_bytes())
        return False

    def __getattr__(self, name):  # the reading's fields, after exit
        if name in MemoryReading.__dataclass_fields__:
            r = self.__dict__.get("reading")
            if r is None:
                raise AttributeError(f"{name} is read after the scope has ended")
            return getattr(r, name)
        raise AttributeError(name)


def measure_memory(cuda=None) -> Scope:
    """Peak memory of the enclosed phase (assumptions 2, 3, 5): ``with measure_memory() as m: ...`` then
    ``m.cuda_allocated_bytes``. ``cuda``: the readings (default torch.cuda where CUDA is available, else none)."""
    if cuda is None and cuda_available():
        cuda = _TorchCuda()
    return Scope(cuda)


COMPONENTS = ("weights", "quant_constants", "adapters", "gradients", "optimizer", "activations", "logits_loss")


@dataclass(frozen=True)
class Measurement:
    """One measured training step (assumption 6): tensor bytes per component, the totals, the step's shape.

    Components (``None``: not measured): ``weights``, ``quant_constants``, ``adapters`` (parameter and buffer
    storages, assumption 1), ``gradients``, ``optimizer`` (states), ``activations`` (saved for backward by the
    model), ``logits_loss`` (the logits and what the loss saves). Totals: ``allocated`` (CPU: the live tensor
    bytes at the peak, the profiler's allocator events over the step; CUDA: ``max_memory_allocated``),
    ``reserved`` and ``process`` (CUDA and NVML only)."""

    device: str
    weights_bytes: int | None = None
    quant_constants_bytes: int | None = None
    adapters_bytes: int | None = None
    gradients_bytes: int | None = None
    optimizer_bytes: int | None = None
    activations_bytes: int | None = None
    logits_loss_bytes: int | None = None
    allocated_bytes: int | None = None
    allocated_with_workspace_bytes: int | None = None
    reserved_bytes: int | None = None
    process_bytes: int | None = None
    batch: int | None = None
    seq: int | None = None
    trainable_params: int | None = None
    notes: tuple = ()

    def meas(self) -> dict:
        """The ``meas_<name>`` keys :func:`quantlab.validate.compare` reads (None values left out)."""
        out = {"device": self.device}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("device", "notes") and v is not None:
                out[f"meas_{f.name}"] = v
        return out


def _sync():
    if cuda_available():
        import torch

        torch.cuda.synchronize()


def median_time(fn, warmup: int = 1, repeat: int = 3) -> float:
    """Median seconds of ``fn()`` after ``warmup`` untimed runs (assumption 4)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
