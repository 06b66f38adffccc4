"""``quantlab plan``: memory per component for one configuration, and whether it fits a GPU.

The flags are :mod:`quantlab.commands.flags` (one per PlanConfig field, defaults from the dataclass), shared with
``compare``, ``recommend``, ``validate`` and the lab. :func:`config_from_args` turns them into a PlanConfig through
``PlanConfig.from_dict``, after :func:`gpu_adjusted`, the one place a GPU changes what the user left open (fp16
compute and no FlashAttention on GPUs without bf16).

``--format json`` is the whole plan (:func:`plan_document`, ``schema`` 1): the quantlab version, the model name and
how it resolved, ``config`` (``PlanConfig.to_dict()``: every field resolved, the model spec included), the GPU
(name, profile, the memory checked against, bf16, how it was detected), params, components, totals, the fit (null
without a GPU) and the notes. ``--from-json FILE`` reads that document back (:func:`read_plan_json`) and prints the
same bytes; it is the whole input, so configuration flags beside it are an error.

``--from-trainer-args FILE`` plans a transformers / TRL job before it runs: FILE is its TrainingArguments as
``args.to_json_string()`` writes them (:func:`quantlab.integrations.derive.trainer_args_fields`: batch, gradient
accumulation, checkpointing, optimizer, bf16/fp16 autocast, TRL's ``max_length`` as the sequence). The model and the
method are not in that file, so ``--model`` is required and the method flags apply; a flag that contradicts the
file is an error, and what the file cannot say is printed as a note on stderr.

Outputs are checked before anything is printed: ``--emit`` files are written before stdout, and a folder that
cannot be written is one line, exit 2; so is a plan that does not fit its ``--gpu``, unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from quantlab.errors import QuantlabError

FORMATS = ("table", "json", "csv")


def add_plan_arguments(p: argparse.ArgumentParser, *, model_required: bool = True, preference: bool = False,
                       **kw) -> None:
    """The configuration flags (``quantlab.commands.flags``: one per PlanConfig field, defaults from the
    dataclass); kept under this name for the commands that import it from here. ``preference``: ``--method``
    also takes the preference objectives, and their flags are added (:mod:`quantlab.commands.preference_flags`)."""
    from quantlab.commands.flags import add_config_arguments

    if preference:
        kw.update(preference_method_kwargs())
    add_config_arguments(p, model_required=model_required, **kw)
    if preference:
        from quantlab.commands.preference_flags import add_preference_arguments
        from quantlab.commands.variant_flags import add_variant_arguments

        add_preference_arguments(p)
        add_variant_arguments(p)


def preference_method_kwargs() -> dict:
    """``add_config_arguments`` keywords that let ``--method`` name a preference objective (TRL 1.16's trainers;
    ``ppo`` parses, then gets its one-line reason) or a PEFT variant / distillation (issue #13:
    :mod:`quantlab.commands.variant_flags`) beside the PlanConfig methods (specs.Method)."""
    from quantlab.commands.preference_flags import METHOD_HELP, PREFERENCE_METHODS
    from quantlab.commands.variant_flags import METHOD_HELP_VARIANTS, VARIANT_METHODS
    from quantlab.specs import Method

    return {"choices": {"method": tuple(m.value for m in Method) + PREFERENCE_METHODS + VARIANT_METHODS},
            "helps": {"method": METHOD_HELP + METHOD_HELP_VARIANTS}}


MODEL_HELP = ("profile name (llama-3.1-8b), alias (7b, 13b, 70b = Llama-2; 8b = Llama-3.1-8B), HF id, or a local "
              "config.json / model folder (see 'quantlab profiles') (default: none; required unless --from-json)")


def config_dict(args: argparse.Namespace) -> dict:
    """The ``PlanConfig.from_dict`` dict of the flags the user gave (without the model)."""
    from quantlab.commands.flags import config_dict_from_args

    return config_dict_from_args(args)


def gpu_adjusted(d: dict, gpu) -> dict:
    """The one place a GPU changes a configuration the user left open (``d`` is a from_dict dict).

    On a GPU without bf16 (pre-Ampere: T4, V100) the compute dtype defaults to fp16, and so do weights the
    user left at bf16; PyTorch's FlashAttention needs sm80+ as bf16 does, so SDPA there takes the math kernel
    (activations A3b). Values the user gave win. :func:`gpu_notes` says what this chose.
    """
    if gpu is None or gpu.bf16_supported:
        return d
    d = dict(d)
    if d.get("compute_dtype") is None:
        d["compute_dtype"] = "fp16"
        if d.get("precision") == "bf16" or (d.get("precision") is None and d.get("method") != "qlora"):
            d["precision"] = "fp16"
    if d.get("flash_attention") is None:
        d["flash_attention"] = False
    return d


def gpu_notes(cfg, gpu) -> list[str]:
    """What :func:`gpu_adjusted` chose, and what the GPU cannot run natively, derived from the configuration and
    the GPU (so a plan read back with --from-json says the same).

    A format the GPU has no hardware for is a note, not an error: the bytes are the same, the speed is not.
    bf16 on a GPU without it (T4, V100: ``bf16_supported: false`` in profiles/gpus) runs through PyTorch's
    emulation; fp8 weights on a GPU without FP8 tensor cores (``fp8_supported: false``: A100, A10G, T4, V100) run
    weight-only, dequantized for each matmul (vLLM's FP8 Marlin W8A16 kernel on sm80+; on older GPUs only a
    dequantizing fallback)."""
    if gpu is None:
        return []
    out = []
    if cfg.precision.value == "fp8" and not gpu.fp8_supported:
        out.append(f"{gpu.name} has no FP8 tensor cores: fp8 weights run weight-only, dequantized for each matmul "
                   + ("(vLLM's FP8 Marlin W8A16); " if gpu.bf16_supported else
                      "(vLLM's FP8 Marlin needs sm80+: only a dequantizing fallback here); ")
                   + "the memory is as planned, the speed is not FP8's")
    if gpu.bf16_supported:
        return out
    if cfg.compute_dtype.value == "fp16":
        out.append(f"{gpu.name} has no bf16: compute dtype fp16")
    elif cfg.compute_dtype.value == "bf16":
        out.append(f"{gpu.name} has no bf16 tensor cores: bf16 compute runs emulated (much slower than fp16, the "
                   "default here); the memory is as planned")
    if not cfg.flash_attention:
        out.append(f"{gpu.name} has no FlashAttention (pre-Ampere): SDPA on a grouped-query model takes the math "
                   "kernel (activations A3b)")
    return out


def config_from_args(args: argparse.Namespace, *, gpu=None, any_precision: bool = False, extra: dict | None = None):
    """Build the PlanConfig the flags describe (bad values raise QuantlabError with one line); the resolved
    model is left on ``args._resolved`` (the GPU's choices are :func:`gpu_notes` of the result).

    A flag the configuration ignores is an error when given (``flags.check_given``; ``any_precision``: the
    command plans several weight precisions), and so is a CPU plan checked against a GPU (its totals have no
    CUDA context or allocator reserve, so a verdict would be short of what the GPU needs)."""
    from quantlab.commands.flags import check_given, given_fields
    from quantlab.profiles import load_model
    from quantlab.specs import DeviceMode, PlanConfig, SpecError

    resolved = load_model(args.model)
    args._resolved = resolved
    d = config_dict(args)
    for k, v in (extra or {}).items():  # fields read from another source (--from-trainer-args); the flags win
        if d.get(k) is None:
            d[k] = v
    detected = getattr(args, "_gpu_count", 0)  # --gpu auto: plan the GPUs this machine has (hardware.resolve_auto)
    if detected:
        asked = d.get("num_gpus")
        if asked is None:
            if detected > 1:
                d["num_gpus"] = detected
        elif asked > detected:
            raise SpecError(f"--num-gpus {asked} with --gpu auto: {detected} GPU{'s' if detected > 1 else ''} "
                            "detected here; name a GPU (e.g. --gpu a100-80gb) to plan hardware this machine lacks")
    cfg = PlanConfig.from_dict(gpu_adjusted(d, gpu), model=resolved.spec)
    check_given(cfg, given_fields(args), any_precision=any_precision, adapters=bool(getattr(args, "adapters", None)))
    if gpu is not None and cfg.device is DeviceMode.CPU:
        raise SpecError(f"--device cpu counts tensor bytes without CUDA context or allocator reserve, so it cannot "
                        f"be checked against {gpu.name}; drop --device cpu or --gpu")
    return cfg


def resolve_gpu(name: str | None, args: argparse.Namespace | None = None):
    """(GPUSpec or None, message) for --gpu NAME|auto; with ``args``, ``--gpu auto`` leaves the detected count on
    ``args._gpu_count`` for :func:`config_from_args` (every detected GPU unless --num-gpus asks for fewer)."""
    if not name:
        return None, None
    if name == "auto":
        from quantlab.hardware import resolve_auto

        spec, count, msg = resolve_auto()
        if args is not None:
            args._gpu_count = count
        return spec, msg
    from quantlab.profiles import load_gpu

    return load_gpu(name), None


FROM_JSON_HELP = ("re-plan the document a 'quantlab plan --format json' wrote: its configuration, model and GPU "
                  "(with the memory it had, as --gpu auto saw it). It is the whole input, so configuration flags "
                  "(--model, --gpu, --batch, ...) with it are an error: edit the file instead. Output flags "
                  "(--format, --emit) apply.")


def register(sub) -> None:
    p = sub.add_parser(
        "plan", help="memory per component for inference or fine-tuning, and whether it fits a GPU",
        description="Plan the GPU memory of one configuration, per component (weights with their quantization "
                    "constants, KV cache, activations, logits and loss buffers, gradients, optimizer states, CUDA "
                    "context, allocator reserve), as peak allocated, peak reserved and process totals; with --gpu, "
                    "the fit verdict, the largest batch and sequence that fit, and what would make it fit.",
        epilog="Examples:\n  quantlab plan --model 13b --method qlora --gpu rtx-4090\n"
               "  quantlab plan --model 8b --method lora --batch 4 --seq 4096 --grad-checkpointing --gpu a100-80gb\n"
               "  quantlab plan --model 70b --method full --num-gpus 8 --zero 3 --gpu h100 --emit deepspeed\n"
               "  quantlab plan --model 8b --method lora --format json > p.json\n"
               "  quantlab plan --from-json p.json --format json    # the same document, byte for byte\n"
               "  quantlab plan --model 8b --method dpo --lora-r 16 --batch 2 --seq 2048 --gpu a100-80gb\n"
               "  quantlab plan --model 8b --method grpo --num-generations 8 --batch 8 --gpu h100\n"
               "  quantlab plan --model qwen2.5-0.5b --method bitfit --gpu rtx-4090\n"
               "  quantlab plan --model 8b --method ptuning --encoder-hidden-size 128 --gpu a100-80gb\n"
               "  quantlab plan --model llama-3.2-1b --method distill --teacher 8b --gpu h100\n"
               "Memory is shown in GiB (2^30 bytes); --format json gives integer bytes and every configuration\n"
               "field with its resolved value.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from quantlab.commands.flags import add_config_arguments

    add_config_arguments(p, model_required=False, model_help=MODEL_HELP, **preference_method_kwargs())
    from quantlab.commands.encoder_plan import add_encoder_arguments

    add_encoder_arguments(p)
    g = p.add_argument_group("activation offloading (quantlab/planner/offload.py)")
    g.add_argument("--offload-activations", default=None, choices=("trl", "trl-no-streams", "save-on-cpu"),
                   help="plan saved activations offloaded to pinned host memory: trl = TRL 1.16 "
                        "SFTConfig(activation_offloading=True) (streams; keeps storages saved twice in a row on "
                        "the GPU), trl-no-streams, save-on-cpu = torch.autograd.graph.save_on_cpu(pin_memory=True); "
                        "full fine-tuning of llama/mistral/qwen2/gpt2 only (offload O7) (default: none)")
    g.add_argument("--min-offload-size", type=int, default=None, metavar="BYTES",
                   help="--offload-activations: saved tensors smaller than this stay on the GPU (default: 1024, "
                        "TRL's min_offload_size)")
    from quantlab.commands.preference_flags import add_preference_arguments

    add_preference_arguments(p)
    from quantlab.commands.variant_flags import add_variant_arguments

    add_variant_arguments(p)
    from quantlab.commands.serve_flags import add_serving_arguments

    add_serving_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--gpu", default=None, metavar="NAME|auto",
                   help="check the fit on this GPU (profile name or alias), or 'auto' to detect the local one "
                        "(default: none, no fit)")
    o.add_argument("--from-json", default=None, metavar="FILE", help=FROM_JSON_HELP + " (default: none)")
    o.add_argument("--from-trainer-args", default=None, metavar="FILE",
                   help="plan a transformers/TRL job from its TrainingArguments (the JSON args.to_json_string() "
                        "writes: batch, grad accumulation, checkpointing, optim, bf16/fp16, TRL max_length); needs "
                        "--model, the method flags apply, a flag that contradicts the file is an error "
                        "(default: none)")
    o.add_argument("--format", choices=FORMATS, default="table",
                   help="table (rich), json (the whole plan, one document), csv (one row) (default: table)")
    from quantlab.emit import add_emit_argument

    add_emit_argument(p)
    p.set_defaults(func=run)


# ---- the JSON document ------------------------------------------------------------------------------------
SCHEMA = 1  # version of the --format json document; --from-json reads exactly this version


GPU_KEYS = ("gpu", "gpu_profile", "gpu_memory_bytes", "gpu_bf16_supported", "gpu_detection")
FIT_KEYS = ("fits", "margin_bytes", "max_batch", "max_seq", "min_gpus", "min_gpus_sharding", "suggestions")


def gpu_document(gpu, detection: str | None) -> dict:
    """What re-creates the GPU: its name, its profile (None for a detected device outside the catalog), the memory
    the plan was checked against (the driver's figure under --gpu auto), bf16 support and how it was found."""
    if gpu is None:
        return dict.fromkeys(GPU_KEYS) | {"gpu_detection": detection}
    from quantlab.profiles import load_gpu

    try:
        profile = load_gpu(gpu.name).name
    except QuantlabError:
        profile = None
    return {"gpu": gpu.name, "gpu_profile": profile, "gpu_memory_bytes": gpu.memory_bytes,
            "gpu_bf16_supported": gpu.bf16_supported, "gpu_detection": detection}


def plan_document(resolved_name: str, resolution: str, cfg, p, gpu, gpu_doc: dict, f, pref=None,
                  variant=None) -> dict:
    """The whole plan, one flat document (the fit keys are null without a GPU): what was asked (every
    configuration field, resolved, with the model spec), what it resolved to (model, GPU), the answer
    (components, totals, fit) and why (notes). A preference plan adds ``preference`` after ``config``
    (``PreferenceConfig.to_dict()``: the objective and its settings; ``config`` is the policy's); a variant plan
    (bitfit, dora, ptuning, distill) adds ``variant`` there (``variant_flags.Variant.to_dict()``: its name and
    settings; ``config`` is the method it plans over)."""
    from quantlab import __version__
    from quantlab.specs import config_notes, recipe

    fit_doc = dict.fromkeys(FIT_KEYS)
    if f is not None:
        fit_doc.update({k: v for k, v in f.to_dict().items() if k in FIT_KEYS})
    return {
        "schema": SCHEMA, "quantlab_version": __version__,
        "model": resolved_name, "model_resolution": resolution,
        "config": cfg.to_dict(),
        **({"preference": pref.to_dict()} if pref is not None else {}),
        **({"variant": variant.to_dict()} if variant is not None else {}),
        "recipe": recipe(cfg),
        **gpu_doc,
        "params": p.params, "active_params": p.active_params, "trainable_params": p.trainable_params,
        "components": dict(p.components),
        "peak_allocated_bytes": p.peak_allocated_bytes, "peak_reserved_bytes": p.peak_reserved_bytes,
        "process_bytes": p.process_bytes,
        **fit_doc,
        "notes": gpu_notes(cfg, gpu) + config_notes(cfg) + list(p.notes) + _trl_notes(cfg, pref),
    }


def _bad(path, what: str) -> QuantlabError:
    return QuantlabError(f"--from-json {path}: {what}")


def load_plan_document(path: str) -> dict:
    """The JSON document a ``quantlab plan --format json`` wrote (a training plan, or ``kind: serving``)."""
    try:
        from pathlib import Path

        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise _bad(path, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict) or ("config" not in doc and doc.get("kind") != "serving"):
        raise _bad(path, "not a plan document (write one with 'quantlab plan ... --format json')")
    if doc.get("schema") != SCHEMA:
        raise _bad(path, f"plan document version {doc.get('schema')!r}; this quantlab reads version {SCHEMA}")
    return doc


def read_plan_json(path: str, doc: dict | None = None):
    """(model name, resolution, PlanConfig, GPUSpec or None, GPU keys) from a plan document."""
    from quantlab.specs import PlanConfig

    doc = load_plan_document(path) if doc is None else doc
    try:
        cfg = PlanConfig.from_dict(doc["config"])
    except QuantlabError as e:
        raise _bad(path, str(e)) from None
    name, resolution = doc.get("model"), doc.get("model_resolution")
    if not isinstance(name, str) or not isinstance(resolution, str):
        raise _bad(path, "model and model_resolution must be strings")
    gpu, gpu_doc = gpu_from_document(doc, path)
    return name, resolution, cfg, gpu, gpu_doc


def preference_from_document(doc: dict, path: str):
    """The PreferenceConfig of a preference plan document (``preference`` key), or None."""
    if doc.get("preference") is None:
        return None
    from quantlab.planner.preference import PreferenceConfig

    try:
        return PreferenceConfig.from_dict(doc["preference"])
    except QuantlabError as e:
        raise _bad(path, str(e)) from None


def variant_from_document(doc: dict, path: str):
    """The Variant of a variant plan document (``variant`` key), or None."""
    if doc.get("variant") is None:
        return None
    from quantlab.commands.variant_flags import Variant

    try:
        return Variant.from_dict(doc["variant"])
    except QuantlabError as e:
        raise _bad(path, str(e)) from None


def gpu_from_document(doc: dict, path: str):
    """(GPUSpec or None, GPU keys) from the GPU keys of a plan document (:func:`gpu_document`)."""
    import dataclasses

    from quantlab.specs import GPUSpec

    det = doc.get("gpu_detection")
    if det is not None and not isinstance(det, str):
        raise _bad(path, "gpu_detection must be a string or null")
    gpu = None
    if doc.get("gpu") is not None:
        gname, mem, prof, bf16 = (doc.get(k) for k in ("gpu", "gpu_memory_bytes", "gpu_profile", "gpu_bf16_supported"))
        if not isinstance(gname, str):
            raise _bad(path, f"gpu must be a GPU name or null, got {gname!r}")
        if not isinstance(mem, int) or isinstance(mem, bool) or mem <= 0:
            raise _bad(path, f"gpu_memory_bytes must be a positive integer, got {mem!r}")
        if not isinstance(bf16, bool):
            raise _bad(path, f"gpu_bf16_supported must be true or false, got {bf16!r}")
        if prof is not None:
            from quantlab.profiles import load_gpu

            try:
                gpu = load_gpu(str(prof))
            except QuantlabError as e:
                raise _bad(path, str(e)) from None
            gpu = dataclasses.replace(gpu.with_memory(mem), name=gname)
        else:  # a detected device outside the catalog, as hardware.resolve_auto builds it
            gpu = GPUSpec(name=gname, vendor="unknown", memory_bytes=mem, memory_bandwidth_bytes_per_s=0.0, flops={},
                          bf16_supported=bf16, fp8_supported=False, interconnect="unknown",
                          interconnect_bandwidth_bytes_per_s=None, price_usd_per_hour=None)
    gpu_doc = gpu_document(gpu, det)
    if gpu is not None:
        gpu_doc["gpu_profile"] = doc.get("gpu_profile")
    return gpu, gpu_doc


def _trl_notes(cfg, pref) -> list[str]:
    from quantlab.commands.preference_flags import BF16_NOTE, TRAINER_DEFAULTS_NOTE
    from quantlab.specs import Precision, TrainingPrecision

    if pref is None:
        return []
    return ([TRAINER_DEFAULTS_NOTE] if cfg.grad_checkpointing else []) + \
        ([BF16_NOTE] if cfg.training_precision is TrainingPrecision.PURE and cfg.precision is Precision.BF16 else [])


def trainer_args_extra(args) -> dict:
    """The PlanConfig fields of ``--from-trainer-args FILE`` (a one-line error for a file that cannot be read or
    that a flag contradicts); what the file cannot say goes to stderr as notes."""
    from pathlib import Path

    from quantlab.commands.flags import config_dict_from_args, flag_name, given_fields
    from quantlab.integrations.derive import resolve_amp, trainer_args_fields

    path = args.from_trainer_args
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise QuantlabError(f"--from-trainer-args {path}: cannot read it ({getattr(e, 'strerror', None) or e})") \
            from None
    except ValueError as e:
        raise QuantlabError(f"--from-trainer-args {path}: not valid JSON ({e})") from None
    try:
        fields, amp, notes = trainer_args_fields(doc)
    except QuantlabError as e:
        raise QuantlabError(f"--from-trainer-args {path}: {e}") from None
    given = config_dict_from_args(args)
    method = given.get("method")
    weights = given.get("precision") or ("bf16" if method != "qlora" else None)
    if amp is not None and method != "qlora":
        fields.update(resolve_amp(amp, weights, method))
        if not given.get("precision"):
            notes.append(f"{amp}=true: the weights' dtype is not in TrainingArguments; planned as {weights} weights "
                         f"(give --precision fp32 for fp32 masters under {amp} autocast)")
    elif amp is not None:
        notes.append(f"{amp}=true under QLoRA: k-bit training is planned without autocast")
    if "seq" not in fields and "seq" not in given_fields(args):
        notes.append("the sequence length is not in TrainingArguments: planned at --seq (default shown in --help)")
    for k, v in fields.items():
        if k in given_fields(args) and given.get(k) is not None and given[k] != v:
            raise QuantlabError(f"{flag_name(k)} {given[k]} contradicts {path}, which sets it to {v}; drop the flag "
                                "or edit the file")
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return fields


def check_outputs(args) -> None:
    """Refuse outputs that cannot be written before anything is printed."""
    if getattr(args, "emit", None):
        from quantlab.fileio import check_writable_dir

        check_writable_dir(args.emit_dir, "--emit-dir")


def run(args) -> int:
    from quantlab.commands.flags import flag_name, given_fields
    from quantlab.fileio import write_stdout
    from quantlab.commands import serve_flags
    from quantlab.commands.preference_flags import preference_given, take_preference
    from quantlab.commands.variant_flags import take_variant, variant_given
    from quantlab.planner import fit, plan
    from quantlab.planner.preference import preference_fit, preference_plan

    from quantlab.commands.encoder_plan import encoder_given, is_encoder, run_encoder

    if not args.from_json and is_encoder(args.model):  # an encoder profile: quantlab.planner.encoder
        return run_encoder(args)
    if encoder_given(args):
        raise QuantlabError(f"--{encoder_given(args)[0].replace('_', '-')} applies to encoder models "
                            "(bert-base-uncased, roberta-base, modernbert-base, all-minilm-l6-v2), not "
                            f"{args.model or 'a --from-json plan'}")
    pref = variant = None
    if args.from_json:
        own = preference_given(args) + variant_given(args)
        if own:
            raise QuantlabError(f"--from-json takes the whole configuration from the file; drop "
                                f"--{own[0].replace('_', '-')} (or edit the file)")
    else:
        variant = take_variant(args)  # bitfit|dora|ptuning|distill: args.method becomes the method it plans over
        pref = take_preference(args)  # a preference --method: args.method becomes the policy's (--policy)
    if variant is not None and getattr(args, "emit", None):
        raise QuantlabError(f"--emit writes LoRA and full fine-tuning launch files only; it has no recipe for "
                            f"{variant.name} yet (drop --emit)")
    if (pref is not None or variant is not None) and serve_flags.serving_given(args):
        raise QuantlabError(f"--{serve_flags.serving_given(args)[0].replace('_', '-')} is a serving flag; it "
                            "applies to --method inference")
    if not args.from_json and ("method" in given_fields(args) or serve_flags.serving_given(args)):
        if args.method == "inference":  # the serving planner (generate / score / prefill, engines, splits)
            return serve_flags.run(args)
        if serve_flags.serving_given(args):
            raise QuantlabError(f"--{serve_flags.serving_given(args)[0].replace('_', '-')} is a serving flag; it "
                                "applies to --method inference")
    if args.from_json and getattr(args, "from_trainer_args", None):
        raise QuantlabError("give --from-json or --from-trainer-args, not both")
    if args.from_json:
        extra = sorted(given_fields(args))
        if args.model or args.gpu or extra:
            flag = "--model" if args.model else "--gpu" if args.gpu else flag_name(extra[0])
            raise QuantlabError(f"--from-json takes the whole configuration from the file; drop {flag} "
                                "(or edit the file)")
        doc = load_plan_document(args.from_json)
        if doc.get("kind") == "serving":
            return serve_flags.run_from_document(args, doc, args.from_json)
        name, resolution, cfg, gpu, gpu_doc = read_plan_json(args.from_json, doc)
        pref = preference_from_document(doc, args.from_json)
        variant = variant_from_document(doc, args.from_json)
        if variant is not None and getattr(args, "emit", None):
            raise QuantlabError(f"--emit has no recipe for {variant.name} yet (drop --emit)")
    else:
        if not args.model:
            if getattr(args, "from_trainer_args", None):
                raise QuantlabError("--from-trainer-args needs --model NAME: TrainingArguments do not name the model")
            raise QuantlabError("give --model NAME (or --from-json FILE); see 'quantlab profiles'")
        extra = trainer_args_extra(args) if getattr(args, "from_trainer_args", None) else None
        if pref is not None and not extra:  # what the TRL trainer does by default (preference_flags)
            from quantlab.commands.preference_flags import trainer_defaults

            extra = trainer_defaults(given_fields(args))
        gpu, gpu_msg = resolve_gpu(args.gpu, args)
        if variant is None:
            cfg = config_from_args(args, gpu=gpu, extra=extra)
        else:
            cfg = variant_config(args, variant, gpu, extra)
        name, resolution = args._resolved.name, args._resolved.resolved_from
        gpu_doc = gpu_document(gpu, gpu_msg)
    check_outputs(args)
    off = _offload_config(args, pref, variant)
    if off is not None:
        from quantlab.planner.offload import offload_fit, offload_plan

        op = offload_plan(cfg, off)  # a SpecError (one line) outside offload.py's O7 scope
        p = op.plan
        f = offload_fit(cfg, off, gpu) if gpu is not None else None
    elif variant is not None:
        from quantlab.commands.variant_flags import variant_fit, variant_plan

        p = variant_plan(cfg, variant)
        f = variant_fit(cfg, variant, gpu) if gpu is not None else None
    elif pref is None:
        p = plan(cfg)
        f = fit(cfg, gpu) if gpu is not None else None
    else:
        p = preference_plan(cfg, pref)
        f = preference_fit(cfg, pref, gpu) if gpu is not None else None
    doc = plan_document(name, resolution, cfg, p, gpu, gpu_doc, f, pref, variant)
    if off is not None:  # the host side, outside the GPU totals
        doc["offload_activations"] = {"mode": off.mode.value, "min_offload_size": off.min_offload_size,
                                      "host_pinned_bytes": op.host_pinned_bytes, "host_exact": op.host_exact,
                                      "host_collision_bound_bytes": op.host_collision_bound,
                                      "device_kept_bytes": op.device_kept_bytes}
    if args.format == "json":
        text = json.dumps(doc, indent=2) + "\n"
    elif args.format == "csv":
        text = csv_text(doc)
    else:
        text = table_text(doc, p, f)
    written = []
    if getattr(args, "emit", None):  # before stdout: a refused --emit prints nothing
        from quantlab.emit import emit
        from quantlab.units import fmt_bytes

        if f is not None and not f.fits and not getattr(args, "force", False):
            raise QuantlabError(f"the plan does not fit on {f.gpu.name} (short by {fmt_bytes(-f.margin_bytes)}): no "
                                "launch files written; change the plan, or add --force to write them anyway")

        written = emit(cfg, args.emit, args.emit_dir)
    write_stdout(text)
    if written:
        from quantlab.emit import ACCELERATE_YAML, launch_command

        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        print(f"launch with: {launch_command(os.path.join(args.emit_dir, ACCELERATE_YAML), 'your_train.py')}",
              file=sys.stderr)
    return 0


def _offload_config(args, pref, variant):
    """The OffloadConfig ``--offload-activations`` asks for, or None; one line where it cannot apply."""
    name = getattr(args, "offload_activations", None)
    if name is None:
        if getattr(args, "min_offload_size", None) is not None:
            raise QuantlabError("--min-offload-size applies with --offload-activations")
        return None
    if args.from_json:
        raise QuantlabError("--offload-activations is not kept in a plan document yet: plan from the flags")
    if pref is not None or variant is not None:
        raise QuantlabError("--offload-activations plans full fine-tuning only (offload.py O7), not "
                            f"{(pref.objective.value if pref is not None else variant.name)}")
    if getattr(args, "emit", None):
        raise QuantlabError("--emit writes no offloading setting yet: drop --emit or --offload-activations")
    from quantlab.planner.offload import OffloadConfig, mode

    kw = {} if args.min_offload_size is None else {"min_offload_size": args.min_offload_size}
    return OffloadConfig(mode(name), **kw)


def variant_config(args, variant, gpu, extra):
    """:func:`config_from_args` for a variant: a flag its base method rejects is reworded to name the variant, and
    checkpointing the recipe turned on (QLoRA's) is refused with what to give."""
    from quantlab.commands.flags import given_fields
    from quantlab.commands.variant_flags import check_recipe, reword
    from quantlab.specs import SpecError

    try:
        cfg = config_from_args(args, gpu=gpu, extra=extra)
    except SpecError as e:
        raise reword(e, variant, args.method) from None
    check_recipe(cfg, variant, given_fields(args) | set(extra or {}))  # --from-trainer-args set it: not the recipe
    return cfg


def csv_text(doc: dict) -> str:
    """One row: the model, every scalar configuration field, the GPU, the totals, per-component bytes, the fit."""
    import io

    row = {"model": doc["model"], "model_resolution": doc["model_resolution"]}
    for k, v in doc["config"].items():
        if k != "model":
            row[k] = ",".join(v) if isinstance(v, list) else v
    for k, v in (doc.get("preference") or {}).items():  # a preference plan: the objective and its settings
        row[f"preference_{k}"] = v["name"] if isinstance(v, dict) else v
    for k, v in (doc.get("variant") or {}).items():  # a variant plan: its name and settings (the teacher's name)
        row[f"variant_{k}"] = v["name"] if isinstance(v, dict) else v
    row.update(gpu=doc["gpu"], gpu_memory_bytes=doc["gpu_memory_bytes"], params=doc["params"],
               active_params=doc["active_params"], trainable_params=doc["trainable_params"])
    row.update({f"{k}_bytes": v for k, v in doc["components"].items()})
    row.update(peak_allocated_bytes=doc["peak_allocated_bytes"], peak_reserved_bytes=doc["peak_reserved_bytes"],
               process_bytes=doc["process_bytes"])
    row.update({k: doc[k] for k in FIT_KEYS if k != "suggestions"})
    buf = io.StringIO()
    import csv

    w = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    w.writeheader()
    w.writerow(row)
    return buf.getvalue()


def table_text(doc: dict, p, f) -> str:
    from rich.table import Table

    from quantlab.fileio import render_text
    from quantlab.units import fmt_bytes, fmt_count

    out = []
    c = p.config
    what = c.method.value + ("" if not c.method.is_training else f" ({c.training_precision.value}, {c.optimizer.value})")
    if doc.get("preference"):
        pr = doc["preference"]
        what = f"{pr['objective']} (TRL 1.16) on a {what} policy"
    variant = doc.get("variant")
    if variant:
        from quantlab.commands.variant_flags import Variant

        what = f"{Variant.from_dict(variant).describe()} over {what}"
    both = " (student and teacher)" if variant and variant["name"] == "distill" else ""
    out.append(f"[bold]{doc['model_resolution']}[/]: {fmt_count(p.params)} parameters{both}"
               + (f", {fmt_count(p.trainable_params)} trainable" if c.method.is_training else "")
               + (f", {fmt_count(p.active_params)} active per token" if p.active_params != p.params else ""))
    out.append(f"{what}; weights {c.precision.value}{' + double quant' if c.double_quant else ''}, compute "
               f"{c.compute_dtype.value}; batch {c.batch} x seq {c.seq}; {c.attn.value}"
               + ("; gradient checkpointing" if c.grad_checkpointing else "")
               + (f"; {c.num_gpus} GPUs" + (f", ZeRO-{c.zero}" if c.zero else "") + (f", FSDP {c.fsdp}" if c.fsdp else "")
                  + (f", TP {c.tp}" if c.tp > 1 else "") if c.num_gpus > 1 else "")
               + ("" if c.device.value == "cuda" else "; CPU (no CUDA context or reserve)"))
    out.append(f"recipe: {doc['recipe']}")
    t = Table(title="Memory per GPU (GiB = 2^30 bytes)", title_justify="left")
    t.add_column("component", overflow="fold")
    t.add_column("GiB", justify="right", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("share", justify="right", no_wrap=True)
    total = max(p.process_bytes, 1)
    for name, v in doc["components"].items():
        if v:
            t.add_row(name, fmt_bytes(v).split()[0], f"{v:,}", f"{100 * v / total:.1f}%")
    t.add_section()
    for label, v in (("peak allocated", p.peak_allocated_bytes), ("peak reserved", p.peak_reserved_bytes),
                     ("process (nvidia-smi)", p.process_bytes)):
        t.add_row(f"[bold]{label}[/]", f"[bold]{fmt_bytes(v).split()[0]}[/]", f"{v:,}", "")
    out.append(t)
    if doc["gpu_detection"]:
        out.append(doc["gpu_detection"])
    if f is not None:
        gs = f.gpu
        if f.fits:
            out.append(f"[green bold]FITS[/] on {gs.name} ({fmt_bytes(gs.memory_bytes)}): margin "
                       f"{fmt_bytes(f.margin_bytes)}")
        else:
            out.append(f"[red bold]DOES NOT FIT[/] on {gs.name} ({fmt_bytes(gs.memory_bytes)}): short by "
                       f"{fmt_bytes(-f.margin_bytes)}")
        if variant:  # peft_methods plans the variants on one GPU only
            fewest = ("1" if f.min_gpus else f"not planned: {variant['name']} is planned on one GPU only (no ZeRO, "
                      "FSDP or tensor parallelism)")
        else:
            fewest = (f"{f.min_gpus} ({f.min_gpus_sharding})" if f.min_gpus else
                      "no count up to 512 helps (sharding does not shrink per-GPU activations)")
        out.append(f"largest batch that fits: {f.max_batch or 'none'} (at seq {c.seq}); longest sequence: "
                   f"{f.max_seq or 'none'} (at batch {c.batch}); fewest {gs.name}: " + fewest)
        if f.suggestions:
            out.append("single changes that make it fit:")
            for text, b in f.suggestions:
                out.append(f"  - {text}: {fmt_bytes(b)}")
    for n in doc["notes"]:
        out.append(f"[dim]note: {n}[/]")
    return render_text(*out)
