"""Ready-to-run launch configurations for a planned sharding: accelerate, DeepSpeed, FSDP.

``emit(cfg, kind, out_dir)`` writes the files and returns their paths; ``launch_command`` is the
``accelerate launch`` line that uses them. The files are checked by the tools' own parsers in
``tests/test_emit.py`` (accelerate's ``ClusterConfig`` and launch-time plugins, DeepSpeed's
``DeepSpeedConfig``).

What each kind writes (all in ``out_dir``):

- ``accelerate``: ``accelerate_config.yaml`` for the plan as it is: plain data parallel
  (``MULTI_GPU``; ``NO`` on one GPU), or, when the plan uses ZeRO or FSDP, the same settings inline
  (accelerate's own ``deepspeed_config`` / ``fsdp_config`` keys).
- ``deepspeed``: ``ds_config.json`` (ZeRO stage, offload, bucket sizes, precision, batch) and an
  ``accelerate_config.yaml`` that points at it (``distributed_type: DEEPSPEED``).
- ``fsdp``: ``accelerate_config.yaml`` with ``distributed_type: FSDP`` and its ``fsdp_config``.
- always: ``launch.sh``, the ``accelerate launch`` command line.

Choices the plan does not fix, and why:

1. Bucket sizes follow the values transformers' DeepSpeed integration fills in for ``auto``
   (``transformers/integrations/deepspeed.py``), from the planner's rules (``ds_reduce_bucket``,
   ``ds_persistence_threshold``: the plan counts the same buckets, memory assumption 9e):
   ``reduce_bucket_size = hidden²``,
   ``stage3_param_persistence_threshold = 10·hidden`` (the prefetch bucket is choice 6);
   ``allgather_bucket_size = hidden²`` for stages 1-2. They scale with the layer sizes, which the
   fixed DeepSpeed defaults (5e8) do not.
2. ``train_batch_size`` is left out of the DeepSpeed file: DeepSpeed derives it as micro-batch ×
   accumulation × world size, so the file stays right for any number of processes.
3. Mixed precision: AMP plans run ``mixed_precision: bf16``/``fp16`` (fp32 master weights);
   pure-precision plans load the model in the compute dtype and run ``mixed_precision: no``.
   DeepSpeed (0.19.8, ``runtime/precision_config.py``): its ``bf16``/``fp16`` section turns the
   model into 16-bit and keeps fp32 master weights, gradients and optimizer states
   (``_configure_master_weights`` in ``runtime/base_optimizer.py`` returns fp32 unless told
   otherwise), which is the AMP plan and the plan of a PEFT method (fp32 adapters, memory
   assumption 2). A pure bf16 plan of base weights (full, freeze) writes
   ``bf16_master_weights_and_grads`` and ``bf16_optimizer_states`` in the ``bf16`` section:
   ``runtime/config.py`` allows them at ZeRO 1-3 only, and ``bf16_optimizer_states`` is what lets
   the bf16 masters stay on the GPU without ZeRO-Offload (``stage_1_and_2.py`` / ``stage3.py``
   ``_enforce_cpu_offload``); with offload the engine builds ``DeepSpeedCPUAdam`` with
   ``fp32_optimizer_states=False`` itself (``engine.py`` ``get_optimizer_configuration``). A pure
   fp16 plan needs ``fp16_master_weights_and_grads``, which DeepSpeed allows only with ZeRO-Offload
   and ``DeepSpeedCPUAdam``: without ``--offload`` it is refused (one line), and so is pure bf16
   without ZeRO (stage 0 wraps the model in ``FP16_Optimizer``, fp32 masters).
4. FSDP uses accelerate's FSDP2 (``fsdp_version: 2``), wrapping each decoder block
   (``TRANSFORMER_BASED_WRAP`` with the block class transformers gives the family). full_shard
   reshards after forward; shard_grad_op keeps parameters gathered until backward. FSDP offload
   moves parameters, gradients and optimizer states together (it has no optimizer-only offload).
   Its ``MixedPrecisionPolicy`` comes from ``mixed_precision`` (accelerate 1.15 ``state.py`` calls
   ``FullyShardedDataParallelPlugin.set_mixed_precision``): AMP gives ``param_dtype`` and
   ``reduce_dtype`` in the compute dtype, with trainable parameters upcast to fp32 masters
   (``fsdp_utils.fsdp2_prepare_model``); pure gives the default policy (``param_dtype=None``: the
   stored dtype), as :func:`fsdp_mixed_precision` states.
5. With optimizer offload, DeepSpeed runs its CPU Adam only for an optimizer named in its config,
   so the file names AdamW with ``auto`` values that accelerate fills from ``DummyOptim``.
6. ZeRO-3's gathered parameters: ``stage3_max_live_parameters`` is the plan's gathered-parameter
   term, two decoder blocks (the current one and the prefetched one, memory assumption 9), and
   ``stage3_prefetch_bucket_size`` one block, so DeepSpeed holds no more gathered than the plan
   counts (DeepSpeed's defaults, 1e9 live and 5e7 prefetched parameters, let a whole 1B-parameter
   model be gathered at once). ``stage3_max_reuse_distance`` is one block too: a parameter reused within
   that many fetched parameters is not released (``partitioned_param_coordinator.py``), and 1e9 kept a
   whole small model gathered from forward into backward on an engine built on a CPU
   (``scripts/ds_engine_buffers.py``: 106,496 gathered parameters against the two-block bound of 73,984;
   with one block, 69,632).
7. A plan that does not fit its GPU writes nothing unless ``--force`` (``quantlab plan``). The
   ``accelerate`` kind's inline ``deepspeed_config`` has no key for bf16/fp16 master weights or the
   ZeRO-3 bounds: a plan that needs them is refused there (``--emit deepspeed`` writes them).
"""

