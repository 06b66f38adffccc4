"""Recipes (specs assumption 4) and contradictions (assumption 5): what a left-open field resolves to, once, in
PlanConfig.from_dict, and which combinations are one-line errors (exit 2) or notes."""

import json

import pytest

from quantlab.cli import main
from quantlab.families import FAMILY
from quantlab.planner import plan
from quantlab.profiles import load_model
from quantlab.specs import (DType, Method, Offload, PlanConfig, Precision, SpecError, TrainingPrecision,
                            config_notes, recipe, recipe_defaults)

LLAMA = load_model("llama-2-7b").spec


def _from(d, model=LLAMA):
    return PlanConfig.from_dict(d, model=model)


# ---- recipes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, ckpt", [
    ({"method": "qlora"}, True),  # prepare_model_for_kbit_training(use_gradient_checkpointing=True)
    ({"method": "lora", "precision": "int8"}, True),  # LoRA on 8-bit weights goes through it too
    ({"method": "lora", "precision": "int4"}, True),
    ({"method": "qlora", "kbit_upcast": False}, False),  # without prepare_model_for_kbit_training
    ({"method": "qlora", "stack": "litgpt"}, False),  # LitGPT's own loop: no PEFT preparation
    ({"method": "lora"}, False),  # TrainingArguments: activation_checkpointing resolves to False
    ({"method": "full"}, False),
    ({"method": "freeze"}, False),
    ({}, False),  # inference
    ({"method": "qlora", "grad_checkpointing": False}, False),  # given wins
    ({"method": "lora", "grad_checkpointing": True}, True),
    ({"method": "qlora", "grad_checkpointing": None}, True),  # None is "left open", as for precision
])
def test_checkpointing_default_is_the_recipes(d, ckpt):
    assert _from(d).grad_checkpointing is ckpt


def test_qlora_recipe_fits_13b_on_a_4090_and_off_does_not():
    """The issue's headline: 13B QLoRA on a 24 GB RTX 4090 fits with the recipe's checkpointing (11.44 GiB
    process, below 24 GiB) and does not without it."""
    from quantlab.planner import fit
    from quantlab.profiles import load_gpu

    gpu = load_gpu("rtx-4090")
    m = load_model("13b").spec
    on, off = _from({"method": "qlora"}, m), _from({"method": "qlora", "grad_checkpointing": False}, m)
    assert fit(on, gpu).fits and not fit(off, gpu).fits
    assert plan(on).process_bytes < gpu.memory_bytes < plan(off).process_bytes


@pytest.mark.parametrize("model_type", sorted(FAMILY))
def test_lora_default_targets_match_a_linear_of_every_family(model_type):
    """PEFT's per-family defaults (families F9) name linears the family has, so --method lora works for every
    shipped family with no --lora-targets."""
    from quantlab.profiles import list_models

    names = [n for n in list_models() if load_model(n).spec.model_type == model_type]
    assert names, model_type
    m = load_model(names[0]).spec
    cfg = _from({"method": "lora"}, m)
    assert cfg.lora_targets == FAMILY[model_type].lora_targets
    assert m.lora_linears(cfg.lora_targets)  # matches something, raises otherwise
    assert plan(cfg).trainable_params > 0


def test_lora_defaults_are_peft_mapping_where_peft_has_one():
    """Checked against the installed PEFT's own table (utils/constants.py)."""
    constants = pytest.importorskip("peft.utils.constants")
    mapping = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    for mt, fam in FAMILY.items():
        if fam.lora_targets_from_peft:
            assert tuple(mapping[mt]) == fam.lora_targets, mt
        else:
            assert mt not in mapping, mt  # PEFT asks for target_modules: ours is named as such in the plan


def test_explicit_lora_targets_still_win():
    assert _from({"method": "lora", "lora_targets": ["q_proj", "k_proj"]}).lora_targets == ("q_proj", "k_proj")
    gpt2 = load_model("gpt2").spec
    with pytest.raises(SpecError, match="match no linear of gpt2"):
        _from({"method": "lora", "lora_targets": ["q_proj", "v_proj"]}, gpt2)


def test_training_precision_default_is_pure_as_trainer_runs():
    """transformers 5 loads dtype="auto" and TrainingArguments has bf16=False: no fp32 master copy."""
    assert _from({"method": "full"}).training_precision is TrainingPrecision.PURE
    assert recipe_defaults(LLAMA, {})["precision"] is Precision.BF16


def test_recipe_names_every_resolved_default():
    r = recipe(_from({"method": "qlora"}))
    assert r.startswith("PEFT QLoRA (prepare_model_for_kbit_training: checkpointing on, fp32 upcast)")
    assert "r 16 on q_proj,v_proj (PEFT's default for llama)" in r and "TrainingArguments bf16=False" in r
    assert "checkpointing off" in recipe(_from({"method": "qlora", "grad_checkpointing": False}))
    assert "no fp32 upcast" in recipe(_from({"method": "qlora", "kbit_upcast": False}))
    amp = recipe(_from({"method": "full", "precision": "fp32", "training_precision": "amp"}))
    assert "fp32 master weights" in amp and "autocast to bf16" in amp
    assert recipe(_from({})).startswith("inference")


def test_json_round_trip_keeps_the_resolved_recipe(tmp_path, capsys):
    assert main(["plan", "--model", "gpt2", "--method", "lora", "--format", "json"]) == 0
    first = capsys.readouterr().out
    doc = json.loads(first)
    assert doc["config"]["lora_targets"] == ["c_attn"] and doc["config"]["grad_checkpointing"] is False
    p = tmp_path / "p.json"
    p.write_text(first)
    assert main(["plan", "--from-json", str(p), "--format", "json"]) == 0
    assert capsys.readouterr().out == first


