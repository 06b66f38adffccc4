"""The serving planner (quantlab/planner/serving.py): behaviour that could break, with the numbers derived here.

Llama-3.1-8B: 32 layers, 8 KV heads of 128, vocab 128,256, bf16. KV per token = 2·32·8·128·2 = 131,072 bytes;
one position's logits = 128,256·2 bytes per sequence, every token's = T·128,256·2.
"""

from __future__ import annotations

import dataclasses

import pytest

from quantlab.planner import memory as M
from quantlab.planner import serving as S
from quantlab.profiles import load_gpu, load_model
from quantlab.specs import Attention, DeviceMode, DType, PlanConfig, Precision, SpecError

M8 = load_model("8b").spec
M70 = load_model("70b").spec  # Llama-2-70B: 80 layers, 8 KV heads, vocab 32,000, untied
KV_PER_TOKEN_8B = 2 * 32 * 8 * 128 * 2


def sc(model=M8, **kw):
    plan_kw = {k: kw.pop(k) for k in list(kw) if k in {f.name for f in dataclasses.fields(PlanConfig)}}
    return S.serve_config(PlanConfig(model=model, **plan_kw), **kw)


# ---- S1: generate keeps one position's logits ----------------------------------------------------------------

def test_generate_has_no_logits_term_larger_than_one_position():
    s = sc(prompt_tokens=32000, new_tokens=768)
    p = S.serve_plan(s)
    every_token = 32768 * M8.vocab_size * 2
    assert p.components["prefill_transient"] < every_token / 2
    # the prefill transient is one block's (it does not depend on the vocabulary) ...
    big_vocab = dataclasses.replace(M8, vocab_size=2 * M8.vocab_size)
    assert S.serve_plan(sc(big_vocab, prompt_tokens=32000, new_tokens=768)).components["prefill_transient"] == \
        p.components["prefill_transient"]
    # ... while score keeps every token's logits
    score = S.serve_plan(sc(seq=32768, mode=S.Mode.SCORE))
    assert score.components["logits"] >= every_token
    assert score.process_bytes > p.process_bytes


def test_kv_holds_prompt_plus_new_and_the_peak_is_the_larger_phase():
    """generate never feeds back the last token it samples (``max_cache_length = max_length - 1``): 1000 + 500 - 1
    positions at the end."""
    s = sc(prompt_tokens=1000, new_tokens=500, concurrency=3)
    p = S.serve_plan(s)
    assert p.components["kv_cache"] == 3 * 1499 * KV_PER_TOKEN_8B
    kv_p, pre, kv_e, dec, _, _ = S._phases(s, [])
    assert kv_p == 3 * 1000 * KV_PER_TOKEN_8B
    static = p.components["weights"]
    assert p.peak_allocated_bytes == static + max(kv_p + pre, kv_e + dec)
    # a short prompt with many new tokens peaks in decode; a long prompt with few peaks in prefill
    assert "decode phase" in S.serve_plan(sc(prompt_tokens=16, new_tokens=8000)).notes[0]
    assert "prefill phase" in S.serve_plan(sc(prompt_tokens=8000, new_tokens=16)).notes[0]


def test_one_position_logits_follow_sampling():
    """S1b, per sequence and vocabulary entry: sampling's first step holds the fp32 copy, the top-k masked copy and
    the probabilities (12 bytes); a later step also the previous scores and probabilities, with the bool mask at
    masked_fill (4 + 4 + 4 + 1 + 4 = 17); greedy the copy (4), decoding also the previous one (8)."""
    s = sc(prompt_tokens=64, new_tokens=8, concurrency=4)
    logits, copies = S.one_position_logits(s.plan, True)
    BV = 4 * M8.vocab_size
    assert logits == 2 * BV and copies == 12 * BV
    assert S.one_position_logits(s.plan, True, decode=True)[1] == 17 * BV
    assert S.one_position_logits(s.plan, False)[1] == 4 * BV
    assert S.one_position_logits(s.plan, False, decode=True)[1] == 8 * BV