from __future__ import annotations

import argparse
import json

from quantlab.errors import QuantlabError
from quantlab.families import family
from quantlab.fileio import atomic_write_text
from quantlab.specs import DType, Method, Offload, PlanConfig, Precision, TrainingPrecision

KINDS = ("accelerate", "deepspeed", "fsdp")
ACCELERATE_YAML = "accelerate_config.yaml"
DS_JSON = "ds_config.json"
LAUNCH_SH = "launch.sh"
GPUS_PER_NODE = 8




def add_emit_argument(parser: argparse.ArgumentParser) -> None:
    """``--emit KIND``, ``--emit-dir DIR`` and ``--force`` for ``quantlab plan``."""
    parser.add_argument("--emit", choices=KINDS, default=None,
                        help="also write a ready launch configuration for the planned sharding: an accelerate config "
                             "YAML, a DeepSpeed JSON (ZeRO stage, offload, bucket sizes) or FSDP settings, plus the "
                             "'accelerate launch' command line (launch.sh) (default: none)")
    parser.add_argument("--emit-dir", default="launch", metavar="DIR",
                        help="folder for the --emit files (default: ./launch; existing files there are replaced)")
    parser.add_argument("--force", action="store_true",
                        help="write the --emit files even when the plan does not fit the --gpu (default: off: a plan "
                             "that does not fit writes nothing)")


def mixed_precision(cfg: PlanConfig) -> str:
    """accelerate's ``mixed_precision`` for the plan (choice 3)."""
    if cfg.training_precision is TrainingPrecision.AMP and cfg.compute_dtype in (DType.BF16, DType.FP16):
        return cfg.compute_dtype.value
    if cfg.compute_dtype is DType.FP8:
        return "fp8"
    return "no"


def master_dtype(cfg: PlanConfig) -> DType:
    """The dtype the plan keeps trainable parameters' masters, gradients and optimizer states in (memory
    assumptions 1, 2, 9b): fp32 for AMP and for PEFT adapters, the weights' dtype for pure full/freeze training.
    The rule is the planner's (:func:`quantlab.planner.memory.ds_master_dtype`), so the file and the plan agree."""
    from quantlab.planner.memory import ds_master_dtype

    return ds_master_dtype(cfg)


def fsdp_mixed_precision(cfg: PlanConfig) -> dict:
    """The FSDP2 ``MixedPrecisionPolicy`` the emitted files give (choice 4), as dtype names; None: the stored
    dtype (no cast)."""
    mp = mixed_precision(cfg)
    if mp in ("bf16", "fp16"):
        return {"param_dtype": mp, "reduce_dtype": mp}
    return {"param_dtype": None, "reduce_dtype": None}


