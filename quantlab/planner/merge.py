"""Memory and disk of a model merge: mergekit full-weight merges under its lazy loading, and PEFT adapter merges.

Pure arithmetic on the :class:`~quantlab.specs.ModelSpec` (standard library only). T is the element count of the
largest tensor (:mod:`quantlab.planner.params`: the embedding or the head for every dense family), b the bytes per
element of the stored models, K the number of models merged.

mergekit 0.1.5 (``mergekit/merge.py`` ``run_merge``; file names below are in that package):

1. **Lazy loading.** ``io/lazy_tensor_loader.py`` ``LazyTensorLoader.get_tensor`` reads one tensor at a time from
   the safetensors shards; the executor (``graph.py`` ``Executor._run``) keeps a loaded tensor until its last use
   in the schedule and then drops it, so the inputs held at once are those of one output tensor: K tensors of T
   for ``linear`` and ``slerp``, K + 1 (the base too) for ``task_arithmetic``, ``ties``, ``dare_*``. The kernels
   pack same-shaped tensors into batches of at most 64 MiB of inputs (``merge_methods/base.py`` ``BatchOptions``,
   ``max_bytes``); a larger group (the largest tensor always, for models of any size) runs alone, so the largest
   tensor sets the peak.
2. **The output writer.** ``io/tensor_writer.py`` ``TensorWriter.save_tensor`` keeps output tensors in memory until
   the current shard passes ``out_shard_size`` (``options.py``: ``parse_kmb("5B")`` = 5e9, compared with tensor
   *bytes* although the help calls it parameters), flushing first when the next tensor would pass it; so up to
   min(output bytes, 5e9 bytes) of output is resident. This is the largest RAM term below ~2.5 B parameters in bf16.
3. **Kernel working set** for the largest tensor (beyond its inputs):

   - ``linear`` (``merge_methods/linear.py`` ``linear_merge``): an fp32 result ``zeros_like`` (4 T) plus its cast
     to the stored dtype (b T, none when b = 4);
   - ``slerp`` (``merge_methods/slerp.py``): works in 1 M-element chunks, so the fp32 result (4 T) and the cast
     (b T) dominate, as for linear;
   - ``task_arithmetic`` / ``ties`` / ``dare_*`` (``merge_methods/generalized_task_arithmetic.py``
     ``merge_group``): a deltas buffer (K b T) and one delta (b T) at a time; TIES's trim (``sparsify.py``
     ``magnitude``) adds |delta| in fp32 (4 T), ``argsort`` indices (8 T) with the sorted values (4 T) and a mask
     (b T); DARE's drop (``bernoulli``) a mask and a result (2 b T); the sign election (``get_mask``) the signs
     (K b T), their sum and the majority (2 b T) and a bool mask (K T), then the masked product (K b T) and the
     mixed delta (b T). The peak is the larger of the trim and the election phase (formulas in
     :func:`kernel_bytes`).
4. **Where it runs.** On a CPU (mergekit's default) every term is RAM. With ``--cuda`` the kernel runs on the GPU
   (``math_device``) while results are stored on the CPU (``storage_device='cpu'`` unless ``--low-cpu-memory``),
   so VRAM holds one tensor's inputs and working set plus the CUDA context (memory.py assumption 10,
   :mod:`quantlab.planner.allocator`), and RAM still holds the writer's shard.
5. **Disk**: the output's safetensors, N x (output dtype bytes), plus the header (a few KiB); the inputs are read
   in place. RSS also shows the file-backed pages of the input shards read so far (mmap; the page cache may drop
   them): :attr:`MergeMemory.mapped_input_bytes` is that upper bound, kept apart from the anonymous peak.

PEFT 0.21.2 (``peft/tuners/lora/model.py``):

6. ``add_weighted_adapter`` adds one adapter beside the K loaded ones, fp32 like them, of rank r (``linear``,
   ``ties``, ``dare_*``, ``magnitude_prune``: equal ranks required), sum r_i (``cat``) or ``svd_rank`` (default
   max r_i, ``svd``): per adapted linear (in + out) x rank x 4 bytes. The SVD path also holds, for the largest
   adapted linear, the K updates and their combination (K + 1) x out x in x 4 and ``torch.linalg.svd``'s
   ``full_matrices=True`` factors out^2 + in^2 (+ min) x 4; the factor-wise methods only stack the K factors.
7. ``merge_and_unload`` folds W += (alpha/r) B A in place, one fp32 delta (out x in x 4) at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantlab.planner.allocator import CUDA_CONTEXT_BYTES
from quantlab.planner.params import block_tensors, count_params, outside_tensors
from quantlab.specs import ALL_LINEAR, ModelSpec

MERGEKIT_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear")
PEFT_MERGES = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
WITH_BASE = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
OUT_SHARD_BYTES = 5_000_000_000  # mergekit options.py out_shard_size default (assumption 2)
BATCH_MAX_BYTES = 64 * 1024 * 1024  # mergekit merge_methods/base.py BatchOptions.max_bytes (assumption 1)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def largest_tensor(m: ModelSpec) -> int:
    """Elements of the model's largest parameter tensor (assumption 1)."""
    shapes = [s for s, _ in block_tensors(m)] + [s for v in outside_tensors(m).values() for s, _ in v]
    return max(_numel(s) for s in shapes)


