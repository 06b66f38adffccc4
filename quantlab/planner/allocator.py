"""PyTorch's CUDA caching allocator and the CUDA context (memory.py assumption 10).

``allocator(cfg, dynamic, comps, batch, seq)`` gives (caching-allocator reserve above the allocated peak, CUDA
context) in bytes for one plan; both are zero on a CPU (``device=cpu``), where the lab counts tensor bytes exactly.
``dynamic`` is the plan's non-static peak, ``comps`` its named components at that peak (``None`` where a caller has
none), ``batch``/``seq`` the shape it was planned at (default: the configuration's).

The rules are PyTorch's, ``c10/cuda/CUDACachingAllocator.cpp`` (read at pytorch/pytorch commit 001074d2; the same
rules since torch 2.1, the file's functions named below). :class:`CachingAllocator` replays them event by event
(a simulation for the tests); :func:`allocator` is the closed form the planner evaluates, per component class,
checked against the simulation replaying :func:`trace` (the events the closed form stands for;
``tests/planner/test_allocator.py``).

Assumptions (numbered under memory.py's 10):

10a. Rounding (``round_size``): every request is rounded up to a multiple of ``kMinBlockSize`` = 512 B
     (``roundup_power2_divisions`` unset, the default). Pools (``get_pool``): a rounded size up to ``kSmallSize``
     = 1 MiB is served from the small pool, larger ones from the large pool; a block never moves between pools.
10b. Segments (``get_allocation_size``): a small request that finds no free block makes a 2 MiB segment
     (``kSmallBuffer``); a request of 1-10 MiB (below ``kMinLargeAlloc``) a 20 MiB one (``kLargeBuffer``); a larger
     one its own segment, rounded up to 2 MiB (``kRoundLarge``). A found block is split (``should_split``) when the
     remainder is at least 512 B (small pool) or more than 1 MiB (large pool); a smaller remainder stays in the
     block. The free block chosen is the smallest that fits (``get_free_block``: ``lower_bound`` on size); with the
     default ``max_split_size`` (unlimited) every large block may be split. Freed blocks merge with free neighbours
     of the same segment (``free_block``/``try_merge_blocks``); segments are returned to CUDA only by
     ``empty_cache()`` or when a ``cudaMalloc`` fails (``release_cached_blocks``), which a run that fits never
     reaches: reserved only grows, so the peak reserved is the sum of every segment the run made.
10c. Long-lived tensors (one allocation per parameter as the module holds it, quantized data and its constants,
     PEFT adapters, gradients, optimizer states: :func:`static_tensors`) are allocated once and never freed: small
     ones pack into 2 MiB segments, 1-10 MiB ones into 20 MiB segments, the others take their own 2 MiB-rounded
     segment (:func:`packed_reserved`). Plans sharded by ZeRO / FSDP / tensor parallel keep flat buffers: their
     states are taken as one allocation per component.
10d. PEFT's ``prepare_model_for_kbit_training`` (peft/utils/other.py) replaces every 16-bit parameter that is not a
     k-bit one by an fp32 copy (``param.data = param.data.to(torch.float32)``) after loading: the 16-bit
     embedding and lm_head blocks (each its own segment) become free cached blocks (:func:`cached_free_blocks`).
10e. On-the-fly k-bit quantization (bitsandbytes ``Params4bit._quantize`` / ``Int8Params``: ``w =
     self.data.contiguous().to(device)`` then ``quantize_4bit``) puts each linear's 16-bit weight on the GPU before
     quantizing it. transformers 5.24 loads synchronously when it quantizes on the fly (``core_model_loading.py``:
     ``thread_pool = None`` for ``has_on_the_fly_quantization``; huggingface/transformers#44576, 2026-03-10), so
     one 16-bit linear is on the GPU at a time and the largest one's block stays cached after loading. Earlier
     transformers 5 releases materialized full-precision tensors on 4 worker threads ahead of the quantizer
     (#44576's own figures for Qwen2.5-7B: 13.47 GB reserved after loading against 5.46 GB allocated): that load
     spike is not modelled.
10f. The dynamic tensors at the peak are placed in the cached free blocks before new segments are made. The
     training loss's T x vocab tensors (the logits, ``log_softmax``'s fp32 output and the two fp32 gradients of
     ``nll_loss`` / ``log_softmax``, memory.py assumption 6) are the largest requests a step makes: each goes to
     the smallest free block that holds it, one after another (the remainder of a split block stays free);
     one that fits no cached block gets its own segment (10b). Everything else that is live at the peak (the
     saved activations, one block's recompute, the eager s^2 scores and their fp32 softmax) is made of requests
     far smaller than those blocks and fills what is left of them, then new segments, byte for byte.
10g. Eager attention's s^2-sized temporaries (scores, fp32 softmax, their gradients) are requested once per layer
     with the same size: a freed one is reused whole by the next layer's request (an exact fit, no split), so
     they add no segments beyond the bytes live at the peak; what they do to fragmentation is to take the
     remainders of the cached blocks of 10d-10f, where they fit. Without checkpointing the saved probabilities
     of every layer are live at the peak and take segments of their own.
10h. ``expandable_segments:True`` (``PYTORCH_CUDA_ALLOC_CONF``; ``ExpandableSegment``): one segment per pool and
     stream grows by pages (2 MiB small, 20 MiB large) and blocks split down to 512 B in either pool; a request
     that fits no free block extends the segment by what it lacks. Reserved is then the bytes placed, per pool,
     rounded up to the page (:func:`allocator` with ``expandable=True``); interior holes (10d, 10e) stay.
10i. CUDA context: the process memory NVML shows beyond PyTorch's reserved pool (the CUDA context, the modules
     lazy loading brings in, cuBLAS/cuDNN handles). Per GPU it is profile data (``cuda_context_bytes`` in
     profiles/gpus/*.yaml, with its source; :data:`CUDA_CONTEXT_MEASURED`); without one the planner assumes
     :data:`CUDA_CONTEXT_BYTES` = 150 MiB, CUDA 12 with lazy module loading (PyTorch sets ``CUDA_MODULE_LOADING=LAZY``
     when unset since 1.13, pytorch/pytorch#86509; CUDA enables it by default on Linux since 12.2): the measured
     T4 figure, rounded up.
"""