def test_no_logits_processor_holds_twelve_bytes_at_every_step():
    """S1b, logits_warpers False (TRL GRPOConfig: top_k 0, top_p 1, temperature 1): the copy is the scores; a step
    holds the copy, the softmax and multinomial's noise (12, also decoding), and 8 stay through the next forward
    (top-k 50: 12). The default keeps GenerationConfig's top-k 50 (the serving matrix rows)."""
    s = sc(prompt_tokens=64, new_tokens=8, concurrency=4)
    BV = 4 * M8.vocab_size
    assert S.one_position_logits(s.plan, True, warpers=False)[1] == 12 * BV
    assert S.one_position_logits(s.plan, True, decode=True, warpers=False)[1] == 12 * BV
    assert S.held_scores(s.plan, True, warpers=False) == 8 * BV and S.held_scores(s.plan, True) == 12 * BV
    assert s.logits_warpers is True
    plain = S.serve_config(s.plan, prompt_tokens=64, new_tokens=8, logits_warpers=False)
    assert S._phases(plain, [])[3] < S._phases(s, [])[3]  # the decode transient; the prefill is the same
    assert S._phases(plain, [])[1] == S._phases(s, [])[1]
    assert S.ServeConfig.from_dict(plain.to_dict()) == plain


def test_padded_prompts_add_sdpas_bool_mask():
    """S1d: left-padded prompts make SDPA build a bool mask of batch x query x keys, alive through the forward:
    4 x 64 x 64 bytes at the prefill; eager attention builds its mask anyway (F4): nothing more."""
    s = sc(prompt_tokens=64, new_tokens=8, concurrency=4, attn=Attention.SDPA)
    padded = S.serve_config(s.plan, prompt_tokens=64, new_tokens=8, padded_prompts=True)
    assert S._phases(padded, [])[1] - S._phases(s, [])[1] == 4 * 64 * 64
    e = sc(prompt_tokens=64, new_tokens=8, concurrency=4, attn=Attention.EAGER)
    assert S._phases(S.serve_config(e.plan, prompt_tokens=64, new_tokens=8, padded_prompts=True), [])[1] == \
        S._phases(e, [])[1]
    assert S.ServeConfig.from_dict(padded.to_dict()) == padded


def test_seq_is_the_whole_context():
    s = sc(seq=4096)
    assert (s.prompt_tokens, s.new_tokens, s.context) == (4096 - S.DEFAULT_NEW_TOKENS, S.DEFAULT_NEW_TOKENS, 4096)
    assert sc(seq=4096, mode=S.Mode.SCORE).prompt_tokens == 4096
    with pytest.raises(SpecError, match="whole context"):
        S.serve_config(PlanConfig(model=M8, seq=4096), prompt_tokens=100, new_tokens=10, seq_given=True)


# ---- S3: caches -----------------------------------------------------------------------------------------------

def test_static_cache_holds_the_whole_context_at_prefill_and_quantized_cache_is_smaller():
    dyn = sc(prompt_tokens=4000, new_tokens=4000)
    static = dataclasses.replace(dyn, cache=S.Cache.STATIC)
    assert S._phases(static, [])[0] == S._phases(dyn, [])[2] == 7999 * KV_PER_TOKEN_8B
    assert S.cache_transient(static) == 0 < S.cache_transient(dyn)
    q4 = dataclasses.replace(dyn, cache=S.Cache.QUANTIZED)
    q2 = dataclasses.replace(q4, kv_bits=2)
    full = S.kv_bytes(dyn, 8000)
    assert S.kv_bytes(q2, 8000) < S.kv_bytes(q4, 8000) < full / 3
    # the residual window stays in full precision: a context inside it is not compressed
    assert S.kv_bytes(q4, 100) == S.kv_bytes(dyn, 100)


def test_fp8_kv_halves_the_cache():
    assert S.kv_bytes(sc(kv_dtype=DType.FP8, seq=4096), 4096) * 2 == S.kv_bytes(sc(seq=4096), 4096)


# ---- S4: device_map="auto" -----------------------------------------------------------------------------------

def test_split_places_whole_blocks_and_balances_70b_over_four_a100():
    gpu = load_gpu("a100-80gb")
    s = sc(M70, num_gpus=4)
    p = S.serve_plan(s, gpu)
    assert len(p.gpus) == 4 and sum(r.blocks for r in p.gpus) == 80 and not p.offloaded_blocks
    assert "embed" in p.gpus[0].modules and "lm_head" in p.gpus[-1].modules
    embed, block, tail, head = S.module_sizes(s.plan)
    total = embed + 80 * block + tail + head
    cap = total // 4 + int(1.25 * block)  # get_balanced_memory's max_memory for GPUs 0..2
    assert all(r.weights <= cap for r in p.gpus[:3])
    assert p.gpus[0].weights <= cap - block  # GPU 0 keeps room for the largest layer
    assert sum(r.weights for r in p.gpus) == total
    assert S.fits(p, gpu)


