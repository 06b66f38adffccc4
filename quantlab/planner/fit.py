"""Fit: does a plan fit a GPU, with what margin, and what would make it fit.

1. Out-of-memory is decided by the process total (reserved + CUDA context: what nvidia-smi shows), so the
   verdict compares ``process_bytes`` with the GPU's memory.
2. Memory grows monotonically with batch and with sequence length, so the largest batch and the longest
   sequence that fit are found by doubling then bisection (:func:`_largest`, the reference search). ``fit``
   uses a closed form first (:func:`_largest_closed`): the process total is affine in batch and affine or
   quadratic in sequence (eager attention keeps heads x seq^2 scores) within each branch of its max()
   terms, so a line (then a parabola) through two (three) planned points gives the answer directly; the
   answer is accepted only when ``plan()`` confirms it at the boundary (it fits, the next one does not).
   When the check fails (a branch change, the allocator's rounding) the planned points become a bracket
   and the search goes on from it (secant steps, bisection when a step gains too little), so the answer is
   the reference search's by construction; the tests compare the two on a sweep.
3. The fewest GPUs: the user's sharding when it shards; otherwise ZeRO-3 for training and tensor parallel
   for inference (data parallel alone does not lower memory per GPU), over 1, 2, 4, 8, ... 512 GPUs.
4. Suggestions are single changes, each planned and kept only when it fits (the memory savers among them: a
   chunked or fused loss, the optimizer step in backward, expandable segments; memory.py 12-15, allocator 10h).
5. The configuration is planned as it runs on the GPU: a GPU without bf16 (pre-Ampere: T4, V100) has no
   FlashAttention either, which changes the SDPA kernel of grouped-query models (activations A3b).
6. Tensor parallelism splits attention heads: a degree must divide the KV heads (inference scale-out stops
   there; pipeline parallelism is not planned).
7. The CUDA context is the GPU's where its profile measured one (``cuda_context_bytes``; allocator.py 10i): a plan
   without a GPU carries the default, and meeting the GPU replaces it (:func:`on_gpu`; the searches compare the
   default-context totals with the GPU's memory less the difference). Where the caching allocator's reserve
   depends on the shape beyond the dynamic peak (cached blocks meeting the loss's T x vocab tensors, allocator.py
   10f; ``allocator.needs_shape``), the batch and sequence searches plan each shape.
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple

from quantlab.planner import allocator as A
from quantlab.planner.memory import Plan, plan, process_bytes_at
from quantlab.specs import (DeviceMode, GPUSpec, Loss, Method, Offload, Optimizer, PlanConfig, Precision, SpecError,
                            kbit_prepared)

GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Fit(namedtuple("Fit", "gpu plan fits margin_bytes max_batch max_seq min_gpus min_gpus_sharding suggestions")):
    """Whether a plan fits a GPU: ``gpu``, ``plan``, ``fits``, ``margin_bytes``, ``max_batch`` (0: not even batch
    1 fits), ``max_seq`` (0: not even 1 token fits), ``min_gpus`` (None: not within 512 GPUs),
    ``min_gpus_sharding`` and ``suggestions`` ((change, process_bytes) pairs that make it fit). A named tuple: a
    frozen value without a dataclass's class-creation cost at start-up."""

    __slots__ = ()

    def to_dict(self) -> dict:
        return {"gpu": self.gpu.name, "gpu_memory_bytes": self.gpu.memory_bytes, "fits": self.fits,
                "margin_bytes": self.margin_bytes, "max_batch": self.max_batch, "max_seq": self.max_seq,
                "min_gpus": self.min_gpus, "min_gpus_sharding": self.min_gpus_sharding,
                "suggestions": [{"change": c, "process_bytes": b} for c, b in self.suggestions]}


def context_delta(cfg: PlanConfig, gpu: GPUSpec) -> int:
    """The GPU's CUDA context less the default every plan carries (assumption 7); 0 on a CPU plan."""
    if cfg.device is not DeviceMode.CUDA:
        return 0
    return A.context_bytes(gpu) - A.CUDA_CONTEXT_BYTES


