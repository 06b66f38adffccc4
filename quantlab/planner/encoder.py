"""Training memory of an encoder (BERT, RoBERTa, ModernBERT) with a classification head, all but the last k
layers frozen.

Pure: standard library only, integer bytes. The components are those :class:`quantlab.lab.measure.Measurement`
measures (``weights``, ``gradients``, ``optimizer``, ``activations``, ``logits_loss``), so
:mod:`quantlab.validate` can set one beside the other. Sources: transformers 5.24 ``models/bert/modeling_bert.py``,
``models/roberta/modeling_roberta.py``, ``models/modernbert/modeling_modernbert.py``; torch 2.13
``torch/nn/functional.py`` and ATen's ``Dropout.cpp`` / ``attention.cpp``; ``torch/optim/adamw.py``.

Numbered assumptions:

1. Parameters, per family as fields (:class:`EncoderFamily`), from the modules' ``__init__``: embeddings (word,
   learned absolute positions and token types for BERT/RoBERTa, LayerNorm); per block a self-attention of four
   ``hidden x hidden`` projections (ModernBERT: one fused ``Wqkv`` and ``Wo``, no bias), a LayerNorm after
   attention and after the MLP (ModernBERT: pre-norm, bias-free, block 0's ``attn_norm`` is ``nn.Identity``), an
   MLP ``hidden -> intermediate -> hidden`` (ModernBERT: a GLU, ``Wi`` is ``hidden -> 2 x intermediate``).
   Heads: ``seq-cls`` is BERT's pooler (``dense`` + tanh, in ``BertModel``) and ``classifier``; RoBERTa's
   ``RobertaClassificationHead`` (``dense``, ``out_proj``; no pooler, ``add_pooling_layer=False``); ModernBERT's
   ``final_norm``, ``ModernBertPredictionHead`` (``dense`` without bias, GELU, ``norm``) and ``classifier``.
   ``tok-cls`` is one ``classifier`` linear (BERT/RoBERTa, no pooler) or ModernBERT's final norm, head and
   classifier.
2. Buffers: BERT and RoBERTa register ``position_ids`` and ``token_type_ids``, int64 ``(1, max_position)``;
   ModernBERT's rotary embedding keeps ``inv_freq`` and ``original_inv_freq`` per attention type, fp32
   ``head_dim / 2`` each.
3. Freezing: the embeddings and the first ``L - k`` blocks are frozen; the last ``k`` blocks and every parameter
   outside embeddings and blocks train (pooler, final norm, heads). Gradients: one per trainable element in the
   parameter dtype.
4. AdamW (torch 2.13 ``torch/optim/adamw.py``, ``capturable=False``; ``fused=None`` in a plain loop, ``fused=True``
   under Trainer's default ``adamw_torch_fused``, the same states): ``exp_avg`` and ``exp_avg_sq`` in the
   parameter dtype, plus one 0-d fp32 ``step`` tensor per trainable parameter tensor.
5. Saved activations. Inputs do not require grad and the embeddings are frozen, so autograd records nothing below
   the first trainable block: a frozen block saves no tensor. A trainable BERT/RoBERTa block in training mode
   (``T = batch x seq`` tokens, ``a`` bytes per element), attention through ``sdpa`` on the CPU with dropout > 0,
   which takes ATen's math path (``_scaled_dot_product_attention_math``: q scaled, k transposed, v as
   contiguous copies; softmax output, dropout mask, dropped probabilities), saves per block:
   ``a x (7 T H + 2 T I) + s x (3 T H + 3 B n_heads S^2) + 2 x 2 x T x a`` -- the block input (Q/K/V linears),
   q, k, v, the attention-output linear's input, two hidden dropout masks, two LayerNorm inputs, the intermediate
   linear's input, the GELU input, the output linear's input, and each LayerNorm's mean and rstd. ``s`` is the
   math path's dtype: ATen computes half and bf16 q, k, v in fp32 (torch 2.13
   ``aten/src/ATen/native/transformers/attention.cpp``, ``_scaled_dot_product_attention_math``: ``query_acc =
   query_.to(at::kFloat)`` unless ``allow_fp16_bf16_reduction_math_sdp``), so q, k, v, the softmax output, its
   dropout mask and the dropped probabilities are fp32 (``s = 4``) under bf16 weights; the output goes back to the
   compute dtype before the attention-output linear. A LayerNorm's mean and rstd have the input's dtype when the
   weight has it too (``aten/src/ATen/native/layer_norm.cpp``, ``layer_norm_cpu``: ``param_scalar_type``; fp32
   only for a mixed bf16-input / fp32-weight norm, which pure precision does not make). On the CPU a dropout mask
   has the input's dtype (ATen's ``dropout`` multiplies by a noise tensor; ``native_dropout``'s bool mask is the
   CUDA path): ``dropout_mask_bytes`` says which (the input's or 1). A dropout of probability 0 returns its input
   and saves nothing. Measured: bert-seqcls-k2-bf16 in profiles/validation/encoder-matrix.yaml.
5a. A trainable ModernBERT block (dropouts 0, its config's default, so ``sdpa`` takes the CPU flash kernel, which
   saves q, k, v, the output and an fp32 logsumexp ``B x n_heads x S``): the ``attn_norm`` input (none in block
   0, an ``nn.Identity``) and ``mlp_norm`` input with their stats (in the compute dtype, as in 5), the ``Wqkv``
   input, q and k after the rotary embedding, the whole ``Wqkv`` output (v is a view of it), the attention
   output, the ``Wi`` input, the ``Wi`` output ``T x 2I`` (the GELU input and the gate are views of it), the GELU
   output and the ``Wo`` input (``T x I`` each). ``apply_rotary_pos_emb`` saves cos and sin ``S x head_dim`` in
   the compute dtype (``ModernBertRotaryEmbedding.forward`` returns ``cos.to(dtype=x.dtype)``; the product with
   ``q.float()`` saves them as given), shared by the blocks of one attention type (global every
   ``global_attn_every_n_layers``-th block, from block 0, else sliding). After the blocks: ``final_norm``'s
   input and stats count with the backbone, and so does the prediction head's dense input under
   ``classifier_pooling="cls"`` or the token head (the last hidden state: a ``[:, 0]`` view for cls); the head's
   GELU input, norm input and stats and the classifier input are logits/loss. Under
   ``classifier_pooling="mean"`` (ModernBERT-base's own config; ``ModernBertForSequenceClassification.forward``:
   ``(h * attention_mask.unsqueeze(-1)).sum(dim=1) / attention_mask.sum(dim=1, keepdim=True)``) the product saves
   the mask (its storage, ``B x S`` int64 as a tokenizer or collator gives it) and not the hidden state, the
   division saves the int64 ``B x 1`` count, and the head's dense input is the pooled ``B x H``: all logits/loss.
   On a padded batch every trainable block's attention also saves a ``B x 1 x S x S`` mask in the compute dtype,
   one per block, not one per attention type: transformers hands ``sdpa`` a bool mask (one per attention type),
   and torch converts a bool mask to an additive one in the query's dtype on every call (torch 2.13
   ``aten/src/ATen/native/transformers/attention.cpp``, ``convert_boolean_attn_mask``), which the CPU flash
   kernel saves (measured: 4 distinct masks over 4 trainable blocks of 2 attention types,
   modernbert-tokcls-k4-bf16-padded in profiles/validation/encoder-matrix.yaml). Without padding the full-attention
   mask is skipped, and so is the sliding one while ``seq < local_attention // 2`` (transformers 5.24
   ``masking_utils.py``, ``_ignore_bidirectional_mask_sdpa``: ``kv_length < local_attention_size``, the size being
   ModernBertConfig's ``sliding_window = local_attention // 2``); from that length on every trainable sliding
   block saves its mask too (modernbert-tokcls-k4-fp32-s64).
6. BERT's pooler runs inside ``BertModel`` (the backbone): its dense saves its input, a ``[:, 0]`` view whose
   storage is the whole last hidden state (``T H a``), and tanh saves its output (``B H a``): activations.
7. Logits and loss (after the backbone). ``seq-cls`` multi-label (``problem_type="multi_label_classification"``):
   BERT's classifier dropout mask and the classifier's input (``B H`` each), the logits ``B x C`` and the fp32
   multi-hot targets that ``BCEWithLogitsLoss`` saves. RoBERTa's head: two dropout masks, the dense input, tanh
   output and ``out_proj`` input (``B H`` each), logits and targets. ``tok-cls`` (``CrossEntropyLoss`` over
   ``C`` labels per token): the dropout mask and classifier input (``T H``), the logits ``T C a``, the
   ``log_softmax`` output ``T C a``, the int64 targets ``8 T`` and ``nll_loss``'s 0-d ``total_weight`` in the
   logits' dtype (``a``: ATen ``LossNLL.cpp`` makes it with the input's options).
8. Not modelled (a note says so where it applies): the allocator peak. It is not the sum of the components:
   backward frees activations while it allocates gradients (MiniLM, last 3 layers, batch 16 x 74: peak 268.0 MiB,
   sum 280.9 MiB), and a frozen layer's forward still holds transient tensors, the attention scores among them
   (head only: peak 110.7 MiB, sum 90.2 MiB; reports/classify-cpu). Also not modelled: eager
   attention; CUDA's flash/efficient SDPA kernels; ModernBERT with dropout > 0; mean pooling without an attention
   mask (the model then makes a bool one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Head(str, Enum):
    SEQ_CLS = "seq-cls"
    TOK_CLS = "tok-cls"


@dataclass(frozen=True)
class EncoderFamily:
    """Family behaviour as fields (assumption 1, 2)."""

    model_type: str
    learned_positions: bool  # BERT/RoBERTa position_embeddings; ModernBERT uses rotary
    token_types: bool
    fused_qkv: bool
    linear_bias: bool
    norm_bias: bool
    glu_mlp: bool
    first_block_norm: bool  # ModernBERT block 0: attn_norm is nn.Identity
    seq_head: str  # "pooler" (BERT), "roberta", "modernbert"
    index_buffers: bool  # position_ids + token_type_ids int64 (1, P)
    rotary_buffers: int  # fp32 (head_dim / 2) buffers of the rotary embedding


FAMILIES = {
    "bert": EncoderFamily("bert", True, True, False, True, True, False, True, "pooler", True, 0),
    "roberta": EncoderFamily("roberta", True, True, False, True, True, False, True, "roberta", True, 0),
    "modernbert": EncoderFamily("modernbert", False, False, True, False, False, True, False, "modernbert", False, 4),
}


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder's config.json fields (HF names)."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None  # None: hidden_dropout_prob (BERT/RoBERTa)
    name: str = ""
    global_attn_every_n_layers: int = 3  # ModernBERT
    local_attention: int = 128  # ModernBERT's sliding window (both sides together)
    classifier_pooling: str = "cls"  # ModernBERT: "cls" or "mean"

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"model_type {self.model_type!r} is not an encoder family "
                             f"(known: {', '.join(FAMILIES)})")
        for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "max_position_embeddings"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")

    @property
    def family(self) -> EncoderFamily:
        return FAMILIES[self.model_type]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def head_dropout(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    @classmethod
    def from_config(cls, c: dict, name: str = "") -> "EncoderSpec":
        mt = c.get("model_type")
        if mt == "modernbert":  # ModernBertConfig names (modeling_modernbert.py): dropouts default 0
            return cls(mt, c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                       c["intermediate_size"], c["vocab_size"], c["max_position_embeddings"], 0,
                       float(c.get("mlp_dropout", 0.0)), float(c.get("attention_dropout", 0.0)),
                       float(c.get("classifier_dropout", 0.0)), name,
                       int(c.get("global_attn_every_n_layers", 3)), int(c.get("local_attention", 128)),
                       str(c.get("classifier_pooling", "cls")))
        return cls(mt, c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"],
                   c["vocab_size"], c["max_position_embeddings"], int(c.get("type_vocab_size", 2)),
                   float(c.get("hidden_dropout_prob", 0.1)), float(c.get("attention_probs_dropout_prob", 0.1)),
                   c.get("classifier_dropout"), name)


# ---- parameters (assumption 1): one list of tensor sizes per part feeds both counts and AdamW's step tensors ----

def _norm(s: EncoderSpec) -> list[int]:
    return [s.hidden_size, s.hidden_size] if s.family.norm_bias else [s.hidden_size]


def _linear(s: EncoderSpec, n_in: int, n_out: int, bias: bool | None = None) -> list[int]:
    b = s.family.linear_bias if bias is None else bias
    return [n_in * n_out] + ([n_out] if b else [])


def embedding_tensors(s: EncoderSpec) -> list[int]:
    f, h = s.family, s.hidden_size
    out = [s.vocab_size * h]
    if f.learned_positions:
        out.append(s.max_position_embeddings * h)
    if f.token_types:
        out.append(s.type_vocab_size * h)
    return out + _norm(s)


def block_tensors(s: EncoderSpec, index: int) -> list[int]:
    f, h, i = s.family, s.hidden_size, s.intermediate_size
    attn = _linear(s, h, 3 * h) if f.fused_qkv else _linear(s, h, h) * 3
    attn += _linear(s, h, h)
    mlp = _linear(s, h, 2 * i if f.glu_mlp else i) + _linear(s, i, h)
    norms = (_norm(s) if (index > 0 or f.first_block_norm) else []) + _norm(s)
    return attn + mlp + norms


def head_tensors(s: EncoderSpec, head: Head, num_labels: int) -> list[int]:
    h, f = s.hidden_size, s.family
    cls = _linear(s, h, num_labels, bias=True)
    if f.seq_head == "modernbert":  # final_norm + prediction head (dense without bias, norm) + classifier
        return _norm(s) + _linear(s, h, h, bias=False) + _norm(s) + cls
    if head is Head.TOK_CLS:
        return cls
    return _linear(s, h, h) + cls  # BERT pooler dense or RoBERTa classifier.dense, then the label projection


def buffer_bytes(s: EncoderSpec) -> int:
    """Assumption 2."""
    f = s.family
    return (2 * 8 * s.max_position_embeddings if f.index_buffers else 0) + f.rotary_buffers * 4 * (s.head_dim // 2)


@dataclass(frozen=True)
class EncoderPlanConfig:
    head: Head = Head.SEQ_CLS
    num_labels: int = 8
    train_last_k: int = 3
    batch: int = 16
    seq: int = 128
    param_bytes: int = 4  # fp32
    dropout_mask_bytes: int | None = None  # None: param_bytes (the CPU's dropout, assumption 5); 1 on CUDA
    padded: bool = False  # batches with padding (an attention mask with zeros): ModernBERT saves the masks (5a)

    def __post_init__(self):
        for f in ("num_labels", "batch", "seq", "param_bytes"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")
        if not isinstance(self.train_last_k, int) or isinstance(self.train_last_k, bool) or self.train_last_k < 0:
            raise ValueError(f"train-last-k must be a non-negative integer, got {self.train_last_k!r}")
        if not isinstance(self.head, Head):
            raise ValueError(f"head must be one of {', '.join(h.value for h in Head)}")

    @property
    def mask_bytes(self) -> int:
        return self.param_bytes if self.dropout_mask_bytes is None else self.dropout_mask_bytes

    @property
    def math_sdpa_bytes(self) -> int:
        """Assumption 5: ATen's math SDPA computes half and bf16 attention in fp32."""
        return 4 if self.param_bytes == 2 else self.param_bytes

    @property
    def attn_mask_bytes(self) -> int:
        """The attention-probability dropout mask: the math path's dtype on the CPU (assumption 5)."""
        return self.math_sdpa_bytes if self.dropout_mask_bytes is None else self.dropout_mask_bytes