from __future__ import annotations

import bisect
import dataclasses
import operator

from quantlab.families import model_cache
from quantlab.specs import DeviceMode, Method, PlanConfig, Precision

KiB = 1 << 10
MiB = 1 << 20

# c10/cuda/CUDACachingAllocator.cpp (constants at the top of the file; kLargeBuffer is defined there for
# CUDAAllocatorConfig)
K_MIN_BLOCK = 512  # kMinBlockSize: all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1 * MiB  # kSmallSize: largest "small" allocation
K_SMALL_BUFFER = 2 * MiB  # kSmallBuffer: small allocations are packed in 2 MiB segments
K_LARGE_BUFFER = 20 * MiB  # kLargeBuffer: 1-10 MiB allocations may be packed in 20 MiB segments
K_MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc
K_ROUND_LARGE = 2 * MiB  # kRoundLarge: large segments are rounded up to 2 MiB

CUDA_CONTEXT_BYTES = 150 * MiB  # 10i: the default where a GPU profile has no measured figure
# 10i: measured contexts, by GPU generation and CUDA version (bytes, source). The GPU profiles carry the figure that
# applies to them (cuda_context_bytes); this table is where each one comes from.
CUDA_CONTEXT_MEASURED = (
    ("Turing (sm_75), Tesla T4", "CUDA 12.8 (torch 2.10.0+cu128)", 147_718_144,
     "fitcheck-llm 0.3.1 data/measurements (t4-sweep-2026-09-15, t4-phase3-2026-09-16): cuda_context_mib 140.875 "
     "= mem_get_info total - free - memory_reserved(), read after the measured steps (105 MiB straight after "
     "torch.cuda.init()); the published Qwen2.5-7B T4 row: process - reserved = 141 MiB"),
    ("unstated GPU", "CUDA 11.7 (torch 1.13), lazy module loading", 287_047_680,
     "pytorch/pytorch#86509 (sets CUDA_MODULE_LOADING=LAZY when unset): 287,047,680 bytes with LAZY against "
     "666,632,192 bytes eager, after creating one CUDA tensor"),
)

# kept for the callers that still import them (memory.py); no longer used by the rule
RESERVE_FRACTION = 0.0
SEGMENT = K_ROUND_LARGE


