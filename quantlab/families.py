"""Architecture facts per model family, as data: one rule each, shared by memory, throughput and the lab.

A family is what transformers 5's ``models/<model_type>/modeling_<model_type>.py`` builds; its facts are the
fields of a frozen :class:`Family`, so a new family is a new entry, not a new ``if model_type == ...`` spread
over the planner (litgpt's ``Config`` names its norm and MLP classes the same way). The accessor functions take
a :class:`~quantlab.specs.ModelSpec` and are cached on it (a frozen, hashable value): per-model facts are
computed once.

Facts (numbered; the planner refers to them as families F1..F9):

F1. Norms: ``rmsnorm`` (``LlamaRMSNorm``: weight only, normalizes in fp32 and casts back before the weight),
    ``rmsnorm_1p`` (``Gemma2RMSNorm``: ``x.float() * (1 + w.float())``, cast after) or ``layernorm`` (GPT-2:
    weight and bias). Gemma-2 has sandwich norms (``post_attention_layernorm``, ``post_feedforward_layernorm``
    after each sub-block): four per block, the others two.
F2. MLP: gated (SwiGLU/GeGLU: gate, up, down; Phi-3 fuses gate and up in ``gate_up_proj``) or GPT-2's two-linear
    MLP (``c_fc``, ``mlp.c_proj``).
F3. Positions: ``rope`` (a ``rotary_emb`` module with the fp32 ``inv_freq`` and ``original_inv_freq`` buffers, cos
    and sin passed to every block, int64 position ids) or ``learned`` (GPT-2's ``wpe``: a max_positions x hidden
    embedding, its own position ids). Gemma-2 scales its embedding by a ``normalizer`` buffer in the load dtype
    (``embed_scale``).
F4. Sliding windows (:func:`layer_windows`): ``all`` layers (Mistral, Mixtral, Phi-3: ``sliding_window`` from
    config.json applies to every layer when set), ``even`` layers (Gemma-2: ``layer_types`` alternates
    sliding/full, layer 0 sliding) or ``none`` (Llama; GPT-2; Qwen2 as profiled, ``use_sliding_window: false``).
    A family with both kinds of layers builds two masks (causal and sliding) for eager attention.
F5. Softcaps: Gemma-2 caps attention logits (``attn_logit_softcapping``: ``tanh`` of the scores, kept for backward)
    and final logits (``final_logit_softcapping``: ``logits / cap``, ``tanh``, ``* cap``: a second T x vocab tensor).
    Attention softcapping has no SDPA path in transformers 5: eager attention runs (``sdpa=False``).
F6. Linears by role (q, k, v, o, gate, up, down) with the module names PEFT matches (:func:`role_names`); q, k, v
    sharing one name are one fused linear (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``). Biases: ``config``
    (``attention_bias`` on q/k/v/o, ``mlp_bias`` on the MLP), ``qkv`` (Qwen2: ``attention_bias`` on q/k/v only)
    or ``always`` (GPT-2's ``Conv1D``, ``conv1d``: its weight is stored (in, out), PEFT's ``fan_in_fan_out``). MoE (``num_local_experts`` > 0, families without fused linears): a router
    ``gate`` and fused 3-D expert parameters (transformers 5 ``MixtralExperts``), none of them an ``nn.Linear``.
F7. PEFT's IA3 defaults (``utils/constants.py`` ``TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`` and the
    feedforward mapping); Phi-3 has none there (PEFT asks for target_modules): its fused qkv_proj and down_proj
    here. Mixtral's default ``w2`` no longer exists in transformers 5 (fused experts): only k_proj, v_proj match.
F8. Which modeling code runs attention: ``llama`` (``LlamaAttention`` and its copies: RoPE, ``repeat_kv``, the
    eager/SDPA integrations) or ``gpt2`` (``GPT2Attention``: c_attn split into views, softmax in the compute dtype,
    attention/residual/embedding dropout from ``*_pdrop``). The HF decoder block class (FSDP's wrap policy).
F9. PEFT's LoRA defaults (peft 0.21.2 ``utils/constants.py``
    ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``, read by ``BaseTuner._prepare_adapter_config`` when a
    ``LoraConfig`` has ``target_modules=None``): ``q_proj, v_proj`` for llama, mistral, mixtral, gemma2 and
    qwen2, ``c_attn`` for gpt2. Phi-3 has no entry there (``tuners/lora/model.py`` raises "Please specify `target_modules`"): its
    fused ``qkv_proj`` here, the linear that holds q and v (``lora_targets_from_peft`` is False, and the plan says
    so).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from quantlab.specs import LinearShape, ModelSpec

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def model_cache(fn):
    """Cache a function of one ModelSpec: by identity first (a frozen dataclass hashes all its fields on every
    lookup), then by equality (equal specs share one result). The identity table keeps its specs alive, so an id
    is never reused while it is in the table."""
    by_value = functools.lru_cache(maxsize=1024)(fn)
    by_id: dict = {}

    @functools.wraps(fn)
    def cached(m):
        hit = by_id.get(id(m))
        if hit is not None and hit[0] is m:
            return hit[1]
        v = by_value(m)
        if len(by_id) >= 1024:
            by_id.clear()
        by_id[id(m)] = (m, v)
        return v

    def cache_clear() -> None:
        by_id.clear()
        by_value.cache_clear()

    cached.cache_clear = cache_clear
    return cached


def model_keyed(fn):
    """Cache a function of a ModelSpec and further hashable positional arguments: one table per spec
    (:func:`model_cache`), keyed by the other arguments, so the spec is not hashed on every call."""
    tables = model_cache(lambda m: {})

    @functools.wraps(fn)
    def cached(m, *args):
        table = tables(m)
        v = table.get(args)
        if v is None:
            v = fn(m, *args)
            if len(table) >= 4096:
                table.clear()
            table[args] = v
        return v

    cached.cache_clear = tables.cache_clear
    return cached


@dataclass(frozen=True)
class Family:
    """The facts of one ``model_type`` (F1-F9)."""

    model_type: str
    block_class: str  # the HF decoder block class (F8)
    norm: str = "rmsnorm"  # "rmsnorm" | "rmsnorm_1p" | "layernorm" (F1)
    post_norms: bool = False  # sandwich norms after attention and MLP (F1)
    gated_mlp: bool = True  # F2
    positional: str = "rope"  # "rope" | "learned" (F3)
    embed_scale: bool = False  # F3
    window_layers: str = "none"  # "none" | "all" | "even" (F4)
    attn_softcap: bool = False  # F5
    final_logit_softcap: bool = False  # F5
    sdpa: bool = True  # transformers 5 runs this family's attention through SDPA (F5)
    # PEFT module names by role, in ROLES order (q, k, v, o, gate, up, down); None: no such linear (F6)
    names: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    bias: str = "config"  # "config" | "qkv" | "always" (F6)
    ia3_targets: tuple[str, ...] = ("k_proj", "v_proj")  # F7
    ia3_feedforward: str | None = "down_proj"  # F7
    attention_code: str = "llama"  # "llama" | "gpt2" (F8)
    residual_dropout: bool = False  # the block and embedding apply resid/embd dropout (GPT-2's *_pdrop, F8)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # LoRA target_modules when none are given (F9)
    lora_targets_from_peft: bool = True  # False: PEFT has no default for the family; ours (F9)
    conv1d: bool = False  # block linears are transformers' Conv1D, weight stored (in, out): PEFT fan_in_fan_out (F6)

    def __post_init__(self) -> None:
        if len(self.names) != len(ROLES):
            raise ValueError(f"{self.model_type}: names must list {len(ROLES)} roles")
        if self.norm not in ("rmsnorm", "rmsnorm_1p", "layernorm") or self.positional not in ("rope", "learned") \
                or self.window_layers not in ("none", "all", "even") or self.bias not in ("config", "qkv", "always") \
                or self.attention_code not in ("llama", "gpt2"):
            raise ValueError(f"{self.model_type}: unknown family choice")

    @property
    def norms_per_block(self) -> int:
        return 4 if self.post_norms else 2

    @property
    def fused_qkv(self) -> bool:
        """q, k and v are one linear (F6)."""
        return self.names[0] == self.names[1] == self.names[2]

    @property
    def fused_gate_up(self) -> bool:
        return self.gated_mlp and self.names[4] == self.names[5]

    def role(self, role: str) -> str | None:
        return self.names[ROLES.index(role)]


FAMILY: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "LlamaDecoderLayer"),
    Family("mistral", "MistralDecoderLayer", window_layers="all"),
    Family("qwen2", "Qwen2DecoderLayer", bias="qkv", ia3_targets=("q_proj", "v_proj")),
    Family("mixtral", "MixtralDecoderLayer", window_layers="all", ia3_feedforward=None),
    Family("gemma2", "Gemma2DecoderLayer", norm="rmsnorm_1p", post_norms=True, embed_scale=True, window_layers="even",
           attn_softcap=True, final_logit_softcap=True, sdpa=False, ia3_targets=("q_proj", "v_proj")),
    Family("phi3", "Phi3DecoderLayer", window_layers="all", ia3_targets=("qkv_proj",),
           names=("qkv_proj", "qkv_proj", "qkv_proj", "o_proj", "gate_up_proj", "gate_up_proj", "down_proj"),
           lora_targets=("qkv_proj",), lora_targets_from_peft=False),
    Family("gpt2", "GPT2Block", norm="layernorm", gated_mlp=False, positional="learned", bias="always",
           names=("c_attn", "c_attn", "c_attn", "attn.c_proj", None, "c_fc", "mlp.c_proj"),
           ia3_targets=("c_attn",), ia3_feedforward="mlp.c_proj", attention_code="gpt2", residual_dropout=True,
           lora_targets=("c_attn",), conv1d=True),
)}


def family(m: ModelSpec) -> Family:
    """The family of ``m`` (ModelSpec validates ``model_type`` against the known ones)."""
    return FAMILY[m.model_type]


# transformers 5's MoE layer (F6): the router and the fused expert parameters, by role
MOE_NAMES = {"router": "gate", "gate": "experts.gate_up_proj", "up": "experts.gate_up_proj", "down": "experts.down_proj"}


def _moe(m: ModelSpec) -> bool:
    """A MoE block (families with fused attention linears have no MoE variant here)."""
    return m.is_moe and not FAMILY[m.model_type].fused_qkv


@model_cache
def block_linears(m: ModelSpec) -> tuple[LinearShape, ...]:
    """The linears of one decoder block from the family's roles (F6); equal to ``ModelSpec.block_linears()``."""
    f = FAMILY[m.model_type]
    h, d, i = m.hidden_size, m.head_dim, m.intermediate_size
    q, kv = m.num_attention_heads * d, m.kv_heads * d
    qkv_b = True if f.bias == "always" else m.attention_bias
    o_b = True if f.bias == "always" else m.attention_bias and f.bias == "config"
    mlp_b = True if f.bias == "always" else m.mlp_bias
    nq, nk, nv, no, ng, nu, nd = f.names
    if f.fused_qkv:
        attn = (LinearShape(nq, h, q + 2 * kv, qkv_b), LinearShape(no, q, h, o_b))
    else:
        attn = (LinearShape(nq, h, q, qkv_b), LinearShape(nk, h, kv, qkv_b), LinearShape(nv, h, kv, qkv_b),
                LinearShape(no, q, h, o_b))
    if not f.gated_mlp:
        return attn + (LinearShape(nu, h, i, mlp_b), LinearShape(nd, i, h, mlp_b))
    if _moe(m):
        # transformers 5: a router parameter (MixtralTopKRouter.weight) and fused 3-D expert parameters
        # (MixtralExperts.gate_up_proj [E, 2I, h], .down_proj [E, h, I]); none of them is an nn.Linear.
        e = m.num_local_experts
        return attn + (LinearShape(MOE_NAMES["router"], h, e, False, 1, False),
                       LinearShape(MOE_NAMES["up"], h, 2 * i, False, e, False),
                       LinearShape(MOE_NAMES["down"], i, h, False, e, False))
    if f.fused_gate_up:
        return attn + (LinearShape(ng, h, 2 * i, mlp_b), LinearShape(nd, i, h, mlp_b))
    return attn + (LinearShape(ng, h, i, mlp_b), LinearShape(nu, h, i, mlp_b), LinearShape(nd, i, h, mlp_b))


