"""Exact parameter counts from the architecture (checked to the parameter against transformers on the meta device).

1. Input embedding: vocab_size x hidden_size; learned positions (GPT-2, families F3) add max_position_embeddings x
   hidden.
2. Output head: vocab x hidden, absent when ``tie_word_embeddings`` (the head shares the embedding).
3. Each block: the linears of :meth:`ModelSpec.block_linears` (biases where the family has them; MoE:
   one router plus ``num_local_experts`` copies of the expert MLP), plus its norms: RMSNorm has a weight
   (hidden), LayerNorm a weight and a bias. Gemma-2 has four norms per block, the others two (families F1).
4. A final norm after the last block.
5. Active parameters (MoE): the router and ``num_experts_per_tok`` experts per token, everything else.
"""

from __future__ import annotations

from collections import namedtuple

from quantlab.families import block_linears, family, learned_positions, model_cache
from quantlab.specs import LinearShape, ModelSpec


class ParamCounts(namedtuple("ParamCounts", "embedding lm_head block_linear_weights block_linear_biases block_norms "
                                           "final_norm layers linears expert_weights active_expert_weights")):
    """Parameter counts of a model. ``lm_head`` is 0 when tied; ``block_linear_weights`` per block, weights only (no
    biases), ``expert_weights`` included; ``block_linear_biases``, ``block_norms`` per block; ``linears`` the block's
    LinearShapes; ``expert_weights`` per block, the expert linears' weights (MoE); ``active_expert_weights`` per
    block, the experts one token uses. A named tuple: a frozen value without a dataclass's class-creation cost."""

    __slots__ = ()

    @property
    def per_block(self) -> int:
        return self.block_linear_weights + self.block_linear_biases + self.block_norms

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.layers * self.per_block + self.final_norm

    @property
    def active(self) -> int:
        return self.total - self.layers * (self.expert_weights - self.active_expert_weights)

    @property
    def norms(self) -> int:
        return self.layers * self.block_norms + self.final_norm


@model_cache
def count_params(m: ModelSpec) -> ParamCounts:
    h = m.hidden_size
    fam = family(m)
    linears = block_linears(m)
    embedding = m.vocab_size * h + (m.max_position_embeddings * h if learned_positions(m) else 0)
    lm_head = 0 if m.tie_word_embeddings else m.vocab_size * h
    norm = 2 * h if fam.norm == "layernorm" else h
    weights = sum(l.count * l.in_features * l.out_features for l in linears)
    biases = sum(l.count * l.out_features for l in linears if l.bias)
    experts = sum(l.count * l.in_features * l.out_features for l in linears if l.count > 1)
    per_expert = sum(l.in_features * l.out_features for l in linears if l.count > 1)
    active = per_expert * m.num_experts_per_tok if m.is_moe else experts
    return ParamCounts(embedding=embedding, lm_head=lm_head, block_linear_weights=weights, block_linear_biases=biases,
                       block_norms=fam.norms_per_block * norm, final_norm=norm, layers=m.num_hidden_layers,
                       linears=linears, expert_weights=experts, active_expert_weights=active)


Tensors = tuple  # ((shape, how many), ...): parameter tensors grouped by shape


@model_cache
def block_tensors(m: ModelSpec) -> Tensors:
    """Parameter tensors of one decoder block, as the module holds them (assumption 3): each linear's weight
    (out, in) and bias, a fused MoE parameter as one (experts, out, in) tensor, each norm's weight (and bias)."""
    out: list = []
    fam = family(m)
    for l in block_linears(m):
        if getattr(l, "module", True):
            out.append(((l.out_features, l.in_features), l.count))
            if l.bias:
                out.append(((l.out_features,), l.count))
        else:
            out.append((((l.count, l.out_features, l.in_features) if l.count > 1 else
                         (l.out_features, l.in_features)), 1))
    out.append(((m.hidden_size,), fam.norms_per_block * (2 if fam.norm == "layernorm" else 1)))
    return tuple(out)


@model_cache
def outside_tensors(m: ModelSpec) -> dict:
    """Parameter tensors outside the blocks, by module name (assumptions 1, 2, 4)."""
    h = m.hidden_size
    emb = [((m.vocab_size, h), 1)] + ([((m.max_position_embeddings, h), 1)] if learned_positions(m) else [])
    return {"embed_tokens": tuple(emb), "lm_head": () if m.tie_word_embeddings else (((m.vocab_size, h), 1),),
            "norm": (((h,), 2 if family(m).norm == "layernorm" else 1),)}