def gathered_params(cfg: PlanConfig) -> tuple[int, int]:
    """(stage3_max_live_parameters, stage3_prefetch_bucket_size): two blocks and one (choice 6), the bound the
    plan's gathered-parameter term counts (memory assumption 9f)."""
    from quantlab.planner.memory import ds_gathered_bounds

    return ds_gathered_bounds(cfg.model)


def bucket_sizes(cfg: PlanConfig) -> tuple[int, int]:
    """(reduce_bucket_size, stage3_param_persistence_threshold) in elements (choice 1), the values the plan's
    reduce-bucket and ZeRO-3 terms use (memory assumption 9e, 9f)."""
    from quantlab.planner.memory import ds_persistence_threshold, ds_reduce_bucket

    return ds_reduce_bucket(cfg.model), ds_persistence_threshold(cfg.model)


def _check(cfg: PlanConfig, kind: str) -> None:
    if kind not in KINDS:
        raise QuantlabError(f"--emit must be one of {', '.join(KINDS)}, got {kind!r}")
    if not cfg.method.is_training:
        raise QuantlabError("--emit writes training launch configurations; this plan is for inference")
    if kind == "deepspeed" and cfg.fsdp:
        raise QuantlabError(f"the plan shards with FSDP ({cfg.fsdp}); use --emit fsdp, or plan with --zero N for DeepSpeed")
    if kind == "fsdp" and cfg.zero:
        raise QuantlabError(f"the plan shards with ZeRO-{cfg.zero}; use --emit deepspeed, or plan with --fsdp for FSDP")
    if cfg.tp > 1:
        raise QuantlabError("tensor parallel training is not emitted (accelerate/DeepSpeed configs here are data "
                            "parallel); plan with --tp 1")
    if cfg.offload is Offload.PARAMS and cfg.zero and cfg.zero < 3:
        raise QuantlabError(f"parameter offload needs ZeRO-3, the plan uses ZeRO-{cfg.zero}")
    if cfg.offload is not Offload.NONE and not (cfg.zero or cfg.fsdp) and kind == "accelerate":
        raise QuantlabError("offload needs DeepSpeed ZeRO or FSDP; plan with --zero 2/3 or --fsdp, "
                            "or use --emit deepspeed")
    uses_ds = kind == "deepspeed" or (kind == "accelerate" and (cfg.zero or cfg.offload is not Offload.NONE)
                                      and not cfg.fsdp)
    low = master_dtype(cfg)
    if kind == "accelerate" and uses_ds and low in (DType.BF16, DType.FP16):
        raise QuantlabError(f"accelerate's inline DeepSpeed settings keep fp32 master weights; this pure "
                            f"{low.value} plan needs {low.value}_master_weights_and_grads: use --emit deepspeed")
    if uses_ds and low is DType.BF16 and _zero_stage(cfg) == 0:
        raise QuantlabError("DeepSpeed keeps bf16 master weights and optimizer states only under ZeRO 1-3 "
                            "(bf16_master_weights_and_grads); plan with --zero 1/2/3, or --training-precision amp")
    if uses_ds and low is DType.FP16 and cfg.offload is Offload.NONE:
        raise QuantlabError("DeepSpeed keeps fp16 master weights only with ZeRO-Offload and DeepSpeedCPUAdam "
                            "(fp16_master_weights_and_grads); plan with --offload optimizer, bf16, or "
                            "--training-precision amp")


def _fsdp_strategy(cfg: PlanConfig) -> str:
    return cfg.fsdp or "full_shard"


def _zero_stage(cfg: PlanConfig) -> int:
    """The ZeRO stage to write: the plan's, or the lowest one that carries its offload."""
    if cfg.zero:
        return cfg.zero
    return {Offload.NONE: 0, Offload.OPTIMIZER: 2, Offload.PARAMS: 3}[cfg.offload]