# ---------------------------------------------------------------------------------------------------------
# 10a-10b: the rules, one function each, named after the C++ ones


def round_size(size: int) -> int:
    """``round_size``: the block size a request of ``size`` bytes takes (10a)."""
    if size < K_MIN_BLOCK:
        return K_MIN_BLOCK
    return K_MIN_BLOCK * ((size + K_MIN_BLOCK - 1) // K_MIN_BLOCK)


def is_small(rounded: int) -> bool:
    """``get_pool``: the small pool serves rounded sizes up to 1 MiB (10a)."""
    return rounded <= K_SMALL_SIZE


def allocation_size(rounded: int) -> int:
    """``get_allocation_size``: the segment a rounded request makes when no free block fits it (10b)."""
    if rounded <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if rounded < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((rounded + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


def should_split(block_size: int, rounded: int, small: bool, expandable: bool = False) -> bool:
    """``should_split``: whether a free block of ``block_size`` serving ``rounded`` bytes is split (10b, 10h)."""
    remaining = block_size - rounded
    if small or expandable:
        return remaining >= K_MIN_BLOCK
    return remaining > K_SMALL_SIZE


# ---------------------------------------------------------------------------------------------------------
# the simulation: DeviceCachingAllocator's malloc/free on one stream, without CUDA graphs, memory fractions or
# garbage collection (none of them is on by default)


class _Block:
    __slots__ = ("seg", "addr", "size", "free", "prev", "next", "small")

    def __init__(self, seg, addr, size, small):
        self.seg, self.addr, self.size, self.small = seg, addr, size, small
        self.free = True
        self.prev = self.next = None


class CachingAllocator:
    """A replay of the caching allocator's rules (10a-10b, 10h) on one stream: ``malloc(size) -> handle``,
    ``free(handle)``, and the figures ``torch.cuda`` reports: ``allocated`` / ``reserved`` (current) and
    ``peak_allocated`` / ``peak_reserved``. Pure Python, for the tests and scripts; the planner uses the closed form.

    ``expandable=True`` models ``expandable_segments:True``: one segment per pool that grows by pages of 2 MiB
    (small pool) or 20 MiB (large pool), the block at its end extended when nothing free fits."""

    def __init__(self, expandable: bool = False):
        self.expandable = expandable
        self.free_sizes = {True: [], False: []}  # pool (small?) -> sorted [(size, addr, id)] of free blocks
        self._by_key: dict = {}  # id(block) -> its key
        self._blocks: dict = {}  # key -> block
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self._next_addr = 0
        self._ids = 0
        self.segments: list[int] = []  # sizes of the segments made (the expandable ones as they grew)
        self._tail = {True: None, False: None}  # expandable: the last block of each pool's segment

    # free-list bookkeeping
    def _insert(self, b: _Block) -> None:
        self._ids += 1
        key = (b.size, b.addr, self._ids)
        bisect.insort(self.free_sizes[b.small], key)
        self._by_key[id(b)] = key
        self._blocks[key] = b

    def _remove(self, b: _Block) -> None:
        key = self._by_key.pop(id(b))
        del self._blocks[key]
        lst = self.free_sizes[b.small]
        del lst[bisect.bisect_left(lst, key)]

    def _new_segment(self, size: int, small: bool) -> _Block:
        b = _Block(len(self.segments), self._next_addr, size, small)
        self._next_addr += size + (1 << 40)  # segments never touch: blocks of different segments never merge
        self.segments.append(size)
        self.reserved += size
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return b

    def malloc(self, size: int) -> _Block:
        rounded = round_size(size)
        small = is_small(rounded)
        lst = self.free_sizes[small]
        i = bisect.bisect_left(lst, (rounded, -1, -1))  # get_free_block: the smallest free block that fits
        if i < len(lst):
            b = self._blocks[lst[i]]
            self._remove(b)
        elif self.expandable:
            b = self._expand(rounded, small)
        else:
            b = self._new_segment(allocation_size(rounded), small)
        if should_split(b.size, rounded, small, self.expandable):  # alloc_found_block
            rest = _Block(b.seg, b.addr + rounded, b.size - rounded, small)
            rest.prev, rest.next = b, b.next
            if b.next is not None:
                b.next.prev = rest
            b.next = rest
            b.size = rounded
            if self.expandable and self._tail[small] is b:
                self._tail[small] = rest
            self._insert(rest)
        b.free = False
        self.allocated += b.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return b

    def _expand(self, rounded: int, small: bool) -> _Block:
        """``try_allocate_expandable_block``: map pages at the end of the pool's one segment (10h)."""
        page = K_SMALL_BUFFER if small else K_LARGE_BUFFER
        tail = self._tail[small]
        if tail is None:
            grow = -(-rounded // page) * page
            b = self._new_segment(grow, small)
            self._tail[small] = b
            return b
        have = tail.size if tail.free else 0
        grow = -(-(rounded - have) // page) * page
        self.reserved += grow
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.segments[tail.seg] += grow
        if tail.free:
            self._remove(tail)
            tail.size += grow
            return tail
        b = _Block(tail.seg, tail.addr + tail.size, grow, small)
        b.prev, tail.next = tail, b
        self._tail[small] = b
        return b

    def free(self, b: _Block) -> None:
        """``free_block``: the block returns to its pool, merged with free neighbours (``try_merge_blocks``)."""
        self.allocated -= b.size
        b.free = True
        for nb in (b.prev, b.next):
            if nb is not None and nb.free:
                self._remove(nb)
                if nb is b.prev:
                    b.addr, b.prev = nb.addr, nb.prev
                    if nb.prev is not None:
                        nb.prev.next = b
                else:
                    b.next = nb.next
                    if nb.next is not None:
                        nb.next.prev = b
                    if self.expandable and self._tail[b.small] is nb:
                        self._tail[b.small] = b
                b.size += nb.size
        self._insert(b)

    def free_blocks(self) -> list[int]:
        """Sizes of the cached free blocks, both pools, smallest first."""
        return sorted(k[0] for k in self._blocks)


def replay(events, expandable: bool = False) -> CachingAllocator:
    """Replay ``events``: ``("alloc", name, bytes)`` / ``("free", name)`` in order; returns the allocator."""
    a = CachingAllocator(expandable)
    live: dict = {}
    for ev in events:
        if ev[0] == "alloc":
            live[ev[1]] = a.malloc(ev[2])
        else:
            a.free(live.pop(ev[1]))
    return a


# ---------------------------------------------------------------------------------------------------------
# 10c-10e: what one configuration keeps, shape-free (cached per configuration)

_FLOAT = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}
_NSTATES = {"adamw": 2, "adamw_8bit": 2, "paged_adamw": 2, "paged_adamw_8bit": 2, "sgd_momentum": 1, "lion": 1}


def _kbit_tensors(precision: Precision, double_quant: bool, n: int, out: int) -> tuple[int, ...]:
    """The tensors one quantized linear of ``n`` weights keeps (formats.py assumptions 1-4): its data, then its
    constants, each its own allocation."""
    if precision in (Precision.NF4, Precision.FP4):
        blocks = -(-n // 64)
        if double_quant:  # uint8 absmax, its fp32 absmax per 256, the offset and both code tables
            return (-(-n // 2), blocks, 4 * -(-blocks // 256), 4, 1024, 64)
        return (-(-n // 2), 4 * blocks, 64)
    if precision is Precision.INT8:
        return (n, 4 * out)
    if precision is Precision.FP8:
        return (n, 4 * out)
    return (-(-n // 2), max(1, n // 8))  # INT4 (GPTQ-style): packed weights, then scales/zeros (approximate)


def static_tensors(cfg: PlanConfig, trainable_tensors=(), grad_bytes: int = 0, state_bytes: int = 0,
                   n_states: int = 0) -> tuple[tuple[int, int], ...]:
    """The long-lived allocations of a configuration, ``((bytes, how many), ...)``, in the order they are made
    (10c): the weights as the modules hold them, then the PEFT adapters, the gradients and the optimizer states of
    ``trainable_tensors`` (``((shape, how many), ...)``, memory.trainable's)."""
    from quantlab.families import block_linears
    from quantlab.planner.params import outside_tensors

    m = cfg.model
    L = m.num_hidden_layers
    tp = cfg.tp
    kbit = cfg.precision not in _FLOAT
    training = cfg.method is not Method.INFERENCE
    c = cfg.compute_dtype.nbytes
    amp = training and cfg.training_precision.value == "amp"
    load = c if kbit else 4 if amp else _FLOAT[cfg.precision]
    hp = 4 if _upcast(cfg) else load
    out: list[tuple[int, int]] = []
    for l in block_linears(m):
        n = l.in_features * l.out_features // tp
        if kbit and (l.module or cfg.stack == "litgpt"):
            out += [(t, l.count * L) for t in _kbit_tensors(cfg.precision, cfg.double_quant, n, l.out_features)]
        elif l.module:
            out.append((n * (load if not kbit else hp), l.count * L))
        else:  # a fused 3-D expert tensor: one allocation
            out.append((n * l.count * (load if not kbit else hp), L))
        if l.bias:
            out.append((l.out_features // tp * hp, l.count * L))
    from quantlab.families import family

    fam = family(m)
    norm_tensors = fam.norms_per_block * (2 if fam.norm == "layernorm" else 1)
    out.append((m.hidden_size * hp, norm_tensors * L))
    for name in ("embed_tokens", "lm_head", "norm"):
        for shape, k in outside_tensors(m)[name]:
            numel = 1
            for d in shape:
                numel *= d
            out.append((numel * hp, k))
    for shape, k in trainable_tensors:
        numel = 1
        for d in shape:
            numel *= d
        if cfg.method.is_peft:
            out.append((numel * 4, k))
        if grad_bytes:
            out.append((numel * grad_bytes, k))
        for _ in range(n_states):
            out.append((numel * state_bytes, k))
    return tuple((b, k) for b, k in out if b > 0 and k > 0)


def packed_reserved(tensors) -> int:
    """Reserved bytes of long-lived allocations ``((bytes, how many), ...)`` that are never freed (10c): small ones
    packed in 2 MiB segments, 1-10 MiB ones in 20 MiB segments, each larger one its own 2 MiB-rounded segment."""
    small = mid = large = 0
    for b, k in tensors:
        r = round_size(b)
        if r <= K_SMALL_SIZE:
            small += r * k
        elif r < K_MIN_LARGE_ALLOC:  # best fit packs the 1-10 MiB sizes together into 20 MiB segments
            mid += r * k
        else:
            large += allocation_size(r) * k
    return -(-small // K_SMALL_BUFFER) * K_SMALL_BUFFER + -(-mid // K_LARGE_BUFFER) * K_LARGE_BUFFER + large


def _upcast(cfg: PlanConfig) -> bool:
    """PEFT's k-bit upcast applies (memory.py _dtypes' rule: k-bit weights, training, transformers, not turned off)."""
    return cfg.precision not in _FLOAT and cfg.method is not Method.INFERENCE and cfg.kbit_upcast \
        and cfg.library == "transformers"


def cached_free_blocks(cfg: PlanConfig) -> tuple[int, ...]:
    """The large free blocks cached before the first step (10d, 10e), sorted: the 16-bit embedding / lm_head blocks
    PEFT's upcast replaces, and the largest linear's 16-bit copy an on-the-fly quantization left."""
    from quantlab.families import block_linears
    from quantlab.planner.params import outside_tensors

    m = cfg.model
    c = cfg.compute_dtype.nbytes
    blocks = []
    if _upcast(cfg):
        for name in ("embed_tokens", "lm_head"):
            for shape, k in outside_tensors(m)[name]:
                numel = 1
                for d in shape:
                    numel *= d
                r = round_size(numel * c)
                if r >= K_MIN_LARGE_ALLOC:
                    blocks += [allocation_size(r)] * k
    kbit = cfg.precision not in _FLOAT
    if kbit and cfg.library == "transformers" and cfg.precision in (Precision.NF4, Precision.FP4, Precision.INT8):
        n = max((l.in_features * l.out_features // cfg.tp for l in block_linears(m) if l.module), default=0)
        r = round_size(n * (c if cfg.precision is not Precision.INT8 else 2))
        if r > K_SMALL_SIZE:
            blocks.append(allocation_size(r))
    return tuple(sorted(blocks))


class _Kept:
    """What :func:`allocator` keeps per configuration (shape-free): the long-lived tensors' bytes (``placed``), their
    reserve (10c), their rounded bytes per pool (10h) and the cached free blocks (10d, 10e)."""

    __slots__ = ("placed", "static_reserve", "large_rounded", "small_rounded", "free", "free_total")

    def __init__(self, placed, static_reserve, large_rounded, small_rounded, free):
        self.placed, self.static_reserve = placed, static_reserve
        self.large_rounded, self.small_rounded = large_rounded, small_rounded
        self.free, self.free_total = free, sum(free)


_KEY_FIELDS = tuple(f.name for f in dataclasses.fields(PlanConfig) if f.name not in ("model", "batch", "seq"))
_shape_free_key = operator.attrgetter(*_KEY_FIELDS)
_kept_tables = model_cache(lambda m: {})


def _kept(cfg: PlanConfig, comps: dict | None, shape_free: tuple | None = None) -> _Kept:
    """:class:`_Kept` of ``cfg``, cached per model, the configuration's fields other than batch and sequence, and the
    gradient and optimizer bytes it is given (a composition over memory.plan, such as BitFit's, trains other tensors
    under the same configuration). ``shape_free``: ``_shape_free_key(cfg)`` where the caller made it already."""
    table = _kept_tables(cfg.model)
    key = (_shape_free_key(cfg) if shape_free is None else shape_free,
           None if comps is None else (comps.get("gradients", 0), comps.get("optimizer", 0)))
    hit = table.get(key)
    if hit is None:
        hit = _build_kept(cfg, comps)
        if len(table) >= 4096:
            table.clear()
        table[key] = hit
    return hit


def _build_kept(cfg: PlanConfig, comps: dict | None) -> _Kept:
    from quantlab.planner.memory import trainable
    from quantlab.planner.params import count_params

    comps = comps or {}
    training = cfg.method is not Method.INFERENCE
    sharded = bool(cfg.zero or cfg.fsdp or cfg.num_gpus > 1)
    tensors: tuple = ()
    grad_b = state_b = n_states = 0
    extra: list = []
    if training:
        n, tensors, _ = trainable(cfg, count_params(cfg.model), [])
        grads, opt = comps.get("gradients", 0), comps.get("optimizer", 0)
        if sharded or not n:  # flat buffers (10c): one allocation per component
            extra, tensors = [(grads, 1), (opt, 1)], ()
        else:
            grad_b = grads // n
            n_states = _NSTATES.get(cfg.optimizer.value, 1) if opt else 0
            state_b = opt // (n * n_states) if n_states else 0
            if n_states and opt % (n * n_states):  # 8-bit or factored states: their bytes as one allocation
                n_states, state_b = 0, 0
                extra.append((opt, 1))
    ts = static_tensors(cfg, tensors, grad_b, state_b, n_states) + tuple((b, k) for b, k in extra if b > 0)
    placed = sum(b * k for b, k in ts)
    small = sum(round_size(b) * k for b, k in ts if round_size(b) <= K_SMALL_SIZE)
    large = sum(round_size(b) * k for b, k in ts if round_size(b) > K_SMALL_SIZE)
    return _Kept(placed, max(0, packed_reserved(ts) - placed), large, small, cached_free_blocks(cfg))


def loss_tensors(cfg: PlanConfig, batch: int, seq: int) -> tuple[int, ...]:
    """The training loss's T x vocab requests (10f), in the order they are made: the logits, ``log_softmax``'s
    fp32 output, the fp32 gradients of ``nll_loss`` and of ``log_softmax`` (memory.py assumption 6)."""
    if cfg.method is Method.INFERENCE or cfg.loss.value != "hf":
        return ()  # (the chunked and fused losses make no T x vocab fp32 requests of that size)
    from quantlab.planner.memory import loss_buffers

    logits, _, grads = loss_buffers(cfg, None, batch, seq)
    four = grads // 2  # 4·T·V each: log_softmax's output and the two gradients
    return (logits, four, four, four) if logits else ()


def place(free: tuple[int, ...], requests, expandable: bool = False) -> tuple[int, int]:
    """(bytes of new segments, bytes left free in the cached blocks) after placing ``requests`` one after another,
    each in the smallest cached block that holds it (split; a remainder of more than 1 MiB stays free) or else in
    a new segment of its own (10b, 10f; expandable segments: the segment grows by the request, 10h)."""
    blocks = list(free)
    new = 0
    for req in requests:
        r = round_size(req)
        i = bisect.bisect_left(blocks, r)
        if i < len(blocks):
            rest = blocks.pop(i) - r
            if rest > K_SMALL_SIZE:
                bisect.insort(blocks, rest)
        else:
            new += r if expandable else allocation_size(r)
    return new, sum(blocks)


def dynamic_reserved(free: tuple[int, ...], dynamic: int, loss: tuple[int, ...], rest: int,
                     expandable: bool = False) -> int:
    """Reserved bytes of the dynamic part of a step (10d-10g): the cached free blocks, the segments the loss's
    T x vocab requests make beyond them, the rest of the loss phase (``rest``: the activations live beside the
    loss) beyond what the blocks have left; another phase of the step reuses all of these and grows the pool
    only by what its peak (``dynamic``) exceeds them."""
    new, left = place(free, loss, expandable)
    loss_phase = sum(free) + new + max(0, rest - left)
    return max(loss_phase, dynamic)


_kept_by_owner: dict = {}  # id(owner) -> (owner, gradients, optimizer, _Kept): memory.plan's shape-free part


def _kept_of(cfg: PlanConfig, comps: dict | None, key: tuple | None, owner) -> _Kept:
    """:func:`_kept`, looked up by ``owner`` (memory.plan's cached shape-free part of ``cfg``) where one is given:
    one dict lookup instead of hashing every field again; the owner is kept alive with its entry, so its id is not
    reused while the entry exists."""
    if owner is None or comps is None:
        return _kept(cfg, comps, key)
    g, o = comps.get("gradients", 0), comps.get("optimizer", 0)
    hit = _kept_by_owner.get(id(owner))
    if hit is not None and hit[0] is owner and hit[1] == g and hit[2] == o:
        return hit[3]
    kept = _kept(cfg, comps, key)
    if len(_kept_by_owner) >= 4096:
        _kept_by_owner.clear()
    _kept_by_owner[id(owner)] = (owner, g, o, kept)
    return kept


def allocator(cfg: PlanConfig, dynamic: int, comps: dict | None = None, batch: int | None = None,
              seq: int | None = None, expandable: bool = False, key: tuple | None = None,
              owner=None) -> tuple[int, int]:
    """(caching-allocator reserve above the allocated peak, CUDA context) of one plan (10a-10i); both zero on a CPU.

    reserved = the long-lived tensors' segments (10c) + :func:`dynamic_reserved` (10d-10g); the reserve is that
    minus the allocated peak. The loss's T x vocab requests are placed only where ``comps`` (the plan's components)
    are given; ``batch``/``seq`` are the shape the plan was made at (default: the configuration's); ``key``: the
    configuration's shape-free key where the caller has it, ``owner`` the cached object it belongs to (memory.plan's
    shape-free part: the same configuration and model for as long as it lives)."""
    if cfg.device is not DeviceMode.CUDA:
        return 0, 0
    expandable = expandable or cfg.expandable_segments  # 10h: the configuration's allocator setting
    kept = _kept_of(cfg, comps, key, owner)
    if comps is not None and kept.free and cfg.method is not Method.INFERENCE:
        # (without cached blocks each loss tensor takes a segment of its own: the fluid rule, up to its rounding)
        loss = loss_tensors(cfg, cfg.batch if batch is None else batch, cfg.seq if seq is None else seq)
        rest = comps.get("activations", 0)
    else:
        loss, rest = (), dynamic
    dyn = dynamic_reserved(kept.free, dynamic, loss, rest, expandable)
    if expandable:  # 10h: one segment per pool, grown by pages
        large = -(-(kept.large_rounded + dyn) // K_LARGE_BUFFER) * K_LARGE_BUFFER
        small = -(-kept.small_rounded // K_SMALL_BUFFER) * K_SMALL_BUFFER
        return max(0, large + small - kept.placed - dynamic), CUDA_CONTEXT_BYTES
    return kept.static_reserve + dyn - dynamic, CUDA_CONTEXT_BYTES


def context_bytes(gpu=None) -> int:
    """The CUDA context of a process on ``gpu`` (10i): the profile's measured figure, else the default."""
    v = getattr(gpu, "cuda_context_bytes", None) if gpu is not None else None
    return CUDA_CONTEXT_BYTES if v is None else int(v)


def needs_shape(cfg: PlanConfig) -> bool:
    """Whether the reserve depends on the batch and sequence beyond the dynamic peak (the loss's T x vocab requests
    meeting cached blocks, 10f), so that a search over shapes must plan each one."""
    return cfg.device is DeviceMode.CUDA and cfg.method is not Method.INFERENCE and bool(cached_free_blocks(cfg))


# ---------------------------------------------------------------------------------------------------------
# the trace the closed form stands for, event by event (replayed by :class:`CachingAllocator` in the tests: the
# closed form must give what the replay gives)


def trace(cfg: PlanConfig, comps: dict, batch: int | None = None, seq: int | None = None, steps: int = 2) -> list:
    """The allocation events of loading ``cfg``'s model and running ``steps`` training steps (or one inference
    forward), as 10c-10g read them: per layer, each linear's 16-bit copy then its quantized tensors (10e); the
    outside tensors; PEFT's upcast (10d); the trainable tensors; then per step the activations (one chunk per
    layer), the loss's T x vocab tensors (10f) and the rest of the peak, freed in backward order."""
    b = cfg.batch if batch is None else batch
    s = cfg.seq if seq is None else seq
    m = cfg.model
    L = m.num_hidden_layers
    ev: list = []
    n = 0

    def alloc(size):
        nonlocal n
        n += 1
        ev.append(("alloc", n, size))
        return n

    kept = _build_kept(cfg, comps)
    per_layer, once = [], []
    training = cfg.method is not Method.INFERENCE
    from quantlab.planner.memory import trainable
    from quantlab.planner.params import count_params

    tensors = trainable(cfg, count_params(m), [])[1] if training else ()
    grads, opt = comps.get("gradients", 0), comps.get("optimizer", 0)
    nt = sum(_numel(sh) * k for sh, k in tensors) or 1
    ts = static_tensors(cfg)
    for size, k in ts:
        (per_layer if k % L == 0 and k >= L else once).append((size, k // L if k % L == 0 and k >= L else k))
    largest = max(cached_free_blocks(cfg), default=0) if cfg.precision not in _FLOAT else 0
    kbit_lin = [x for x in per_layer if x[0] * 2 >= K_MIN_BLOCK]
    for _ in range(L):  # 10e: the 16-bit copy lives while its quantized tensors are made
        tmp = alloc(largest) if largest and kbit_lin else None
        for size, k in per_layer:
            for _ in range(k):
                alloc(size)
        if tmp is not None:
            ev.append(("free", tmp))
    hp16 = {}
    for size, k in once:
        for _ in range(k):
            if _upcast(cfg) and size >= K_MIN_LARGE_ALLOC:
                hp16[alloc(size // 2)] = size  # 10d: loaded in 16 bits, replaced by fp32
            else:
                alloc(size)
    for name, size in hp16.items():
        alloc(size)
        ev.append(("free", name))
    if cfg.method.is_peft:
        for sh, k in tensors:
            for _ in range(k):
                alloc(_numel(sh) * 4)
    if not training:
        alloc(comps.get("kv_cache", 0) or K_MIN_BLOCK)
        t = alloc(comps.get("prefill_transient", 0) or K_MIN_BLOCK)
        ev.append(("free", t))
        return ev
    act = comps.get("activations", 0)
    loss = loss_tensors(cfg, b, s)
    dynamic = comps.get("activations", 0) + comps.get("logits_loss", 0)
    state = []
    kept_logits = None
    for step in range(steps):
        chunks = [alloc(max(K_MIN_BLOCK, act // L)) for _ in range(L)]
        lg = alloc(loss[0]) if loss else None
        if kept_logits is not None:
            ev.append(("free", kept_logits))
        kept_logits = lg
        others = [alloc(x) for x in loss[1:]]
        extra = max(0, dynamic - act - sum(loss))
        x = alloc(extra) if extra else None
        for o in others + ([x] if x else []):
            ev.append(("free", o))
        for c in reversed(chunks):
            ev.append(("free", c))
        if step == 0:  # gradients and optimizer states, one per trainable tensor (10c)
            for sh, k in tensors:
                for _ in range(k):
                    if grads:
                        state.append(alloc(max(1, _numel(sh) * grads // nt)))
                    if opt:
                        state.append(alloc(max(1, _numel(sh) * opt // nt)))
    return ev


def _numel(shape) -> int:
    v = 1
    for d in shape:
        v *= d
    return v
