"""Architecture facts as data (quantlab.families): one rule per fact, shared by memory and throughput."""

import dataclasses
import pathlib
import re

import pytest

from quantlab import families as F
from quantlab.planner import plan
from quantlab.planner import throughput as tp
from quantlab.planner.recommend import model_bytes
from quantlab.profiles import list_models, load_gpu, load_model
from quantlab.specs import FAMILIES, DType, Method, PlanConfig, Precision

GEMMA2_9B = load_model("gemma-2-9b").spec
MISTRAL = load_model("mistral-7b-v0.1").spec


def test_every_family_has_facts():
    assert set(F.FAMILY) == set(FAMILIES)
    for name, fam in F.FAMILY.items():
        assert fam.model_type == name and fam.block_class.endswith(("DecoderLayer", "Block"))
    # the HF decoder-block class names that emit's FSDP config wraps, as transformers 5 spells them
    assert {k: f.block_class for k, f in F.FAMILY.items()} == {
        "llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer", "qwen2": "Qwen2DecoderLayer",
        "mixtral": "MixtralDecoderLayer", "gemma2": "Gemma2DecoderLayer", "phi3": "Phi3DecoderLayer",
        "gpt2": "GPT2Block"}


def test_model_cache_is_by_identity_then_value():
    m = load_model("llama-3.1-8b").spec
    twin = dataclasses.replace(m)
    assert twin is not m and F.block_linears(twin) is F.block_linears(m)  # equal specs share one result
    other = dataclasses.replace(m, num_hidden_layers=2)
    assert F.layer_windows(other) == (None, None)


def _shapes(name, **changes):
    m = dataclasses.replace(load_model(name).spec, **changes)
    return [(l.name, l.in_features, l.out_features, l.bias, l.count, l.module) for l in F.block_linears(m)]


def test_block_linears_golden_per_family():
    """The roles of F6 give each family's modules as transformers 5 names and shapes them (config.json values:
    Llama-3.1-8B h 4096, 8 KV heads of 128, I 14336; GPT-2 h 768, I 3072; Phi-3-mini h 3072, I 8192, 32 heads;
    Qwen2.5-7B h 3584, 4 KV heads of 128, I 18944, bias on q/k/v only; Mixtral 8 experts, I 14336)."""
    assert _shapes("llama-3.1-8b") == [
        ("q_proj", 4096, 4096, False, 1, True), ("k_proj", 4096, 1024, False, 1, True),
        ("v_proj", 4096, 1024, False, 1, True), ("o_proj", 4096, 4096, False, 1, True),
        ("gate_proj", 4096, 14336, False, 1, True), ("up_proj", 4096, 14336, False, 1, True),
        ("down_proj", 14336, 4096, False, 1, True)]
    assert [x[3] for x in _shapes("llama-3.1-8b", attention_bias=True, mlp_bias=True)] == [True] * 7
    assert _shapes("gpt2") == [("c_attn", 768, 2304, True, 1, True), ("attn.c_proj", 768, 768, True, 1, True),
                               ("c_fc", 768, 3072, True, 1, True), ("mlp.c_proj", 3072, 768, True, 1, True)]
    assert _shapes("phi-3-mini") == [("qkv_proj", 3072, 9216, False, 1, True), ("o_proj", 3072, 3072, False, 1, True),
                                     ("gate_up_proj", 3072, 16384, False, 1, True),
                                     ("down_proj", 8192, 3072, False, 1, True)]
    q = _shapes("qwen2.5-7b")
    assert [(n, b) for n, _, _, b, _, _ in q[:4]] == [("q_proj", True), ("k_proj", True), ("v_proj", True),
                                                      ("o_proj", False)]
    assert q[1][2] == 512 and q[4] == ("gate_proj", 3584, 18944, False, 1, True)
    assert _shapes("mixtral-8x7b")[4:] == [("gate", 4096, 8, False, 1, False),
                                           ("experts.gate_up_proj", 4096, 28672, False, 8, False),
                                           ("experts.down_proj", 14336, 4096, False, 8, False)]