def test_split_offloads_when_the_gpus_are_too_small_and_tied_heads_stay_with_the_embedding():
    p = S.serve_plan(sc(M70, num_gpus=2), load_gpu("l4"))
    assert p.offloaded_blocks > 0 and not S.fits(p, load_gpu("l4"))
    tied = dataclasses.replace(M8, tie_word_embeddings=True)
    names, used, blocks, left = S.device_map(PlanConfig(model=tied, num_gpus=2), 10 << 30, 2)
    assert "lm_head" not in names[0] + names[1] and "embed" in names[0]


def test_tensor_parallel_divides_kv_and_replicates_heads_beyond_their_count():
    one = S.serve_plan(sc(seq=8192)).components["kv_cache"]
    assert S.serve_plan(sc(seq=8192, tp=2, num_gpus=2)).components["kv_cache"] == one // 2
    assert S.serve_plan(sc(seq=8192, tp=8, num_gpus=8)).components["kv_cache"] == one // 8
    # 8 KV heads over 16... not a divisor of the 32 heads? 16 divides 32 and is a multiple of 8: one head each
    assert S.serve_plan(sc(seq=8192, tp=16, num_gpus=16)).components["kv_cache"] == one // 8


def test_replicas_only_when_asked():
    s = sc(M70, num_gpus=4, replicas=2)
    assert s.per_replica_gpus == 2 and s.split
    assert len(S.serve_plan(s, load_gpu("a100-80gb")).gpus) == 2
    with pytest.raises(SpecError, match="multiple of --replicas"):
        sc(M70, num_gpus=4, replicas=3)


# ---- S6: adapters ---------------------------------------------------------------------------------------------

def test_unmerged_adapters_cost_k_times_fp32_lora_and_merged_costs_nothing():
    base = sc(seq=2048)
    one = S.adapter_bytes(dataclasses.replace(base, adapters=1))
    # q_proj 4096 -> 4096 and v_proj 4096 -> 1024 at r 16, fp32, 32 layers
    assert one == 32 * 16 * ((4096 + 4096) + (4096 + 1024)) * 4
    assert S.adapter_bytes(dataclasses.replace(base, adapters=3)) == 3 * one
    assert S.adapter_bytes(dataclasses.replace(base, merged=True)) == 0
    p = S.serve_plan(dataclasses.replace(base, adapters=3))
    assert p.process_bytes > S.serve_plan(base).process_bytes and p.components["adapters"] == 3 * one


def test_vllm_lora_slots_cover_every_linear_at_the_rank_slot():
    s = sc(seq=2048, engine=S.Engine.VLLM, adapters=2, lora_r=12)
    assert s.lora_rank_slots == 16
    p = S.serve_plan(s, load_gpu("l40s"))
    assert p.vllm.lora_bytes > 0 and p.vllm.kv_pool_bytes < S.serve_plan(sc(seq=2048, engine=S.Engine.VLLM),
                                                                          load_gpu("l40s")).vllm.kv_pool_bytes


# ---- S7, S8: vLLM ---------------------------------------------------------------------------------------------

