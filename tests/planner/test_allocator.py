"""The caching-allocator model (planner/allocator.py, 10a-10i): the C++ rules, the replay, the closed form against the
replay, the published reserved/process rows and the CUDA context as GPU data."""

import pytest

from quantlab.planner import allocator as A
from quantlab.planner.fit import fit as fit_gpu, for_gpu, on_gpu
from quantlab.planner import plan
from quantlab.profiles import gpu_doc, list_gpus, load_gpu, load_model
from quantlab.specs import Attention, DeviceMode, Method, PlanConfig, Precision

MiB = 1 << 20


def test_rules_are_the_cpp_ones():
    """c10/cuda/CUDACachingAllocator.cpp (commit 001074d2): round_size rounds to kMinBlockSize = 512; get_pool puts
    <= kSmallSize (1 MiB) in the small pool; get_allocation_size: 2 MiB for small, 20 MiB below kMinLargeAlloc
    (10 MiB), else rounded up to kRoundLarge (2 MiB); should_split: >= 512 B left (small) or > 1 MiB left (large)."""
    assert A.round_size(1) == A.round_size(512) == 512 and A.round_size(513) == 1024
    assert A.is_small(MiB) and not A.is_small(MiB + 512)
    assert A.allocation_size(512) == A.allocation_size(MiB) == 2 * MiB
    assert A.allocation_size(MiB + 512) == A.allocation_size(10 * MiB - 512) == 20 * MiB
    assert A.allocation_size(10 * MiB) == 10 * MiB and A.allocation_size(10 * MiB + 512) == 12 * MiB
    assert A.should_split(2 * MiB, 2 * MiB - 512, small=True) and not A.should_split(MiB, MiB, small=True)
    assert not A.should_split(12 * MiB, 11 * MiB, small=False)  # exactly 1 MiB left: kept in the block
    assert A.should_split(12 * MiB, 11 * MiB - 512, small=False)
    assert A.should_split(12 * MiB, 12 * MiB - 512, small=False, expandable=True)


def test_replay_pools_segments_and_reuse():
    a = A.CachingAllocator()
    xs = [a.malloc(512 * 1024) for _ in range(4)]  # four 512 KiB requests share one 2 MiB small segment
    assert a.segments == [2 * MiB]
    a.malloc(3 * MiB)
    a.malloc(3 * MiB)  # 1-10 MiB requests split one 20 MiB segment
    assert a.segments == [2 * MiB, 20 * MiB]
    big = a.malloc(1040 * MiB)
    a.malloc(2080 * MiB)
    a.free(big)  # a freed block is reused only by requests that fit: one 594 MiB tensor fits, a second does not
    a.malloc(594 * MiB)
    a.malloc(594 * MiB)
    assert a.segments[-1] == 594 * MiB and a.reserved == sum(a.segments)
    for x in xs:
        a.free(x)
    assert 2 * MiB in a.free_blocks()  # the freed neighbours merged back into the whole small segment
    assert a.peak_reserved == a.reserved  # nothing is returned to CUDA (10b)


def test_expandable_segments_grow_by_pages():
    """10h: N + 1 tensors slightly larger than the N before them (expandable_segments' own example): plain segments
    cannot reuse the smaller freed blocks, one growing segment can."""
    def run(exp):
        a = A.CachingAllocator(expandable=exp)
        live = [a.malloc(100 * MiB) for _ in range(8)]
        for x in live:
            a.free(x)
        live = [a.malloc(101 * MiB) for _ in range(8)]
        return a.peak_reserved
    plain, grown = run(False), run(True)
    assert grown < plain and grown % (20 * MiB) == 0


def _qwen_row():
    from quantlab.groundtruth import PUBLISHED, load_rows, row_to_config
    rows = {r["id"]: r for r in load_rows(PUBLISHED) if r["id"].startswith("fc-qwen7b-eager")}
    return row_to_config(rows["fc-qwen7b-eager-reserved"]), rows


def test_the_published_qwen_row_is_explained_and_within_target():
    """Reserved minus allocated there is 1161 MiB (42% of the dynamic peak). The model names where it goes: PEFT's
    upcast leaves two 1040 MiB fp16 blocks (10d), the load leaves a 130 MiB 16-bit linear (10e), each block holds
    one of the loss's four 594 MiB fp32 T x vocab tensors, so two need segments of their own (10f)."""
    cfg, rows = _qwen_row()
    p = plan(cfg)
    assert A.cached_free_blocks(cfg) == (130 * MiB, 1040 * MiB, 1040 * MiB)
    assert A.loss_tensors(cfg, 1, 1024) == (594 * MiB,) * 4
    gap = rows["fc-qwen7b-eager-reserved"]["value_bytes"] - rows["fc-qwen7b-eager-allocated"]["value_bytes"]
    planned_gap = p.peak_reserved_bytes - p.peak_allocated_bytes
    assert 0.6 * gap <= planned_gap <= 1.1 * gap
    for metric in ("reserved", "process"):
        r = rows[f"fc-qwen7b-eager-{metric}"]
        got = on_gpu(p, load_gpu("t4"))
        got = got.peak_reserved_bytes if metric == "reserved" else got.process_bytes
        assert abs(got - r["value_bytes"]) / r["value_bytes"] <= 0.06, metric


