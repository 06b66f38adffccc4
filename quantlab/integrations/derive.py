"""A user's job, read back as the planner's :class:`~quantlab.specs.PlanConfig`.

Two sources, one vocabulary:

- :func:`trainer_args_fields` reads a ``TrainingArguments`` dict (``args.to_dict()``, or the file
  ``to_json_string`` writes; TRL's ``SFTConfig``/``DPOConfig`` are TrainingArguments with more keys). Standard
  library only: ``quantlab plan --from-trainer-args`` uses it without importing torch.
- :func:`derive` reads the live model (architecture from ``model.config``; the method from PEFT's state and the
  frozen parameters; k-bit weights from bitsandbytes' modules), the optimizer and the batch it sees.

Each says what it could not derive, in words, instead of guessing silently. Assumptions (library files as
installed here: transformers 5.24, peft 0.21.2, bitsandbytes 0.50.2, trl 1.16):

1. ``per_device_train_batch_size`` is the batch of one forward; ``gradient_accumulation_steps`` is ``grad_accum``;
   ``gradient_checkpointing`` is the plan's checkpointing. The sequence length of a run is what the collator
   pads to, which the arguments do not say: the live job reads it from the batch, the command takes ``--seq``
   (or TRL's ``max_length`` when the file has one).
2. ``bf16=True`` / ``fp16=True`` is accelerate's autocast (``Accelerator(mixed_precision=...)``): over fp32 weights
   that is the planner's ``amp`` (fp32 masters, bf16/fp16 compute); over weights already in that dtype autocast
   changes nothing the planner counts, so it is ``pure`` training in that dtype. Neither flag: pure training in
   the weights' dtype. Under QLoRA the compute dtype is bitsandbytes' ``bnb_4bit_compute_dtype``.
3. ``optim`` names map onto the planner's optimizers (:data:`OPTIMIZERS`; transformers 5.24
   ``training_args.py`` ``OptimizerNames``); the fused and foreach torch AdamW hold the same states (the planned
   step transient is the foreach one). A name outside the map is reported, and the plan says AdamW.
4. PEFT methods by ``peft_config[active].peft_type``: LORA (QLoRA when bitsandbytes' ``Linear4bit`` modules hold
   the base weights), IA3, PREFIX_TUNING, PROMPT_TUNING. Without PEFT every parameter training is ``full``; a
   model whose trainable parameters are exactly its last k decoder blocks (plus named top-level modules) is
   ``freeze``. Anything else is reported as not derived.
5. An attention mask with a zero in it is a padded batch (``padding_mask``): transformers drops an all-ones mask
   before SDPA (``masking_utils.py``), so only a padded batch builds the mask the planner counts.
6. The loss (``loss``, memory.py assumptions 6 and 14): TRL 1.16's ``SFTTrainer.__init__`` always patches the
   (base) model with ``add_fused_lm_head(..., outputs=("log_probs", "entropy", "is_top1"))`` (``trl/trainer/
   sft_trainer.py``; ``trl/trainer/utils.py`` binds ``_fused_forward`` as ``model.forward``, wrapped with the model forward's name:
   its code object says what it is), and ``compute_loss``
   runs ``model(**inputs, fused_lm_head=True)`` unless a ``compute_loss_func`` is given or label smoothing is on
   with ``loss_type="nll"`` (both compute the loss from the full logits of an extra forward). A model whose
   ``forward`` is TRL's ``_fused_forward`` is planned with ``loss=trl-fused``; with label smoothing it is planned
   with the HF loss and the fused forward is reported as not modelled.
7. A TrainingArguments dict is a transformers ``Trainer`` job (TRL's trainers are Trainers): the plan's ``loop`` is
   ``trainer`` (memory.py assumption 19: ``compute_loss`` returns the loss only, the logits are freed before
   backward). :func:`derive` without arguments (``quantlab.track``, a hand-written loop) keeps ``manual``.
8. ``eval_strategy`` other than ``"no"`` is evaluation during training (memory.py assumption 20): the plan's
   ``eval_batch`` is ``per_device_eval_batch_size`` (transformers 5.24's default, 8, when the dict has none). The
   arguments do not name an eval dataset, but ``Trainer.__init__`` refuses an eval strategy without one
   (``trainer.py`` line 682), so a Trainer that runs with these arguments evaluates. The derivation says so in a
   note.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from quantlab.errors import QuantlabError

OPTIMIZERS = {  # TrainingArguments.optim -> the planner's optimizer (assumption 3)
    "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw",
    "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit",
    "paged_adamw_32bit": "paged-adamw", "paged_adamw_8bit": "paged-adamw-8bit",
    "sgd": "sgd", "adafactor": "adafactor", "lion_32bit": "lion",
}


EVAL_BATCH_DEFAULT = 8  # TrainingArguments.per_device_eval_batch_size's default (transformers 5.24, assumption 8)


@dataclass(frozen=True)
class Derived:
    """The plan of a live job: ``fields`` (PlanConfig.from_dict keys), ``config`` (None when no plan could be built)
    and ``underived`` (what could not be read from the job, one line each)."""

    fields: Mapping
    config: object = None
    underived: tuple = ()
    name: str | None = None


def _positive_int(d: Mapping, key: str):
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise QuantlabError(f"{key} must be a positive integer, got {v!r}")
    return v


def trainer_args_fields(d: Mapping) -> tuple[dict, str | None, list[str]]:
    """(PlanConfig fields, autocast dtype or None, what was not derived) from a TrainingArguments dict
    (assumptions 1-3, 7, 8). The autocast dtype is resolved against the weights' dtype by :func:`resolve_amp`."""
    if not isinstance(d, Mapping):
        raise QuantlabError("TrainingArguments must be a JSON object (as TrainingArguments.to_json_string writes)")
    if "per_device_train_batch_size" not in d and "output_dir" not in d:
        raise QuantlabError("not a TrainingArguments file: it has neither per_device_train_batch_size nor "
                            "output_dir (write one with args.to_json_string())")
    out: dict = {"loop": "trainer"}  # assumption 7
    underived: list[str] = []
    b = _positive_int(d, "per_device_train_batch_size")
    if b is not None:
        out["batch"] = b
    ga = _positive_int(d, "gradient_accumulation_steps")
    if ga is not None:
        out["grad_accum"] = ga
    if d.get("gradient_checkpointing") is not None:
        if not isinstance(d["gradient_checkpointing"], bool):
            raise QuantlabError(f"gradient_checkpointing must be true or false, got {d['gradient_checkpointing']!r}")
        out["grad_checkpointing"] = d["gradient_checkpointing"]
    ml = _positive_int(d, "max_length")  # TRL's SFTConfig / DPOConfig
    if ml is not None:
        out["seq"] = ml
    optim = d.get("optim")
    if optim is not None:
        name = str(optim).split(".")[-1].lower()  # an enum repr (OptimizerNames.ADAMW_TORCH) or its value
        if name in OPTIMIZERS:
            out["optimizer"] = OPTIMIZERS[name]
        else:
            underived.append(f"optimizer {optim!r} is not one the planner models (planned as AdamW)")
    bf16, fp16 = bool(d.get("bf16")), bool(d.get("fp16"))
    if bf16 and fp16:
        raise QuantlabError("bf16 and fp16 are both true: TrainingArguments accepts only one")
    amp = "bf16" if bf16 else "fp16" if fp16 else None
    if d.get("deepspeed"):
        underived.append("a DeepSpeed config is named: its ZeRO stage is not read (give --zero)")
    fsdp = d.get("fsdp")
    if fsdp:
        kinds = fsdp if isinstance(fsdp, list) else str(fsdp).split()
        kind = next((k for k in kinds if k in ("full_shard", "shard_grad_op")), None)
        if kind:
            out["fsdp"] = kind
        else:
            underived.append(f"fsdp {fsdp!r} is not a sharding the planner models")
    strategy = d.get("eval_strategy")
    if strategy is not None and str(strategy).split(".")[-1].lower() != "no":  # assumption 8
        eb = _positive_int(d, "per_device_eval_batch_size")
        out["eval_batch"] = EVAL_BATCH_DEFAULT if eb is None else eb
        underived.append(f"eval_strategy {str(strategy).split('.')[-1].lower()}: evaluation during training is "
                         f"planned, a no-grad forward over per_device_eval_batch_size = {out['eval_batch']} rows "
                         "beside the weights and optimizer states (Trainer requires an eval_dataset for it)")
    if d.get("packing") or d.get("padding_free"):
        underived.append("TRL packing / padding-free batches: one row of packed tokens with position ids; the plan "
                         "takes --batch x --seq as given")
    return out, amp, underived


