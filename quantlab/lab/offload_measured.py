"""TRL's activation offloading (``SFTConfig(activation_offloading=True)``), run and counted on a CPU.

TRL 1.16's ``trl/models/activation_offloading.py`` (a copy of torchtune's ``OffloadActivations`` with verl's
storage-key deduplication) reads the accelerator from ``torch.accelerator.current_accelerator().type``: on a
CPU-only torch that is ``None`` and the constructor raises ``AttributeError``. To run TRL's own code path here, the
accelerator is reported as ``cpu`` while :func:`trl.models.activation_offloading.get_act_offloading_ctx_manager`
builds the manager (so ``device_module`` is ``torch.cpu``, whose ``Stream``/``stream``/``current_stream`` exist as
no-op stand-ins), with ``use_pin_memory=False`` (pinning needs CUDA). Every branch of ``pack_tensor`` then runs as
on a GPU: a tensor it "offloads" is copied into a new CPU tensor, one it keeps stays as the same tensor. The
streams' timing is not modelled by a CPU (copies are synchronous), but which tensors are copied and which are kept
is decided by the same code (``use_streams=True``, TRL's default, unless asked otherwise).

The count after the forward (the forward/backward boundary, where saved activations peak):

- ``host_bytes``: the bytes of every copy the manager made (its ``tracker`` entries marked modified), one per
  saved reference it copied (no deduplication: that is what pinned host memory would hold);
- ``device_bytes``: the distinct storages that stay on the "device" as saved tensors: references the manager
  kept (small, parameter, duplicate storage key), the originals still in its forward stash, and what ran under the
  ``NoOpManager`` (lm_head), parameters and buffers excluded;
- ``device_by_reason``: the same bytes split by why they stayed (a storage counts under its first reason).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from quantlab.lab.measure import storage_key, storage_nbytes


@dataclass(frozen=True)
class OffloadCount:
    host_bytes: int
    host_copies: int
    device_bytes: int
    device_by_reason: dict = field(default_factory=dict)
    references: int = 0
    backward_ran: bool = False
    backward_stash_peak_bytes: int = 0  # streams: the most bytes the manager held brought back at once (O5)


@contextmanager
def _cpu_as_accelerator():
    """Report ``cpu`` as the current accelerator while TRL's manager is built (see the module docstring)."""
    import torch

    real = torch.accelerator.current_accelerator
    had_sync = hasattr(torch.cpu.Stream, "synchronize")
    torch.accelerator.current_accelerator = lambda *a, **k: torch.device("cpu")
    had_empty = hasattr(torch.cpu, "empty_cache")
    if not had_sync:  # __exit__ synchronizes both streams; CPU work is synchronous already
        torch.cpu.Stream.synchronize = lambda self: None
    if not had_empty:  # __enter__ empties the accelerator's cache when bitsandbytes is imported (PEFT imports it)
        torch.cpu.empty_cache = lambda: None
    try:
        yield
    finally:
        torch.accelerator.current_accelerator = real
        if not had_sync:
            del torch.cpu.Stream.synchronize
        if not had_empty:
            del torch.cpu.empty_cache


def offload_step(model, input_ids, labels=None, use_streams: bool = True, min_offload_size: int = 1024,
                 max_fwd_stash_size: int = 5) -> OffloadCount:
    """One forward (loss from ``labels``) and its backward under TRL's manager (``SFTTrainer.training_step`` enters
    it around Trainer's whole training step), counted at the forward's end."""
    import torch
    import trl.models.activation_offloading as ao

    noop_saved: list = []

    class CountingNoOp(ao.NoOpManager):  # the lm_head region: saved tensors stay where they are
        def __init__(self) -> None:
            torch.autograd.graph.saved_tensors_hooks.__init__(self, self._keep, lambda t: t)

        @staticmethod
        def _keep(t):
            noop_saved.append(t)
            return t

    real_noop = ao.NoOpManager
    ao.NoOpManager = CountingNoOp
    with _cpu_as_accelerator():
        try:
            ctx = ao.get_act_offloading_ctx_manager(model, use_pin_memory=False, use_streams=use_streams,
                                                    min_offload_size=min_offload_size,
                                                    max_fwd_stash_size=max_fwd_stash_size)
        finally:
            ao.NoOpManager = real_noop
        return _run(ctx, model, input_ids, labels, min_offload_size, noop_saved)