def test_vllm_pool_blocks_tokens_and_concurrency_follow_vllm_formulas():
    gpu = load_gpu("l40s")
    s = sc(seq=4096, engine=S.Engine.VLLM, max_model_len=8192)
    v = S.serve_plan(s, gpu).vllm
    assert v.budget_bytes == int(gpu.memory_bytes * 0.9)
    assert v.kv_pool_bytes == v.budget_bytes - v.weights_bytes - v.activation_peak_bytes - v.non_torch_bytes
    assert v.page_bytes == 16 * KV_PER_TOKEN_8B
    assert v.num_blocks == v.kv_pool_bytes // (v.page_bytes // 32) // 32
    assert v.kv_tokens == 16 * v.num_blocks
    assert v.max_concurrency == v.num_blocks / (8192 // 16)
    assert (v.max_num_batched_tokens, v.max_num_seqs) == (2048, 256)  # vllm serve on a < 70 GiB GPU
    # more utilisation, more blocks; a bigger batch budget, a bigger profile peak
    more = S.serve_plan(dataclasses.replace(s, gpu_memory_utilization=0.95), gpu).vllm
    assert more.num_blocks > v.num_blocks
    big = S.serve_plan(dataclasses.replace(s, max_num_batched_tokens=16384), gpu).vllm
    assert big.activation_peak_bytes > v.activation_peak_bytes
    assert S.vllm_defaults(load_gpu("h100-sxm")) == (8192, 1024) and S.vllm_defaults(load_gpu("a100-80gb")) == \
        (2048, 256)


def test_vllm_max_model_len_default_follows_rope_scaling():
    assert S.vllm_derived_max_len(M8, S.RopeScaling("llama3", 8.0, 8192)) == M8.max_position_embeddings
    assert S.vllm_derived_max_len(M70, S.RopeScaling("yarn", 4.0, 4096)) == 16384
    assert S.vllm_derived_max_len(M70, S.RopeScaling("linear", 2.0)) == 8192
    assert S.context_limit(M70, None) == 4096 and S.context_limit(M70, S.RopeScaling("yarn", 4.0)) == 16384
    assert any("beyond" in n for n in S.serve_plan(sc(M70, seq=8192)).notes)
    assert not any("beyond" in n for n in S.serve_plan(sc(M70, seq=8192, rope_scaling=S.RopeScaling.parse(
        "yarn:2"))).notes)


# ---- S10: closed forms against the search ----------------------------------------------------------------------

SWEEP = [
    dict(seq=4096), dict(prompt_tokens=500, new_tokens=3000), dict(seq=8192, precision=Precision.NF4),
    dict(seq=4096, cache=S.Cache.STATIC), dict(seq=4096, cache=S.Cache.QUANTIZED, kv_bits=2),
    dict(seq=2048, adapters=4), dict(seq=4096, tp=2, num_gpus=2), dict(seq=4096, mode=S.Mode.SCORE),
    dict(seq=4096, mode=S.Mode.PREFILL), dict(seq=4096, kv_dtype=DType.FP8),
]


@pytest.mark.parametrize("kw", SWEEP)
@pytest.mark.parametrize("gpu", ["l40s", "rtx-4090"])
def test_closed_forms_match_the_search(kw, gpu):
    g = load_gpu(gpu)
    s = sc(**kw)
    assert S.max_concurrency(s, g) == S.search_concurrency(s, g)
    assert S.max_prompt(s, g, cap=1 << 18) == S.search_prompt(s, g, cap=1 << 18)
    assert S.max_concurrency(s, g, headroom=0.1) == S.search_concurrency(s, g, headroom=0.1)


def test_closed_forms_match_on_a_split_model():
    g = load_gpu("a100-80gb")
    s = sc(M70, num_gpus=4, seq=4096)
    assert S.max_concurrency(s, g) == S.search_concurrency(s, g)
    assert S.max_prompt(s, g, cap=1 << 17) == S.search_prompt(s, g, cap=1 << 17)


def test_the_answers_sit_on_the_boundary():
    g = load_gpu("l40s")
    s = sc(seq=8192)
    c = S.max_concurrency(s, g)
    assert c > 1
    assert S.fits(S.serve_plan(S.with_workload(s, concurrency=c), g), g)
    assert not S.fits(S.serve_plan(S.with_workload(s, concurrency=c + 1), g), g)
    x = S.max_prompt(s, g)
    assert S.fits(S.serve_plan(S.with_workload(s, prompt_tokens=x), g), g)
    assert not S.fits(S.serve_plan(S.with_workload(s, prompt_tokens=x + 1), g), g)


def test_vllm_concurrency_and_context_from_blocks():
    g = load_gpu("l40s")
    s = sc(prompt_tokens=4000, new_tokens=96, engine=S.Engine.VLLM, max_model_len=8192)
    v = S.serve_plan(s, g).vllm
    assert S.max_concurrency(s, g) == min(v.max_num_seqs, v.num_blocks // (4096 // 16))
    assert S.max_prompt(s, g) == min(v.num_blocks * 16, 8192) - 96


# ---- throughput -----------------------------------------------------------------------------------------------

def test_decode_per_sequence_slows_and_aggregate_grows_with_concurrency():
    g = load_gpu("l40s")
    one, many = S.speed(sc(seq=4096), g), S.speed(sc(seq=4096, concurrency=32), g)
    assert many.decode_tok_s_per_seq < one.decode_tok_s_per_seq and many.decode_tok_s > 10 * one.decode_tok_s
    assert S.speed(sc(prompt_tokens=8000, new_tokens=10), g).prefill_s > S.speed(sc(prompt_tokens=1000,
                                                                                     new_tokens=10), g).prefill_s
    # tensor parallel reads half the bytes per GPU; a split model runs its GPUs one after another
    assert S.speed(sc(seq=4096, tp=2, num_gpus=2), g).decode_step_s < one.decode_step_s
    assert S.speed(sc(seq=4096, num_gpus=2), g).decode_step_s == pytest.approx(one.decode_step_s)
    q = S.speed(sc(seq=4096, concurrency=32, cache=S.Cache.QUANTIZED), g)
    assert q.decode_step_s < many.decode_step_s  # fewer cached bytes read


# ---- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    (dict(seq=2048, mode=S.Mode.SCORE, new_tokens=10), "applies to --mode generate"),
    (dict(seq=2048, engine=S.Engine.VLLM, device=DeviceMode.CPU), "--device cpu"),
    (dict(seq=2048, concurrency=0), "concurrency must be a positive integer"),
    (dict(seq=2048, adapters=2, lora_targets=("nope",)), "match no linear"),
    (dict(seq=2048, adapters=2, lora_r=5000), "lora-r"),
    (dict(seq=2048, engine=S.Engine.VLLM, max_model_len=1024), "exceed --max-model-len"),
    (dict(seq=2048, engine=S.Engine.VLLM, num_gpus=2), "--tp 2"),
    (dict(seq=2048, max_num_seqs=4), "vLLM setting"),
    (dict(seq=2048, cache=S.Cache.QUANTIZED, kv_bits=3), "2 or 4 bits"),
    (dict(seq=2048, tp=2, num_gpus=4), "tensor-parallel group"),
])
def test_bad_input_is_one_line(kw, msg):
    with pytest.raises(SpecError, match=msg) as e:
        sc(**kw)
    assert "\n" not in str(e.value)