def budget(cfg: PlanConfig, gpu: GPUSpec) -> int:
    """The GPU's memory that a plan's (default-context) process total is compared with (assumptions 1, 7)."""
    return gpu.memory_bytes - context_delta(cfg, gpu)


def on_gpu(p: Plan, gpu: GPUSpec) -> Plan:
    """The plan with the GPU's CUDA context in place of the default (assumption 7)."""
    d = context_delta(p.config, gpu)
    if not d:
        return p
    comps = dict(p.components)
    comps["cuda_context"] = comps.get("cuda_context", 0) + d
    return p._replace(components=comps, process_bytes=p.process_bytes + d)


def _fits(cfg: PlanConfig, gpu: GPUSpec) -> bool:
    try:
        return plan(cfg).process_bytes <= budget(cfg, gpu)
    except SpecError:
        return False


def _largest(cfg: PlanConfig, gpu: GPUSpec, field: str, cap: int) -> int:
    lo = 0
    hi = 1
    while hi <= cap and _fits(dataclasses.replace(cfg, **{field: hi}), gpu):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(dataclasses.replace(cfg, **{field: mid}), gpu):
            lo = mid
        else:
            hi = mid
    return lo


def _largest_closed(cfg: PlanConfig, gpu: GPUSpec, field: str, cap: int, known: tuple[int, int] | None = None) -> int:
    """The same answer as :func:`_largest`, from a closed form checked at the boundary (assumption 2).

    ``known`` is a point already planned, ``(value of field, process_bytes)``."""
    mem = budget(cfg, gpu)
    pts: dict[int, int | None] = {}  # x -> process bytes (None: the configuration is invalid = does not fit)

    shape = None if A.needs_shape(cfg) else {"batch": lambda x: process_bytes_at(cfg, batch=x),
                                             "seq": lambda x: process_bytes_at(cfg, seq=x)}.get(field)
    if shape is None:  # (assumption 7: the allocator's reserve needs the configuration at that shape)
        shape = lambda x: plan(dataclasses.replace(cfg, **{field: x})).process_bytes  # noqa: E731

    def g(x: int) -> int | None:
        if x not in pts:
            try:
                pts[x] = shape(x)  # batch and sequence: the plan's closed form, no configuration built
            except SpecError:
                pts[x] = None
        return pts[x]

    def ok(x: int) -> bool:
        v = g(x)
        return v is not None and v <= mem

    if known is not None and 1 <= known[0] <= cap:
        pts[known[0]] = known[1]
    if not (known is not None and known[0] in pts and ok(known[0])) and not ok(1):  # a known fit implies 1 fits
        return 0
    if cap <= 1:
        return 1
    lo, hi = 1, cap + 1  # ok(lo); hi is past the end or does not fit
    for x in pts:
        if x > lo and ok(x):
            lo = x
    for x in pts:
        if lo < x < hi and not ok(x):
            hi = x
    if lo == cap:
        return cap
    if len(pts) < 2:  # a second point for the line
        g(min(2 * lo, cap) if lo > 1 else 2)
        x = max(pts)
        if ok(x):
            lo = x
        else:
            hi = min(hi, x)
    bisect_next = False
    while hi - lo > 1:
        width = hi - lo
        if bisect_next:
            x = (lo + hi) // 2
        else:
            x = _estimate(pts, mem, lo, hi)
        bisect_next = False
        if ok(x):
            lo = x
            if x + 1 < hi and not ok(x + 1):  # the boundary check: x fits, x + 1 does not
                return x
            if x + 1 < hi:
                lo = x + 1
        else:
            hi = x
            if x - 1 > lo:
                if ok(x - 1):  # the boundary check from above
                    return x - 1
                hi = x - 1
        if (hi - lo) * 2 > width:  # the closed form gained less than a bisection: bisect next
            bisect_next = True
    return lo