@model_cache
def module_linears(m: ModelSpec) -> tuple[LinearShape, ...]:
    """The block linears that are ``nn.Linear`` modules (quantizers and PEFT's LoRA see them; F6)."""
    return tuple(l for l in block_linears(m) if l.module)


@model_cache
def role_names(m: ModelSpec) -> Mapping[str, str | None]:
    """Role (q, k, v, o, gate, up, down; MoE: also router) -> the module name of that linear in ``m`` (F6)."""
    names = dict(zip(ROLES, FAMILY[m.model_type].names))
    return MappingProxyType({**names, **MOE_NAMES} if _moe(m) else names)  # read-only: the result is cached


@model_cache
def qkv_names(m: ModelSpec) -> tuple[str, ...]:
    """The distinct names of the linears that read the attention norm's output (q, k, v; one when fused)."""
    return tuple(dict.fromkeys(FAMILY[m.model_type].names[:3]))


@model_cache
def mlp_input_names(m: ModelSpec) -> tuple[str, ...]:
    """The distinct names of the dense MLP linears that read the MLP norm's output (gate and up; GPT-2 c_fc)."""
    return tuple(n for n in dict.fromkeys(FAMILY[m.model_type].names[4:6]) if n)


@model_cache
def layer_windows(m: ModelSpec) -> tuple[int | None, ...]:
    """The attention window of every layer (None: full causal attention), F4: the one rule memory and throughput
    share."""
    w, L, kind = m.sliding_window, m.num_hidden_layers, FAMILY[m.model_type].window_layers
    if not w or kind == "none":
        return (None,) * L
    if kind == "all":
        return (w,) * L
    return tuple(w if i % 2 == 0 else None for i in range(L))


