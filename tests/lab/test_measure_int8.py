"""The LLM.int8 row scales are counted before and after bitsandbytes moves them to the module state."""

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")


def test_int8_row_scales_are_counted_after_the_first_forward():
    from quantlab.lab.measure import model_bytes

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    m = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    m.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    m.bias = torch.nn.Parameter(lin.bias.data.clone())
    model = torch.nn.Sequential(m.to("cpu"))
    before = model_bytes(model)
    assert before.quant_constants == 32 * 4  # one fp32 scale per output row, on weight.SCB
    model(torch.randn(2, 64))
    assert getattr(m.weight, "SCB", None) is None and m.state.SCB is not None  # bitsandbytes moved it
    after = model_bytes(model)
    assert (after.total, after.quant_constants) == (before.total, before.quant_constants)