def _estimate(pts: dict[int, int | None], mem: int, lo: int, hi: int) -> int:
    """Where the curve through the planned points nearest the bracket meets ``mem``: a parabola through
    three points (memory quadratic in sequence), a line through two; clamped inside ``(lo, hi)``."""
    near = sorted((x for x, v in pts.items() if v is not None), key=lambda x: min(abs(x - lo), abs(x - hi)))[:3]
    near.sort()
    x = None
    if len(near) == 3:
        (x0, x1, x2) = near
        y0, y1, y2 = (pts[x0], pts[x1], pts[x2])
        d01 = (y1 - y0) / (x1 - x0)
        d12 = (y2 - y1) / (x2 - x1)
        a = (d12 - d01) / (x2 - x0)
        b = d01 - a * (x0 + x1)
        c = y0 - a * x0 * x0 - b * x0
        if a > 0:
            disc = b * b - 4 * a * (c - mem)
            if disc >= 0:
                x = (-b + disc ** 0.5) / (2 * a)
        elif a == 0 and b > 0:
            x = (mem - c) / b
    if x is None and len(near) >= 2:
        x0, x1 = near[-2], near[-1]
        slope = (pts[x1] - pts[x0]) / (x1 - x0)
        x = x1 + (mem - pts[x1]) / slope if slope > 0 else hi - 1
    if x is None or x != x:  # no estimate (or NaN): the middle
        return (lo + hi) // 2
    return max(lo + 1, min(hi - 1, int(x)))


def _scaled(cfg: PlanConfig, n: int) -> tuple[PlanConfig, str]:
    if cfg.zero or cfg.fsdp or cfg.tp > 1:
        tp = n if cfg.tp > 1 else 1
        return dataclasses.replace(cfg, num_gpus=n, tp=tp), "as planned"
    if cfg.method.is_training:
        return dataclasses.replace(cfg, num_gpus=n, zero=3), "ZeRO-3"
    return dataclasses.replace(cfg, num_gpus=n, tp=n), "tensor parallel"


def min_gpus(cfg: PlanConfig, gpu: GPUSpec) -> tuple[int | None, str]:
    how = ""
    for n in GPU_COUNTS:
        try:
            c, how = _scaled(cfg, n)
        except SpecError:
            continue
        if _fits(c, gpu):
            return n, how
    return None, how


