"""specs: the one configuration vocabulary (PlanConfig.to_dict / from_dict) and constructor validation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from quantlab.specs import (ALL_LINEAR, Attention, DeviceMode, DType, Method, ModelSpec, Offload, Optimizer,
                            PlanConfig, Precision, SpecError, TrainingPrecision)

LLAMA = ModelSpec(name="tiny-llama", model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                  intermediate_size=688, vocab_size=1000, num_key_value_heads=4)
GEMMA = ModelSpec(name="tiny-gemma", model_type="gemma2", hidden_size=128, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=256, vocab_size=512, num_key_value_heads=2, head_dim_=64,
                  tie_word_embeddings=True, max_position_embeddings=4096, hidden_act="gelu_pytorch_tanh",
                  attention_bias=True, mlp_bias=True, sliding_window=1024, attention_dropout=0.1,
                  hidden_dropout=0.05, embd_dropout=0.02, hf_id="google/gemma-2-2b", source="test")


def json_round_trip(c: PlanConfig) -> PlanConfig:
    return PlanConfig.from_dict(json.loads(json.dumps(c.to_dict())))


# Every PlanConfig field, set to a value other than its default (split over two configs where fields exclude
# each other: ZeRO vs FSDP, LoRA fields vs freeze fields are independent of the method so one config holds both).
NON_DEFAULT = dict(
    model=GEMMA, method=Method.QLORA, precision=Precision.FP4, compute_dtype=DType.FP16,
    training_precision=TrainingPrecision.AMP, double_quant=True, group_size=64, optimizer=Optimizer.PAGED_ADAMW_8BIT,
    batch=3, seq=77, kv_dtype=DType.FP8, lora_r=8, lora_alpha=7, lora_targets=("q_proj", "o_proj"),
    lora_dropout=0.25, flash_attention=False, freeze_last_layers=1, freeze_modules=("lm_head", "norm"),
    adapter_size=12, num_virtual_tokens=5, grad_checkpointing=True, attn=Attention.EAGER, padding_mask=True,
    grad_accum=4, num_gpus=4, zero=0, fsdp="shard_grad_op", offload=Offload.OPTIMIZER, tp=2,
    device=DeviceMode.CUDA, kbit_upcast=False, stack="litgpt")


def test_every_field_is_set_to_a_non_default_value_by_the_fixtures():
    defaults = PlanConfig(model=LLAMA)
    c = PlanConfig(**NON_DEFAULT)
    other = dataclasses.replace(c, fsdp=None, zero=3, device=DeviceMode.CPU, num_gpus=1, tp=1)
    for f in dataclasses.fields(PlanConfig):
        assert getattr(c, f.name) != getattr(defaults, f.name) or getattr(other, f.name) != getattr(defaults, f.name), f.name


@pytest.mark.parametrize("cfg", [
    PlanConfig(model=LLAMA),
    PlanConfig(**NON_DEFAULT),
    dataclasses.replace(PlanConfig(**NON_DEFAULT), fsdp=None, zero=3, device=DeviceMode.CPU, num_gpus=1, tp=1),
    PlanConfig(model=LLAMA, method=Method.LORA, lora_targets=(ALL_LINEAR,), kv_dtype=None),
    PlanConfig(model=LLAMA, method=Method.FREEZE, freeze_last_layers=0, freeze_modules=("lm_head",)),
])
def test_plan_config_round_trips_through_json(cfg):
    d = cfg.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(PlanConfig)]
    back = json_round_trip(cfg)
    assert back == cfg
    for f in dataclasses.fields(PlanConfig):
        assert type(getattr(back, f.name)) is type(getattr(cfg, f.name)), f.name


def test_to_dict_is_plain_json_values():
    d = PlanConfig(**NON_DEFAULT).to_dict()
    assert d["method"] == "qlora" and type(d["method"]) is str
    assert d["lora_targets"] == ["q_proj", "o_proj"] and d["freeze_modules"] == ["lm_head", "norm"]
    assert d["kv_dtype"] == "fp8" and PlanConfig(model=LLAMA).to_dict()["kv_dtype"] is None
    assert d["model"]["head_dim"] == 64 and "head_dim_" not in d["model"]
    assert json.loads(json.dumps(d)) == d


def test_model_spec_round_trips_every_field():
    for m in (LLAMA, GEMMA):
        assert ModelSpec.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert list(GEMMA.to_dict())[:2] == ["name", "model_type"]


def test_from_dict_defaults_and_method_dependent_precision():
    assert PlanConfig.from_dict({}, model=LLAMA) == PlanConfig(model=LLAMA)
    assert PlanConfig.from_dict({"method": "qlora"}, model=LLAMA).precision is Precision.NF4
    assert PlanConfig.from_dict({"method": "qlora", "precision": None}, model=LLAMA).precision is Precision.NF4
    assert PlanConfig.from_dict({"method": "lora", "precision": None}, model=LLAMA).precision is Precision.BF16
    assert PlanConfig.from_dict({"model": LLAMA.to_dict()}) == PlanConfig(model=LLAMA)


@pytest.mark.parametrize("d, match", [
    ({"lora_rank": 8}, "unknown configuration field 'lora_rank'"),
    ({"lora_r": "x"}, "lora_r must be an integer, got 'x'"),
    ({"lora_r": 8.0}, "lora_r must be an integer"),
    ({"lora_r": True}, "lora_r must be an integer"),
    ({"double_quant": "yes"}, "double_quant must be true or false"),
    ({"grad_checkpointing": 1}, "grad_checkpointing must be true or false"),
    ({"method": "lorax"}, "method must be one of inference, full"),
    ({"precision": 4}, "precision must be one of"),
    ({"kv_dtype": "int3"}, "kv_dtype must be one of"),
    ({"lora_targets": "q_proj,v_proj"}, "lora_targets must be a list of strings"),
    ({"lora_targets": [1, 2]}, "lora_targets must be a list of strings"),
    ({"lora_dropout": "0.1"}, "lora_dropout must be a number"),
    ({"fsdp": 3}, "fsdp must be a string"),
    ({"batch": None}, "batch must not be null"),
    ({"stack": ["x"]}, "stack must be a string"),
])
def test_from_dict_rejects_unknown_keys_and_wrong_types(d, match):
    with pytest.raises(SpecError, match=match):
        PlanConfig.from_dict(d, model=LLAMA)


def test_from_dict_model_errors():
    with pytest.raises(SpecError, match="no model"):
        PlanConfig.from_dict({})
    with pytest.raises(SpecError, match="mapping"):
        PlanConfig.from_dict({"model": "llama-2-7b"})
    with pytest.raises(SpecError, match="different model"):
        PlanConfig.from_dict({"model": GEMMA.to_dict()}, model=LLAMA)
    with pytest.raises(SpecError, match="unknown model field 'n_embd'"):
        ModelSpec.from_dict({**LLAMA.to_dict(), "n_embd": 3})
    with pytest.raises(SpecError, match="hidden_size must be an integer"):
        ModelSpec.from_dict({**LLAMA.to_dict(), "hidden_size": 256.0})
    with pytest.raises(SpecError, match="tie_word_embeddings must be true or false"):
        ModelSpec.from_dict({**LLAMA.to_dict(), "tie_word_embeddings": "yes"})
    with pytest.raises(SpecError, match="model is missing vocab_size"):
        ModelSpec.from_dict({k: v for k, v in LLAMA.to_dict().items() if k != "vocab_size"})
    with pytest.raises(SpecError, match="mapping"):
        PlanConfig.from_dict(["lora"], model=LLAMA)
