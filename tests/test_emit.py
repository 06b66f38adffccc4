"""Emitted launch configurations load in the tools themselves: accelerate's config and launch path, DeepSpeed's
config models. Each test goes through the code the real `accelerate launch` runs, not a schema of our own."""

import json
import os

import pytest

from quantlab.emit import ACCELERATE_YAML, DS_JSON, LAUNCH_SH, emit
from quantlab.errors import QuantlabError
from quantlab.specs import DType, Method, ModelSpec, Offload, PlanConfig, Precision, TrainingPrecision

LLAMA2_7B = ModelSpec(name="llama-2-7b", model_type="llama", hidden_size=4096, num_hidden_layers=32,
                      num_attention_heads=32, intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)


def _launch_env(config_path, monkeypatch):
    """What `accelerate launch --config_file X train.py` resolves: merged args and the env its workers get."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_path), "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return args


def test_deepspeed_zero3_offload_loads_in_deepspeed_and_accelerate(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=8, zero=3, offload=Offload.PARAMS, batch=2,
                     grad_accum=4)
    paths = emit(cfg, "deepspeed", tmp_path)
    assert {p.name for p in paths} == {DS_JSON, ACCELERATE_YAML, LAUNCH_SH}
    ds = DeepSpeedConfig(str(tmp_path / DS_JSON))  # DeepSpeed's own parser (pydantic ZeRO model inside)
    z = ds.zero_config
    assert z.stage == 3
    assert z.offload_param.device == "cpu" and z.offload_optimizer.device == "cpu"
    assert z.reduce_bucket_size == 4096 * 4096 and z.param_persistence_threshold == 10 * 4096
    # the plan's gathered-parameter term: two Llama-2-7B blocks of 4·4096² + 3·4096·11008 + 2·4096 = 202,383,360
    # parameters each (memory assumption 9), one of them prefetched
    assert z.max_live_parameters == 2 * 202_383_360 and z.prefetch_bucket_size == 202_383_360
    assert ds.train_micro_batch_size_per_gpu == 2 and ds.gradient_accumulation_steps == 4
    assert ds.bfloat16_config.enabled
    acc = ClusterConfig.from_yaml_file(str(tmp_path / ACCELERATE_YAML))
    assert acc.distributed_type.value == "DEEPSPEED" and acc.num_processes == 8
    args = _launch_env(tmp_path / ACCELERATE_YAML, monkeypatch)
    assert args.use_deepspeed
    plugin = DeepSpeedPlugin()  # reads the env accelerate launch sets, then the JSON it points at
    assert plugin.zero_stage == 3 and plugin.deepspeed_config["zero_optimization"]["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_low_stages_carry_allgather_buckets_and_no_param_offload(tmp_path, stage):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    cfg = PlanConfig(model=LLAMA2_7B, method=Method.LORA, num_gpus=4, zero=stage)
    emit(cfg, "deepspeed", tmp_path)
    doc = json.loads((tmp_path / DS_JSON).read_text())
    z = DeepSpeedZeroConfig(**doc["zero_optimization"])  # extra keys are forbidden by the model
    assert z.stage == stage and z.allgather_bucket_size == 4096 * 4096
    assert "offload_param" not in doc["zero_optimization"] and "optimizer" not in doc


def test_fsdp_config_builds_accelerates_fsdp_plugin(tmp_path, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=4, fsdp="shard_grad_op", grad_checkpointing=True)
    emit(cfg, "fsdp", tmp_path)
    args = _launch_env(tmp_path / ACCELERATE_YAML, monkeypatch)
    assert args.use_fsdp and args.num_processes == 4
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is False  # shard_grad_op keeps parameters gathered through backward
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.activation_checkpointing is True


def test_accelerate_kind_follows_the_plan(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig

    ddp = PlanConfig(model=LLAMA2_7B, method=Method.LORA, num_gpus=2, training_precision=TrainingPrecision.AMP)
    emit(ddp, "accelerate", tmp_path / "ddp")
    c = ClusterConfig.from_yaml_file(str(tmp_path / "ddp" / ACCELERATE_YAML))
    assert c.distributed_type.value == "MULTI_GPU" and c.num_processes == 2 and c.mixed_precision == "bf16"
    args = _launch_env(tmp_path / "ddp" / ACCELERATE_YAML, monkeypatch)
    assert args.multi_gpu and not args.use_deepspeed

    one = PlanConfig(model=LLAMA2_7B, method=Method.QLORA, precision=Precision.NF4, compute_dtype=DType.FP32)
    emit(one, "accelerate", tmp_path / "one")
    assert ClusterConfig.from_yaml_file(str(tmp_path / "one" / ACCELERATE_YAML)).distributed_type.value == "NO"

    z2 = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=8, zero=2, offload=Offload.OPTIMIZER,
                    training_precision=TrainingPrecision.AMP, precision=Precision.FP32)
    emit(z2, "accelerate", tmp_path / "z2")
    c = ClusterConfig.from_yaml_file(str(tmp_path / "z2" / ACCELERATE_YAML))
    assert c.distributed_type.value == "DEEPSPEED"
    assert c.deepspeed_config["zero_stage"] == 2 and c.deepspeed_config["offload_optimizer_device"] == "cpu"


def test_launch_script_is_the_accelerate_launch_line_with_notes(tmp_path):
    cfg = PlanConfig(model=LLAMA2_7B, method=Method.QLORA, precision=Precision.NF4, num_gpus=2, zero=3)
    emit(cfg, "deepspeed", tmp_path)
    sh = (tmp_path / LAUNCH_SH).read_text()
    assert f'accelerate launch --config_file "$here/{ACCELERATE_YAML}" "$@"' in sh
    assert "bnb_4bit_quant_storage" in sh  # QLoRA under ZeRO-3 needs it to shard 4-bit weights
    assert os.access(tmp_path / LAUNCH_SH, os.X_OK)


def test_multi_node_plans_span_machines(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    emit(PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=16, zero=3), "deepspeed", tmp_path)
    c = ClusterConfig.from_yaml_file(str(tmp_path / ACCELERATE_YAML))
    assert c.num_machines == 2 and c.num_processes == 16


@pytest.mark.parametrize("cfg,kind,msg", [
    (PlanConfig(model=LLAMA2_7B, method=Method.INFERENCE), "accelerate", "inference"),
    (PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=2, fsdp="full_shard"), "deepspeed", "FSDP"),
    (PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=2, zero=2), "fsdp", "ZeRO-2"),
    (PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=8, zero=2, offload=Offload.OPTIMIZER), "accelerate",
     "use --emit deepspeed"),  # pure bf16: accelerate's inline DeepSpeed settings would keep fp32 masters
    (PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=2), "deepspeed", "only under ZeRO 1-3"),
    (PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=2, zero=2, precision=Precision.FP16,
                compute_dtype=DType.FP16), "deepspeed", "only with ZeRO-Offload"),
    (PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=2, tp=2), "accelerate", "tensor parallel"),
    (PlanConfig(model=LLAMA2_7B, method=Method.FULL), "megatron", "one of"),
])
def test_impossible_emits_are_one_line_errors(tmp_path, cfg, kind, msg):
    with pytest.raises(QuantlabError, match=msg) as e:
        emit(cfg, kind, tmp_path)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_plan_emit_flag_writes_files_deepspeed_loads(tmp_path, capsys):
    from deepspeed.runtime.config import DeepSpeedConfig

    from quantlab.cli import main

    out = tmp_path / "launch"
    rc = main(["plan", "--model", "8b", "--method", "lora", "--num-gpus", "4", "--zero", "2", "--offload", "optimizer",
               "--emit", "deepspeed", "--emit-dir", str(out), "--format", "json"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "launch with: accelerate launch --config_file" in err
    ds = DeepSpeedConfig(str(out / DS_JSON))
    assert ds.zero_config.stage == 2 and ds.zero_config.offload_optimizer.device == "cpu"


def _ds_config(tmp_path, cfg):
    from deepspeed.runtime.config import DeepSpeedConfig

    emit(cfg, "deepspeed", tmp_path)
    return json.loads((tmp_path / DS_JSON).read_text()), DeepSpeedConfig(str(tmp_path / DS_JSON))


def _deepspeed_master_dtype(ds, offload: bool):
    """The master weight/gradient dtype DeepSpeed's ZeRO optimizers pick for this parsed config
    (``ZeROOptimizer._configure_master_weights``, the rule stage_1_and_2.py and stage3.py call, with the engine's
    arguments), and whether it would demand ZeRO-Offload with DeepSpeedCPUAdam (its offload validator runs)."""
    from types import SimpleNamespace

    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    demanded = []
    me = SimpleNamespace(optimizer=SimpleNamespace(fp32_optimizer_states=False))
    dtype = ZeROOptimizer._configure_master_weights(
        me, fp16_master_weights_and_gradients=ds.float16_config.fp16_master_weights_and_grads,
        bf16_master_weights_and_gradients=ds.bfloat16_config.bf16_master_weights_and_grads,
        bf16_optimizer_states=ds.bfloat16_config.bf16_optimizer_states, offload_enabled=offload,
        fp16_offload_validator=lambda: demanded.append("fp16"), bf16_offload_validator=lambda: demanded.append("bf16"))
    return dtype, bool(demanded)


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_deepspeed_carries_the_plans_precision_recipe(tmp_path, zero):
    """Pure bf16 (weights, gradients, states in bf16) and AMP (fp32 masters) plans write different DeepSpeed
    files, and DeepSpeed's own parser and state-dtype rule give each plan's master dtype, with the bf16 masters
    kept on the GPU (no ZeRO-Offload demanded)."""
    import torch

    from quantlab.planner import plan

    pure = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=8, zero=zero)
    amp = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=8, zero=zero, precision=Precision.FP32,
                     training_precision=TrainingPrecision.AMP)
    doc_p, ds_p = _ds_config(tmp_path / "pure", pure)
    doc_a, ds_a = _ds_config(tmp_path / "amp", amp)
    assert doc_p != doc_a
    assert ds_p.bfloat16_config.enabled and ds_a.bfloat16_config.enabled
    assert ds_p.bfloat16_config.bf16_master_weights_and_grads and ds_p.bfloat16_config.bf16_optimizer_states
    assert not ds_a.bfloat16_config.bf16_master_weights_and_grads and not ds_a.bfloat16_config.bf16_optimizer_states
    assert _deepspeed_master_dtype(ds_p, offload=False) == (torch.bfloat16, False)
    assert _deepspeed_master_dtype(ds_a, offload=False) == (torch.float32, False)
    # the plan's optimizer states per GPU are 2 x trainable x (2 bytes pure, 4 bytes AMP) / 8 GPUs, as DeepSpeed
    # keeps them (AdamW exp_avg and exp_avg_sq in the master dtype)
    n = plan(pure).trainable_params
    assert plan(pure).components["optimizer"] == 2 * n * 2 // 8
    assert plan(amp).components["optimizer"] == 2 * n * 4 // 8


def test_peft_plans_keep_deepspeeds_fp32_masters(tmp_path):
    """LoRA adapters are fp32 in the plan (memory assumption 2): DeepSpeed's default fp32 masters are the match."""
    import torch

    _, ds = _ds_config(tmp_path, PlanConfig(model=LLAMA2_7B, method=Method.LORA, num_gpus=4, zero=2))
    assert _deepspeed_master_dtype(ds, offload=False) == (torch.float32, False)


