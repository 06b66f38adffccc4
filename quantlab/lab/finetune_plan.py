"""The lab's fine-tune configuration and the planner's :class:`~quantlab.specs.PlanConfig`: one vocabulary.

A :class:`~quantlab.lab.finetune.FinetuneConfig` holds a PlanConfig (``plan``: what is planned) plus the lab's
own run settings (data, steps, learning rate, schedule, evaluation, seed, packing, checkpoints). Three ways in:

- :func:`finetune_config`: flat keyword arguments, the names of ``quantlab plan``'s flags as PlanConfig fields
  (``method``, ``precision``, ``compute_dtype``, ``lora_r``, ...) beside the lab's own (``max_steps``, ``lr``, ...).
  ``quantlab lab finetune`` builds its config here from the same flags ``quantlab plan`` takes;
- :func:`from_plan_config`: "the lab on exactly the planned configuration" (``quantlab validate``): the plan as it
  is, with packed rows of exactly ``seq`` tokens, so the measured step has the planned batch x seq shape and, like
  the plan, no padding mask (:mod:`quantlab.lab.data` assumption 7);
- :meth:`FinetuneConfig.to_dict` and back through :func:`finetune_config` (stored runs, checkpoints).

:func:`to_plan_config` is the plan of the step the lab measured (its batch x padded width), for the ``pred_``
columns beside the ``meas_`` ones.

Assumptions:

1. The plan's fields are resolved by ``PlanConfig.from_dict``, as for every command (specs assumption 4): nf4
   weights for qlora, gradient checkpointing on under PEFT's ``prepare_model_for_kbit_training`` (the QLoRA
   recipe: ``grad_checkpointing=False`` / ``--no-grad-checkpointing`` turns it off), PEFT's per-family LoRA targets.
   Validation of those fields is PlanConfig's.
2. The lab knows its device, so it resolves what ``quantlab plan`` leaves to "the command that knows the GPU"
   (:func:`device_adjusted`, the lab's counterpart of ``quantlab.commands.plan.gpu_adjusted``): the compute dtype
   the user left open is fp32 on a CPU (bf16/fp16 matmuls are emulated on most CPUs, 4x or more slower: measured
   by ``quantlab.lab.ptq.slow_dtype``), bf16 on a GPU with bf16, fp16 (and no FlashAttention) on one without.
   Unquantized weights the user left open are in that compute dtype under pure training (pure training computes
   in the weights' dtype: planner memory ``_dtypes``) and fp32 under AMP (the master weights the lab loads).
   The plan's ``device`` is the lab's device.
3. ``padding_mask`` is the lab's batch layout: packed rows (``packing``) have no mask, padded batches have one.
   ``seq`` is the longest record the run accepts (the width of every row when packing or padding to a fixed
   width); the measured step's own width and padding are what :func:`to_plan_config` plans beside the measurement.
4. The lab-only method ``qat`` is planned as the full fine-tune it is (``FinetuneConfig.qat``).
5. What the one-process lab cannot run is refused in one line (:func:`lab_refusal`): several GPUs, ZeRO/FSDP,
   offload, tensor parallel, LitGPT's stack, bottleneck adapters, inference, k-bit weights outside QLoRA, and
   precisions it has no recipe for.
"""

from __future__ import annotations

import dataclasses

from quantlab.errors import QuantlabError

LAB_FIELDS = None  # the FinetuneConfig field names that are not PlanConfig's (filled on first use)


def _lab_fields() -> tuple[str, ...]:
    global LAB_FIELDS
    if LAB_FIELDS is None:
        from quantlab.lab.finetune import FinetuneConfig

        LAB_FIELDS = tuple(f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in ("plan", "model"))
    return LAB_FIELDS


def lab_refusal(pc) -> str | None:
    """Why the one-process fine-tune lab cannot run plan ``pc`` (one line), or None (assumption 5)."""
    from quantlab.specs import DType, Method, Offload, TrainingPrecision

    if not pc.method.is_training:
        return "the fine-tune lab runs training configurations; this plan is for inference"
    if pc.method is Method.ADAPTER:
        return "the lab has no bottleneck-adapter method (PEFT has none); plan lora, ia3 or prefix"
    if pc.num_gpus > 1 or pc.zero or pc.fsdp or pc.tp > 1:
        return ("the fine-tune lab runs one process; sharded plans (num-gpus, ZeRO, FSDP, tensor parallel) run "
                "through quantlab.lab.distributed")
    if pc.offload is not Offload.NONE:
        return "the fine-tune lab does not offload to CPU memory"
    if pc.library != "transformers":
        return f"the lab runs the transformers stack, not {pc.stack}"
    compute = pc.compute_dtype
    if compute not in (DType.FP32, DType.BF16, DType.FP16):
        return f"the lab does not train in {compute.value}"
    amp = pc.training_precision is TrainingPrecision.AMP
    if amp and compute is DType.FP32:
        return "AMP with an fp32 compute dtype is plain fp32 training: plan training-precision pure"
    if pc.method is Method.QLORA:
        return None
    if pc.precision.is_kbit:
        return f"the lab's {pc.method.value} trains unquantized weights, not {pc.precision.value}"
    if not amp and pc.precision.value != compute.value:
        return f"pure {compute.value} training keeps its weights in {compute.value}, not {pc.precision.value}"
    return None


