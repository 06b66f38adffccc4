"""The planner's QAT mode (memory.py assumption 18) against torchao 0.18's fake quantization, measured: what
``FakeQuantizedLinear`` saves for backward beyond nn.Linear (issue #16)."""

import copy
import dataclasses

import pytest

from quantlab.planner import plan
from quantlab.specs import DeviceMode, DType, Method, ModelSpec, PlanConfig, Precision, SpecError

GROUP = 32


def _spec(model) -> ModelSpec:
    return ModelSpec.from_hf_config(model.config.to_dict(), name="tiny-llama")


def test_planned_qat_copies_equal_the_measured_ones():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from quantlab.lab.model import tiny_model
    from quantlab.lab.qat import prepare_qat
    from quantlab.lab.saved_tensors import count_saved

    torch.manual_seed(0)
    m = tiny_model("llama", num_hidden_layers=2).train()
    x = torch.randint(0, m.config.vocab_size, (2, 32))
    with count_saved(m) as plain:
        m(x, labels=x).loss
    q = prepare_qat(copy.deepcopy(m), GROUP).train()
    with count_saved(q) as qat:
        q(x, labels=x).loss
    cfg = PlanConfig(model=_spec(m), method=Method.FULL, precision=Precision.FP32, compute_dtype=DType.FP32,
                     batch=2, seq=32, device=DeviceMode.CPU)
    planned = plan(dataclasses.replace(cfg, qat_group=GROUP)).components["activations"] \
        - plan(cfg).components["activations"]
    assert planned == qat.bytes - plain.bytes > 0


def test_qat_refuses_what_it_does_not_plan():
    from quantlab.profiles import load_model

    m = load_model("llama-3.2-1b").spec
    for kw, word in ((dict(method=Method.LORA), "--method full or freeze"), (dict(method=Method.INFERENCE), "full"),
                     (dict(method=Method.FULL, qat_group=48), "does not divide")):
        with pytest.raises(SpecError, match=word):
            PlanConfig(model=m, **{"qat_group": 32, **kw})
    p = plan(PlanConfig(model=m, method=Method.FULL, qat_group=32))
    assert any("QAT" in n for n in p.notes)
