"""lab/finetune_plan: the lab's precision recipes map onto PlanConfig's Precision/DType/TrainingPrecision once,
and a lab config and a plan config convert into each other."""

import pytest

from quantlab.errors import QuantlabError
from quantlab.lab.finetune import PRECISION_RECIPES, FinetuneConfig
from quantlab.lab.finetune_plan import from_plan_config, to_plan_config
from quantlab.specs import ALL_LINEAR, DType, Method, ModelSpec, PlanConfig, Precision, TrainingPrecision

TINY = ModelSpec(name="tiny", model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, vocab_size=100, num_key_value_heads=2)


@pytest.mark.parametrize("precision", list(PRECISION_RECIPES))
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_precision_recipes_round_trip(precision, method):
    cfg = FinetuneConfig(method=method, precision=precision, lora_targets=(ALL_LINEAR,), packing=True, max_len=32,
                         batch=2, quant_type="fp4", double_quant=method == "qlora")
    pc = to_plan_config(cfg, TINY)
    storage, compute, tp = PRECISION_RECIPES[precision]
    assert (pc.compute_dtype, pc.training_precision) == (compute, tp)
    assert pc.precision is (Precision.FP4 if method == "qlora" else storage)
    assert (pc.batch, pc.seq, pc.padding_mask, pc.lora_targets) == (2, 32, False, (ALL_LINEAR,))
    back = from_plan_config(pc, model=cfg.model)
    assert back.precision == precision and back.method == method and back.lora_targets == (ALL_LINEAR,)
    assert to_plan_config(back, TINY) == pc


def test_the_recipes_are_the_planners_values():
    assert PRECISION_RECIPES["amp-bf16"] == (Precision.FP32, DType.BF16, TrainingPrecision.AMP)
    assert FinetuneConfig().lora_targets == PlanConfig(model=TINY).lora_targets


@pytest.mark.parametrize("change, says", [
    (dict(compute_dtype=DType.FP8), "does not train in fp8"),
    (dict(training_precision=TrainingPrecision.AMP, compute_dtype=DType.FP32), "plain fp32 training"),
    (dict(precision=Precision.FP32, compute_dtype=DType.BF16), "keeps its weights in bf16, not fp32"),
])
def test_plans_the_lab_cannot_run(change, says):
    pc = PlanConfig(model=TINY, method=Method.LORA, **change)
    with pytest.raises(QuantlabError, match=says):
        from_plan_config(pc)