def resolve_amp(amp: str | None, weights: str, method: str | None = None) -> dict:
    """The planner's precision fields for accelerate's autocast ``amp`` over weights in dtype ``weights``
    (assumption 2)."""
    if method == "qlora":
        return {}  # k-bit training is planned without autocast; the compute dtype is bitsandbytes'
    if amp is None:
        return {"training_precision": "pure", "compute_dtype": weights, "precision": weights}
    if weights == "fp32":
        return {"training_precision": "amp", "compute_dtype": amp, "precision": "fp32"}
    return {"training_precision": "pure", "compute_dtype": weights, "precision": weights}


# ---- the live model (torch) ---------------------------------------------------------------------------------

_DTYPES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def _dtype_name(dt) -> str | None:
    return _DTYPES.get(str(dt))


def base_model(model):
    """The transformers model under PEFT (``get_base_model``) and accelerate's wrappers (``module``)."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list:
    """The decoder blocks: transformers' ``GradientCheckpointingLayer`` modules (every family here in 5.x)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - transformers 4.4x
        GradientCheckpointingLayer = ()
    layers = [m for m in model.modules() if GradientCheckpointingLayer and isinstance(m, GradientCheckpointingLayer)]
    if layers:
        return layers
    for m in model.modules():  # a ModuleList of identical blocks
        import torch

        if isinstance(m, torch.nn.ModuleList) and len(m) > 1 and len({type(x) for x in m}) == 1:
            return list(m)
    return []


