"""The throughput roofline: golden FLOP and byte counts derived by hand, and the properties a roofline must have."""

import dataclasses

import pytest

from quantlab.planner import throughput as tp
from quantlab.specs import (DType, GPUSpec, Method, ModelSpec, Offload, PlanConfig, Precision)

LLAMA2_7B = ModelSpec(name="llama-2-7b", model_type="llama", hidden_size=4096, num_hidden_layers=32,
                      num_attention_heads=32, intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)
MIXTRAL = ModelSpec(name="mixtral-8x7b", model_type="mixtral", hidden_size=4096, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
                    num_local_experts=8, num_experts_per_tok=2)

# An H100-like device with round numbers, so expected times are easy to derive by hand.
DEV = GPUSpec(name="dev", vendor="test", memory_bytes=80 << 30, memory_bandwidth_bytes_per_s=2e12,
              flops={"fp32": 50e12, "tf32": None, "bf16": 1e15, "fp16": 1e15, "int8": None, "fp8": None},
              bf16_supported=True, fp8_supported=False, interconnect="nvlink",
              interconnect_bandwidth_bytes_per_s=400e9, price_usd_per_hour=2.0)
U = tp.Utilisation()


def test_matmul_params_llama2_7b():
    """Llama-2-7B: 6,738,415,616 parameters, minus the embedding lookup (32000·4096 = 131,072,000) and the
    RMSNorm weights ((2·32+1)·4096 = 266,240) = 6,607,077,376 weights that multiply per token:
    32 blocks · (4·4096² + 3·4096·11008) + lm_head 32000·4096."""
    assert tp.matmul_params(LLAMA2_7B) == 6_738_415_616 - 131_072_000 - 266_240 == 6_607_077_376


def test_matmul_params_mixtral_counts_routed_experts_only():
    """Mixtral 8x7B has 12.9 B active parameters (Mistral AI); that figure includes the 131 M embedding, which
    does no FLOPs. Per block: attention 2·4096² + 2·4096·1024, router 4096·8, 2 of 8 experts 2·3·4096·14336."""
    per_block = 2 * 4096 ** 2 + 2 * 4096 * 1024 + 4096 * 8 + 2 * 3 * 4096 * 14336
    assert tp.matmul_params(MIXTRAL) == 32 * per_block + 32000 * 4096
    assert abs(tp.matmul_params(MIXTRAL) + 32000 * 4096 - 12.9e9) / 12.9e9 < 0.005


def test_full_training_is_6n_plus_palm_attention():
    """PaLM appendix B: 6N + 12·L·H·Q·T per token. Llama-2-7B at T = 4096: 12·32·4096·4096."""
    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, seq=4096)
    f = tp.train_flops_per_token(cfg, trainable_params=6_738_415_616)
    n = 6_607_077_376
    assert f.total == 6 * n + 12 * 32 * 4096 * 4096
    assert f.forward == 2 * n + 4 * 32 * 4096 * 4096
    assert f.recompute == 0


def test_checkpointing_adds_one_forward():
    base = PlanConfig(model=LLAMA2_7B, method=Method.FULL, seq=2048)
    ck = dataclasses.replace(base, grad_checkpointing=True)
    a, b = tp.train_flops_per_token(base, 6_738_415_616), tp.train_flops_per_token(ck, 6_738_415_616)
    assert b.total - a.total == a.forward == b.recompute


def test_lora_skips_frozen_weight_gradients():
    """LoRA on a frozen base: forward 2(N+A), input gradients 2(N+A), weight gradients only 2A: about 4N, not 6N."""
    adapters = 8_388_608  # r=16 on q,v of Llama-2-7B: 32 · 2 · 16 · (4096 + 4096)
    cfg = PlanConfig(model=LLAMA2_7B, method=Method.LORA, seq=512)
    f = tp.train_flops_per_token(cfg, trainable_params=adapters)
    assert f.backward_weight == 2 * adapters
    n = 6_607_077_376
    assert f.total == 4 * (n + adapters) + 2 * adapters + 12 * 32 * 4096 * 512
    full = tp.train_flops_per_token(dataclasses.replace(cfg, method=Method.FULL), 6_738_415_616)
    assert 0.6 < f.total / full.total < 0.7