@model_cache
def _window_groups(m: ModelSpec) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(full-attention layers, ((window, layers), ...)) of :func:`layer_windows`."""
    ws = layer_windows(m)
    groups: dict[int, int] = {}
    for w in ws:
        if w is not None:
            groups[w] = groups.get(w, 0) + 1
    return ws.count(None), tuple(sorted(groups.items()))


def attended_positions(m: ModelSpec, seq: int) -> int:
    """Positions a query at position ``seq`` attends to, summed over layers (F4): each layer keeps (and a decode
    step reads) ``min(seq, window)`` keys and values. ``num_hidden_layers * seq`` without windows."""
    full, groups = _window_groups(m)
    total = full * seq
    for w, n in groups:
        total += n * (w if w < seq else seq)
    return total


def attention_masks(m: ModelSpec) -> int:
    """Masks eager attention builds for a block: a causal one, and a sliding-window one in a family that mixes
    windowed and full layers (F4: Gemma-2)."""
    return 2 if FAMILY[m.model_type].window_layers == "even" else 1


def rope_buffer_bytes(m: ModelSpec) -> int:
    """RoPE's ``inv_freq`` and ``original_inv_freq`` (fp32, head_dim/2 each); none for learned positions (F3)."""
    return 2 * (m.head_dim // 2) * 4 if FAMILY[m.model_type].positional == "rope" else 0


def learned_positions(m: ModelSpec) -> bool:
    """A learned position embedding (GPT-2's ``wpe``, F3)."""
    return FAMILY[m.model_type].positional == "learned"


def ia3_linears(m: ModelSpec) -> tuple[tuple[LinearShape, ...], LinearShape | None]:
    """(the linears whose outputs IA3 scales, the feedforward linear whose input it scales) by default (F7)."""
    return _ia3(m)


@model_cache
def _ia3(m: ModelSpec) -> tuple[tuple[LinearShape, ...], LinearShape | None]:
    f = FAMILY[m.model_type]
    lins = {l.name: l for l in block_linears(m)}
    return tuple(lins[n] for n in f.ia3_targets), (lins[f.ia3_feedforward] if f.ia3_feedforward else None)


def lora_default_targets(m: ModelSpec) -> tuple[str, ...]:
    """The LoRA ``target_modules`` PEFT picks for ``m`` when none are given (F9)."""
    return FAMILY[m.model_type].lora_targets


__all__ = ["Family", "FAMILY", "ROLES", "family", "model_cache", "model_keyed", "block_linears", "module_linears",
           "role_names", "qkv_names", "mlp_input_names", "layer_windows", "attended_positions", "attention_masks",
           "rope_buffer_bytes", "learned_positions", "ia3_linears", "lora_default_targets"]