def _kbit(model) -> tuple[str | None, bool, str | None]:
    """(k-bit precision or None, double quant, bitsandbytes compute dtype) from the modules holding the weights."""
    for m in model.modules():
        cls = type(m).__name__
        if cls == "Linear4bit":
            qs = getattr(m.weight, "quant_state", None)
            qt = getattr(qs, "quant_type", None) or getattr(m.weight, "quant_type", "nf4")
            nested = bool(getattr(qs, "nested", False))
            return qt, nested, _dtype_name(getattr(m, "compute_dtype", None))
        if cls == "Linear8bitLt":
            return "int8", False, None
    return None, False, None


def _weights_dtype(model) -> str | None:
    """The dtype holding most of the frozen and trainable base weights (adapters excluded)."""
    by: dict = {}
    for n, p in model.named_parameters():
        if "lora_" in n or "prompt_encoder" in n or "ia3_" in n:
            continue
        d = _dtype_name(p.dtype)
        if d:
            by[d] = by.get(d, 0) + p.numel()
    return max(by, key=by.get) if by else None


def _checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _method_fields(model, base, underived: list) -> dict:
    """Method and its settings from PEFT's state or the frozen parameters (assumption 4)."""
    pcfg = getattr(model, "peft_config", None)
    if pcfg:
        active = getattr(model, "active_adapter", None)
        active = active[0] if isinstance(active, (list, tuple)) else active
        c = pcfg.get(active) if active in pcfg else next(iter(pcfg.values()))
        kind = str(getattr(c.peft_type, "value", c.peft_type)).upper()
        if len(pcfg) > 1:
            underived.append(f"{len(pcfg)} PEFT adapters are loaded; the plan is for the active one ({active})")
        if kind == "LORA":
            t = c.target_modules
            targets = ["all-linear"] if t == "all-linear" else sorted(t) if not isinstance(t, str) else None
            out = {"method": "lora", "lora_r": int(c.r), "lora_alpha": int(c.lora_alpha),
                   "lora_dropout": float(c.lora_dropout)}
            if targets is None:
                underived.append(f"LoRA target_modules {t!r} is a regular expression; planned on PEFT's defaults")
            else:
                out["lora_targets"] = targets
            for attr, what in (("use_dora", "DoRA"), ("rank_pattern", "per-module ranks"),
                               ("modules_to_save", "modules_to_save"), ("layers_to_transform", "layers_to_transform")):
                if getattr(c, attr, None):
                    underived.append(f"LoRA {what} is set; the planner models plain LoRA on every target")
            if getattr(c, "bias", "none") != "none":
                underived.append(f"LoRA bias={c.bias!r}: trainable biases are not planned")
            return out
        if kind == "IA3":
            return {"method": "ia3"}
        if kind == "PREFIX_TUNING":
            return {"method": "prefix", "num_virtual_tokens": int(c.num_virtual_tokens)}
        if kind == "PROMPT_TUNING":
            return {"method": "prompt", "num_virtual_tokens": int(c.num_virtual_tokens)}
        underived.append(f"PEFT method {kind} is not one the planner models")
        return {}
    params = list(model.named_parameters())
    trainable = [n for n, p in params if p.requires_grad]
    if not trainable:
        raise QuantlabError("the model has no trainable parameter")
    if len(trainable) == len(params):
        return {"method": "full"}
    layers = decoder_layers(base)
    train_layer = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
    k = 0
    while k < len(layers) and train_layer[len(layers) - 1 - k]:
        k += 1
    whole = all(all(p.requires_grad for p in layer.parameters()) for layer in layers[len(layers) - k:])
    inner = {id(p) for layer in layers for p in layer.parameters()}
    others = sorted({n.split(".")[-2] for n, p in params if p.requires_grad and id(p) not in inner and "." in n})
    if any(train_layer[: len(layers) - k]) or not whole:
        underived.append("the trainable parameters are not the last k whole decoder blocks; planned as freeze of the "
                         f"last {k}")
    out = {"method": "freeze", "freeze_last_layers": k}
    if others:
        out["freeze_modules"] = others
    return out