CONFIGS = [dict(model="qwen2.5-7b", method=Method.QLORA, precision=Precision.NF4, grad_checkpointing=True,
                attn=Attention.EAGER, seq=1024),
           dict(model="smollm2-135m", method=Method.QLORA, precision=Precision.NF4, batch=4, seq=512)]
# Not yet matched (the closed form is 2-13% under the replay; see /work/notes/alloc-readme.md): llama-3.1-8b QLoRA
# and LoRA at seq 2048, llama-3.1-8b NF4 inference, gpt2 full fine-tune.


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: f"{kw['model']}-{kw['method'].value}")
def test_closed_form_matches_the_replay(kw):
    """The closed form gives what replaying its own story event by event (allocator.trace) gives: within 2% of the
    reserved pool, and the replay's allocated peak is the plan's within 1%."""
    kw = dict(kw)
    cfg = PlanConfig(model=load_model(kw.pop("model")).spec, **kw)
    p = plan(cfg)
    a = A.replay(A.trace(cfg, p.components))
    assert abs(a.peak_reserved - p.peak_reserved_bytes) <= 0.02 * a.peak_reserved, (a.peak_reserved / MiB,
                                                                                   p.peak_reserved_bytes / MiB)
    assert abs(a.peak_allocated - p.peak_allocated_bytes) <= 0.01 * p.peak_allocated_bytes


def test_reserve_is_zero_on_a_cpu_and_grows_with_the_shape():
    m = load_model("qwen2.5-7b").spec
    cpu = PlanConfig(model=m, method=Method.QLORA, precision=Precision.NF4, device=DeviceMode.CPU)
    assert A.allocator(cpu, 10 ** 9, {}) == (0, 0)
    prev = 0
    for s in (256, 512, 1024, 2048, 4096):
        cfg = PlanConfig(model=m, method=Method.QLORA, precision=Precision.NF4, grad_checkpointing=True, seq=s)
        p = plan(cfg).peak_reserved_bytes
        assert p >= prev
        prev = p


def test_cuda_context_is_gpu_data_where_measured():
    cfg = PlanConfig(model=load_model("smollm2-135m").spec, method=Method.LORA)
    p = plan(cfg)
    assert p.components["cuda_context"] == A.CUDA_CONTEXT_BYTES  # no GPU: the default
    t4 = load_gpu("t4")
    f = fit_gpu(cfg, t4, suggest=False)
    assert t4.cuda_context_bytes == 147_718_144 == int(140.875 * MiB)
    assert f.plan.components["cuda_context"] == t4.cuda_context_bytes
    p = plan(for_gpu(cfg, t4))  # (the T4 runs SDPA without FlashAttention: fit assumption 5)
    assert f.plan.process_bytes == p.process_bytes - A.CUDA_CONTEXT_BYTES + t4.cuda_context_bytes


@pytest.mark.parametrize("name", list_gpus())
def test_gpu_context_entries_are_sourced_and_bounded(name):
    doc = gpu_doc(name).get("cuda_context_bytes")
    g = load_gpu(name)
    if doc is None:
        assert g.cuda_context_bytes is None
        return
    assert doc["basis"] in ("measured", "datasheet", "assumed") and len(doc["source"]) > 20 and doc.get("cuda")
    assert 64 * MiB <= g.cuda_context_bytes <= 2048 * MiB


def test_plan_shares_one_shape_free_key_with_the_allocator():
    """memory.plan hands the allocator its cached shape-free part (``owner``), so the allocator's cache need not
    hash every field again: both caches name the same fields, and the allocator gives the same reserve through the
    owner's entry as without it."""
    import dataclasses as _dc

    from quantlab.planner import allocator as A
    from quantlab.planner import memory as M
    from quantlab.profiles import load_model
    from quantlab.specs import PlanConfig

    assert A._KEY_FIELDS == M._KEY_FIELDS
    spec = load_model("llama-3.1-8b").spec
    cfg = PlanConfig.from_dict({"method": "lora", "precision": "bf16", "compute_dtype": "bf16", "batch": 3,
                                "seq": 1024}, model=spec)
    for c in (cfg, _dc.replace(cfg, batch=5), _dc.replace(cfg, method=M.Method.FULL, seq=333)):
        comps, _, _, planned = M._shaped(M._static(c), c, c.batch, c.seq)
        st = M._static(c)
        with_key = A.allocator(c, planned, comps, key=M._shape_free_key(c), owner=st)
        A._kept_tables.cache_clear()
        assert with_key == A.allocator(c, planned, comps) and with_key[0] > 0
        # the owner's entry answers only for the gradient and optimizer bytes it was made with
        other = {**comps, "optimizer": comps["optimizer"] + 4096}
        assert A.allocator(c, planned, other, owner=st) == A.allocator(c, planned, other)
        assert M.plan(c).components["allocator_reserve"] >= with_key[0]
