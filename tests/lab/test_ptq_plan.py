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


def _ptq_args(argv):
    from quantlab.cli import build_parser

    return build_parser().parse_args(["lab", "ptq"] + argv)


def _plan_config(argv):
    from quantlab.cli import build_parser
    from quantlab.commands.flags import config_dict_from_args

    args = build_parser().parse_args(["plan", "--model", "smollm2-135m"] + argv)
    return PlanConfig.from_dict(config_dict_from_args(args), model=SPEC)


@pytest.mark.parametrize("argv, names", [
    ([], ["fp32", "bf16", "int8", "nf4"]),  # the default list: the same methods (and stored rows) as before
    (["--precisions", "nf4,fp4", "--double-quant"], ["nf4-dq", "fp4-dq"]),
    (["--precisions", "fp16,int4", "--group-size", "64"], ["fp16", "gptq-int4"]),
    (["--precisions", "int4"], ["gptq-int4-g128"]),  # PlanConfig's group size when none is given
    (["--methods", "nf4-dq,torchao-intx4"], ["nf4-dq", "torchao-intx4"]),  # --methods: the names, as before
])
def test_precisions_name_the_methods(argv, names):
    from quantlab.commands.lab_ptq import methods_from_args

    assert [m.name for m in methods_from_args(_ptq_args(argv))] == names


@pytest.mark.parametrize("precision, extra", [("fp32", []), ("bf16", []), ("int8", []), ("nf4", ["--double-quant"]),
                                              ("fp4", []), ("int4", ["--group-size", "32"])])
def test_same_flags_same_plan_config_as_plan(precision, extra):
    """lab ptq --precisions P with the plan's --double-quant / --group-size measures the PlanConfig that
    `quantlab plan --precision P` with the same flags resolves, for the lab's workload (inference, one token of
    context, on the CPU, in the lab's compute dtype)."""
    from quantlab.commands.lab_ptq import methods_from_args

    (m,) = methods_from_args(_ptq_args(["--precisions", precision] + extra))
    compute = precision if precision in ("fp16", "bf16") else "fp32"
    want = _plan_config(["--precision", precision, "--seq", "1", "--device", "cpu", "--compute-dtype", compute] + extra)
    assert PlanConfig.from_dict(m.plan_dict(), model=SPEC) == want


@pytest.mark.parametrize("argv, says", [
    (["--precisions", "fp32,int8", "--double-quant"], "--double-quant applies to nf4/fp4"),
    (["--precisions", "nf4", "--group-size", "64"], "--group-size applies to int4"),
    (["--methods", "nf4", "--double-quant"], "a --methods name fixes its own"),
    (["--precisions", "fp8"], "no fp8 weight loader"),
    (["--precisions", "int3"], "unknown precision 'int3' in --precisions"),
    (["--precisions", ","], "--precisions is empty"),
])
def test_flags_no_format_uses_are_one_line_errors(argv, says):
    from quantlab.commands.lab_ptq import methods_from_args

    with pytest.raises(QuantlabError, match=says):
        methods_from_args(_ptq_args(argv))


def test_help_shows_the_defaults():
    import re

    from quantlab.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if hasattr(a, "choices") and a.choices and "lab" in a.choices).choices["lab"]
    lab = next(a for a in sub._actions if hasattr(a, "choices") and a.choices and "ptq" in a.choices).choices["ptq"]
    text = re.sub(r"\s+", " ", lab.format_help())
    for t in ("(default: fp32,bf16,int8,nf4)", "--double-quant", "(default: off)", "--group-size N",
              "(default: 128)", "gptq-int4 GPTQ 4-bit, group 64", "(default: smollm2-135m)"):
        assert t in text, t


def test_validate_lab_sets_the_planners_weight_bytes_beside_a_ptq_row():
    """``validate_lab.ptq_predictions`` (what ``quantlab lab ptq`` passes to run_ptq): the planner's weights +
    quantization constants for the method's plan on the model's profile; None where the planner has no model of
    the format (torchao's layouts) or no profile for the model."""
    from quantlab import planner, validate_lab
    from quantlab.lab.model import ModelSource

    src = ModelSource("smollm2-135m", "embedded", "/nonexistent")  # only its profile is read
    assert src.profile_name == "smollm2-135m"
    for name in ("fp32", "int8", "nf4"):
        p = planner.plan(PlanConfig.from_dict(REGISTRY[name].plan_dict(), model=SPEC))
        want = p.components["weights"] + p.components.get("quant_constants", 0)
        assert validate_lab.ptq_predictions(REGISTRY[name], src) == {"pred_weight_bytes": want}
    got = {n: validate_lab.ptq_weight_bytes(REGISTRY[n], src) for n in ("fp32", "int8", "nf4")}
    assert got["nf4"] < got["int8"] < got["fp32"]
    assert validate_lab.ptq_weight_bytes(REGISTRY["torchao-int8"], src) is None
    assert validate_lab.ptq_weight_bytes(REGISTRY["nf4"], ModelSource("mine", "folder", "/nonexistent")) is None