@dataclass(frozen=True)
class EncoderPlan:
    """Bytes per component (integer), parameter counts, and the notes the user sees."""

    params: int
    trainable_params: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    logits_loss_bytes: int
    notes: tuple = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        """Sum of the components; not the allocator peak, which can lie on either side of it (assumption 8)."""
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes
                + self.logits_loss_bytes)

    def pred(self) -> dict:
        return {f"pred_{k}_bytes": getattr(self, f"{k}_bytes")
                for k in ("weights", "gradients", "optimizer", "activations", "logits_loss")}


def trainable_tensors(s: EncoderSpec, pc: EncoderPlanConfig) -> list[int]:
    L = s.num_hidden_layers
    return [n for i in range(L - pc.train_last_k, L) for n in block_tensors(s, i)] + \
        head_tensors(s, pc.head, pc.num_labels)


def all_tensors(s: EncoderSpec, pc: EncoderPlanConfig) -> list[int]:
    return embedding_tensors(s) + [n for i in range(s.num_hidden_layers) for n in block_tensors(s, i)] + \
        head_tensors(s, pc.head, pc.num_labels)


def block_activation_bytes(s: EncoderSpec, pc: EncoderPlanConfig, index: int) -> int:
    """Trainable block ``index``'s saved tensors (assumption 5; ModernBERT: 5a)."""
    a, m, B, S = pc.param_bytes, pc.mask_bytes, pc.batch, pc.seq
    T, H, I, nh = B * S, s.hidden_size, s.intermediate_size, s.num_attention_heads
    stats = 2 * T * a  # one LayerNorm's mean and rstd, in the input's dtype (assumption 5)
    if s.family.glu_mlp:  # 5a: attn_norm input (not block 0), Wqkv input, q and k after rotary, the qkv output
        # (v is a view of it), the attention output, mlp_norm input, Wi input; Wi output, act output, Wo input;
        # the CPU flash kernel's fp32 logsumexp
        norms = 2 if index > 0 else 1
        return a * T * H * (norms + 1 + 2 + 3 + 1 + 1) + a * T * I * 4 + 4 * B * nh * S + norms * stats
    hid_masks = 2 if s.hidden_dropout_prob > 0 else 0
    attn_drop = s.attention_probs_dropout_prob > 0
    scores = B * nh * S * S
    f = pc.math_sdpa_bytes  # q, k, v copies and the probabilities in the math path's dtype
    probs = f * scores * (2 if attn_drop else 1) + (pc.attn_mask_bytes * scores if attn_drop else 0)
    # block input, attention-output linear input, two LayerNorm inputs, intermediate input; q, k, v copies
    return (a * T * H * 5 + f * T * H * 3 + hid_masks * m * T * H + probs
            + a * 2 * T * I  # GELU input, output-linear input
            + 2 * stats)


