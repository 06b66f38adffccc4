"""The lab's fine-tune configuration and the planner's :class:`~quantlab.specs.PlanConfig`, in both directions.

The validation helper runs "the lab on exactly the planned configuration": :func:`from_plan_config` turns a plan's
method / precision / optimizer / batch / seq / LoRA / checkpointing / attention fields into a
:class:`~quantlab.lab.finetune.FinetuneConfig` (packed rows of exactly ``seq`` tokens, so the measured step has
the planned batch x seq shape and, like the plan, no padding mask: :mod:`quantlab.lab.data` assumption 7), and :func:`to_plan_config` turns a lab configuration back, for the ``pred_`` columns beside
the ``meas_`` ones. Fields the one-process lab cannot run (several GPUs, ZeRO/FSDP, offload, tensor parallel,
LitGPT's stack, bottleneck adapters) are refused with a one-line reason.

Precision: the lab's ``precision`` names the training recipe; the plan splits it in three fields. The one
mapping is :data:`quantlab.lab.finetune.PRECISION_RECIPES`, read in both directions here:

======== ============================ ============= ==================
lab      PlanConfig.precision (float) compute_dtype training_precision
======== ============================ ============= ==================
fp32     fp32                         fp32          pure
bf16     bf16                         bf16          pure
fp16     fp16                         fp16          pure
amp-bf16 fp32 (master weights)        bf16          amp
amp-fp16 fp32 (master weights)        fp16          amp
======== ============================ ============= ==================

QLoRA stores the block linears in ``quant_type`` (nf4/fp4) and computes in the compute dtype above.
QAT (fake-quantized full fine-tune) is planned as the full fine-tune it is, in fp32.
"""

from __future__ import annotations

from quantlab.errors import QuantlabError

def to_plan_config(cfg, spec, *, device: str = "cpu", batch: int | None = None, seq: int | None = None,
                   padded: bool | None = None):
    """The :class:`PlanConfig` of lab config ``cfg`` on model ``spec`` (``seq`` defaults to ``cfg.max_len``)."""
    from quantlab.lab.finetune import PRECISION_RECIPES
    from quantlab.specs import PlanConfig

    storage, compute, tp = PRECISION_RECIPES[cfg.precision]
    return PlanConfig.from_dict(dict(
        method="full" if cfg.method == "qat" else cfg.method,
        precision=cfg.quant_type if cfg.method == "qlora" else storage.value, compute_dtype=compute.value,
        training_precision=tp.value, double_quant=cfg.double_quant and cfg.method == "qlora",
        optimizer=cfg.optimizer, batch=batch or cfg.batch, seq=seq or cfg.max_len, lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, lora_targets=list(cfg.lora_targets), lora_dropout=cfg.lora_dropout,
        freeze_last_layers=cfg.freeze_last_layers, freeze_modules=list(cfg.freeze_modules),
        num_virtual_tokens=cfg.num_virtual_tokens, grad_checkpointing=cfg.grad_checkpointing, attn=cfg.attn,
        grad_accum=cfg.grad_accum, device=device, kbit_upcast=cfg.kbit_upcast,
        padding_mask=(not cfg.packing) if padded is None else padded), model=spec)


def from_plan_config(pc, *, model: str = "smollm2-135m", task: str | None = "json-extract", data: str | None = None,
                     **overrides):
    """A :class:`FinetuneConfig` that runs plan config ``pc`` (packed rows of ``pc.seq`` tokens)."""
    from quantlab.lab.finetune import PRECISION_RECIPES, FinetuneConfig
    from quantlab.specs import Method, Offload, TrainingPrecision

    if not pc.method.is_training:
        raise QuantlabError("the fine-tune lab runs training configurations; this plan is for inference")
    if pc.method is Method.ADAPTER:
        raise QuantlabError("the lab has no bottleneck-adapter method (PEFT has none); plan lora, ia3 or prefix")
    if pc.num_gpus > 1 or pc.zero or pc.fsdp or pc.tp > 1:
        raise QuantlabError("the fine-tune lab runs one process; sharded plans (num-gpus, ZeRO, FSDP, tensor "
                            "parallel) run through quantlab.lab.distributed")
    if pc.offload is not Offload.NONE:
        raise QuantlabError("the fine-tune lab does not offload to CPU memory")
    if pc.library != "transformers":
        raise QuantlabError(f"the lab runs the transformers stack, not {pc.stack}")
    compute = pc.compute_dtype.value
    recipes = {(c, t): name for name, (_, c, t) in PRECISION_RECIPES.items()}
    precision = recipes.get((pc.compute_dtype, pc.training_precision))
    if precision is None:
        if pc.training_precision is TrainingPrecision.AMP and compute == "fp32":
            raise QuantlabError("AMP with an fp32 compute dtype is plain fp32 training: plan training-precision pure")
        raise QuantlabError(f"the lab does not train in {compute}")
    weights = PRECISION_RECIPES[precision][0]
    if pc.training_precision is TrainingPrecision.PURE and pc.precision.is_float and pc.precision is not weights:
        raise QuantlabError(f"pure {compute} training keeps its weights in {compute}, not {pc.precision.value}")
    if pc.method is Method.QLORA:
        quant_type = pc.precision.value
    else:
        if pc.precision.is_kbit:
            raise QuantlabError(f"the lab's {pc.method.value} trains unquantized weights, not {pc.precision.value}")
        quant_type = "nf4"
    targets = tuple(pc.lora_targets)  # ALL_LINEAR is the lab's "all-linear" spelling too
    fields = dict(method=pc.method.value, model=model, task=None if data else task, data=data,
                  lora_r=pc.lora_r, lora_alpha=pc.lora_alpha, lora_dropout=pc.lora_dropout, lora_targets=targets,
                  quant_type=quant_type, double_quant=pc.double_quant, kbit_upcast=pc.kbit_upcast,
                  freeze_last_layers=pc.freeze_last_layers, freeze_modules=tuple(pc.freeze_modules),
                  num_virtual_tokens=pc.num_virtual_tokens, optimizer=pc.optimizer.value, precision=precision,
                  batch=pc.batch, grad_accum=pc.grad_accum, max_len=pc.seq, packing=not pc.padding_mask,
                  pad_to_max_len=pc.padding_mask,
                  grad_checkpointing=pc.grad_checkpointing, attn=pc.attn.value)
    fields.update(overrides)
    return FinetuneConfig(**fields)


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

    try:
        p = plan(to_plan_config(cfg, spec, device=device, batch=batch, seq=seq, padded=padded))
    except QuantlabError:
        return {}
    out = {f"pred_{c}_bytes": p.components.get(c) for c in COMPONENTS}
    out["pred_trainable_params"] = p.trainable_params
    out["pred_peak_allocated_bytes"] = p.peak_allocated_bytes
    return out
