"""Activation offloading to CPU as a composition over :func:`quantlab.planner.memory.plan`: what stays on the GPU
(the figure that decides a purchase) and what the hook copies to host memory.

Pure: standard library only. Files read (this project's ``.venv``): TRL 1.16 ``trl/models/activation_offloading.py``
(``OffloadActivations``, ``NoOpManager``, ``get_act_offloading_ctx_manager``; a copy of torchtune's
``torchtune/training/_activation_offloading.py`` with verl's storage-key deduplication added),
``trl/trainer/sft_trainer.py`` (``activation_offloading=True`` builds ``get_act_offloading_ctx_manager(model)``
with its defaults and enters it around Trainer's whole ``training_step``, forward and backward) and torch 2.13
``torch/autograd/graph.py`` (``save_on_cpu``). transformers' Trainer has no activation offloading of its own:
TRL's ``SFTConfig(activation_offloading=True)`` is what users of this stack turn on, so ``trl`` (its defaults) is
the default mode. torchtune's own manager (``torchtune/training/_activation_offloading.py``, commit bd2a0fc of
2026-04-23, read with the ``fetch`` tool) differs and is not planned here: it has neither TRL's storage-key
deduplication (O3) nor its ``param_storages`` skip (it skips only ``isinstance(Parameter)``, so the transposed
weight view a linear saves is copied to host), and it wraps only ``model.output`` in a NoOpManager.

Modes: ``trl`` (``use_streams=True, use_pin_memory=True, min_offload_size=1024, max_fwd_stash_size=5``: SFTTrainer's
call), ``trl-no-streams`` (the same manager with ``use_streams=False``) and ``save-on-cpu``
(``torch.autograd.graph.save_on_cpu(pin_memory=True)``).

Assumptions (O1, O2, ...):

O1. TRL's pack hook (``pack_tensor``) copies a saved reference to a new (pinned) host tensor unless it is under
    ``min_offload_size`` bytes (``numel · element_size`` of the reference), a ``Parameter``/``Buffer`` or a view of
    a parameter's storage (``param_storages``, filled by ``update_model_params``: the weight a linear saves is a
    transposed view), not on the accelerator, or (streams only) its storage key ``(data_ptr + storage_offset,
    dtype)`` is already tracked. A view with an offset is cloned first, a non-contiguous one made contiguous: the
    copy has the reference's bytes. The device storage is freed once autograd's slot was its last reference.
O2. ``get_act_offloading_ctx_manager`` enters a ``NoOpManager`` around ``lm_head``'s forward: what lm_head saves
    (its input when it trains, memory's activations A9 term) stays on the device; the final norm and the loss run
    under the offloading hook.
O3. Streams (TRL's default): a storage key stays tracked while its first copy sits in the forward stash (the
    originals of the offloads among the last ``max_fwd_stash_size`` pack ids; evicted only when a later tensor is
    offloaded) and, once a second reference was kept, until that reference is unpacked in backward. So a storage
    saved by two nodes in a row is copied to host once AND kept on the device (the second reference holds it), and
    so is every later reference to it in the forward. From the transformers 5 modeling code of the families this
    module plans (checked per reference on a CPU, ``tests/lab/test_offload_measured.py``), that is, per block:
    RMSNorm's fp32 input and rsqrt (``pow`` and ``* rsqrt`` both save them: 4·T·h + 4·T per norm whose input needs
    a gradient, the final norm too), the attention norm's output read by the trained q, k, v projections and the
    MLP norm's output read by gate and up (r·T·h each), the SDPA output that o_proj saves as its input (a·T·qd:
    activations A3), and RoPE's cos and sin (2·s·d·r, once: rotated into q and k). GPT-2 (LayerNorm saves its
    input once; c_attn and c_fc are single fused readers; c_proj reads the merged heads' copy) keeps none.
O4. The forward stash at the end of the forward holds the last offloads' device originals until the first backward
    node: the loss's fp32 log_softmax output and int64 targets (already counted in memory's ``logits_loss``,
    assumption 6) and, when the final norm's weight trains, its normalized tensor (r·T·h; GPT-2: ln_f's mean and
    rstd, the offloads just before the loss's in the measured order): counted in ``offload_stash``.
O5. Backward brings tensors back node by node (streams: the node's tensors and, until the next node's hook, the
    previous node's). Bounded above by one block's saved bytes (activations A13, ``in_flight_bound``), beside the
    logits and the tail memory's assumption 6 keeps during backward: ``offload_in_flight`` is what that adds to the
    loss peak (an upper bound, the safe direction for a purchase). On a CPU the manager's brought-back tensors
    peaked at 35% (Llama fp32), 47% (Llama bf16) and 31% (GPT-2 fp32) of the bound; not measured on a GPU, where
    the copies are asynchronous. ``save_on_cpu`` also copied every saved weight to host, and its unpack makes a
    new device copy of it for the node's backward: one weight at a time is added, the largest any node saves
    (lm_head's V·h, or a block's widest linear), an upper bound.
O6. Host (pinned) bytes, streams: every offloadable storage is copied exactly once (the second reference of O3 is
    kept, not copied): memory's per-storage saved bytes, less lm_head's region (O2) and tensors under the
    threshold, plus the loss's saved tensors. Exact for the planned configurations (measured per copy on a CPU).
    Without streams and under ``save_on_cpu`` every reference is copied again (``save_on_cpu`` copies parameters
    and small tensors too, and on unpack makes a device copy of each saved weight): the per-storage planner does not
    count references, so the host figure is a LOWER bound (labelled ``host_exact=False``); measured ratios are in
    the tests' output and /work/notes/offload-readme.md.
O8. The storage key is taken before a non-contiguous or offset reference is copied to a contiguous tensor, and the
    stash then holds the copy: the original may be freed while its key is still tracked, and a new tensor the
    allocator places at that address (same dtype) within the stash window is taken for a duplicate: kept, not
    copied. Allocator-dependent (seen on a CPU: the post-attention norm's fp32 input landing where SDPA's
    non-contiguous q was). In the RMSNorm families the tensors that can land there within the window are the
    post-attention norm's input and rsqrt, which O3 keeps on the device anyway: the device figure is unchanged and
    the host figure may be lower by at most ``host_collision_bound`` = L·(4·T·h + 4·T). Not bounded for other
    allocators' placements on a GPU (not measured there).
O7. Scope: full fine-tuning, pure precision (no autocast, no k-bit), SDPA attention, transformers 5, the HF loss,
    no gradient checkpointing, no padding mask, no tensor parallelism, no optimizer-in-backward; families llama,
    mistral, qwen2, gpt2. Anything else is a one-line SpecError: LoRA's fp32 input casts and a storage saved again
    after its key left the stash change the counts of O3 and O6 and are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from quantlab.families import family
from quantlab.planner import memory as M
from quantlab.planner.allocator import allocator
from quantlab.specs import Attention, DeviceMode, Loss, Method, PlanConfig, SpecError, TrainingPrecision


class OffloadMode(str, Enum):
    TRL = "trl"
    TRL_NO_STREAMS = "trl-no-streams"
    SAVE_ON_CPU = "save-on-cpu"


MIN_OFFLOAD_SIZE = 1024  # TRL / torchtune default (bytes)
BLOCKS = frozenset(("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "GPT2Block"))  # O7


@dataclass(frozen=True)
class OffloadConfig:
    """The offloading setting beside the PlanConfig (O1-O7)."""

    mode: OffloadMode = OffloadMode.TRL
    min_offload_size: int = MIN_OFFLOAD_SIZE

    def __post_init__(self) -> None:
        if not isinstance(self.mode, OffloadMode):
            raise SpecError(f"offload mode must be one of {', '.join(m.value for m in OffloadMode)}")
        if not isinstance(self.min_offload_size, int) or self.min_offload_size < 0:
            raise SpecError(f"min-offload-size must be a non-negative integer, got {self.min_offload_size!r}")


@dataclass(frozen=True)
class OffloadPlan:
    """The device-side plan (components per GPU, as memory.Plan) and the host side (O6)."""

    plan: M.Plan
    host_pinned_bytes: int
    host_exact: bool  # False: a lower bound (O6)
    device_kept_bytes: int  # saved activations that stay on the device through the forward (O1-O3)
    host_collision_bound: int = 0  # the host figure may be lower by at most this (O8)
    in_flight_bound: int = 0  # one block's saved bytes: what backward brings back at once, at most (O5)


def mode(name: str) -> OffloadMode:
    try:
        return OffloadMode(name)
    except ValueError:
        raise SpecError(f"unknown activation offload mode {name!r} (known: "
                        f"{', '.join(m.value for m in OffloadMode)})") from None


def _check(cfg: PlanConfig) -> None:  # O7
    m = cfg.model
    why = None
    if cfg.method is not Method.FULL:
        why = f"method {cfg.method.value} (only full fine-tuning)"
    elif family(m).block_class not in BLOCKS:
        why = f"{family(m).block_class} blocks (only llama, mistral, qwen2, gpt2)"
    elif cfg.training_precision is TrainingPrecision.AMP:
        why = "autocast (AMP)"
    elif cfg.precision.value not in ("fp32", "bf16", "fp16"):
        why = f"k-bit weights ({cfg.precision.value})"
    elif cfg.attn is not Attention.SDPA:
        why = "eager attention"
    elif cfg.grad_checkpointing:
        why = "gradient checkpointing"
    elif cfg.loss is not Loss.HF:
        why = f"loss {cfg.loss.value}"
    elif cfg.padding_mask or cfg.packed or cfg.tp != 1 or cfg.optimizer_in_backward \
            or cfg.stack != "transformers==5" or cfg.qat_group or cfg.torch_compile:
        why = "padding masks, packing, tensor parallelism, optimizer-in-backward, QAT or another stack"
    if why:
        raise SpecError(f"activation offload is not modelled for {why}: see quantlab/planner/offload.py O7")


def _small(n: int, limit: int) -> int:
    """Bytes of a tensor of n bytes that the hook leaves on the device for its size (O1)."""
    return n if n < limit else 0


def offload_plan(cfg: PlanConfig, oc: OffloadConfig = OffloadConfig()) -> OffloadPlan:
    """The plan of one training step under activation offloading (O1-O7)."""
    _check(cfg)
    m = cfg.model
    p = M.plan(cfg)
    st = M._static(cfg)  # (memory's shape-free part and its terms: the same rules, not a copy)
    parts, consts = M._train_terms(cfg, st.pc, st.attn, st.dtypes, [], cfg.batch, cfg.seq)
    activations, loss_peak, keep_logits = parts[0], parts[1], parts[2]
    amp_casts, held, _, embed_tail = consts
    block = max(parts[3:], default=0)
    _, r, a, _, _ = st.dtypes
    lim = oc.min_offload_size
    b, s, h, d = cfg.batch, cfg.seq, m.hidden_size, m.head_dim
    T = b * s
    L = m.num_hidden_layers
    rms = family(m).norm != "layernorm"
    head_in = r * T * h  # lm_head's saved input (A9; full fine-tuning: lm_head trains)
    streams = oc.mode is OffloadMode.TRL
    # tensors under the threshold stay (O1): the norms' statistics, the int64 ids and targets, RoPE tables
    if rms:
        stats = (2 * L + 1) * _small(4 * T, lim)
        rope = 2 * _small(s * d * r, lim)
    else:  # GPT-2 LayerNorm: mean and rstd (fp32 on CUDA, the input dtype on a CPU: activations A2)
        stats = 2 * (2 * L + 1) * _small((4 if cfg.device is DeviceMode.CUDA else r) * T, lim)
        rope = _small(8 * s, lim)  # position ids
    ids = _small(8 * T, lim)
    loss_small = _small(8 * T, lim) + 4  # targets, nll_loss's total_weight (memory assumption 6)
    if oc.mode is OffloadMode.SAVE_ON_CPU:
        kept = 0  # save_on_cpu copies every saved tensor (torch/autograd/graph.py pack_to_cpu)
    else:
        kept = head_in + stats + rope + ids  # O1, O2
    dup = 0
    if streams and rms:  # O3
        norm = 4 * T * h + (4 * T if 4 * T >= lim else 0)  # (a small rsqrt is already in `stats`)
        dup = (2 * L + 1) * norm + L * (2 * r * T * h + a * T * m.num_attention_heads * d)
        dup += 2 * s * d * r - rope
    if not streams:
        stash = 0
    elif rms:  # O4 (full fine-tuning: the final norm's weight trains)
        stash = r * T * h
    else:  # ln_f's mean and rstd, the offloads just before the loss's (measured order, O4)
        one = (4 if cfg.device is DeviceMode.CUDA else r) * T
        stash = 2 * (one - _small(one, lim))
    device_kept = kept + dup
    # host: every offloadable storage once (O6), a lower bound without streams
    host = activations + amp_casts - head_in - stats - rope - ids
    host += 4 * T * m.vocab_size + 8 * T - _small(8 * T, lim)  # the loss's log_softmax output and targets
    if oc.mode is OffloadMode.SAVE_ON_CPU:
        host += head_in + stats + rope + ids + loss_small
    # device peak (memory assumptions 3, 6; O4, O5)
    in_flight = block
    if oc.mode is OffloadMode.SAVE_ON_CPU:  # O5: unpack copies each saved weight back to the device
        in_flight += max(m.vocab_size, m.intermediate_size if rms else 4 * h) * h * r
    old_tail = max(loss_peak, keep_logits + held)
    new_tail = max(loss_peak, keep_logits + held + in_flight)
    fwd_bwd = device_kept + stash + new_tail
    comps = dict(p.components)
    comps["activations"] = device_kept
    if stash:
        comps["offload_stash"] = stash
    comps["offload_in_flight"] = new_tail - old_tail
    G = st.grads_dyn
    if G:
        dynamic = max(fwd_bwd, G + st.opt_step, G + keep_logits + embed_tail - st.embed_grad)
        planned = max(fwd_bwd, st.opt_step, keep_logits + embed_tail)
    else:
        dynamic = planned = max(fwd_bwd, st.opt_step, keep_logits + embed_tail)
    allocated = st.static + dynamic
    comps.pop("cuda_context", None)
    comps.pop("allocator_reserve", None)
    reserve, context = allocator(cfg, planned, comps)
    if cfg.device is DeviceMode.CUDA:  # freed gradient blocks stay cached (memory assumption 3)
        reserve += st.static + G + planned - allocated
    comps["cuda_context"] = context
    comps["allocator_reserve"] = reserve
    notes = p.notes + (f"activation offload ({oc.mode.value}): {device_kept:,} B of saved activations stay on the "
                       f"device (O1-O3), {host:,} B {'' if streams else 'at least '}copied to pinned host memory "
                       "(O6); backward brings back one block at a time (O5)",)
    dev = M.Plan(cfg, p.params, p.active_params, p.trainable_params, comps, allocated, allocated + reserve,
                 allocated + reserve + context + st.paged_state, notes)
    collide = L * (4 * T * h + 4 * T) if streams and rms else 0  # O8
    return OffloadPlan(dev, host, streams, device_kept, collide, in_flight)


def _largest(ok, cap: int) -> int:
    """The largest value in 1..cap for which the monotone ``ok`` holds, or 0 (doubling, then bisection)."""
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= cap and ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def offload_fit(cfg: PlanConfig, oc: OffloadConfig, gpu) -> "Fit":
    """:func:`quantlab.planner.fit.fit` for an offloaded plan: the device-side verdict (process bytes against the
    GPU with its own CUDA context, fit.py assumptions 1 and 7) and the largest batch and sequence that fit. The
    host side does not enter the verdict (it is host RAM: ``OffloadPlan.host_pinned_bytes``). ``min_gpus`` is
    left unplanned (None) and no suggestions are made."""
    import sys

    import quantlab.planner.fit  # noqa: F401  (the package exports the function ``fit`` under the module's name)
    F = sys.modules["quantlab.planner.fit"]

    cfg = F.for_gpu(cfg, gpu)
    p = F.on_gpu(offload_plan(cfg, oc).plan, gpu)

    def fits(c: PlanConfig) -> bool:
        try:
            return offload_plan(c, oc).plan.process_bytes <= F.budget(c, gpu)
        except (SpecError, ValueError):
            return False

    max_batch = _largest(lambda b: fits(M.replace(cfg, batch=b)), 1 << 16)
    max_seq = _largest(lambda s: fits(M.replace(cfg, seq=s)), max(cfg.model.max_position_embeddings, cfg.seq))
    return F.Fit(gpu=gpu, plan=p, fits=p.process_bytes <= gpu.memory_bytes,
                 margin_bytes=gpu.memory_bytes - p.process_bytes, max_batch=max_batch, max_seq=max_seq,
                 min_gpus=None, min_gpus_sharding="", suggestions=())