def test_rope_parse_and_config():
    assert S.RopeScaling.parse("yarn:4") == S.RopeScaling("yarn", 4.0, source="--rope-scaling")
    assert S.RopeScaling.from_config({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings":
                                      8192}).original_max_position_embeddings == 8192
    assert S.RopeScaling.from_config({"type": "default"}) is None
    for bad in ("yarn", "yarn:x", "cubic:2", "linear:0.5"):
        with pytest.raises(SpecError):
            S.RopeScaling.parse(bad)


def test_suggestions_name_tensor_parallel_and_the_split_and_each_fits():
    g = load_gpu("a100-80gb")
    s = sc(M70, seq=2048)
    assert not S.fits(S.serve_plan(s, g), g)
    sug = S.suggestions(s, g)
    texts = [t for t, _ in sug]
    assert any("tensor parallel" in t for t in texts) and any("device_map" in t for t in texts)
    assert all(b <= g.memory_bytes for _, b in sug)
    assert S.suggestions(sc(seq=2048), g) == [] or S.fits(S.serve_plan(sc(seq=2048), g), g)


def test_vllm_adapters_note_the_cpu_loras():
    p = S.serve_plan(sc(seq=2048, engine=S.Engine.VLLM, adapters=2, max_cpu_loras=8), load_gpu("l40s"))
    assert any("max_cpu_loras 8" in n for n in p.notes)


# ---- S1b, S1c, S3: what quantlab validate measured in generate --------------------------------------------------

def test_generate_caches_prompt_plus_new_less_one_and_holds_the_previous_scores():
    """The cache ends at prompt + new - 1 positions (the last sampled token is never fed back); the previous step's
    copy, scores and probabilities (12 bytes per entry; greedy 4) stay alive through a decode forward."""
    s = sc(prompt_tokens=100, new_tokens=20, concurrency=2)
    assert S.cached_positions(s) == 119
    assert S.cached_positions(sc(prompt_tokens=100, mode=S.Mode.PREFILL)) == 100
    assert S.held_scores(s.plan, True) == 12 * 2 * M8.vocab_size
    assert S.held_scores(s.plan, False) == 4 * 2 * M8.vocab_size


def test_generate_position_tables_and_ids():
    """Llama-3.1-8B (RoPE, head_dim 128, bf16): cos and sin of 2 sequences x 100 tokens = 2 x 2 x 100 x 128 x 2
    bytes; generate's int64 ids: 2 x 2 x 100 x 8 at the prefill, 2 x (100 + 120 + 119) x 8 at the last step."""
    s = sc(prompt_tokens=100, new_tokens=20, concurrency=2)
    assert S.position_tables(s.plan, 100) == 2 * 2 * 100 * 128 * 2
    assert S.generate_ids_bytes(s, False) == 8 * 2 * 2 * 100
    assert S.generate_ids_bytes(s, True) == 8 * 2 * (100 + 120 + 119)