def lab_device() -> tuple[str, bool]:
    """(``cuda`` or ``cpu``, bf16 supported) for the device the lab runs on."""
    from quantlab.lab import measure

    if not measure.cuda_available():
        return "cpu", False
    import torch

    return "cuda", bool(torch.cuda.is_bf16_supported())


def device_adjusted(d: dict, device: str, bf16: bool = True) -> dict:
    """The one place the lab's device changes a plan dict the user left open (assumption 2); values given win."""
    d = dict(d)
    if d.get("compute_dtype") is None:
        d["compute_dtype"] = "fp32" if device == "cpu" else "bf16" if bf16 else "fp16"
    if d.get("precision") is None and d.get("method") != "qlora":
        d["precision"] = "fp32" if d.get("training_precision") == "amp" else d["compute_dtype"]
    if device == "cuda" and not bf16 and d.get("flash_attention") is None:
        d["flash_attention"] = False  # FlashAttention needs sm80+, as bf16 does (plan.gpu_adjusted's rule)
    d["device"] = device
    return d


def model_spec_of(model: str):
    """The planner's :class:`ModelSpec` of a lab model source (its config.json; no weights are read)."""
    import json

    from quantlab.lab import model as lab_model
    from quantlab.specs import ModelSpec

    src = lab_model.resolve(model)
    if src.profile_name is not None:
        from quantlab.profiles import load_model as load_profile

        return load_profile(src.profile_name).spec
    try:
        if src.kind == "folder":
            config = json.loads((src.path / "config.json").read_text())
        else:
            config = lab_model.load_config(src, progress=False).to_dict()
        return ModelSpec.from_hf_config(config, name=src.name)
    except (OSError, ValueError) as e:  # SpecError is a ValueError
        raise QuantlabError(f"the lab plans every run it measures, and {src.name} is not an architecture the planner "
                            f"describes: {str(e).splitlines()[0][:200]}") from e


def finetune_config(*, model: str | None = None, spec=None, device: str | None = None, bf16: bool | None = None,
                    **kw):
    """A :class:`FinetuneConfig` from flat keyword arguments: PlanConfig field names go to the plan (absent or
    None: resolved as ``quantlab plan`` resolves them, after the lab's device, assumptions 1-4), the rest are the
    lab's own. ``method`` takes the lab's names (``qat`` too); ``max_len`` is an old name of ``seq``. ``spec``
    (the model's ModelSpec) is read from the model's config.json when not given; ``device`` is the lab's."""
    from quantlab.lab.finetune import LAB_PLAN_DEFAULTS, METHODS, FinetuneConfig
    from quantlab.specs import PlanConfig

    model = model or FinetuneConfig.model
    plan_fields = {f.name for f in dataclasses.fields(PlanConfig)} - {"model"}
    unknown = [k for k in kw if k not in plan_fields and k not in _lab_fields() and k != "max_len"]
    if unknown:
        raise QuantlabError(f"unknown fine-tune setting {unknown[0]!r}")
    if "max_len" in kw:
        if kw.get("seq") is not None:
            raise QuantlabError("give seq or max_len, not both")
        kw["seq"] = kw.pop("max_len")
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items() if k in plan_fields}
    lab = {k: v for k, v in kw.items() if k not in plan_fields}
    for k, v in LAB_PLAN_DEFAULTS.items():
        if d.get(k) is None:
            d[k] = v
    if d["method"] not in METHODS:
        raise QuantlabError(f"unknown method {d['method']!r} (the lab's: {', '.join(METHODS)})")
    if d["method"] == "qat":
        if lab.get("qat") is False:
            raise QuantlabError("method qat with qat=False")
        d["method"], lab["qat"] = "full", True
    if "padding_mask" in d and d["padding_mask"] is not None:
        if "packing" in lab and lab["packing"] == d["padding_mask"]:
            raise QuantlabError("padding_mask is the lab's batch layout: packed rows have none (give one of them)")
        lab["packing"] = not d["padding_mask"]
    d["padding_mask"] = not lab.get("packing", FinetuneConfig.packing)
    if device is None:
        device, found_bf16 = lab_device()
        bf16 = found_bf16 if bf16 is None else bf16
    d = device_adjusted(d, device, True if bf16 is None else bf16)
    if spec is None:
        spec = model_spec_of(model)
    if lab.get("data") is not None and "task" not in lab:
        lab["task"] = None
    return FinetuneConfig(plan=PlanConfig.from_dict(d, model=spec), model=model, **lab)