def _loss(base, args: Mapping | None) -> tuple[str | None, str | None]:
    """(the ``loss`` field, what is not modelled) of a model TRL patched with its fused LM head (assumption 6)."""
    func = getattr(getattr(base, "forward", None), "__func__", None)
    code = getattr(func, "__code__", None)  # (functools.wraps gives it the model forward's name and module)
    if code is None or code.co_name != "_fused_forward" or "trl" not in code.co_filename.replace("\\", "/").split("/"):
        return None, None
    if args is not None and (args.get("label_smoothing_factor") or 0) > 0 and args.get("loss_type", "nll") == "nll":
        return None, ("TRL computes a label-smoothed loss from the full logits and runs the fused head under no_grad "
                      "for its metrics: that extra forward is not planned")
    outputs = None
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
        if name == "outputs":
            outputs = tuple(cell.cell_contents)
    if outputs is not None and set(outputs) != {"log_probs", "entropy", "is_top1"}:
        return "trl-fused", (f"TRL's fused head returns {', '.join(outputs)}: planned with SFTTrainer's outputs "
                             "(log_probs, entropy, is_top1)")
    return "trl-fused", None


def _optimizer_name(opt, underived: list) -> str | None:
    """The planner's optimizer of a live optimizer (an accelerate wrapper is looked through)."""
    inner = getattr(opt, "optimizer", opt)
    cls = type(inner).__name__
    if cls in ("AdamW", "Adam"):
        return "adamw"
    if cls == "SGD":
        return "sgd-momentum" if any(g.get("momentum") for g in inner.param_groups) else "sgd"
    names = {"AdamW8bit": "adamw-8bit", "PagedAdamW": "paged-adamw", "PagedAdamW32bit": "paged-adamw",
             "PagedAdamW8bit": "paged-adamw-8bit", "Adafactor": "adafactor", "Lion": "lion", "Lion32bit": "lion"}
    if cls in names:
        return names[cls]
    underived.append(f"optimizer {cls} is not one the planner models (planned as AdamW)")
    return None


