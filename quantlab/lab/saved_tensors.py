"""What training holds, counted from tensors: bytes saved for backward, gradients, optimizer states.

1. Saved activations are counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd saves
   passes through the pack hook; storages are deduplicated (a tensor saved by several nodes, or views of one
   tensor, count once) and storages that belong to the model's parameters or buffers (or to tensors passed as
   ``exclude``) are excluded (a weight saved by a matmul is not an activation). Autocast copies of weights are
   counted: they are new tensors. A tensor's bytes are its whole storage (a view saved alone keeps its base alive).
2. Gradient bytes: the distinct storages of ``p.grad``. Optimizer-state bytes: every tensor in
   ``optimizer.state`` (bitsandbytes 8-bit states, their absmax and quantile maps included; the step counters
   AdamW keeps as 0-d tensors too).
"""

from __future__ import annotations

from contextlib import contextmanager

from quantlab.lab.measure import storage_key, storage_nbytes


class SavedTensorCounter:
    def __init__(self, exclude=()):
        self.exclude = {storage_key(t) for t in exclude}
        self.seen: set = set()
        self.bytes = 0
        self.count = 0

    def pack(self, t):
        k = storage_key(t)
        if k not in self.seen and k not in self.exclude:
            self.seen.add(k)
            self.bytes += storage_nbytes(t)
            self.count += 1
        return t

    @staticmethod
    def unpack(t):
        return t


@contextmanager
def count_saved(model=None, exclude=()):
    """Count the bytes of tensors saved for backward inside the block (assumption 1)."""
    import torch

    skip = list(exclude)
    if model is not None:
        skip += list(model.parameters()) + list(model.buffers())
    c = SavedTensorCounter(skip)
    with torch.autograd.graph.saved_tensors_hooks(c.pack, c.unpack):
        yield c


def grad_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.grad is not None:
            k = storage_key(p.grad)
            if k not in seen:
                seen.add(k)
                total += storage_nbytes(p.grad)
    return total


def optimizer_bytes(optimizer) -> int:
    import torch

    seen, total = set(), 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                k = storage_key(v)
                if k not in seen:
                    seen.add(k)
                    total += storage_nbytes(v)
    return total