def _run(ctx, model, input_ids, labels, min_offload_size, noop_saved) -> OffloadCount:
    params = {storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    peak = [0]
    unpack = ctx.unpack_hook

    def counting_unpack(i):  # after each unpack: the distinct storages the manager holds brought back (streams)
        t = unpack(i)
        held: dict = {}
        for a in list(getattr(ctx, "bwd_tensor_stash", {}).values()) + [t]:
            _add(held, a, "", params)
        peak[0] = max(peak[0], sum(n for n, _ in held.values()))
        return t

    ctx.unpack_hook = counting_unpack
    with ctx:
        out = model(input_ids=input_ids, labels=labels if labels is not None else input_ids)
        host = copies = 0
        device: dict = {}
        refs = len(ctx.tracker)
        stash = {i: a for i, (a, _) in getattr(ctx, "fwd_stash", {}).items()}
        for tid, (t, modified, *_rest) in ctx.tracker.items():
            if modified:
                host += t.untyped_storage().nbytes()  # the copy owns its storage (empty_like / a storage copy)
                copies += 1
                if tid in stash:
                    _add(device, stash[tid], "forward_stash", params)
            else:
                why = ("small" if t.numel() * t.element_size() < min_offload_size else
                       "parameter" if storage_key(t) in params else "duplicate_storage")
                _add(device, t, why, params)
        for t in noop_saved:
            _add(device, t, "noop_lm_head", params)
        out.loss.backward()  # inside the context, as SFTTrainer.training_step runs forward and backward
    by_reason: dict = {}
    for k, (n, why) in device.items():
        by_reason[why] = by_reason.get(why, 0) + n
    return OffloadCount(host_bytes=host, host_copies=copies, device_bytes=sum(n for n, _ in device.values()),
                        device_by_reason=by_reason, references=refs + len(noop_saved), backward_ran=True,
                        backward_stash_peak_bytes=peak[0])


def _add(device: dict, t, why: str, params: set) -> None:
    k = storage_key(t)
    if k in params or k in device:
        return
    device[k] = (storage_nbytes(t), why)


def save_on_cpu_step(model, input_ids, labels=None) -> OffloadCount:
    """One forward and backward under ``torch.autograd.graph.save_on_cpu(pin_memory=True)`` (torch 2.13): on a
    CPU-only torch ``is_pinnable`` is False, so every pack makes an ordinary ``torch.empty`` + ``copy_`` host copy,
    the same bytes a GPU run pins. Counted per pack: every saved reference, parameters included."""
    import torch

    ctx = torch.autograd.graph.save_on_cpu(pin_memory=True)
    pack = ctx.pack_hook
    host = [0, 0]
    kept: dict = {}
    params = {storage_key(t) for t in list(model.parameters()) + list(model.buffers())}

    def counting_pack(t):
        device, packed = pack(t)
        host[0] += packed.untyped_storage().nbytes()
        host[1] += 1
        if packed.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            _add(kept, t, "not_copied", params)
        return device, packed

    ctx.pack_hook = counting_pack
    with ctx:
        out = model(input_ids=input_ids, labels=labels if labels is not None else input_ids)
    out.loss.backward()
    return OffloadCount(host_bytes=host[0], host_copies=host[1], device_bytes=sum(n for n, _ in kept.values()),
                        device_by_reason={"not_copied": sum(n for n, _ in kept.values())}, references=host[1],
                        backward_ran=True)