# Stored runs from before the lab took the plan's flags (harness 2) named a precision recipe; read back only.
_LEGACY_RECIPES = {"fp32": ("fp32", "fp32", "pure"), "bf16": ("bf16", "bf16", "pure"), "fp16": ("fp16", "fp16", "pure"),
                   "amp-bf16": ("fp32", "bf16", "amp"), "amp-fp16": ("fp32", "fp16", "amp")}


def from_dict(d: dict, **kw):
    """The inverse of :meth:`FinetuneConfig.to_dict` (the lab's device and the model's spec as ``finetune_config``);
    a results-store config also carries ``harness``, which is ignored. A config stored before the lab took the
    plan's flags (a ``precision`` recipe such as amp-bf16, ``quant_type``, ``max_len``, no ``compute_dtype``) is
    read as the same run: its recipe's weights, compute dtype and training precision."""
    d = {k: v for k, v in dict(d).items() if k != "harness"}
    if "compute_dtype" not in d and d.get("precision") in _LEGACY_RECIPES:
        w, c, tp = _LEGACY_RECIPES[d.pop("precision")]
        qtype = d.pop("quant_type", "nf4")
        d.update(precision=qtype if d.get("method") == "qlora" else w, compute_dtype=c, training_precision=tp)
    d.pop("quant_type", None)
    return finetune_config(**{**d, **kw})


def to_plan_config(cfg, spec=None, *, device: str | None = None, batch: int | None = None, seq: int | None = None,
                   padded: bool | None = None):
    """The :class:`PlanConfig` of lab config ``cfg``: ``cfg.plan``, on model ``spec`` when given (the spec of the
    model as loaded), for the measured step's ``batch``, ``seq``, padding and ``device`` when given."""
    pc = cfg.plan
    change = {k: v for k, v in (("model", spec), ("batch", batch), ("seq", seq), ("padding_mask", padded))
              if v is not None and v != getattr(pc, k)}
    if device is not None and device != pc.device.value:
        from quantlab.specs import DeviceMode

        change["device"] = DeviceMode(device)
    return dataclasses.replace(pc, **change) if change else pc


def from_plan_config(pc, *, model: str = "smollm2-135m", task: str | None = "json-extract", data: str | None = None,
                     **overrides):
    """A :class:`FinetuneConfig` that runs plan config ``pc`` as it is (packed rows of ``pc.seq`` tokens unless the
    plan pads); ``overrides`` are lab settings. A plan the lab cannot run is a one-line QuantlabError."""
    from quantlab.lab.finetune import FinetuneConfig

    why = lab_refusal(pc)
    if why:
        raise QuantlabError(why)
    fields = dict(model=model, task=None if data else task, data=data, packing=not pc.padding_mask,
                  pad_to_max_len=pc.padding_mask)
    fields.update(overrides)
    return FinetuneConfig(plan=pc, **fields)


def model_spec(hf_config, name: str):
    """The planner's :class:`ModelSpec` of a loaded transformers config, or None where it has no such model."""
    from quantlab.specs import ModelSpec

    try:
        return ModelSpec.from_hf_config(hf_config.to_dict(), name=name)
    except Exception:  # an architecture the planner does not describe: no prediction, not an error
        return None


COMPONENTS = ("weights", "quant_constants", "adapters", "gradients", "optimizer", "activations", "logits_loss")


def predicted(cfg, spec, *, batch: int, seq: int, device: str, padded: bool | None = None) -> dict:
    """``pred_<component>_bytes`` for the step the lab measured (its batch x padded width), or {} with no spec."""
    if spec is None:
        return {}
    from quantlab.planner import plan

    from quantlab.specs import Loop

    try:
        pc = to_plan_config(cfg, spec, device=device, batch=batch, seq=seq, padded=padded)
        # the step ran on transformers' Trainer: its compute_loss frees the logits before backward (memory 19)
        if pc.method.is_training:
            pc = dataclasses.replace(pc, loop=Loop.TRAINER)
        if getattr(cfg, "method", None) == "qat" and pc.qat_group is None:  # its fake-quantized copies (memory 18)
            pc = dataclasses.replace(pc, qat_group=cfg.qat_group_size)
        p = plan(pc)
    except QuantlabError:
        return {}
    out = {f"pred_{c}_bytes": p.components.get(c) for c in COMPONENTS}
    out["pred_trainable_params"] = p.trainable_params
    out["pred_peak_allocated_bytes"] = p.peak_allocated_bytes
    return out