def deepspeed_config(cfg: PlanConfig) -> dict:
    """The DeepSpeed JSON document for ``cfg`` (choices 1-3, 5, 6)."""
    bucket, persist = bucket_sizes(cfg)
    stage = _zero_stage(cfg)
    # overlap_comm and contiguous_gradients: the double-buffered reduce buckets and the contiguous gradient
    # partition the plan counts (memory assumption 9d, 9e)
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": bucket}
    if stage in (1, 2):
        zero["allgather_bucket_size"] = bucket
        zero["reduce_scatter"] = True
    if stage == 3:
        live, prefetch = gathered_params(cfg)
        zero.update(stage3_prefetch_bucket_size=prefetch, stage3_param_persistence_threshold=persist,
                    stage3_max_live_parameters=live, stage3_max_reuse_distance=prefetch,
                    stage3_gather_16bit_weights_on_model_save=True)
    if cfg.offload is not Offload.NONE:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.offload is Offload.PARAMS:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    doc: dict = {
        "train_micro_batch_size_per_gpu": cfg.batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }
    low = master_dtype(cfg)
    if cfg.compute_dtype is DType.BF16:
        doc["bf16"] = {"enabled": True}
        if low is DType.BF16:  # choice 3: a pure bf16 plan keeps bf16 masters, gradients and states
            doc["bf16"].update(bf16_master_weights_and_grads=True, bf16_optimizer_states=True)
    elif cfg.compute_dtype is DType.FP16:
        doc["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                       "hysteresis": 2, "min_loss_scale": 1}
        if low is DType.FP16:
            doc["fp16"]["fp16_master_weights_and_grads"] = True
    if cfg.offload is not Offload.NONE:
        doc["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                        "weight_decay": "auto"}}
    return doc


def fsdp_config(cfg: PlanConfig) -> dict:
    """accelerate's ``fsdp_config`` keys for ``cfg`` (choice 4)."""
    return {
        "fsdp_version": 2,
        "fsdp_reshard_after_forward": _fsdp_strategy(cfg) == "full_shard",
        "fsdp_offload_params": cfg.offload is not Offload.NONE,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": family(cfg.model).block_class,
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_activation_checkpointing": cfg.grad_checkpointing,
    }


def accelerate_config(cfg: PlanConfig, kind: str, ds_file: str | None = None) -> dict:
    """The accelerate config document (the keys ``accelerate config`` writes)."""
    n = cfg.num_gpus
    machines = max(1, -(-n // GPUS_PER_NODE))
    doc: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": mixed_precision(cfg),
        "num_machines": machines,
        "num_processes": n,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "enable_cpu_affinity": False,
    }
    if machines > 1:
        doc["main_process_port"] = 29500  # main_process_ip: pass --main_process_ip on each node
    if kind == "fsdp" or (kind == "accelerate" and cfg.fsdp):
        doc["distributed_type"] = "FSDP"
        doc["fsdp_config"] = fsdp_config(cfg)
    elif kind == "deepspeed" or (kind == "accelerate" and (cfg.zero or cfg.offload is not Offload.NONE)):
        doc["distributed_type"] = "DEEPSPEED"
        if ds_file:  # precision lives in the DeepSpeed file; accelerate rejects a second source for it
            doc["deepspeed_config"] = {"deepspeed_config_file": ds_file, "zero3_init_flag": _zero_stage(cfg) == 3}
            del doc["mixed_precision"]
        else:
            # accelerate turns mixed_precision into DeepSpeed's bf16/fp16 section (choice 3)
            doc["mixed_precision"] = cfg.compute_dtype.value if cfg.compute_dtype in (DType.BF16, DType.FP16) else "no"
            ds = {"zero_stage": _zero_stage(cfg), "gradient_accumulation_steps": cfg.grad_accum,
                  "gradient_clipping": 1.0, "zero3_init_flag": _zero_stage(cfg) == 3,
                  "offload_optimizer_device": "cpu" if cfg.offload is not Offload.NONE else "none",
                  "offload_param_device": "cpu" if cfg.offload is Offload.PARAMS else "none"}
            if _zero_stage(cfg) == 3:
                ds["zero3_save_16bit_model"] = True
            doc["deepspeed_config"] = ds
    else:
        doc["distributed_type"] = "MULTI_GPU" if n > 1 else "NO"
    return doc


def notes(cfg: PlanConfig, kind: str) -> list[str]:
    """What the user's training script must do for these files to work (shown in launch.sh)."""
    out = []
    if cfg.method is Method.QLORA and (cfg.zero == 3 or kind == "fsdp" or cfg.fsdp):
        out.append("QLoRA under ZeRO-3/FSDP: load with BitsAndBytesConfig(bnb_4bit_quant_storage=torch."
                   f"{'bfloat16' if cfg.compute_dtype is DType.BF16 else 'float16'}) so 4-bit weights can be sharded.")
    if cfg.method.is_peft and (kind == "fsdp" or cfg.fsdp):
        out.append("PEFT under FSDP: mixed trainable/frozen parameters need use_orig_params (FSDP2 handles it).")
    if cfg.offload is not Offload.NONE and (kind == "deepspeed" or cfg.zero):
        out.append("Optimizer offload: the DeepSpeed file names AdamW, so create the optimizer with "
                   "accelerate.utils.DummyOptim(params, lr=...) in the script.")
    if kind == "fsdp" and cfg.offload is Offload.OPTIMIZER:
        out.append("FSDP has no optimizer-only offload: fsdp_offload_params moves parameters, gradients and "
                   "optimizer states to the CPU (more host traffic than the plan's optimizer offload).")
    if kind == "fsdp" and not cfg.fsdp:
        out.append("The plan named no FSDP strategy: full_shard is written.")
    if kind == "deepspeed" and not cfg.zero:
        out.append(f"The plan named no ZeRO stage: stage {_zero_stage(cfg)} is written.")
    if cfg.grad_checkpointing and kind != "fsdp" and not cfg.fsdp:
        out.append("Gradient checkpointing is the model's: call model.gradient_checkpointing_enable() in the script.")
    if cfg.precision in (Precision.NF4, Precision.FP4, Precision.INT8) and cfg.compute_dtype is DType.FP32:
        out.append("k-bit weights compute in fp32 here (bnb_4bit_compute_dtype=torch.float32).")
    if cfg.num_gpus > GPUS_PER_NODE:
        out.append(f"{cfg.num_gpus} processes span {-(-cfg.num_gpus // GPUS_PER_NODE)} nodes: run the command on "
                   "each with --machine_rank R --main_process_ip MAIN_NODE_IP.")
    return out


def launch_command(config_path: str | Path, script: str = "train.py") -> str:
    """The ``accelerate launch`` command line for an emitted accelerate config."""
    import shlex  # (imported here and in emit(), with pathlib: ``quantlab plan`` imports this module for its flags)

    return f"accelerate launch --config_file {shlex.quote(str(config_path))} {script}"


def _yaml(doc: dict) -> str:
    import yaml  # pyyaml is a core dependency; imported here so the planner path stays lean

    return yaml.safe_dump(doc, sort_keys=True)


def emit(cfg: PlanConfig, kind: str, out_dir: str | Path) -> list[Path]:
    """Write the launch files for ``cfg`` into ``out_dir`` (atomically each) and return their paths."""
    _check(cfg, kind)
    from pathlib import Path

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuantlabError(f"--emit-dir {out} exists and is not a folder")
    written: list[Path] = []
    ds_file = None
    if kind == "deepspeed":
        ds_path = out / DS_JSON
        written.append(atomic_write_text(ds_path, json.dumps(deepspeed_config(cfg), indent=2) + "\n"))
        ds_file = str(ds_path.resolve())
    acc_path = out / ACCELERATE_YAML
    written.append(atomic_write_text(acc_path, _yaml(accelerate_config(cfg, kind, ds_file))))
    lines = ["#!/usr/bin/env bash",
             f"# quantlab: {cfg.model.name}, {cfg.method.value}, {cfg.num_gpus} process(es), kind={kind}",
             "# Usage: bash launch.sh your_train.py [script args...]"]
    lines += [f"# NOTE: {n}" for n in notes(cfg, kind)]
    lines += ['set -euo pipefail', 'here="$(cd "$(dirname "$0")" && pwd)"',
              f'exec accelerate launch --config_file "$here/{ACCELERATE_YAML}" "$@"', ""]
    sh = out / LAUNCH_SH
    written.append(atomic_write_text(sh, "\n".join(lines)))
    sh.chmod(0o755)
    return written