def test_freeze_stops_the_input_gradient_at_the_first_trained_block():
    full = PlanConfig(model=LLAMA2_7B, method=Method.FULL, seq=512)
    frz = dataclasses.replace(full, method=Method.FREEZE, freeze_last_layers=2)
    trainable = 2 * 202_375_168  # two blocks' linears (norms left out)
    f = tp.train_flops_per_token(frz, trainable)
    assert f.backward_input < tp.train_flops_per_token(full, 6_738_415_616).backward_input / 10
    assert f.backward_weight == 2 * trainable


def test_sliding_window_caps_attention():
    mistral = dataclasses.replace(LLAMA2_7B, model_type="mistral", sliding_window=4096)
    assert tp.attention_flops_per_token(mistral, 32768) == tp.attention_flops_per_token(mistral, 4096)
    assert tp.attention_flops_per_token(LLAMA2_7B, 8192) == 2 * tp.attention_flops_per_token(LLAMA2_7B, 4096)


def test_kv_bytes_per_token_is_gqa_aware():
    """Llama-2-7B fp16: 2·32·32·128·2 = 524,288 bytes per token; Mixtral (8 KV heads) a quarter of it."""
    assert tp.kv_bytes_per_token(LLAMA2_7B, DType.FP16) == 524_288
    assert tp.kv_bytes_per_token(MIXTRAL, DType.FP16) == 524_288 // 4


def test_decode_batch1_is_memory_bound_at_bandwidth_over_weights():
    """Batch-1 decode reads every weight once per token: 13.5 GB at 2 TB/s · 0.6 ≈ 89 tokens/s."""
    cfg = PlanConfig(model=LLAMA2_7B, seq=1)  # context 1: KV cache negligible
    wb = 2 * 6_738_415_616
    step = tp.decode_step(cfg, tp.ModelBytes(wb), tp.roof(DEV, DType.BF16), U)
    assert step.bound == "memory"
    assert step.tokens_per_s == pytest.approx(2e12 * 0.6 / (wb + 524_288), rel=1e-9)


def test_decode_throughput_grows_with_batch_then_the_kv_cache_dominates():
    r, wb = tp.roof(DEV, DType.BF16), tp.ModelBytes(2 * 6_738_415_616)
    tps = [tp.decode_step(PlanConfig(model=LLAMA2_7B, batch=b, seq=4096), wb, r, U).tokens_per_s
           for b in (1, 8, 64)]
    assert tps[0] < tps[1] < tps[2]
    # At batch 64 × 4096 tokens the KV cache (64·4096·0.5 MiB = 128 GiB) dwarfs the weights: per-token speed
    # approaches bandwidth / KV bytes per sequence.
    assert tps[2] < 64 * tps[0] / 5


def test_prefill_is_compute_bound():
    cfg = PlanConfig(model=LLAMA2_7B, batch=1, seq=2048)
    step = tp.prefill_step(cfg, tp.ModelBytes(2 * 6_738_415_616), tp.roof(DEV, DType.BF16), U)
    assert step.bound == "compute"
    per_tok = 2 * 6_607_077_376 + 4 * 32 * 4096 * 2048
    assert step.seconds == pytest.approx(2048 * per_tok / (1e15 * 0.5))


def test_training_step_time_and_ddp_network_roof():
    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, batch=1, seq=4096, num_gpus=8)
    nb = tp.ModelBytes(weights=2 * 6_738_415_616, gradients=2 * 6_738_415_616, optimizer=12 * 6_738_415_616)
    step = tp.train_step(cfg, 6_738_415_616, nb, tp.roof(DEV, DType.BF16), U)
    flops = 4096 * (6 * 6_607_077_376 + 12 * 32 * 4096 * 4096)
    assert step.compute_s == pytest.approx(flops / (1e15 * 0.40))
    assert step.network_s == pytest.approx(2 * 7 / 8 * nb.gradients / (400e9 * 0.7))
    z3 = tp.train_step(dataclasses.replace(cfg, zero=3), 6_738_415_616, nb, tp.roof(DEV, DType.BF16), U)
    assert z3.network_s == pytest.approx(1.5 * step.network_s)  # ZeRO paper: stage 3 moves 1.5x DDP