def layer_types(s: EncoderSpec) -> list[str]:
    """ModernBERT's attention type per block (``ModernBertConfig``: global every n-th layer from layer 0)."""
    n = s.global_attn_every_n_layers
    return ["full" if i % n == 0 else "sliding" for i in range(s.num_hidden_layers)]


def rotary_bytes(s: EncoderSpec, pc: EncoderPlanConfig) -> int:
    """5a: the cos and sin (``1 x 1 x S x head_dim``, compute dtype) saved by ``apply_rotary_pos_emb``, one pair
    per attention type among the trainable blocks (blocks of one type share them)."""
    if not s.family.rotary_buffers:
        return 0
    L = s.num_hidden_layers
    kinds = {layer_types(s)[i] for i in range(L - pc.train_last_k, L)}
    return len(kinds) * 2 * pc.seq * s.head_dim * pc.param_bytes


def attention_mask_bytes(s: EncoderSpec, pc: EncoderPlanConfig) -> int:
    """5a: the CPU flash kernel saves the additive mask torch makes from transformers' bool mask on every call,
    ``B x 1 x S x S`` in the compute dtype, one per trainable block that gets a mask: every block of a padded
    batch; without padding the sliding blocks from ``seq >= local_attention // 2`` on. BERT's math path adds the
    mask to the scores and saves nothing of it (assumption 5)."""
    if not s.family.glu_mlp:
        return 0
    L = s.num_hidden_layers
    kinds = layer_types(s)[L - pc.train_last_k:]
    masked = len(kinds) if pc.padded else \
        sum(k == "sliding" for k in kinds) if pc.seq >= s.local_attention // 2 else 0
    return masked * pc.param_bytes * pc.batch * pc.seq * pc.seq


