"""Quantization-aware training with torchao's QAT flow, and the PTQ baseline it is compared with.

1. ``prepare``: ``quantize_(model, QATConfig(base, step="prepare"))`` swaps the block linears for
   ``FakeQuantizedLinear``: in the forward pass the weights are rounded to int4 in ``group_size`` groups
   (symmetric, one scale per group) and dequantized again; gradients pass straight through the rounding, so the
   fine-tune learns weights that survive it.
2. ``convert``: ``QATConfig(base, step="convert")`` then applies the real quantization with ``base`` =
   ``IntxWeightOnlyConfig(int4, PerGroup(group_size))``: weight-only int4, the same config PTQ uses. The fake
   quantization of (1) computes exactly what the converted model computes (checked in tests/lab/test_qat.py), so
   what QAT trains is what is served.
3. The PTQ baseline is the same fine-tune without fake quantization, quantized afterwards with the same ``base``:
   the difference in task score and perplexity is what QAT recovered. lm_head (tied to the embedding in small
   models) and the embeddings stay in fp32 in both.
4. On a CPU torchao keeps int4 values unpacked, one int8 per weight (``IntxUnpackedToInt8Tensor``): the converted
   model's weight bytes are 8-bit, not 4-bit; the quality is that of int4.
"""

from __future__ import annotations

BITS = 4


def _base(group_size: int):
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def _linear_filter(mod, fqn: str) -> bool:
    import torch

    return isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn


def _check_groups(model, group_size: int) -> None:
    import torch

    from quantlab.errors import QuantlabError

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and _linear_filter(mod, name) and mod.in_features % group_size:
            raise QuantlabError(f"--qat-group-size {group_size} does not divide {name}'s {mod.in_features} inputs")


def prepare_qat(model, group_size: int = 32):
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    _check_groups(model, group_size)
    quantize_(model, QATConfig(_base(group_size), step="prepare"), filter_fn=_linear_filter)
    return model


def convert_qat(model, group_size: int = 32):
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(_base(group_size), step="convert"), filter_fn=_linear_filter)
    return model


def ptq(model, group_size: int = 32):
    from torchao.quantization import quantize_

    _check_groups(model, group_size)
    quantize_(model, _base(group_size), filter_fn=_linear_filter)
    return model


def fake_quantized_linears(model) -> int:
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    return sum(isinstance(m, FakeQuantizedLinear) for m in model.modules())
