"""lab/finetune_plan: a FinetuneConfig holds a PlanConfig plus the lab's own settings; it converts to and from a plan
and a flat dict without loss, and the lab refuses in one line what it cannot run."""

import dataclasses

import pytest

from quantlab.errors import QuantlabError
from quantlab.lab.finetune import FinetuneConfig
from quantlab.lab.finetune_plan import finetune_config, from_dict, from_plan_config, to_plan_config
from quantlab.specs import ALL_LINEAR, DType, Method, ModelSpec, PlanConfig, Precision, TrainingPrecision

TINY = ModelSpec(name="tiny", model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, vocab_size=100, num_key_value_heads=2)
# (weights, compute dtype, training precision): the precisions the lab trains in
PRECISIONS = [("fp32", "fp32", "pure"), ("bf16", "bf16", "pure"), ("fp16", "fp16", "pure"),
              ("fp32", "bf16", "amp"), ("fp32", "fp16", "amp")]
LAB = dict(max_steps=7, lr=0.01, schedule="linear", warmup_steps=2, eval_every=3, patience=5, seed=4, eval_items=3,
           max_new_tokens=9, prompt_loss_weight=0.5)


@pytest.mark.parametrize("weights, compute, tp", PRECISIONS)
@pytest.mark.parametrize("method", ["full", "lora", "qlora", "qat"])
def test_round_trip_through_plan_config_and_dict(weights, compute, tp, method):
    kw = dict(method=method, compute_dtype=compute, training_precision=tp, packing=True, seq=32, batch=2, **LAB)
    if method == "qlora":
        kw.update(precision="fp4", double_quant=True, lora_targets=(ALL_LINEAR,))
    else:
        kw.update(precision=weights)
    if method == "lora":
        kw.update(lora_targets=(ALL_LINEAR,), lora_r=4)
    cfg = finetune_config(spec=TINY, device="cpu", **kw)
    pc = to_plan_config(cfg)
    assert pc is cfg.plan and pc.model is TINY
    assert (pc.compute_dtype, pc.training_precision) == (DType(compute), TrainingPrecision(tp))
    assert pc.precision is (Precision.FP4 if method == "qlora" else Precision(weights))
    assert pc.method is Method("full" if method == "qat" else method) and cfg.method == method
    assert (pc.batch, pc.seq, pc.padding_mask, cfg.max_len) == (2, 32, False, 32)
    assert pc.grad_checkpointing is (method == "qlora")  # the QLoRA recipe, resolved by PlanConfig.from_dict
    back = from_plan_config(pc, model=cfg.model, qat=method == "qat", **LAB)
    assert back == cfg
    assert from_dict(cfg.to_dict(), spec=TINY) == cfg
    # the measured step's own shape and device, planned beside it
    step = to_plan_config(cfg, batch=3, seq=20, padded=True, device="cuda")
    assert (step.batch, step.seq, step.padding_mask, step.device.value) == (3, 20, True, "cuda")
    assert dataclasses.replace(step, batch=2, seq=32, padding_mask=False, device=pc.device) == pc


def test_defaults_and_the_lab_names():
    cfg = finetune_config(spec=TINY, device="cpu")
    d = PlanConfig.from_dict({"method": "qlora"}, model=TINY)
    assert cfg.plan.lora_targets == d.lora_targets and cfg.plan.lora_r == d.lora_r
    assert (cfg.method, cfg.batch, cfg.grad_accum, cfg.plan.grad_checkpointing) == ("qlora", 8, 1, True)
    assert finetune_config(spec=TINY, device="cpu", grad_checkpointing=False).plan.grad_checkpointing is False
    assert finetune_config(spec=TINY, device="cpu", max_len=64).plan.seq == 64  # the lab's old name for seq
    assert finetune_config(spec=TINY, device="cpu", data="x.jsonl").task is None


@pytest.mark.parametrize("change, says", [
    (dict(compute_dtype=DType.FP8), "does not train in fp8"),
    (dict(training_precision=TrainingPrecision.AMP, compute_dtype=DType.FP32), "plain fp32 training"),
    (dict(precision=Precision.FP32, compute_dtype=DType.BF16), "keeps its weights in bf16, not fp32"),
    (dict(precision=Precision.NF4), "trains unquantized weights, not nf4"),
    (dict(num_gpus=2), "runs one process"),
])
def test_plans_the_lab_cannot_run(change, says):
    pc = PlanConfig(model=TINY, method=Method.LORA, **change)
    with pytest.raises(QuantlabError, match=says):
        from_plan_config(pc)
    with pytest.raises(QuantlabError, match=says):  # every way in checks it: the config's own constructor
        FinetuneConfig(plan=pc, packing=True)


def test_lab_settings_are_checked_once_and_plan_fields_by_plan_config():
    with pytest.raises(QuantlabError, match="unknown fine-tune setting 'lora_rank'"):
        finetune_config(spec=TINY, device="cpu", lora_rank=8)
    with pytest.raises(QuantlabError, match="lora-r 999 is larger"):  # PlanConfig's own check
        finetune_config(spec=TINY, device="cpu", method="lora", lora_r=999)
    with pytest.raises(QuantlabError, match="max-steps must be a positive integer"):
        finetune_config(spec=TINY, device="cpu", max_steps=0)
    with pytest.raises(QuantlabError, match="qat is a full fine-tune"):
        FinetuneConfig(plan=PlanConfig(model=TINY, method=Method.LORA, precision=Precision.FP32,
                                       compute_dtype=DType.FP32), qat=True, packing=True)
    with pytest.raises(QuantlabError, match="padding_mask is the lab's batch layout"):
        FinetuneConfig(plan=PlanConfig(model=TINY, method=Method.FULL), packing=False)


def test_a_run_stored_before_the_plans_flags_reads_back_as_the_same_run():
    """Harness-2 rows named a precision recipe (amp-bf16: fp32 master weights, bf16 autocast) and quant_type."""
    old = dict(method="qlora", model="smollm2-135m", task="json-extract", data=None, lora_r=16, lora_alpha=32,
               lora_dropout=0.0, lora_targets=["q_proj", "v_proj"], quant_type="fp4", double_quant=True,
               kbit_upcast=True, freeze_last_layers=2, freeze_modules=[], num_virtual_tokens=20, qat_group_size=32,
               optimizer="adamw", precision="amp-bf16", lr=None, schedule="cosine", warmup_steps=5, batch=8,
               grad_accum=1, max_steps=40, max_len=128, pad_to_max_len=False, packing=False,
               grad_checkpointing=False, attn="sdpa", eval_every=10, patience=3, prompt_loss_weight=0.0, seed=0,
               eval_items=40, max_new_tokens=32, harness=2)
    cfg = from_dict(old, spec=TINY, device="cpu")
    pc = cfg.plan
    assert (pc.precision, pc.compute_dtype, pc.training_precision, pc.double_quant) == \
        (Precision.FP4, DType.BF16, TrainingPrecision.AMP, True)
    assert (pc.seq, pc.batch, pc.grad_checkpointing, cfg.max_steps) == (128, 8, False, 40)
    full = from_dict(dict(old, method="full", precision="bf16", double_quant=False), spec=TINY, device="cpu")
    assert (full.plan.precision, full.plan.compute_dtype) == (Precision.BF16, DType.BF16)