def kernel_bytes(method: str, k: int, t: int, b: int) -> int:
    """Assumption 3: the working set of one merge kernel on a tensor of ``t`` elements, beyond its inputs, its
    returned result included."""
    cast = 0 if b == 4 else b * t
    if method in ("linear", "slerp"):
        return 4 * t + cast
    deltas = k * b * t
    if method == "task_arithmetic":
        return deltas + 3 * b * t
    if method == "ties":
        trim = deltas + b * t + (4 + 8 + 4) * t + b * t
    else:  # dare_ties, dare_linear: random drop
        trim = deltas + b * t + 2 * b * t
    if method == "dare_linear":
        return max(trim, deltas + 3 * b * t)
    elect = deltas + k * b * t + 2 * b * t + k * t
    combine = deltas + k * t + k * b * t + b * t
    finish = deltas + k * t + 3 * b * t  # mixed delta, divisor, base + mixed (the result)
    return max(trim, elect, combine, finish)


@dataclass(frozen=True)
class MergeMemory:
    """Peak memory and disk of one merge, integer bytes (RAM: anonymous; VRAM: tensors plus the CUDA context)."""

    method: str
    models: int
    params: int
    ram_peak_bytes: int
    vram_peak_bytes: int
    disk_bytes: int
    components: tuple  # ((name, bytes), ...) of the RAM peak (CPU) or of the VRAM peak (GPU)
    mapped_input_bytes: int = 0  # file-backed input pages RSS may show (assumption 5)
    notes: tuple = ()


def mergekit_memory(m: ModelSpec, method: str, k: int = 2, dtype_bytes: int = 2, out_dtype_bytes: int | None = None,
                    cuda: bool = False, out_shard_bytes: int = OUT_SHARD_BYTES) -> MergeMemory:
    """A mergekit merge of ``k`` models with ``m``'s architecture stored in ``dtype_bytes`` (assumptions 1-5)."""
    if method not in MERGEKIT_METHODS:
        raise ValueError(f"unknown mergekit method {method!r} (known: {', '.join(MERGEKIT_METHODS)})")
    if k < 2 or (method == "slerp" and k != 2):
        raise ValueError("slerp merges two models" if method == "slerp" else "a merge needs at least two models")
    ob = out_dtype_bytes or dtype_bytes
    n = count_params(m).total
    t = largest_tensor(m)
    inputs = (k + (1 if method in WITH_BASE else 0)) * t * dtype_bytes
    work = kernel_bytes(method, k, t, dtype_bytes)
    out_bytes = n * ob
    writer = min(out_bytes, out_shard_bytes)

    notes = []
    if writer < out_bytes:
        notes.append(f"output written in shards of {out_shard_bytes:,} bytes (mergekit --out-shard-size)")
    if cuda:
        ram = writer + inputs + t * ob  # the result moves back to the CPU before the writer takes it
        vram = inputs + work + CUDA_CONTEXT_BYTES
        comps = (("inputs", inputs), ("kernel", work), ("cuda_context", CUDA_CONTEXT_BYTES))
    else:
        ram = writer + inputs + work
        vram = 0
        comps = (("writer_shard", writer), ("inputs", inputs), ("kernel", work))
    models_read = k + (1 if method in WITH_BASE else 0)
    return MergeMemory(method, k, n, ram, vram, out_bytes, comps, mapped_input_bytes=models_read * n * dtype_bytes,
                       notes=tuple(notes))


def _adapted(m: ModelSpec, targets) -> list:
    linears = [l for l in count_params(m).linears if getattr(l, "module", True)]
    if tuple(targets) == (ALL_LINEAR,):
        return linears
    want = set(targets)
    return [l for l in linears if l.name in want or l.name.split(".")[-1] in want]


def lora_adapter_bytes(m: ModelSpec, r: int, targets=(ALL_LINEAR,)) -> int:
    """fp32 LoRA factors of rank ``r`` over the targeted block linears, every layer (assumption 6)."""
    return m.num_hidden_layers * sum(l.count * (l.in_features + l.out_features) * r * 4 for l in _adapted(m, targets))


def peft_merge_memory(m: ModelSpec, method: str, ranks, targets=(ALL_LINEAR,), weight_bytes: int = 4,
                      svd_rank: int | None = None) -> MergeMemory:
    """PEFT ``add_weighted_adapter`` of adapters of ``ranks`` on a base held in ``weight_bytes`` (assumption 6),
    and the RAM (or VRAM: the model's device) peak of the process while it runs."""
    if method not in PEFT_MERGES:
        raise ValueError(f"unknown PEFT merge {method!r} (known: {', '.join(PEFT_MERGES)})")
    ranks = list(ranks)
    if len(ranks) < 2:
        raise ValueError("a merge needs at least two adapters")
    if method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune") and len(set(ranks)) > 1:
        raise ValueError(f"{method} needs adapters of equal rank")
    new_r = sum(ranks) if method == "cat" else (svd_rank or max(ranks)) if method == "svd" else ranks[0]
    n = count_params(m).total
    weights = n * weight_bytes
    loaded = sum(lora_adapter_bytes(m, r, targets) for r in ranks)
    new = lora_adapter_bytes(m, new_r, targets)
    lin = _adapted(m, targets)
    if method == "svd" and lin:
        big = max(lin, key=lambda l: l.in_features * l.out_features)
        o, i = big.out_features, big.in_features
        transient = ((len(ranks) + 1) * o * i + o * o + i * i + min(o, i)) * 4
    else:
        big = max(lin, key=lambda l: (l.in_features + l.out_features), default=None)
        transient = 0 if big is None else 2 * len(ranks) * (big.in_features + big.out_features) * max(ranks) * 4
    comps = (("weights", weights), ("adapters", loaded), ("merged_adapter", new), ("transient", transient))
    peak = weights + loaded + new + transient
    return MergeMemory(method, len(ranks), n, peak, peak, new, comps)
