"""specs: the one configuration vocabulary (PlanConfig.to_dict / from_dict) and constructor validation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from quantlab.specs import (ALL_LINEAR, Attention, DeviceMode, DType, Loop, Loss, Method, ModelSpec, Offload, Optimizer,
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


# Every PlanConfig field, set to a value other than its default (split over configs where fields exclude
# each other: ZeRO vs FSDP; the KV-cache dtype is an inference field, INFERENCE; LoRA fields vs freeze fields are
# independent of the method so one config holds both).
NON_DEFAULT = dict(
    model=GEMMA, method=Method.QLORA, precision=Precision.FP4, compute_dtype=DType.FP16,
    training_precision=TrainingPrecision.AMP, double_quant=True, group_size=64, optimizer=Optimizer.PAGED_ADAMW_8BIT,
    batch=3, seq=77, kv_dtype=None, lora_r=8, lora_alpha=7, lora_targets=("q_proj", "o_proj"),
    lora_dropout=0.25, flash_attention=False, freeze_last_layers=1, freeze_modules=("lm_head", "norm"),
    adapter_size=12, num_virtual_tokens=5, grad_checkpointing=True, attn=Attention.EAGER, padding_mask=True,
    grad_accum=4, keep_grads=True, num_gpus=4, zero=0, fsdp="shard_grad_op", offload=Offload.OPTIMIZER, tp=2,
    device=DeviceMode.CUDA, kbit_upcast=False, stack="litgpt", loss=Loss.TRL_FUSED, loop=Loop.TRAINER,
    torch_compile=True, expandable_segments=True)
INFERENCE = dict(model=LLAMA, kv_dtype=DType.FP8)


def test_every_field_is_set_to_a_non_default_value_by_the_fixtures():
    defaults = PlanConfig(model=LLAMA)
    c = PlanConfig(**NON_DEFAULT)
    other = dataclasses.replace(c, fsdp=None, zero=3, device=DeviceMode.CPU, num_gpus=1, tp=1)
    savers = dataclasses.replace(c, fsdp=None, num_gpus=1, tp=1, grad_accum=1, padding_mask=False, packed=True,
                                 optimizer_in_backward=True)
    qat = PlanConfig(model=LLAMA, method=Method.FULL, qat_group=16, eval_batch=4)  # (divides 256 and 688)
    inference = PlanConfig(**INFERENCE)
    for f in dataclasses.fields(PlanConfig):
        assert any(getattr(x, f.name) != getattr(defaults, f.name) for x in (c, other, savers, qat, inference)), f.name


@pytest.mark.parametrize("cfg", [
    PlanConfig(model=LLAMA),
    PlanConfig(**NON_DEFAULT),
    dataclasses.replace(PlanConfig(**NON_DEFAULT), fsdp=None, zero=3, device=DeviceMode.CPU, num_gpus=1, tp=1),
    PlanConfig(**INFERENCE),
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
    assert PlanConfig(**INFERENCE).to_dict()["kv_dtype"] == "fp8" and d["kv_dtype"] is None
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


# ---- validation in the constructors (issue #10, "Bad input") --------------------------------------------------

LLAMA_CFG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 128, "vocab_size": 100}


@pytest.mark.parametrize("change, match", [
    ({"hidden_size": 1e30}, "hidden_size must be a positive integer, got 1e\\+30"),
    ({"hidden_size": 2 ** 21}, "hidden_size must be a positive integer of at most 1,048,576"),
    ({"vocab_size": 10 ** 15}, "vocab_size must be a positive integer of at most 16,777,216"),
    ({"vocab_size": 100.0}, "vocab_size must be a positive integer"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be a positive integer"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false, got 'yes'"),
    ({"attention_bias": 1}, "attention_bias must be true or false"),
    ({"mlp_bias": "false"}, "mlp_bias must be true or false"),
    ({"use_sliding_window": "no"}, "use_sliding_window must be true or false"),
    ({"head_dim": 1.5}, "head_dim must be a positive integer"),
    ({"sliding_window": 0}, "sliding_window must be a positive integer"),
    ({"attention_dropout": "0.1"}, "attention_dropout must be a number"),
    ({"attention_dropout": 1.5}, "attention_dropout must be in \\[0, 1\\)"),
    ({"hidden_act": 3}, "hidden_act must be a string"),
    ({"max_position_embeddings": 10 ** 9}, "max_position_embeddings must be a positive integer of at most"),
])
def test_hf_config_out_of_range_or_wrong_type_is_one_line(change, match):
    with pytest.raises(SpecError, match=match) as e:
        ModelSpec.from_hf_config({**LLAMA_CFG, **change}, name="m")
    assert "\n" not in str(e.value)


def test_hf_config_accepts_real_shapes_and_int_dropouts():
    m = ModelSpec.from_hf_config({**LLAMA_CFG, "attention_dropout": 0, "tie_word_embeddings": True,
                                  "vocab_size": 256000, "max_position_embeddings": 10_485_760}, name="m")
    assert m.attention_dropout == 0.0 and type(m.to_dict()["attention_dropout"]) is float
    assert m.tie_word_embeddings is True


def test_direct_construction_checks_types():
    with pytest.raises(SpecError, match="lora_r must be an integer, got 8.0"):
        PlanConfig(model=LLAMA, method=Method.LORA, lora_r=8.0)
    with pytest.raises(SpecError, match="method must be one of"):
        PlanConfig(model=LLAMA, method="lora")
    with pytest.raises(SpecError, match="grad_checkpointing must be true or false"):
        PlanConfig(model=LLAMA, grad_checkpointing=1)
    with pytest.raises(SpecError, match="lora_targets must be a tuple of strings"):
        PlanConfig(model=LLAMA, lora_targets=["q_proj"])
    with pytest.raises(SpecError, match="model must be a ModelSpec"):
        PlanConfig(model=LLAMA.to_dict())
    assert PlanConfig(model=LLAMA, lora_dropout=0).to_dict()["lora_dropout"] == 0.0


def test_lora_linears_matching_rule():
    names = lambda t: [l.name for l in LLAMA.lora_linears(t)]  # noqa: E731
    assert names(("q_proj", "v_proj")) == ["q_proj", "v_proj"]
    assert names((ALL_LINEAR,)) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    gpt2 = ModelSpec.from_hf_config({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
                                     "vocab_size": 100}, name="g")
    assert [l.name for l in gpt2.lora_linears(("c_proj",))] == ["attn.c_proj", "mlp.c_proj"]
    assert [l.name for l in gpt2.lora_linears(("attn.c_proj",))] == ["attn.c_proj"]
    with pytest.raises(SpecError, match="match no linear of tiny-llama"):
        LLAMA.lora_linears(("c_attn",))
    mix = ModelSpec(name="mix", model_type="mixtral", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, vocab_size=100, num_local_experts=4, num_experts_per_tok=2)
    with pytest.raises(SpecError, match="fused parameters"):
        mix.lora_linears(("down_proj",))


def test_lora_rank_at_most_the_smallest_targeted_dimension():
    """tiny-llama: k_proj is 256 -> 4 KV heads x 32 = 128, so r <= 128 on q,k,v,o; q_proj alone is 256 x 256."""
    PlanConfig(model=LLAMA, method=Method.LORA, lora_r=128, lora_targets=("q_proj", "k_proj"))
    with pytest.raises(SpecError, match="lora-r 129 is larger than .* k_proj of tiny-llama \\(256 -> 128\\); "
                                        "the rank must be at most 128"):
        PlanConfig(model=LLAMA, method=Method.LORA, lora_r=129, lora_targets=("q_proj", "k_proj"))
    PlanConfig(model=LLAMA, method=Method.QLORA, precision=Precision.NF4, lora_r=256, lora_targets=("q_proj",))
    with pytest.raises(SpecError, match="at most 256"):
        PlanConfig(model=LLAMA, method=Method.QLORA, precision=Precision.NF4, lora_r=257, lora_targets=("q_proj",))
    PlanConfig(model=LLAMA, method=Method.FULL, lora_r=100000)  # LoRA fields mean nothing to other methods


def test_freeze_must_train_something():
    with pytest.raises(SpecError, match="trains nothing"):
        PlanConfig(model=LLAMA, method=Method.FREEZE, freeze_last_layers=0)
    PlanConfig(model=LLAMA, method=Method.FREEZE, freeze_last_layers=0, freeze_modules=("lm_head",))
    PlanConfig(model=LLAMA, freeze_last_layers=0)  # inference: the freeze fields are not read


@pytest.mark.parametrize("argv, needle", [
    (["plan", "--model", "8b", "--method", "lora", "--lora-r", "100000"], "the rank must be at most 1024"),
    (["plan", "--model", "8b", "--method", "freeze", "--freeze-last-layers", "0"], "trains nothing"),
])
def test_cli_bad_config_is_one_line_and_exit_2(argv, needle, capsys):
    from quantlab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.parametrize("change, needle", [({"hidden_size": 1e30}, "hidden_size must be a positive integer"),
                                            ({"tie_word_embeddings": "yes"}, "must be true or false")])
def test_cli_bad_config_json_is_one_line_and_exit_2(tmp_path, capsys, change, needle):
    from quantlab.cli import main

    p = tmp_path / "config.json"
    p.write_text(json.dumps({**LLAMA_CFG, **change}))
    assert main(["plan", "--model", str(p)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