def head_activation_bytes(s: EncoderSpec, pc: EncoderPlanConfig) -> int:
    """What is saved after the last block and is counted with the backbone: BERT's pooler (assumption 6);
    ModernBERT's final norm and the head dense's input, the last hidden state (5a)."""
    a, T, H = pc.param_bytes, pc.batch * pc.seq, s.hidden_size
    if s.family.seq_head == "modernbert":  # final_norm's input and stats; the head dense's input unless pooled
        return a * T * H + 2 * T * a + (0 if _mean_pooled(s, pc) else a * T * H)
    if pc.head is Head.SEQ_CLS and s.family.seq_head == "pooler":
        return a * T * H + a * pc.batch * H
    return 0


def _mean_pooled(s: EncoderSpec, pc: EncoderPlanConfig) -> bool:
    return s.family.seq_head == "modernbert" and pc.head is Head.SEQ_CLS and s.classifier_pooling == "mean"


def logits_loss_bytes(s: EncoderSpec, pc: EncoderPlanConfig) -> int:
    """Assumption 7 (ModernBERT: 5a)."""
    a, m, B, S, H, C = pc.param_bytes, pc.mask_bytes, pc.batch, pc.seq, s.hidden_size, pc.num_labels
    drop = s.head_dropout > 0
    rows = B * S if pc.head is Head.TOK_CLS else B  # the positions the head runs on
    if pc.head is Head.TOK_CLS:
        loss = 2 * a * rows * C + 8 * rows + a  # logits, log_softmax output, int64 targets, total_weight
    else:
        loss = a * B * C + 4 * B * C  # logits and the fp32 multi-hot targets BCEWithLogits saves
    if s.family.seq_head == "modernbert":  # GELU input, norm input and stats, classifier input (drop p = 0)
        # mean pooling (5a): the int64 mask and count, and the pooled dense input
        pool = 8 * B * S + 8 * B + a * B * H if _mean_pooled(s, pc) else 0
        return a * rows * H * 3 + 2 * rows * a + (m * rows * H if drop else 0) + loss + pool
    if pc.head is Head.TOK_CLS:
        return (m * rows * H if drop else 0) + a * rows * H + loss
    if s.family.seq_head == "roberta":
        return (2 * m * B * H if drop else 0) + 3 * a * B * H + loss
    return (m * B * H if drop else 0) + (a * B * H if drop else 0) + loss