def test_dynamic_cache_appends_one_of_k_or_v_at_a_time_and_eager_repeats_kv():
    """torch.cat of the keys then of the values: half a layer's K and V at the context; eager attention repeats
    K and V of one layer to all 32 heads (8 KV heads: x4), SDPA does not (enable_gqa)."""
    s = sc(prompt_tokens=1000, new_tokens=1, concurrency=1)
    layer = 2 * 8 * 128 * 2 * 1000  # K and V of one layer at 1000 positions, bf16
    assert S.cache_transient(s) == layer // 2
    assert S.repeated_kv(s) == 0
    eager = dataclasses.replace(s, plan=dataclasses.replace(s.plan, attn=Attention.EAGER))
    assert S.repeated_kv(eager) == layer * 4


def test_longest_prompt_stops_at_the_models_context():
    """Memory on four A100s would hold a far longer prompt than Llama-2-70B's 4,096-token context: the answer is
    the context less the new tokens, and a rope-scaled plan (S9) raises it."""
    g = load_gpu("a100-80gb")
    s = sc(M70, num_gpus=4, seq=2048)
    assert S.prompt_limit(s) == 4096 - s.new_tokens
    assert S.max_prompt(s, g) == S.search_prompt(s, g) == 4096 - s.new_tokens
    scaled = sc(M70, num_gpus=4, seq=2048, rope_scaling=S.RopeScaling("linear", 4.0, None))
    assert S.prompt_limit(scaled) == 4 * 4096 - s.new_tokens
    assert 4096 < S.max_prompt(scaled, g) <= S.prompt_limit(scaled)


def test_a_family_without_sdpa_serves_eager_on_either_transformers_stack():
    """families F5: a family whose transformers code has no SDPA path runs eager attention, whichever transformers
    version is planned (the rule keys on the library, not the version string)."""
    from quantlab.families import family

    fams = [m for m in ("gemma-2-2b", "gpt2", "phi-3-mini", "qwen2.5-0.5b", "llama-3.2-1b")
            if not family(load_model(m).spec).sdpa]
    if not fams:
        pytest.skip("every shipped family has an SDPA path")
    spec = load_model(fams[0]).spec
    for stack in ("transformers==5", "transformers==4.57"):
        pc = PlanConfig.from_dict({"method": "inference", "attn": "sdpa", "stack": stack, "seq": 1024}, model=spec)
        assert S._attention(pc) is Attention.EAGER, stack


def test_vllm_budget_multiplies_cudas_total_where_the_profile_has_it():
    """S7: vLLM's budget is gpu_memory_utilization x torch.cuda.mem_get_info()[1]; the H100 profile carries that
    total (from a vLLM log), the L40S profile does not and says so; other memory (a detected GPU's free memory)
    drops it."""
    h100, l40s = load_gpu("h100-sxm"), load_gpu("l40s")
    assert h100.cuda_total_bytes and h100.cuda_total_bytes < h100.memory_bytes and l40s.cuda_total_bytes is None
    s = sc(engine=S.Engine.VLLM, max_model_len=8192, seq=2048)
    v = S.serve_plan(s, h100).vllm
    assert v.budget_bytes == int(s.gpu_memory_utilization * h100.cuda_total_bytes)
    p = S.serve_plan(s, l40s)
    assert p.vllm.budget_bytes == int(s.gpu_memory_utilization * l40s.memory_bytes)
    assert any("NVML total" in n for n in p.notes)
    assert h100.with_memory(70 * 2**30).cuda_total_bytes is None and h100.with_memory(h100.memory_bytes) is h100


def test_a_serving_document_from_before_the_sampling_fields_reads_back():
    """A --format json serving document written before logits_warpers / padded_prompts existed reads back with
    the values it meant (transformers' top-k warper, unpadded prompts); a field that was always there is still
    required."""
    s = sc(prompt_tokens=64, new_tokens=8, concurrency=4)
    old = s.to_dict()
    del old["logits_warpers"], old["padded_prompts"]
    assert S.ServeConfig.from_dict(old) == s
    del old["do_sample"]
    with pytest.raises(SpecError, match="do_sample"):
        S.ServeConfig.from_dict(old)
