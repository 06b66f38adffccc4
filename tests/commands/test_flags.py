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
        "--lora-r", "8", "--lora-alpha", "7", "--lora-targets", "q_proj, o_proj",
        "--lora-dropout", "0.25", "--no-flash-attention", "--freeze-last-layers", "1", "--freeze-modules",
        "lm_head,norm", "--adapter-size", "12", "--num-virtual-tokens", "5", "--grad-checkpointing", "--attn",
        "eager", "--padded", "--grad-accum", "4", "--num-gpus", "4", "--fsdp", "shard_grad_op", "--offload",
        "optimizer", "--tp", "2", "--device", "cuda", "--no-kbit-upcast", "--stack", "litgpt"]
EXPECTED = dict(method="qlora", precision="fp4", compute_dtype="fp16", training_precision="amp", double_quant=True,
                group_size=64, optimizer="paged-adamw-8bit", batch=3, seq=77, lora_r=8, lora_alpha=7,
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


def _fields_of(parser) -> set[str]:
    return {a.dest for a in parser._actions if isinstance(a, _Given)}


def _argv_for(fields) -> list[str]:
    """ARGV restricted to the flags of ``fields`` (lab finetune takes the subset it can run)."""
    out, i = [], 0
    flags = {flag_name(f): f for f in fields}
    while i < len(ARGV):
        takes_value = i + 1 < len(ARGV) and not ARGV[i + 1].startswith("--")
        item = ARGV[i:i + 2] if takes_value else ARGV[i:i + 1]
        if ARGV[i] in flags:
            out += item
        i += len(item)
    return out


@pytest.mark.parametrize("prefix, parser", config_parsers(), ids=_ids())
def test_same_argv_same_config_in_every_parser(prefix, parser):
    fields = _fields_of(parser)
    args = parser.parse_args(["--model", "x"] + _argv_for(fields))
    d = config_dict_from_args(args)
    assert d == {k: v for k, v in EXPECTED.items() if k in fields}
    assert list(d) == [f.name for f in dataclasses.fields(PlanConfig) if f.name in d]  # field order
    if len(fields) == len(dataclasses.fields(PlanConfig)) - 1:  # every field but the model
        assert PlanConfig.from_dict(d, model=TINY) == PlanConfig.from_dict(EXPECTED, model=TINY)
    none = config_dict_from_args(parser.parse_args(["--model", "x"]))
    if prefix == ["lab", "finetune"]:  # the lab cannot run inference: its own method, and its recipe's batch
        from quantlab.lab.finetune import LAB_PLAN_DEFAULTS

        assert none == LAB_PLAN_DEFAULTS == {"method": "qlora", "batch": 8}
        return
    assert none == {}  # nothing given: the dataclass defaults, through from_dict
    assert PlanConfig.from_dict(none, model=TINY) == PlanConfig(model=TINY)


@pytest.mark.parametrize("prefix, parser", config_parsers(), ids=_ids())
def test_every_field_has_its_flag_and_help_shows_the_default(prefix, parser):
    flags = {s: a for a in parser._actions for s in a.option_strings}
    fields = _fields_of(parser)
    for f in dataclasses.fields(PlanConfig):
        if f.name == "model" or f.name not in fields:
            continue
        a = flags[flag_name(f.name)]
        assert a.dest == f.name
        if f.name != "stack":
            assert "(default: " in a.help and a.help.endswith(")"), f.name
    args = parser.parse_args(["--model", "x"])
    d = PlanConfig(model=TINY)
    if prefix == ["lab", "ptq"]:  # the formats' settings only
        assert fields == {"double_quant", "group_size"}
        assert (args.double_quant, args.group_size) == (d.double_quant, d.group_size)
        return
    assert args.lora_r == d.lora_r
    assert args.lora_targets is None and args.grad_checkpointing is None  # the recipe's, resolved by from_dict
    if len(fields) == len(dataclasses.fields(PlanConfig)) - 1:  # every field but the model
        assert (args.batch, args.seq) == (d.batch, d.seq)
        assert args.precision is None and args.compute_dtype is None and args.flash_attention is None
    else:
        assert prefix in (["lab", "finetune"], ["lab", "ptq"])  # the subcommands that take a subset


def _smol():
    from quantlab.profiles import load_model

    return load_model("smollm2-135m").spec


def _plan_parser():
    return next(pa for pre, pa in config_parsers() if pre == ["plan"])


def _lab_parser():
    return next(pa for pre, pa in config_parsers() if pre == ["lab", "finetune"])


def _plan_config(argv):
    """The PlanConfig ``quantlab plan`` resolves for argv (config_dict_from_args, then from_dict)."""
    args = _plan_parser().parse_args(["--model", "smollm2-135m"] + argv)
    return PlanConfig.from_dict(config_dict_from_args(args), model=_smol())


LAB_ARGV = ["--method", "lora", "--precision", "bf16", "--compute-dtype", "bf16", "--training-precision", "pure",
            "--optimizer", "sgd-momentum", "--batch", "3", "--seq", "77", "--lora-r", "8", "--lora-alpha", "7",
            "--lora-targets", "q_proj,o_proj", "--lora-dropout", "0.25", "--grad-checkpointing", "--attn", "eager",
            "--grad-accum", "4"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("packing", [False, True])
def test_same_flags_same_plan_config_in_plan_and_lab_finetune(device, packing):
    """lab finetune's FinetuneConfig holds the PlanConfig `quantlab plan` resolves from the same flags; the lab's
    batch layout is the plan's --padded (packed rows: none) and its device is the plan's --device."""
    from quantlab.commands.lab_finetune import config_from_args

    lab = config_from_args(_lab_parser().parse_args(LAB_ARGV + (["--packing"] if packing else [])), device=device,
                           bf16=True)
    assert lab.plan == _plan_config(LAB_ARGV + ["--device", device] + ([] if packing else ["--padded"]))
    assert lab.packing is packing and lab.method == "lora" and lab.max_len == 77


@pytest.mark.parametrize("argv", [[], ["--method", "full"], ["--method", "lora"],
                                  ["--method", "qlora", "--no-grad-checkpointing"],
                                  ["--method", "full", "--training-precision", "amp"]])
def test_lab_finetune_defaults_are_the_plans_on_a_bf16_gpu(argv):
    """Left open, the lab's plan is the plan's except --method qlora and --batch 8 (LAB_PLAN_DEFAULTS) and the
    padded layout. On a GPU with bf16 the compute dtype and the weights are the plan's bf16; AMP keeps fp32 master
    weights (the planner counts them in fp32 either way, memory assumption 1)."""
    from quantlab.commands.lab_finetune import config_from_args

    lab = config_from_args(_lab_parser().parse_args(argv), device="cuda", bf16=True)
    method = ["--method", "qlora"] if "--method" not in argv else []
    want = _plan_config(method + argv + ["--batch", "8", "--padded", "--device", "cuda"])
    if "amp" in argv:
        want = dataclasses.replace(want, precision=Precision.FP32)
    assert lab.plan == want


def test_lab_finetune_on_a_cpu_computes_in_fp32_unless_told():
    """The compute dtype the command resolves from its device (as plan does for a GPU without bf16): fp32 on a CPU,
    the weights with it under pure training; a dtype given wins."""
    from quantlab.commands.lab_finetune import config_from_args

    p = _lab_parser()
    cfg = config_from_args(p.parse_args(["--method", "full"]), device="cpu")
    assert (cfg.plan.precision.value, cfg.plan.compute_dtype.value, cfg.plan.device.value) == ("fp32", "fp32", "cpu")
    cfg = config_from_args(p.parse_args(["--method", "full", "--compute-dtype", "bf16"]), device="cpu")
    assert (cfg.plan.precision.value, cfg.plan.compute_dtype.value) == ("bf16", "bf16")
    cfg = config_from_args(p.parse_args([]), device="cpu")
    assert (cfg.plan.precision.value, cfg.plan.compute_dtype.value) == ("nf4", "fp32")
    cfg = config_from_args(p.parse_args(["--method", "qat"]), device="cpu")
    assert cfg.method == "qat" and cfg.qat and cfg.plan.method.value == "full"


def test_lab_qlora_is_checkpointed_unless_no_grad_checkpointing():
    """The QLoRA recipe (specs.kbit_prepared): checkpointing on, resolved by the same PlanConfig.from_dict as plan."""
    from quantlab.commands.lab_finetune import config_from_args

    p = _lab_parser()
    assert config_from_args(p.parse_args([]), device="cpu").plan.grad_checkpointing is True
    assert config_from_args(p.parse_args(["--method", "qlora"]), device="cpu").plan.grad_checkpointing is True
    off = config_from_args(p.parse_args(["--no-grad-checkpointing"]), device="cpu")
    assert off.plan.grad_checkpointing is False
    assert config_from_args(p.parse_args(["--no-kbit-upcast"]), device="cpu").plan.grad_checkpointing is False
    assert config_from_args(p.parse_args(["--method", "lora"]), device="cpu").plan.grad_checkpointing is False
    assert _plan_config(["--method", "qlora"]).grad_checkpointing is True  # the plan's own, the same rule


def test_lab_finetune_refuses_a_flag_the_configuration_ignores():
    from quantlab.commands.lab_finetune import config_from_args
    from quantlab.specs import SpecError

    with pytest.raises(SpecError, match="--lora-r applies to --method lora or qlora, not full"):
        config_from_args(_lab_parser().parse_args(["--method", "full", "--lora-r", "8"]), device="cpu")
    with pytest.raises(Exception, match="double quantization applies to nf4/fp4"):
        config_from_args(_lab_parser().parse_args(["--method", "lora", "--double-quant"]), device="cpu")


def test_lab_finetune_takes_the_plan_defaults():
    """--lora-targets was q,k,v,o in lab finetune and q,v in plan; --max-steps / --eval-every differed between the
    CLI and FinetuneConfig: now each default exists once."""
    from quantlab.commands.lab_finetune import config_from_args
    from quantlab.lab.finetune import FinetuneConfig
    from quantlab.lab.finetune_plan import finetune_config

    p = _lab_parser()
    cfg = config_from_args(p.parse_args([]), device="cpu")
    d = PlanConfig.from_dict({}, model=_smol())
    assert cfg == finetune_config(device="cpu")
    assert (cfg.max_steps, cfg.eval_every, cfg.model) == (FinetuneConfig.max_steps, FinetuneConfig.eval_every,
                                                          FinetuneConfig.model)
    assert (cfg.plan.lora_targets, cfg.plan.lora_r, cfg.plan.lora_alpha, cfg.plan.optimizer, cfg.plan.attn,
            cfg.plan.freeze_last_layers, cfg.plan.seq) == \
        (d.lora_targets, d.lora_r, d.lora_alpha, d.optimizer, d.attn, d.freeze_last_layers, d.seq)
    cfg = config_from_args(p.parse_args(["--lora-targets", "all-linear", "--no-kbit-upcast"]), device="cpu")
    assert (cfg.plan.lora_targets, cfg.plan.kbit_upcast) == ((ALL_LINEAR,), False)
    cfg = config_from_args(p.parse_args(["--method", "freeze", "--freeze-modules", "norm"]), device="cpu")
    assert cfg.plan.freeze_modules == ("norm",)


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
             "lora-r": 8, "lora-alpha": 7, "lora-targets": "q_proj, o_proj", "lora-dropout": 0.25,
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


def test_help_shows_the_defaults():
    import re

    parsers = dict((" ".join(pre), pa) for pre, pa in config_parsers())
    ft = re.sub(r"\s+", " ", parsers["lab finetune"].format_help())
    from quantlab.lab.finetune import FinetuneConfig

    assert f"optimizer steps (early stopping may end sooner) (default: {FinetuneConfig.max_steps})" in ft
    assert f"(early stopping) (default: {FinetuneConfig.eval_every})" in ft
    assert "(default: PEFT's per-family default: q_proj,v_proj; c_attn for gpt2" in ft and \
        "(default: smollm2-135m)" in ft
    for text in ("(default: qlora)", "(default: 8)", "(default: 2048)", "(default: fp32 on a CPU", "(default: pure)",
                 "(default: nf4 for qlora; otherwise the compute dtype (pure) or fp32 (amp: master weights))",
                 "--no-grad-checkpointing", "(default: on for qlora and other k-bit training under PEFT's "
                 "prepare_model_for_kbit_training, off otherwise)", "(default: adamw)", "(default: sdpa)"):
        assert text in ft, text
    v = re.sub(r"\s+", " ", parsers["validate"].format_help())
    for text in ("(default: 2048)", "(default: nf4 for qlora, bf16 otherwise)",
                 "(default: PEFT's per-family default: q_proj,v_proj; c_attn for gpt2; qkv_proj for phi3)",
                 "--no-grad-checkpointing", "(default: on for qlora and other k-bit training under PEFT's "
                 "prepare_model_for_kbit_training, off otherwise)",
                 "(default: sdpa)", "(default: adamw)"):
        assert text in v, text


def test_kv_dtype_flag_parses_for_an_inference_plan():
    """--kv-dtype is an inference flag (a training plan with it is a contradiction, tests/test_recipes.py)."""
    d = config_dict_from_args(_parser().parse_args(["--model", "m", "--kv-dtype", "fp8"]))
    assert d == {"kv_dtype": "fp8"}
    assert PlanConfig.from_dict(d, model=TINY).kv_dtype.value == "fp8"


@pytest.mark.parametrize("argv, value", [([], None), (["--grad-checkpointing"], True),
                                         (["--no-grad-checkpointing"], False),
                                         (["--no-grad-checkpointing", "--grad-checkpointing"], True)])
def test_grad_checkpointing_is_negatable_and_unset_without_a_flag(argv, value):
    args = _parser().parse_args(["--model", "m"] + argv)
    d = config_dict_from_args(args)
    assert d.get("grad_checkpointing") == value and ("grad_checkpointing" in d) == bool(argv)
