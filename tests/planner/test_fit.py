import dataclasses

from quantlab.planner import fit, plan
from quantlab.profiles import load_gpu, load_model
from quantlab.specs import Method, PlanConfig, Precision


def test_fit_verdict_margin_and_limits():
    cfg = PlanConfig(model=load_model("llama-2-7b").spec, method=Method.INFERENCE, seq=2048)
    gpu = load_gpu("a100-80gb")
    f = fit(cfg, gpu)
    assert f.fits and f.margin_bytes == gpu.memory_bytes - plan(cfg).process_bytes
    assert f.max_batch > 1
    assert plan(dataclasses.replace(cfg, batch=f.max_batch)).process_bytes <= gpu.memory_bytes
    assert plan(dataclasses.replace(cfg, batch=f.max_batch + 1)).process_bytes > gpu.memory_bytes
    assert f.max_seq >= 2048 and f.min_gpus == 1


def test_not_fitting_gives_single_changes_that_fit():
    cfg = PlanConfig(model=load_model("8b").spec, method=Method.LORA, seq=2048)
    gpu = load_gpu("rtx-4090")
    f = fit(cfg, gpu)
    assert not f.fits and f.margin_bytes < 0
    texts = [t for t, _ in f.suggestions]
    assert any("checkpointing" in t for t in texts)
    for _, b in f.suggestions:
        assert b <= gpu.memory_bytes


def test_min_gpus_with_zero3():
    cfg = PlanConfig(model=load_model("70b").spec, method=Method.FULL, seq=1024, grad_checkpointing=True)
    f = fit(cfg, load_gpu("h100"))
    assert not f.fits and f.min_gpus and f.min_gpus > 1 and f.min_gpus_sharding == "ZeRO-3"


def test_qlora_13b_fits_24gb_with_checkpointing():
    cfg = PlanConfig(model=load_model("13b").spec, method=Method.QLORA, precision=Precision.NF4, seq=1024,
                     grad_checkpointing=True)
    assert fit(cfg, load_gpu("rtx-4090")).fits


def test_fit_plans_the_gpu_without_flash_attention():
    """A T4 has no bf16 and no FlashAttention: a GQA model's SDPA takes the math kernel there, so the same LoRA plan
    needs more memory on a T4 than the configuration alone says (fit.for_gpu)."""
    cfg = PlanConfig(model=load_model("8b").spec, method=Method.LORA, seq=1024)
    f = fit(cfg, load_gpu("t4"))
    assert f.plan.config.flash_attention is False
    assert f.plan.process_bytes > plan(cfg).process_bytes
    assert fit(cfg, load_gpu("a100-80gb")).plan.process_bytes == plan(cfg).process_bytes


def _sweep():
    """Models of every family, every kind of method, GPUs small to large, both attention kernels, switches."""
    import itertools

    from quantlab.specs import Attention, SpecError

    for mn, meth, gn, at, b, s, gc in itertools.product(
            ("smollm2-135m", "8b", "70b", "gemma-2-9b", "mixtral-8x7b", "qwen2.5-7b", "gpt2"),
            (Method.INFERENCE, Method.FULL, Method.LORA, Method.QLORA), ("rtx-a6000", "t4", "h100-sxm"),
            (Attention.SDPA, Attention.EAGER), (1, 4), (512, 2048), (False, True)):
        if gc and meth is Method.INFERENCE:
            continue
        m = load_model(mn).spec
        try:  # a configuration the constructor refuses (LoRA targets GPT-2 does not have) is skipped too
            cfg = PlanConfig(model=m, method=meth, precision=Precision.NF4 if meth is Method.QLORA else Precision.BF16,
                             attn=at, batch=b, seq=min(s, m.max_position_embeddings), grad_checkpointing=gc)
            p = plan(cfg)
        except SpecError:
            continue
        yield cfg, load_gpu(gn), p


def test_closed_forms_equal_the_search_on_a_sweep():
    """fit's closed forms (checked at the boundary) give exactly the reference search's largest batch and longest
    sequence, and the reference answer is a true boundary (it fits, one more does not)."""
    from quantlab.planner.fit import _largest, _largest_closed

    n = 0
    for cfg, gpu, p in _sweep():
        for field, cap in (("batch", 1 << 16), ("seq", max(cfg.model.max_position_embeddings, cfg.seq))):
            ref = _largest(dataclasses.replace(cfg, **{field: 1}), gpu, field, cap)
            got = _largest_closed(cfg, gpu, field, cap, known=(getattr(cfg, field), p.process_bytes))
            assert got == ref, (cfg.model.name, cfg.method, gpu.name, cfg.attn, cfg.batch, cfg.seq, field)
            n += 1
    assert n > 1000


def test_closed_form_small_caps_and_nothing_fits():
    from quantlab.planner.fit import _largest, _largest_closed

    cfg = PlanConfig(model=load_model("8b").spec, method=Method.LORA, seq=2048)
    t4, h100 = load_gpu("t4"), load_gpu("h100-sxm")
    assert _largest_closed(cfg, t4, "batch", 1 << 16) == _largest(cfg, t4, "batch", 1 << 16) == 0
    small = dataclasses.replace(cfg, model=load_model("smollm2-135m").spec)
    for cap in (1, 2, 3, 7):
        assert _largest_closed(small, h100, "batch", cap) == _largest(small, h100, "batch", cap) == cap
        assert _largest_closed(cfg, h100, "batch", cap) == _largest(cfg, h100, "batch", cap) <= cap


def test_qlora_suggestion_follows_pefts_kbit_recipe():
    """Suggesting QLoRA for a full fine-tune that does not fit plans QLoRA as PEFT runs it (checkpointing on,
    prepare_model_for_kbit_training), not with the full fine-tune's checkpointing setting."""
    from quantlab.planner import fit as fit_fn
    from quantlab.planner import plan as plan_fn
    from quantlab.profiles import load_gpu, load_model
    from quantlab.specs import Method, PlanConfig, Precision

    spec = load_model("llama-3.1-8b").spec
    cfg = PlanConfig.from_dict({"method": "full"}, model=spec)
    assert not cfg.grad_checkpointing
    f = fit_fn(cfg, load_gpu("rtx-4090"))
    assert not f.fits
    (text, b), = [s for s in f.suggestions if s[0].startswith("QLoRA")]
    assert "checkpointing on" in text
    recipe = PlanConfig.from_dict({"method": "qlora"}, model=spec)
    assert recipe.grad_checkpointing and b == plan_fn(recipe).process_bytes
    assert recipe.precision is Precision.NF4 and recipe.method is Method.QLORA