def plan_encoder(s: EncoderSpec, pc: EncoderPlanConfig) -> EncoderPlan:
    """The five components of one training step (assumptions 1-7)."""
    if pc.train_last_k > s.num_hidden_layers:
        raise ValueError(f"train-last-k {pc.train_last_k} exceeds the model's {s.num_hidden_layers} layers")
    a = pc.param_bytes
    params = sum(all_tensors(s, pc))
    tt = trainable_tensors(s, pc)
    trainable = sum(tt)
    L = s.num_hidden_layers
    acts = sum(block_activation_bytes(s, pc, i) for i in range(L - pc.train_last_k, L))
    acts += rotary_bytes(s, pc) + attention_mask_bytes(s, pc) + head_activation_bytes(s, pc)
    notes = [f"{s.model_type}: embeddings and the first {s.num_hidden_layers - pc.train_last_k} of "
             f"{s.num_hidden_layers} layers frozen; nothing is saved for backward below the first trainable layer"]
    if s.family.glu_mlp:
        if pc.seq >= s.local_attention // 2 and not pc.padded:
            notes.append(f"{s.model_type}: from {s.local_attention // 2} tokens (half the sliding window) the "
                         "sliding layers get a mask even without padding, saved per trainable sliding layer "
                         "(assumption 5a)")
        if s.classifier_pooling not in ("cls", "mean"):
            notes.append(f"{s.model_type}: classifier_pooling {s.classifier_pooling!r} is not modelled; the figures "
                         "assume cls pooling (assumption 8)")
        if max(s.hidden_dropout_prob, s.attention_probs_dropout_prob) > 0:
            notes.append(f"{s.model_type}: dropout > 0 is not modelled; the figures assume none (assumption 8)")
        if _mean_pooled(s, pc):
            notes.append(f"{s.model_type}: classifier_pooling 'mean' over an int64 attention mask (a tokenizer's), "
                         "assumption 5a")
    if pc.head is Head.SEQ_CLS:
        notes.append("seq-cls: multi-label (BCEWithLogitsLoss over fp32 multi-hot targets)")
    return EncoderPlan(params=params, trainable_params=trainable, weights_bytes=a * params + buffer_bytes(s),
                       gradients_bytes=a * trainable, optimizer_bytes=2 * a * trainable + 4 * len(tt),
                       activations_bytes=acts, logits_loss_bytes=logits_loss_bytes(s, pc), notes=tuple(notes))