def derive(model, *, args=None, optimizer=None, batch: int | None = None, seq: int | None = None,
           padded: bool | None = None, amp: str | None = None, grad_accum: int | None = None) -> Derived:
    """The :class:`Derived` plan of a live job: ``model`` (transformers, optionally under PEFT), ``args``
    (TrainingArguments, or its dict), ``optimizer`` (read when ``args`` has no ``optim``), and the batch seen
    (``padded``: its attention mask has a zero, assumption 5). Without ``args``: ``amp`` is the autocast dtype the
    forward ran under and ``grad_accum`` the forwards counted per optimizer step."""
    from quantlab.specs import ModelSpec, PlanConfig

    underived: list[str] = []
    base = base_model(model)
    cfg = getattr(base, "config", None)
    if cfg is None:
        return Derived({}, None, ("the model has no transformers config: no architecture to plan",))
    name = getattr(cfg, "_name_or_path", None) or getattr(cfg, "model_type", None)
    if name and os.path.isdir(name):  # a local folder: its name, not the whole path
        name = os.path.basename(os.path.normpath(name))
    try:
        spec = ModelSpec.from_hf_config(cfg.to_dict(), name=name or None)
    except QuantlabError as e:
        return Derived({}, None, (f"architecture: {e}",), name)
    fields: dict = {}
    if grad_accum is not None:
        fields["grad_accum"] = int(grad_accum)
    if args is not None:
        ad = args if isinstance(args, Mapping) else args.to_dict()
        f, amp, und = trainer_args_fields(ad)
        f.pop("seq", None)  # the live batch says the length (assumption 1)
        fields.update(f)
        underived += und
    try:
        fields.update(_method_fields(model, base, underived))
    except QuantlabError as e:
        return Derived(fields, None, tuple(underived) + (str(e),), name)
    kbit, double, bnb_compute = _kbit(base)
    method = fields.get("method")
    if kbit in ("nf4", "fp4"):
        if method == "lora":
            fields["method"] = method = "qlora"
        fields.update(precision=kbit, double_quant=double)
        if bnb_compute:
            fields["compute_dtype"] = bnb_compute
        up = [p for n, p in base.named_parameters() if p.dtype.is_floating_point and "lora_" not in n
              and type(p).__name__ != "Params4bit"]
        fields["kbit_upcast"] = bool(up) and all(str(p.dtype) == "torch.float32" for p in up)
    elif kbit == "int8":
        fields["precision"] = "int8"
        underived.append("LLM.int8 weights under training: the lab has no recipe; planned as given")
    else:
        w = _weights_dtype(base)
        if w is None:
            underived.append("the weights' dtype is not fp32, bf16 or fp16")
        else:
            fields.update(resolve_amp(amp, w, method))
            if amp and w != "fp32" and amp != w:
                underived.append(f"autocast {amp} over {w} weights is not a recipe the planner models")
    if "grad_checkpointing" not in fields:
        fields["grad_checkpointing"] = _checkpointing(base)
    elif fields["grad_checkpointing"] != _checkpointing(base) and _checkpointing(base):
        fields["grad_checkpointing"] = True
    if "optimizer" not in fields and optimizer is not None:
        o = _optimizer_name(optimizer, underived)
        if o:
            fields["optimizer"] = o
    attn = getattr(cfg, "_attn_implementation", None) or "sdpa"
    if attn in ("eager", "sdpa"):
        fields["attn"] = attn
    else:
        fields["attn"] = "sdpa"
        underived.append(f"attention {attn!r} planned as SDPA (no seq x seq tensor kept either)")
    loss, why = _loss(base, ad if args is not None else None)
    if loss:
        fields["loss"] = loss
    if why:
        underived.append(why)
    if fields.get("eval_batch") and fields.get("loss", "hf") != "hf":  # memory.py assumption 20 is the HF loss's
        del fields["eval_batch"]
        underived.append(f"evaluation during training with the {fields['loss']} loss is not planned (memory.py "
                         "assumption 20 models transformers' loss; TRL's trainers evaluate through the fused head)")
    if batch is not None:
        fields["batch"] = int(batch)
    if seq is not None:
        fields["seq"] = int(seq)
    else:
        underived.append("no batch seen yet: sequence length not known")
    if padded is not None:
        fields["padding_mask"] = bool(padded)
    try:
        dev = next(model.parameters()).device.type
    except StopIteration:
        dev = "cpu"
    fields["device"] = "cuda" if dev == "cuda" else "cpu"
    if dev not in ("cuda", "cpu"):
        underived.append(f"device {dev} planned as a CPU (tensor bytes, no allocator model)")
    try:
        pc = PlanConfig.from_dict(fields, model=spec)
    except QuantlabError as e:
        return Derived(fields, None, tuple(underived) + (f"no plan: {e}",), name)
    return Derived(fields, pc, tuple(underived), name)
