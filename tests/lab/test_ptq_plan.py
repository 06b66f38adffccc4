"""lab/ptq: every PTQ method names its weights in PlanConfig's Precision values, and plans through from_dict."""

import pytest

from quantlab.errors import QuantlabError
from quantlab.lab.ptq import REGISTRY, PTQMethod
from quantlab.profiles import load_model
from quantlab.specs import DeviceMode, DType, Method, PlanConfig, Precision

SPEC = load_model("smollm2-135m").spec


@pytest.mark.parametrize("name", [n for n, m in REGISTRY.items() if m.precision != "intx4"])
def test_method_plans_its_weights(name):
    m = REGISTRY[name]
    pc = PlanConfig.from_dict(m.plan_dict(), model=SPEC)
    assert pc.method is Method.INFERENCE and pc.device is DeviceMode.CPU and pc.seq == 1
    assert pc.precision is Precision(m.precision) and pc.double_quant == m.double_quant
    assert pc.compute_dtype is (DType(m.precision) if m.precision in ("fp16", "bf16") else DType.FP32)


def test_unknown_precision_is_refused():
    with pytest.raises(QuantlabError, match="not a planner precision"):
        PTQMethod("x", "cast", "int3")
