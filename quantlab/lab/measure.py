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


# ---- one training step of a live model ----------------------------------------------------------------------

class _Saved:
    """Distinct storages saved for backward while active (``saved_tensors_hooks``), parameters, buffers and the
    storages another counter already holds excluded (saved_tensors assumption 1)."""

    def __init__(self, exclude: set, others=()):
        self.by: dict = {}
        self.exclude = exclude
        self.others = others

    def pack(self, t):
        k = _storage_key(t)
        if k not in self.exclude and k not in self.by and not any(k in o.by for o in self.others):
            self.by[k] = _nbytes(t)
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def bytes(self) -> int:
        return sum(self.by.values())


def _tensors_in(values):
    import torch

    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (tuple, list)):
            yield from _tensors_in(v)
        elif isinstance(v, dict):
            yield from _tensors_in(v.values())


class StepProbe:
    """Measures one training step of a live model, the components the lab measures (assumption 6).

    Call :meth:`start` before the step's first forward, :meth:`after_backward` once the gradients of the step are
    complete (before the optimizer step), :meth:`after_optimizer_step`, then :meth:`stop` for the
    :class:`Measurement`. The first forward inside the window is the measured one:

    - ``activations``: what the model's backbone saves for backward (``saved_tensors_hooks`` from the model's
      forward pre-hook until the backbone -- ``model.base_model`` -- returns), plus the backbone output where the
      head saves it (lm_head's input, the planner's boundary), plus, under gradient checkpointing, the keyword
      tensors each checkpointed block is called with (held by the checkpoint's closure; validate assumption 3);
    - ``logits_loss``: what the head and the loss save after the backbone returned, until the model's forward
      returns, plus the logits tensor the model returns, if any. Whether those logits were still alive when
      backward began is recorded (``logits_alive_at_backward``): Trainer's ``compute_loss`` drops the outputs
      before ``backward``, a loop holding ``out`` keeps them;
    - ``gradients``, ``optimizer``: distinct storages of ``p.grad`` and of the optimizer's state;
    - the total: on a CPU the live tensor bytes at the start of the window (every storage of the model, the
      gradients and optimizer states that exist then, the measured forward's inputs) plus the peak growth of the
      CPU allocator's events (:func:`quantlab.validate.cpu_peak`); on CUDA a :class:`Scope`'s readings.
    """

    def __init__(self, model, *, cuda=None, backbone=None):
        self.model = model
        self.cuda = cuda if cuda is not None else (_TorchCuda() if cuda_available() else None)
        self.backbone = backbone
        self.notes: list[str] = []
        self.batch = self.seq = None
        self.attention_mask_has_padding = None
        self.logits_alive_at_backward = None
        self.loss_in_forward = None
        self.autocast = None  # the autocast dtype ("bf16"/"fp16") the measured forward ran under, or None
        self.grad_forwards = 0  # forwards with autograd on inside the window (micro-batches of the step)
        self._handles: list = []
        self._measuring = False
        self._done_forward = False
        self._grads = self._opt = None

    # -- window --
    def start(self, optimizer=None):
        from quantlab.lab.saved_tensors import grad_bytes, optimizer_bytes

        model = self.model
        params = list(model.parameters())
        tb = model_bytes(model)
        trainable = [p for p in params if p.requires_grad]
        adapters = tensor_bytes(trainable).total if hasattr(model, "peft_config") else 0
        self._static = (tb.total - tb.quant_constants - adapters, tb.quant_constants, adapters)
        self._trainable = sum(p.numel() for p in trainable)
        self._param_keys = {_storage_key(t) for t in params + list(model.buffers())}
        self._base = tb.total + grad_bytes(model) + (optimizer_bytes(optimizer) if optimizer is not None else 0)
        self._install()
        if self.cuda is not None:
            self._scope = Scope(self.cuda).__enter__()
        else:
            from quantlab.validate import cpu_peak

            self._cm = cpu_peak()
            self._pk = self._cm.__enter__()
        return self

    def after_backward(self):
        from quantlab.lab.saved_tensors import grad_bytes

        self._grads = grad_bytes(self.model)

    def after_optimizer_step(self, optimizer):
        from quantlab.lab.saved_tensors import optimizer_bytes

        self._opt = optimizer_bytes(optimizer)

    def stop(self) -> Measurement:
        self._remove()
        self._exit_hooks()
        alloc = ws = reserved = process = None
        if self.cuda is not None:
            self._scope.__exit__(None, None, None)
            r = self._scope.reading
            alloc, reserved, process = r.cuda_allocated_bytes, r.cuda_reserved_bytes, r.nvml_process_bytes
        else:
            self._cm.__exit__(None, None, None)
            alloc, ws = self._base + self._pk.peak, self._base + self._pk.raw_peak
        act = logits_loss = None
        if self._done_forward:
            a, b = self._a, self._b
            head_input = b.by.get(self._backbone_key, 0) if self._backbone_key is not None else 0
            closure = sum(n for k, n in self._closure.items() if k not in a.by and k not in b.by
                          and k not in self._param_keys)
            act = a.bytes + head_input + closure
            logits_loss = b.bytes - head_input + self._logits_bytes
        else:
            self.notes.append("no forward ran inside the measured step: activations not measured")
        if self._done_forward and not self.loss_in_forward:
            self.notes.append("the loss was computed outside the model's forward (a custom compute_loss or label "
                              "smoothing): what it saves is not in logits_loss")
        w, q, ad = self._static
        return Measurement(device="cuda" if self.cuda is not None else "cpu", weights_bytes=w,
                           quant_constants_bytes=q, adapters_bytes=ad, gradients_bytes=self._grads,
                           optimizer_bytes=self._opt, activations_bytes=act, logits_loss_bytes=logits_loss,
                           allocated_bytes=alloc, allocated_with_workspace_bytes=ws, reserved_bytes=reserved,
                           process_bytes=process, batch=self.batch, seq=self.seq, trainable_params=self._trainable,
                           notes=tuple(self.notes))

    # -- hooks --
    def _install(self):
        from quantlab.integrations.derive import base_model, decoder_layers

        base = base_model(self.model)
        bb = self.backbone if self.backbone is not None else getattr(base, "base_model", None)
        if bb is base:
            bb = None
        self._layers = decoder_layers(base)
        self._handles = [self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         self.model.register_forward_hook(self._post)]
        if bb is not None:
            self._handles.append(bb.register_forward_hook(self._backbone_post))
        self._ctx = None
        self._closure: dict = {}
        self._backbone_key = None
        self._logits_bytes = 0
        self._a = _Saved(self._param_keys)
        self._b = _Saved(self._param_keys, (self._a,))

    def _remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _enter(self, counter):
        import torch

        self._ctx = torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack)
        self._ctx.__enter__()

    def _exit_hooks(self):
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def _pre(self, module, args, kwargs):
        import torch

        if self._measuring:
            return None
        if torch.is_grad_enabled():
            self.grad_forwards += 1
        if self._done_forward or not torch.is_grad_enabled():
            return None
        self._measuring = True
        dev = "cuda" if self.cuda is not None else "cpu"
        if torch.is_autocast_enabled(dev):
            self.autocast = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(torch.get_autocast_dtype(dev)))
        inputs = list(_tensors_in(list(args) + list(kwargs.values())))
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and getattr(ids, "dim", lambda: 0)() == 2:
            self.batch, self.seq = int(ids.shape[0]), int(ids.shape[1])
        mask = kwargs.get("attention_mask")
        if mask is not None:
            self.attention_mask_has_padding = bool((mask == 0).any())
        if self.cuda is None:  # allocated before the window opened: live at its start
            self._base += tensor_bytes([t for t in inputs if _storage_key(t) not in self._param_keys]).total
        self._block_handles = []
        if any(getattr(m, "gradient_checkpointing", False) is True for m in self._layers):
            def hook(mod, a, kw):
                for t in _tensors_in(list(a[1:]) + list(kw.values())):
                    self._closure[_storage_key(t)] = _nbytes(t)

            self._block_handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in self._layers]
            self._handles += self._block_handles
        self._enter(self._a)
        return None

    def _backbone_post(self, module, args, out):
        if not self._measuring:
            return None
        self._exit_hooks()
        hidden = out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", None)
        if hidden is not None:
            self._backbone_key = _storage_key(hidden)
        self._enter(self._b)
        return None

    def _post(self, module, args, out):
        if not self._measuring:
            return None
        import weakref

        import torch

        self._exit_hooks()
        self._measuring, self._done_forward = False, True
        for h in self._block_handles:
            h.remove()
        get = out.get if hasattr(out, "get") else (lambda k, d=None: d)
        logits, loss = get("logits"), get("loss")
        if isinstance(logits, torch.Tensor):
            k = _storage_key(logits)
            if k not in self._a.by and k not in self._b.by:
                self._logits_bytes = _nbytes(logits)
            ref = weakref.ref(logits)
        else:
            ref = None
        self.loss_in_forward = isinstance(loss, torch.Tensor)
        if ref is None and isinstance(get("log_probs"), torch.Tensor):
            self.notes.append("TRL's fused LM head computed the loss (trl add_fused_lm_head): per-token log-probs in "
                              "vocabulary tiles, no logits tensor (planned with --loss trl-fused, memory assumption "
                              "14)")
        if isinstance(loss, torch.Tensor) and loss.requires_grad and ref is not None:
            def at_backward(grad):
                self.logits_alive_at_backward = ref() is not None
                return grad

            loss.register_hook(at_backward)
        return None


# ---- public names for the lab's other counters (saved_tensors) ------------------------------------------------

def storage_key(t) -> tuple:
    """The key one storage is counted under (assumption 1): views of one tensor and tied weights share it."""
    return _storage_key(t)


def storage_nbytes(t) -> int:
    """Bytes of the whole storage behind ``t`` (a view keeps its base alive), as :func:`tensor_bytes` counts them."""
    return _nbytes(t)