def test_pure_bf16_with_offload_lets_the_engine_build_bf16_cpu_adam(tmp_path):
    """With optimizer offload the file names AdamW, so the engine builds DeepSpeedCPUAdam with
    fp32_optimizer_states=False itself (bf16_optimizer_states, engine.get_optimizer_configuration)."""
    import torch

    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=8, zero=3, offload=Offload.OPTIMIZER)
    doc, ds = _ds_config(tmp_path, cfg)
    assert doc["optimizer"]["type"] == "AdamW" and ds.zero_config.offload_optimizer.device == "cpu"
    dtype, demanded = _deepspeed_master_dtype(ds, offload=True)
    assert dtype == torch.bfloat16 and demanded  # DeepSpeed requires its CPU Adam here: the named optimizer


def test_fsdp2_mixed_precision_policy_matches_the_plan(tmp_path, monkeypatch):
    """accelerate turns mixed_precision into the FSDP2 MixedPrecisionPolicy (AcceleratorState calls
    set_mixed_precision when it is not "no"): AMP casts parameters and reductions to bf16 over fp32 masters,
    pure keeps the stored dtype (the default policy)."""
    import torch
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import FullyShardedDataParallelPlugin

    from quantlab.emit import fsdp_mixed_precision

    names = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
    for tp in TrainingPrecision:
        cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=4, fsdp="full_shard", training_precision=tp,
                         precision=Precision.FP32 if tp is TrainingPrecision.AMP else Precision.BF16)
        out = tmp_path / tp.value
        emit(cfg, "fsdp", out)
        mp = ClusterConfig.from_yaml_file(str(out / ACCELERATE_YAML)).mixed_precision
        _launch_env(out / ACCELERATE_YAML, monkeypatch)
        plugin = FullyShardedDataParallelPlugin()
        if mp != "no":  # as accelerate/state.py does
            plugin.set_mixed_precision(mp)
        policy = plugin.mixed_precision_policy
        want = fsdp_mixed_precision(cfg)
        got = (policy.param_dtype, policy.reduce_dtype) if policy is not None else (None, None)
        assert got == (names[want["param_dtype"]], names[want["reduce_dtype"]])
        assert got == ((torch.bfloat16, torch.bfloat16) if tp is TrainingPrecision.AMP else (None, None))