def test_kbit_training_uses_the_kbit_utilisation():
    cfg = PlanConfig(model=LLAMA2_7B, method=Method.QLORA, precision=Precision.NF4, seq=1024)
    lora = dataclasses.replace(cfg, method=Method.LORA, precision=Precision.BF16)
    r, nb = tp.roof(DEV, DType.BF16), tp.ModelBytes(weights=4 * 10 ** 9)
    q, lo = tp.train_step(cfg, 8_388_608, nb, r, U), tp.train_step(lora, 8_388_608, nb, r, U)
    assert q.compute_s / lo.compute_s == pytest.approx(U.train_mfu / U.kbit_train_mfu)


def test_offload_adds_host_time_and_params_offload_adds_more():
    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, seq=2048, num_gpus=1, zero=0)
    nb = tp.ModelBytes(weights=2 * 6_738_415_616, gradients=2 * 6_738_415_616, optimizer=12 * 6_738_415_616)
    r = tp.roof(DEV, DType.BF16)
    t0 = tp.train_step(cfg, 6_738_415_616, nb, r, U)
    t1 = tp.train_step(dataclasses.replace(cfg, offload=Offload.OPTIMIZER), 6_738_415_616, nb, r, U)
    t2 = tp.train_step(dataclasses.replace(cfg, offload=Offload.PARAMS, zero=3), 6_738_415_616, nb, r, U)
    assert t0.host_s == 0 < t1.host_s < t2.host_s
    assert t1.seconds > t0.seconds


def test_tensor_parallel_splits_decode_bytes_and_pays_collectives():
    r, wb = tp.roof(DEV, DType.BF16), tp.ModelBytes(2 * 6_738_415_616)
    one = tp.decode_step(PlanConfig(model=LLAMA2_7B, batch=1, seq=1024), wb, r, U)
    two = tp.decode_step(PlanConfig(model=LLAMA2_7B, batch=1, seq=1024, num_gpus=2, tp=2), wb, r, U)
    assert two.memory_s == pytest.approx(one.memory_s / 2)
    assert two.network_s >= 2 * 32 * U.collective_latency_s
    assert one.network_s == 0


def test_fp32_uses_the_fp32_peak_not_tf32():
    assert tp.roof(DEV, DType.FP32).flops_per_s == 50e12
    no_fp8 = dataclasses.replace(DEV, flops={**DEV.flops, "fp8": None})
    with pytest.raises(ValueError, match="fp8"):
        tp.roof(no_fp8, DType.FP8)


def test_utilisation_rejects_impossible_fractions():
    with pytest.raises(ValueError):
        tp.Utilisation(train_mfu=1.5)
    with pytest.raises(ValueError):
        tp.Utilisation(mbu=0)


def test_multi_node_link_is_capped_by_the_network():
    r = tp.roof(DEV, DType.BF16)
    assert tp.link_bandwidth(r, 8, U) == pytest.approx(400e9 * 0.7)
    assert tp.link_bandwidth(r, 16, U) == pytest.approx(U.inter_node_bytes_per_s * 0.7)


def test_throughput_module_is_pure():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(tp))
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= {"__future__", "dataclasses", "quantlab", "math"}


def test_training_memory_traffic_counts_each_gpus_share_of_the_states():
    """Per step each GPU reads the (gathered) weights twice, three times with checkpointing, and reads and writes
    its own share of gradients and optimizer states: ZeRO-2 on 8 GPUs holds 1/8 of both, offload none on the GPU."""
    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, seq=1024, num_gpus=8)
    w, g, o = 2 * P7, 2 * P7, 12 * P7
    nb = tp.ModelBytes(weights=w, gradients=g, optimizer=o)
    r = tp.roof(DEV, DType.BF16)
    assert tp.train_step(cfg, P7, nb, r, U).bytes == 2 * w + 2 * (g + o)
    assert tp.train_step(dataclasses.replace(cfg, zero=2), P7, nb, r, U).bytes == 2 * w + 2 * (g + o) / 8
    assert tp.train_step(dataclasses.replace(cfg, zero=1), P7, nb, r, U).bytes == 2 * w + 2 * (g + o / 8)
    off = dataclasses.replace(cfg, zero=3, offload=Offload.OPTIMIZER, grad_checkpointing=True)
    assert tp.train_step(off, P7, nb, r, U).bytes == 3 * w + 2 * g / 8


P7 = 6_738_415_616
