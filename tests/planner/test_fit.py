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