def _suggestions(cfg: PlanConfig, gpu: GPUSpec) -> list[tuple[str, int]]:
    cands: list[tuple[str, dict]] = []
    m = cfg.method
    # QLoRA as PEFT runs it: prepare_model_for_kbit_training turns gradient checkpointing on (specs assumption
    # 4a), so the switch takes that recipe default (it never turns checkpointing off)
    qlora = dict(method=Method.QLORA, precision=Precision.NF4,
                 grad_checkpointing=cfg.grad_checkpointing or kbit_prepared(Method.QLORA, Precision.NF4,
                                                                            cfg.kbit_upcast, cfg.stack))
    recipe = " (PEFT's k-bit recipe: checkpointing on)" if qlora["grad_checkpointing"] > cfg.grad_checkpointing else ""
    if m is Method.LORA:
        cands.append((f"QLoRA (nf4 base) instead of LoRA{recipe}", qlora))
    if m is Method.FULL:
        cands.append(("LoRA instead of a full fine-tune", dict(method=Method.LORA)))
        cands.append((f"QLoRA instead of a full fine-tune{recipe}", qlora))
    if m.is_training and not cfg.grad_checkpointing:
        cands.append(("gradient checkpointing on", dict(grad_checkpointing=True)))
    if m.is_training and cfg.optimizer is Optimizer.ADAMW:
        cands.append(("8-bit AdamW", dict(optimizer=Optimizer.ADAMW_8BIT)))
    if m is Method.QLORA and not cfg.double_quant:
        cands.append(("double quantization", dict(double_quant=True)))
    if not m.is_training:
        for p in (Precision.INT8, Precision.NF4):
            if cfg.precision in (Precision.FP32, Precision.FP16, Precision.BF16) or \
                    (cfg.precision is Precision.INT8 and p is Precision.NF4):
                cands.append((f"{p.value} weights", dict(precision=p)))
    if m.is_training and cfg.num_gpus > 1:
        for z in (1, 2, 3):
            if z > cfg.zero and not cfg.fsdp:
                cands.append((f"ZeRO-{z} across the {cfg.num_gpus} GPUs", dict(zero=z)))
    if m.is_training and cfg.loss is Loss.HF:  # memory savers (memory.py assumptions 12, 13)
        cands.append(("chunked cross-entropy (torchtune CEWithChunkedOutputLoss: fp32 one chunk at a time)",
                      dict(loss=Loss.CHUNKED)))
        if cfg.device is DeviceMode.CUDA:
            cands.append(("Liger fused linear cross-entropy (no logits; Triton kernels)", dict(loss=Loss.LIGER)))
    if m.is_training and not cfg.optimizer_in_backward and cfg.grad_accum == 1 and cfg.num_gpus == 1:
        cands.append(("optimizer step in backward (one gradient alive at a time; no gradient accumulation)",
                      dict(optimizer_in_backward=True)))
    if cfg.device is DeviceMode.CUDA and not cfg.expandable_segments:
        cands.append(("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (less fragmentation in reserved)",
                      dict(expandable_segments=True)))
    if m.is_training and cfg.offload is Offload.NONE and (cfg.num_gpus == 1 or cfg.zero):
        cands.append(("offload optimizer states to CPU", dict(offload=Offload.OPTIMIZER)))
    out = []
    d = context_delta(cfg, gpu)
    for text, change in cands:
        try:
            c = dataclasses.replace(cfg, **change)
            p = plan(c)
        except SpecError:
            continue
        if p.process_bytes <= budget(c, gpu):
            out.append((text, p.process_bytes + context_delta(c, gpu)))
    if cfg.batch > 1:
        b = _largest_closed(cfg, gpu, "batch", cfg.batch - 1)
        if b:
            out.append((f"batch {b} (largest that fits)" + (f"; keep the effective batch with --grad-accum "
                                                            f"{-(-cfg.batch * cfg.grad_accum // b)}" if m.is_training else ""),
                        plan(dataclasses.replace(cfg, batch=b)).process_bytes + d))
    s = _largest_closed(cfg, gpu, "seq", cfg.seq - 1) if cfg.seq > 1 else 0
    if s and s < cfg.seq:
        out.append((f"sequence {s} (longest that fits)", plan(dataclasses.replace(cfg, seq=s)).process_bytes + d))
    n, how = min_gpus(cfg, gpu)
    if n and n > cfg.num_gpus:
        out.append((f"{n} x {gpu.name} with {how}", plan(_scaled(cfg, n)[0]).process_bytes + d))
    return out


def for_gpu(cfg: PlanConfig, gpu: GPUSpec) -> PlanConfig:
    """The configuration as it runs on ``gpu`` (assumption 5): FlashAttention needs sm80+, the same GPUs that have
    bf16, so a GPU without bf16 (T4, V100) runs SDPA without it."""
    if cfg.flash_attention and not gpu.bf16_supported:
        return dataclasses.replace(cfg, flash_attention=False)
    return cfg


def fit(cfg: PlanConfig, gpu: GPUSpec, suggest: bool = True) -> Fit:
    cfg = for_gpu(cfg, gpu)
    p0 = plan(cfg)
    p = on_gpu(p0, gpu)
    ok = p.process_bytes <= gpu.memory_bytes
    max_batch = _largest_closed(cfg, gpu, "batch", 1 << 16, known=(cfg.batch, p0.process_bytes))
    max_seq = _largest_closed(cfg, gpu, "seq", max(cfg.model.max_position_embeddings, cfg.seq),
                              known=(cfg.seq, p0.process_bytes))
    n, how = min_gpus(cfg, gpu)
    sugg = tuple(_suggestions(cfg, gpu)) if (suggest and not ok) else ()
    return Fit(gpu=gpu, plan=p, fits=ok, margin_bytes=gpu.memory_bytes - p.process_bytes, max_batch=max_batch,
               max_seq=max_seq, min_gpus=n, min_gpus_sharding=how, suggestions=sugg)
