"""Quantization-aware training with torchao's QAT flow, and the PTQ baseline it is compared with.

1. ``prepare``: ``quantize_(model, QATConfig(base, step="prepare"))`` swaps the block linears for fake-quantized
   ones (weights rounded to int4 in ``group_size`` groups in the forward pass, straight-through gradients), so the
   fine-tune learns weights that survive the rounding.
2. ``convert``: ``QATConfig(base, step="convert")`` then applies the real quantization, ``base`` =
   ``IntxWeightOnlyConfig(int4, PerGroup(group_size))``: weight-only int4, the same config PTQ uses.
3. The PTQ baseline is the same fine-tune without fake quantization, quantized afterwards with the same ``base``:
   the difference in task score and perplexity is what QAT recovered. lm_head (tied to the embedding in small
   models) is left out of both.
"""

from __future__ import annotations


def _base(group_size: int):
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def _linear_filter(mod, fqn: str) -> bool:
    import torch

    return isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn


def prepare_qat(model, group_size: int = 32):
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(_base(group_size), step="prepare"), filter_fn=_linear_filter)
    return model


def convert_qat(model, group_size: int = 32):
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(_base(group_size), step="convert"), filter_fn=_linear_filter)
    return model


def ptq(model, group_size: int = 32):
    from torchao.quantization import quantize_

    quantize_(model, _base(group_size), filter_fn=_linear_filter)
    return model
