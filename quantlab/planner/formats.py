"""Weight formats: how many bytes a linear layer's weight takes in each storage precision.

"Model the precision, not a divisor": a format knows its bits per weight, its block (or group) size and
the bytes of the constants each block carries. Only the linears of the decoder blocks take a k-bit format;
embeddings, lm_head and norms stay in the load dtype (bitsandbytes skips ``lm_head`` by default and never
touches ``nn.Embedding``/norms; GPTQ/AWQ quantize block linears only).

Assumptions and sources:

1. NF4/FP4 (bitsandbytes 0.50 ``Params4bit``, ``functional.quantize_4bit``): two weights per uint8, one
   absmax per 64-weight block in fp32, and the 16-entry fp32 code table (``get_4bit_type`` builds a new
   tensor for every weight: 64 bytes each). With double quantization (``compress_statistics``) the absmax is
   itself quantized to uint8 (``quantize_blockwise(absmax - offset, blocksize=256)``) with one fp32 absmax
   per 256 absmax values, one fp32 offset and a copy of the 256-entry fp32 dynamic code table per weight
   (``QuantState.state2``). Blocks are over the flattened weight: ceil(n / 64). Checked to the byte against
   the lab's tensor count of the embedded SmolLM2 (reports/ptq-cpu).
2. INT8 (LLM.int8, bitsandbytes ``Int8Params``): one int8 per weight and one fp32 scale per output row
   (``SCB``).
3. INT4 (GPTQ/AWQ-style, as GPTQModel/auto-gptq pack it): ``qweight`` int32 packs 8 weights (0.5 byte
   each), ``qzeros`` int32 packs 8 zero points per group and output column, ``scales`` fp16 per group and
   output column, ``g_idx`` int32 per input row, and the torch kernel's shift table ``wf`` (32 / bits int32
   values: 32 bytes for 4-bit; ``TorchQuantLinear``; the CUDA kernels repack, not modelled).
4. FP8 (e4m3, torchao float8 weight-only): one byte per weight and one fp32 scale per output row.
5. Biases of quantized linears stay in the load dtype.
"""

from __future__ import annotations

from collections import namedtuple

from quantlab.specs import Precision

NF4_BLOCK = 64
DQ_BLOCK = 256  # double quantization: one fp32 absmax per 256 (uint8) absmax values
CODE4_BYTES = 16 * 4  # the 4-bit code table (16 fp32) each QuantState holds
DQ_CODE_BYTES = 256 * 4  # the 8-bit dynamic code table (256 fp32) of the nested state
GPTQ_WF_BYTES = 32  # GPTQModel torch kernel shift table, 4-bit: 8 int32


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class WeightFormat(namedtuple("WeightFormat", "precision bits block_size double_quant", defaults=(None, False))):
    """A storage format: ``precision``, ``bits``, ``block_size`` (the NF4/FP4 block or INT4 group; None) and
    ``double_quant`` (False). A named tuple: a frozen value without a dataclass's class-creation cost at start-up."""

    __slots__ = ()

    def linear_bytes(self, in_features: int, out_features: int, dtype_bytes: int) -> int:
        """Bytes of one linear's weight (no bias) stored in this format.

        ``dtype_bytes`` is the load dtype, used by the float formats.
        """
        n = in_features * out_features
        p = self.precision
        if p in (Precision.FP32, Precision.FP16, Precision.BF16):
            return n * {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}[p]
        if p in (Precision.NF4, Precision.FP4):
            blocks = _ceil_div(n, NF4_BLOCK)
            packed = _ceil_div(n, 2)
            if not self.double_quant:
                return packed + 4 * blocks + CODE4_BYTES
            return packed + blocks + 4 * _ceil_div(blocks, DQ_BLOCK) + 4 + DQ_CODE_BYTES + CODE4_BYTES
        if p is Precision.INT8:
            return n + 4 * out_features
        if p is Precision.INT4:
            g = self.block_size or 128
            groups = _ceil_div(in_features, g)
            return _ceil_div(n, 2) + groups * _ceil_div(out_features, 8) * 4 + groups * out_features * 2 \
                + in_features * 4 + GPTQ_WF_BYTES
        if p is Precision.FP8:
            return n + 4 * out_features
        raise ValueError(p)  # pragma: no cover

    @property
    def bytes_per_weight(self) -> float:
        """Approximate bytes per weight for a large matrix (display only)."""
        return self.linear_bytes(4096, 4096, 2) / (4096 * 4096)


def weight_format(precision: Precision, double_quant: bool = False, group_size: int = 128) -> WeightFormat:
    bits = {Precision.FP32: 32, Precision.FP16: 16, Precision.BF16: 16, Precision.INT8: 8, Precision.NF4: 4,
            Precision.FP4: 4, Precision.INT4: 4, Precision.FP8: 8}[precision]
    block = NF4_BLOCK if precision in (Precision.NF4, Precision.FP4) else group_size if precision is Precision.INT4 \
        else None
    return WeightFormat(precision, bits, block, double_quant)