# ---- contradictions -----------------------------------------------------------------------------------------
# (flags, what the one line says); each is exit 2 with one line on stderr and nothing on stdout
ERRORS = [
    (["--method", "inference", "--zero", "3"], "--zero shards or offloads a training job"),
    (["--method", "inference", "--fsdp"], "--fsdp shards or offloads"),
    (["--method", "inference", "--offload", "optimizer"], "--offload shards or offloads"),
    (["--method", "inference", "--grad-checkpointing"], "gradient checkpointing applies to training"),
    (["--method", "inference", "--training-precision", "amp"], "--training-precision amp applies to training"),
    (["--method", "inference", "--optimizer", "sgd"], "--optimizer sgd applies to training"),
    (["--method", "inference", "--optimizer", "adamw"], "--optimizer applies to training"),  # given = error
    (["--method", "inference", "--no-grad-checkpointing"], "--grad-checkpointing applies to training"),
    (["--method", "inference", "--grad-accum", "4"], "--grad-accum applies to training"),
    (["--method", "inference", "--lora-r", "8"], "--lora-r applies to --method lora or qlora"),
    (["--method", "full", "--num-gpus", "2", "--zero", "2", "--offload", "params"],
     "DeepSpeed offloads parameters only at ZeRO-3"),
    (["--method", "full", "--num-gpus", "2", "--zero", "1", "--offload", "params"], "not ZeRO-1"),
    (["--method", "lora", "--kv-dtype", "fp8"], "--kv-dtype fp8 applies to inference"),
    (["--method", "full", "--lora-targets", "q_proj"], "--lora-targets applies to --method lora or qlora, not full"),
    (["--method", "lora", "--freeze-last-layers", "3"], "--freeze-last-layers applies to --method freeze"),
    (["--method", "lora", "--adapter-size", "8"], "--adapter-size applies to --method adapter"),
    (["--method", "lora", "--num-virtual-tokens", "8"], "--num-virtual-tokens applies to --method prefix or prompt"),
    (["--method", "lora", "--group-size", "64"], "--group-size applies to int4 weights, not bf16"),
    (["--method", "lora", "--no-kbit-upcast"], "--no-kbit-upcast applies to k-bit weights"),
    (["--device", "cpu", "--gpu", "h100"], "--device cpu counts tensor bytes without CUDA context"),
]


@pytest.mark.parametrize("argv, needle", ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_contradictions_are_one_line_errors(capsys, argv, needle):
    assert main(["plan", "--model", "7b", *argv]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and needle in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err


# (flags, --gpu, a note the plan carries): legal, but the user should know
NOTES = [
    (["--method", "full", "--zero", "3"], None, "ZeRO-3 on one data-parallel rank shards nothing"),
    (["--method", "full", "--fsdp"], None, "FSDP full_shard on one data-parallel rank shards nothing"),
    (["--method", "full", "--offload", "optimizer"], None, "--offload optimizer without --zero"),
    (["--method", "full", "--num-gpus", "2", "--fsdp", "--offload", "optimizer"], None,
     "FSDP has no optimizer-only offload"),
    (["--precision", "fp8"], "a100-80gb", "a100-80gb has no FP8 tensor cores: fp8 weights run weight-only"),
    (["--precision", "fp8"], "t4", "vLLM's FP8 Marlin needs sm80+"),
    (["--compute-dtype", "bf16"], "t4", "t4 has no bf16 tensor cores: bf16 compute runs emulated"),
    (["--compute-dtype", "bf16"], "v100", "has no bf16 tensor cores"),
    (["--method", "lora"], None, None),  # and a plain plan has none of these
]


@pytest.mark.parametrize("argv, gpu, note", NOTES, ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_resolved_or_ineffective_choices_are_notes(capsys, argv, gpu, note):
    assert main(["plan", "--model", "7b", *argv, *(["--gpu", gpu] if gpu else []), "--format", "json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    if note is None:
        assert not any(k in n for n in notes for k in ("shards nothing", "without --zero", "tensor cores"))
    else:
        assert any(note in n for n in notes), notes


def test_fp8_on_an_fp8_gpu_has_no_note(capsys):
    assert main(["plan", "--model", "7b", "--precision", "fp8", "--gpu", "h100", "--format", "json"]) == 0
    assert not any("FP8" in n for n in json.loads(capsys.readouterr().out)["notes"])


def test_value_contradictions_hold_for_every_construction_path():
    """The same rule in PlanConfig itself: a JSON document, a matrix entry or Python code cannot build them."""
    with pytest.raises(SpecError, match="applies to training"):
        PlanConfig(model=LLAMA, grad_checkpointing=True)
    with pytest.raises(SpecError, match="applies to inference"):
        _from({"method": "full", "kv_dtype": "fp8"})
    with pytest.raises(SpecError, match="only at ZeRO-3"):
        PlanConfig(model=LLAMA, method=Method.FULL, num_gpus=2, zero=2, offload=Offload.PARAMS)
    # what stays legal: the defaults of an inference plan, ZeRO on one GPU (a note), kv dtype for inference
    PlanConfig(model=LLAMA, kv_dtype=DType.FP8)
    assert config_notes(PlanConfig(model=LLAMA, method=Method.FULL, zero=3))


def test_compare_accepts_precision_flags_its_rows_use(capsys):
    """compare plans several precisions: --group-size for an int4 row is not an ignored flag there."""
    assert main(["compare", "--model", "7b", "--method", "lora", "--precisions", "bf16,int4", "--group-size", "64",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["precision"] for r in rows] == ["bf16", "int4"]