@pytest.mark.parametrize("name", list_models())
def test_role_names_and_ia3_targets_name_real_linears(name):
    m = load_model(name).spec
    names = {l.name for l in F.block_linears(m)}
    roles = F.role_names(m)
    for role in ("q", "k", "v", "o", "up", "down"):
        assert roles[role] in names, role
    targets, ff = F.ia3_linears(m)
    assert targets and all(t.name in names for t in targets)
    assert ff is None or ff.name in names


def test_layer_windows_follow_the_family():
    """Gemma-2 alternates sliding (even layers) and full; Mistral windows every layer; Llama none; Qwen2 as profiled
    has ``use_sliding_window: false``."""
    g = F.layer_windows(GEMMA2_9B)
    assert len(g) == 42 and g[0::2] == (4096,) * 21 and g[1::2] == (None,) * 21
    assert F.layer_windows(MISTRAL) == (4096,) * 32
    assert set(F.layer_windows(load_model("llama-3.1-8b").spec)) == {None}
    assert set(F.layer_windows(load_model("qwen2.5-7b").spec)) == {None}
    assert F.attended_positions(GEMMA2_9B, 8192) == 21 * 8192 + 21 * 4096
    assert F.attended_positions(GEMMA2_9B, 1000) == 42 * 1000


def _decode_vs_cache(m, seq, batch=2):
    cfg = PlanConfig(model=m, method=Method.INFERENCE, precision=Precision.BF16, batch=batch, seq=seq)
    p = plan(cfg)
    nb = model_bytes(p)
    step = tp.decode_step(cfg, nb, tp.roof(load_gpu("h100-sxm"), DType.BF16), context=seq)
    return p.components["kv_cache"], tp.decode_kv_bytes(m, DType.BF16, seq, batch), step.bytes - nb.weights


def test_gemma2_decode_reads_the_kv_cache_it_holds():
    """Gemma-2-9B, bf16, 8192 tokens: 21 full layers x 8192 + 21 sliding layers x 4096 positions, each
    2 x 8 KV heads x 256 x 2 bytes = 8,192 bytes: 2,113,929,216 bytes per sequence, in the cache and read by every
    decode step (the old every-layer window read 1.41 GB)."""
    cache, read, step = _decode_vs_cache(GEMMA2_9B, 8192)
    assert cache == read == step == 2 * (21 * 8192 + 21 * 4096) * 8192 == 2 * 2_113_929_216


def test_every_layer_window_decode_reads_the_kv_cache_it_holds():
    """Mistral-7B-v0.1 windows every layer at 4096: 32 x 4096 positions x 2 x 8 x 128 x 2 bytes per sequence."""
    cache, read, step = _decode_vs_cache(MISTRAL, 8192)
    assert cache == read == step == 2 * 32 * 4096 * 4096


def test_gemma2_attention_flops_cap_only_the_sliding_layers():
    """4·d_attn·ΣT: Gemma-2-9B has 16 heads x 256; at 8192 tokens half its layers attend to 4096 keys."""
    assert tp.attention_flops_per_token(GEMMA2_9B, 8192) == 4 * 16 * 256 * (21 * 8192 + 21 * 4096)
    assert tp.attention_flops_per_token(MISTRAL, 8192) == 4 * 32 * 128 * 32 * 4096


def test_no_model_type_branches_in_the_planner():
    """Family behaviour is data (quantlab.families): the planner never compares model_type strings."""
    root = pathlib.Path(F.__file__).parent / "planner"
    branch = re.compile(r"model_type\s*(==|!=|\bin\b|\bnot\b)|\[[^\]]*model_type\]")
    for f in root.glob("*.py"):
        if f.name == "encoder.py":  # the encoder planner's own family table (EncoderFamily), keyed by model_type
            continue
        assert not branch.search(f.read_text()), f.name
