"""QAT (quantlab/lab/qat.py): the fake-quantized forward is what the converted model computes, and what fake
quantization saves for backward is counted (torchao 0.18, ``torchao/quantization/qat/fake_quantizer.py``:
``IntxFakeQuantizer.forward`` -> ``_fake_quantize_affine`` in ``quant_primitives.py``)."""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from quantlab.lab.model import tiny_model  # noqa: E402
from quantlab.lab.qat import convert_qat, fake_quantized_linears, prepare_qat, ptq  # noqa: E402
from quantlab.lab.saved_tensors import count_saved  # noqa: E402

GROUP = 32


def _model(layers=2):
    torch.manual_seed(0)
    return tiny_model("llama", num_hidden_layers=layers)


def _block_linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]


def test_prepare_swaps_every_block_linear_and_keeps_lm_head():
    m = _model()
    n = len(_block_linears(m))
    q = prepare_qat(m, GROUP)
    assert fake_quantized_linears(q) == n == 7 * 2  # q, k, v, o, gate, up, down per layer
    assert type(q.lm_head) is torch.nn.Linear


def test_fake_quantized_forward_equals_the_converted_model():
    """What QAT trains is what is served: the fake-quantized logits equal the int4 weight-only model's."""
    q = prepare_qat(_model(), GROUP).eval()
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        fake = q(x).logits
        real = convert_qat(copy.deepcopy(q), GROUP)(x).logits
    assert fake_quantized_linears(q) > 0
    torch.testing.assert_close(real, fake, rtol=1e-5, atol=1e-5)


def test_fake_quantization_changes_the_forward():
    """The fake quantization is not a no-op (else the test above proves nothing): the fp32 model differs from it
    by more than the tolerance, and PTQ of the fp32 model equals the fake-quantized forward of the same weights."""
    m = _model().eval()
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        base = m(x).logits
        fake = prepare_qat(copy.deepcopy(m), GROUP)(x).logits
        post = ptq(copy.deepcopy(m), GROUP)(x).logits
    assert (base - fake).abs().max().item() > 1e-3
    torch.testing.assert_close(post, fake, rtol=1e-5, atol=1e-5)


def test_fake_quantization_saves_two_weight_copies_and_two_group_tensors_per_linear():
    """Per fake-quantized linear of W = out x in weights, training saves (besides what nn.Linear saves): the
    grouped ``w / scale + zero_point`` (out, in/g, g) that the rounding's straight-through backward keeps, the
    dequantized weight the matmul keeps for the input gradient (a new tensor, not the parameter), and two
    (out, in/g, 1) per-group tensors (scale, zero point): 2·4·W + 2·4·W/g bytes in fp32."""
    m = _model().train()
    x = torch.randint(0, 256, (2, 32))
    with count_saved(m) as plain:
        m(x, labels=x).loss
    q = prepare_qat(copy.deepcopy(m), GROUP).train()
    with count_saved(q) as qat:
        q(x, labels=x).loss
    w = sum(mod.weight.numel() for _, mod in _block_linears(m))
    assert qat.bytes - plain.bytes == 2 * 4 * w + 2 * 4 * (w // GROUP)


def test_group_size_must_divide_the_inputs():
    from quantlab.errors import QuantlabError

    with pytest.raises(QuantlabError, match="does not divide"):
        prepare_qat(_model(), 48)