def test_plan_that_does_not_fit_writes_no_launch_files_without_force(tmp_path, capsys):
    from quantlab.cli import main

    out = tmp_path / "launch"
    argv = ["plan", "--model", "70b", "--method", "full", "--num-gpus", "2", "--zero", "3", "--gpu", "rtx-4090",
            "--emit", "deepspeed", "--emit-dir", str(out)]
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "does not fit on rtx-4090" in cap.err and "--force" in cap.err
    assert len(cap.err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
    assert main(argv + ["--force"]) == 0
    assert (out / DS_JSON).is_file()


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_deepspeed_buckets_are_the_plans(tmp_path, zero):
    """The reduce bucket, the ZeRO-3 bounds and the master dtype DeepSpeed parses from the file are the ones the plan's
    DeepSpeed terms use (memory assumption 9b, 9e, 9f): two 16-bit buckets of hidden² at stages 1-2, one at stage 3,
    plus the embedding's own gradient (32000 x 4096 > 4096²)."""
    import torch

    from quantlab.planner import plan
    from quantlab.planner.memory import deepspeed_buffers

    cfg = PlanConfig(model=LLAMA2_7B, method=Method.FULL, num_gpus=8, zero=zero, precision=Precision.FP32,
                     training_precision=TrainingPrecision.AMP)
    _, ds = _ds_config(tmp_path, cfg)
    z = ds.zero_config
    buf = deepspeed_buffers(cfg)
    assert z.reduce_bucket_size == 4096 * 4096 and z.overlap_comm and z.contiguous_gradients
    assert buf.buckets == ((2 if zero < 3 else 1) * 4096 * 4096 + 32000 * 4096) * 2
    assert plan(cfg).components["ddp_buckets"] == buf.buckets
    assert _deepspeed_master_dtype(ds, offload=False)[0] == torch.float32 and buf.master_bytes == 4
    if zero == 3:
        assert z.max_reuse_distance == z.prefetch_bucket_size == z.max_live_parameters // 2
