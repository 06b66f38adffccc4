"""commands/flags: one flag per PlanConfig field, the same names, parsing and defaults in every subcommand."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from quantlab.cli import build_parser
from quantlab.commands.flags import _Given, add_config_arguments, config_dict_from_args, flag_name
from quantlab.specs import ALL_LINEAR, ModelSpec, PlanConfig, Precision

TINY = ModelSpec(name="tiny", model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, vocab_size=100, num_key_value_heads=2)

ARGV = ["--method", "qlora", "--precision", "fp4", "--compute-dtype", "fp16", "--training-precision", "amp",
        "--double-quant", "--group-size", "64", "--optimizer", "paged-adamw-8bit", "--batch", "3", "--seq", "77",
        "--kv-dtype", "fp8", "--lora-r", "8", "--lora-alpha", "7", "--lora-targets", "q_proj, o_proj",
        "--lora-dropout", "0.25", "--no-flash-attention", "--freeze-last-layers", "1", "--freeze-modules",
        "lm_head,norm", "--adapter-size", "12", "--num-virtual-tokens", "5", "--grad-checkpointing", "--attn",
        "eager", "--padded", "--grad-accum", "4", "--num-gpus", "4", "--fsdp", "shard_grad_op", "--offload",
        "optimizer", "--tp", "2", "--device", "cuda", "--no-kbit-upcast", "--stack", "litgpt"]
EXPECTED = dict(method="qlora", precision="fp4", compute_dtype="fp16", training_precision="amp", double_quant=True,
                group_size=64, optimizer="paged-adamw-8bit", batch=3, seq=77, kv_dtype="fp8", lora_r=8, lora_alpha=7,
                lora_targets=["q_proj", "o_proj"], lora_dropout=0.25, flash_attention=False, freeze_last_layers=1,
                freeze_modules=["lm_head", "norm"], adapter_size=12, num_virtual_tokens=5, grad_checkpointing=True,
                attn="eager", padding_mask=True, grad_accum=4, num_gpus=4, fsdp="shard_grad_op", offload="optimizer",
                tp=2, device="cuda", kbit_upcast=False, stack="litgpt")


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_arguments(p, **kw)
    return p


def config_parsers():
    """Every parser that takes the configuration flags: two built here, and each subcommand of the CLI that uses
    add_config_arguments (found by walking the CLI's parsers), with the argv prefix that reaches it."""
    out = [([], _parser(model_required=False)), ([], _parser(model_default="smollm2-135m"))]

    def walk(prefix, p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(prefix + [name], sp)
        if any(isinstance(a, _Given) for a in p._actions):
            out.append((prefix, p))

    walk([], build_parser())
    return out


def _ids():
    return [" ".join(pre) or f"parser{i}" for i, (pre, _) in enumerate(config_parsers())]


@pytest.mark.parametrize("prefix, parser", config_parsers(), ids=_ids())
def test_same_argv_same_config_in_every_parser(prefix, parser):
    args = parser.parse_args(["--model", "x"] + ARGV)
    d = config_dict_from_args(args)
    assert d == EXPECTED
    assert list(d) == [f.name for f in dataclasses.fields(PlanConfig) if f.name in d]  # field order
    cfg = PlanConfig.from_dict(d, model=TINY)
    assert cfg == PlanConfig.from_dict(EXPECTED, model=TINY)
    none = config_dict_from_args(parser.parse_args(["--model", "x"]))
    assert none == {}  # nothing given: the dataclass defaults, through from_dict
    assert PlanConfig.from_dict(none, model=TINY) == PlanConfig(model=TINY)


@pytest.mark.parametrize("prefix, parser", config_parsers(), ids=_ids())
def test_every_field_has_its_flag_and_help_shows_the_default(prefix, parser):
    flags = {s: a for a in parser._actions for s in a.option_strings}
    for f in dataclasses.fields(PlanConfig):
        if f.name == "model":
            continue
        a = flags[flag_name(f.name)]
        assert a.dest == f.name
        if f.name != "stack":
            assert "(default: " in a.help and a.help.endswith(")"), f.name
    args = parser.parse_args(["--model", "x"])
    d = PlanConfig(model=TINY)
    assert (args.batch, args.seq, args.lora_r, args.lora_targets) == (d.batch, d.seq, d.lora_r, ",".join(d.lora_targets))
    assert args.precision is None and args.compute_dtype is None and args.flash_attention is None


def test_lists_all_linear_and_empty_targets():
    p = _parser()
    assert config_dict_from_args(p.parse_args(["--model", "m", "--lora-targets", "q_proj,all-linear"])) == \
        {"lora_targets": [ALL_LINEAR]}
    assert config_dict_from_args(p.parse_args(["--model", "m", "--freeze-modules", ""])) == {"freeze_modules": []}
    assert config_dict_from_args(p.parse_args(["--model", "m", "--fsdp"])) == {"fsdp": "full_shard"}
    with pytest.raises(Exception, match="--lora-targets is empty"):
        config_dict_from_args(p.parse_args(["--model", "m", "--lora-targets", " , "]))
    d = config_dict_from_args(p.parse_args(["--model", "m", "--method", "qlora"]))
    assert PlanConfig.from_dict(d, model=TINY).precision is Precision.NF4


def test_matrix_mapping_gives_the_same_dict_as_the_flags():
    """A validation-matrix entry (flag names without dashes, YAML values) or a dict of field names gives the dict
    the same flags give."""
    from quantlab.commands.flags import config_dict_from_mapping

    entry = {"method": "qlora", "precision": "fp4", "compute-dtype": "fp16", "training-precision": "amp",
             "double-quant": True, "group-size": 64, "optimizer": "paged-adamw-8bit", "batch": 3, "seq": 77,
             "kv-dtype": "fp8", "lora-r": 8, "lora-alpha": 7, "lora-targets": "q_proj, o_proj", "lora-dropout": 0.25,
             "no-flash-attention": True, "freeze-last-layers": 1, "freeze-modules": ["lm_head", "norm"],
             "adapter-size": 12, "num-virtual-tokens": 5, "grad-checkpointing": True, "attn": "eager",
             "padded": True, "grad-accum": 4, "num-gpus": 4, "fsdp": "shard_grad_op", "offload": "optimizer",
             "tp": 2, "device": "cuda", "no-kbit-upcast": True, "stack": "litgpt"}
    assert config_dict_from_mapping(entry) == EXPECTED
    assert config_dict_from_mapping(EXPECTED) == EXPECTED  # field names are accepted as they are
    assert config_dict_from_mapping({"no_kbit_upcast": False, "lora_targets": ["all-linear", "q_proj"]}) == \
        {"kbit_upcast": True, "lora_targets": [ALL_LINEAR]}
    with pytest.raises(Exception, match="unknown configuration key 'lora-rank'"):
        config_dict_from_mapping({"lora-rank": 8})
    with pytest.raises(Exception, match="no-kbit-upcast must be true or false"):
        config_dict_from_mapping({"no-kbit-upcast": "yes"})
