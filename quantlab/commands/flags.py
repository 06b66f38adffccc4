"""The configuration flags, generated from :class:`quantlab.specs.PlanConfig`: one flag per field.

Every subcommand that takes a configuration (``plan``, ``compare``, ``recommend``, ``validate``, ``lab finetune``,
``lab ptq``) calls :func:`add_config_arguments`, so a flag has one name, one parser and one default everywhere
(a command that can act on some fields only takes those: ``only=``; where a command cannot take the plan's default,
``defaults=`` gives its own, shown by ``--help``: ``lab finetune``'s ``--method qlora`` and ``--batch 8``).
The defaults are read from the dataclass (a default exists once, in ``specs.py``) and every help text ends with
it. :func:`config_dict_from_args` turns the flags the user gave into the dict :meth:`PlanConfig.from_dict` reads.

Five fields resolve later, so their flag has no value unless given:
- ``precision``, ``grad_checkpointing`` and ``lora_targets``: the recipe's (``PlanConfig.from_dict``, specs
  assumption 4): nf4 for qlora, bf16 otherwise; checkpointing on under PEFT's prepare_model_for_kbit_training
  (``--no-grad-checkpointing`` turns it off), off otherwise; PEFT's per-family LoRA targets;
- ``compute_dtype`` and ``flash_attention``: bf16 and FlashAttention, or fp16 and the math kernel on a GPU without
  bf16 (resolved by the command that knows the GPU; the dataclass default otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses

GIVEN = "_config_flags_given"  # Namespace attribute: the set of PlanConfig fields the user gave a flag for
DEFAULTS = "_config_flags_defaults"  # Namespace attribute: a command's own defaults (add_config_arguments defaults=)

# field -> (group, help without its default). Group titles are those --help shows.
_MODEL, _TRAIN, _WORK, _SHARD = "model and method", "training", "workload", "sharding"
HELP: dict[str, tuple[str, str]] = {
    "method": (_MODEL, "inference, or a fine-tune: full (all weights train: most memory), freeze (last k blocks), "
                       "lora, qlora (LoRA on 4-bit weights: least memory), adapter, prefix, prompt, ia3"),
    "precision": (_MODEL, "storage of the base weights; int8/nf4/fp4/int4 shrink weights 2-4x at some quality cost"),
    "compute_dtype": (_MODEL, "dtype of activations and matmuls"),
    "training_precision": (_MODEL, "pure: weights, grads and states in the compute dtype (least memory); amp: fp32 "
                                   "master weights and states with autocast (about twice the model-state memory, "
                                   "more stable)"),
    "double_quant": (_MODEL, "nf4/fp4: quantize the absmax constants too (saves ~0.37 bit per weight)"),
    "group_size": (_MODEL, "int4 (GPTQ/AWQ) group size: smaller = more accurate, larger"),
    "kbit_upcast": (_MODEL, "k-bit training without PEFT's prepare_model_for_kbit_training (which upcasts "
                            "embeddings, norms and lm_head to fp32)"),
    "optimizer": (_TRAIN, "adamw: 2 states per trainable weight; adamw-8bit: 4x smaller states; paged-*: states in "
                          "unified memory that can spill to CPU; sgd: none (sgd-momentum: 1); adafactor: factored; "
                          "lion: 1"),
    "lora_r": (_TRAIN, "LoRA rank (adapter size grows linearly with it; at most the smallest dimension of a "
                       "targeted linear)"),
    "lora_alpha": (_TRAIN, "LoRA alpha (scaling only; no memory effect)"),
    "lora_targets": (_TRAIN, "comma-separated module names, or all-linear (more adapters, better quality, more "
                             "memory)"),
    "lora_dropout": (_TRAIN, "LoRA dropout: > 0 regularizes but keeps a mask and a copy of the input per adapter"),
    "freeze_last_layers": (_TRAIN, "freeze: how many of the last blocks train"),
    "freeze_modules": (_TRAIN, "freeze: also train these comma-separated modules (lm_head, embed_tokens, norm)"),
    "adapter_size": (_TRAIN, "bottleneck adapter width"),
    "num_virtual_tokens": (_TRAIN, "prefix/prompt tuning: virtual tokens"),
    "grad_checkpointing": (_TRAIN, "recompute activations in backward: far less activation memory for ~30%% more "
                                   "compute; --no-grad-checkpointing turns it off"),
    "grad_accum": (_TRAIN, "micro-batches per optimizer step (no extra memory beyond keeping the gradients live "
                           "through the later micro-batches' forward)"),
    "keep_grads": (_TRAIN, "the loop keeps gradients allocated through the next forward (zero_grad("
                           "set_to_none=False)); off: Trainer's zero_grad() frees them (set_to_none=True), so a "
                           "full fine-tune's forward runs without them"),
    "loss": (_TRAIN, "the loss head: hf (transformers' loss: full logits upcast to fp32), chunked (torchtune's "
                     "CEWithChunkedOutputLoss: fp32 one chunk at a time), liger (Liger-Kernel's fused linear "
                     "cross-entropy: no logits; needs Triton, CUDA), trl-fused (TRL 1.16's fused LM head, what "
                     "SFTTrainer runs: no logits)"),
    "loop": (_TRAIN, "the loop around the loss: manual (out = model(...); out.loss.backward(): the logits stay "
                     "referenced through backward) or trainer (transformers Trainer's compute_loss returns the "
                     "loss only: the logits are freed before backward)"),
    "eval_batch": (_TRAIN, "evaluation during training (Trainer's eval_strategy): rows of its no-grad forward "
                           "(per_device_eval_batch_size); the weights and optimizer states stay allocated beside its "
                           "logits and fp32 loss, so a large eval batch can be the peak"),
    "optimizer_in_backward": (_TRAIN, "step each parameter in a post-accumulate-grad hook and free its gradient "
                                      "(one gradient alive at a time; no gradient accumulation)"),
    "packed": (_WORK, "training rows pack several documents told apart by position_ids (no padding, no mask): "
                      "transformers 5 builds a block-diagonal mask for SDPA from them, as for padded batches"),
    "torch_compile": (_TRAIN, "the model runs under torch.compile: inductor may recompute instead of saving "
                              "(not modelled: the plan is the eager one, with a note)"),
    "expandable_segments": (_SHARD, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: one growing segment per "
                                    "pool, less fragmentation in reserved memory"),
    "qat_group": (_TRAIN, "quantization-aware training: torchao int4 fake quantization of the block linears "
                               "in groups of N weights (each linear saves two weight-sized copies for backward)"),
    "batch": (_WORK, "sequences per micro-batch per GPU"),
    "seq": (_WORK, "tokens per sequence (inference: the whole context)"),
    "attn": (_WORK, "sdpa (fused, no seq^2 buffers) or eager (keeps heads x seq^2 scores: much more memory)"),
    "padding_mask": (_WORK, "training batches are padded to their longest sequence (dynamic padding) rather than "
                            "packed: the attention mask makes SDPA keep the mask and K/V repeated to every head "
                            "(GQA models)"),
    "kv_dtype": (_WORK, "KV cache dtype"),
    "flash_attention": (_WORK, "the GPU has no FlashAttention (pre-Ampere: T4, V100): SDPA on a grouped-query "
                               "model takes the math kernel"),
    "num_gpus": (_SHARD, "GPUs; memory is reported per GPU"),
    "zero": (_SHARD, "DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also weights"),
    "fsdp": (_SHARD, "FSDP instead of ZeRO (full_shard ~ ZeRO-3, shard_grad_op ~ ZeRO-2; a bare --fsdp is "
                     "full_shard)"),
    "offload": (_SHARD, "move optimizer states (or also parameters, with ZeRO-3) to CPU memory: slower steps"),
    "tp": (_SHARD, "tensor-parallel degree"),
    "device": (_SHARD, "cuda (adds CUDA context and allocator reserve) or cpu (exact tensor bytes, as the lab "
                       "counts)"),
    "stack": (_MODEL, "model code planned: transformers==5, transformers==4.57 (SDPA keeps a mask and K/V repeated "
                      "to every head in training: more activations), litgpt; transformers = the installed version"),
}
# Flag names that are not the kebab-case field name (kept from earlier releases).
FLAG_NAMES = {"padding_mask": "--padded", "kbit_upcast": "--no-kbit-upcast",
              "flash_attention": "--no-flash-attention"}
# What "default" means where the value is resolved later (see the module docstring).
DEFAULT_TEXT = {"precision": "nf4 for qlora, bf16 otherwise", "compute_dtype": "bf16; fp16 on GPUs without bf16",
                "grad_checkpointing": "on for qlora and other k-bit training under PEFT's "
                                      "prepare_model_for_kbit_training, off otherwise",
                "lora_targets": "PEFT's per-family default: q_proj,v_proj; c_attn for gpt2; qkv_proj for phi3",
                "kv_dtype": "the compute dtype", "fsdp": "off", "freeze_modules": "none",
                "flash_attention": "FlashAttention on GPUs with bf16 (sm80+)",
                "stack": "the installed transformers' major version, else transformers==5", "qat_group": "off",
                "eval_batch": "off (no evaluation during training)"}
RESOLVED_LATER = ("precision", "compute_dtype", "flash_attention", "grad_checkpointing", "lora_targets", "stack")
NEGATABLE = ("grad_checkpointing",)  # --X and --no-X (argparse.BooleanOptionalAction's spelling)
CHOICES = {"compute_dtype": ("fp32", "fp16", "bf16"), "zero": (0, 1, 2, 3), "fsdp": ("full_shard", "shard_grad_op")}
_LISTS = ("lora_targets", "freeze_modules")


def flag_name(field: str) -> str:
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


class _Given(argparse.Action):
    """Stores like argparse's own actions and records which config field the user gave."""

    def __init__(self, option_strings, dest, *, store=None, **kw):
        self.store = store  # for flags without a value (store_true/store_false): the value they store
        super().__init__(option_strings, dest, nargs=0 if store is not None else kw.pop("nargs", None), **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.store if self.store is not None else values
        if self.store is not None and len(self.option_strings) == 2 and option_string == self.option_strings[1]:
            value = not self.store  # the --no-X spelling of a negatable flag
        setattr(namespace, self.dest, value)
        given = getattr(namespace, GIVEN, None)
        if given is None:
            given = set()
            setattr(namespace, GIVEN, given)
        given.add(self.dest)


def add_config_arguments(parser: argparse.ArgumentParser, *, model_required: bool = True,
                         model_help: str | None = None, model_default: str | None = None,
                         only: tuple[str, ...] | None = None, defaults: dict | None = None,
                         choices: dict | None = None, default_text: dict | None = None,
                         helps: dict | None = None) -> None:
    """``--model`` and one flag per :class:`PlanConfig` field, in groups, defaults from the dataclass.

    ``only``: the fields a command can act on (``lab finetune`` runs one process on one model: no sharding flags),
    with the same names, parsing and defaults as everywhere else.

    ``defaults`` / ``choices``: where a command cannot take the plan's default or every choice, its own, shown by
    ``--help`` and returned by :func:`config_dict_from_args` as if given (``lab finetune``: ``--method`` defaults to
    qlora and takes the lab's methods, since the lab cannot run inference; ``--batch`` is the lab recipe's 8).
    Every other flag keeps the plan's. ``default_text``: what "default" means for a field this command resolves
    itself from what it knows (``lab finetune`` knows its device: the compute dtype left open is fp32 on a CPU);
    ``helps``: a field's help where the command's choices differ (before its default)."""
    from quantlab.specs import _ENUMS, PlanConfig, _kinds

    defaults = dict(defaults or {})
    choices_of = choices

    kinds = _kinds(PlanConfig)
    groups = {}

    def group(title):
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        return groups[title]

    group(_MODEL).add_argument(
        "--model", required=model_required and model_default is None, default=model_default,
        help=model_help or "profile name (llama-3.1-8b), alias (7b, 13b, 70b = Llama-2; 8b = Llama-3.1-8B), HF id, "
                           "or a local config.json / model folder (see 'quantlab profiles')"
                           + (f" (default: {model_default})" if model_default else ""))
    parser.set_defaults(**{GIVEN: None, DEFAULTS: defaults})
    for f in dataclasses.fields(PlanConfig):
        if f.name == "model" or (only is not None and f.name not in only):
            continue
        title, text = HELP[f.name]
        text = (helps or {}).get(f.name, text)
        kind, _ = kinds[f.name]
        default = defaults.get(f.name, f.default)
        kw: dict = {"dest": f.name, "action": _Given}
        if kind == "bool":
            kw["store"] = not default
            shown = "on" if default else "off"
        else:
            if kind in ("int", "float"):
                kw["type"] = int if kind == "int" else float
                kw["metavar"] = "N" if kind == "int" else "X"
            elif kind == "tuple":
                kw["metavar"] = "A,B"
            choices = (choices_of or {}).get(f.name) or CHOICES.get(f.name)
            if choices is None and kind in _ENUMS:
                choices = tuple(e.value for e in _ENUMS[kind])
            if choices is not None:
                kw["choices"] = choices
                kw.pop("metavar", None)
            if f.name == "fsdp":
                kw.update(nargs="?", const="full_shard")
            value = getattr(default, "value", default)
            if kind == "tuple":
                value = ",".join(default)
            shown = value
        kw["default"] = None if f.name in RESOLVED_LATER else default if kind == "bool" else value
        shown = (None if f.name in defaults else (default_text or {}).get(f.name) or DEFAULT_TEXT.get(f.name)) \
            or shown
        help_text = text if text is argparse.SUPPRESS else f"{text} (default: {shown})"
        names = [flag_name(f.name)]
        if f.name in NEGATABLE:
            names.append("--no-" + names[0][2:])
            kw["store"] = True
        group(title).add_argument(*names, help=help_text, **kw)


def given_fields(args: argparse.Namespace) -> frozenset[str]:
    """The PlanConfig fields the user gave a flag for."""
    return frozenset(getattr(args, GIVEN, None) or ())


def config_dict_from_args(args: argparse.Namespace) -> dict:
    """The :meth:`PlanConfig.from_dict`-ready dict of the flags the user gave (without "model"), in field order.

    Absent keys take the dataclass defaults in ``from_dict``; ``compute_dtype`` and ``flash_attention`` are absent
    unless given, for the command that knows the GPU to resolve. A command's own defaults
    (``add_config_arguments(defaults=...)``) are present as if given. Comma lists become lists (``all-linear`` alone
    for PEFT's all-linear); an empty ``--lora-targets`` is a one-line error.
    """
    from quantlab.specs import ALL_LINEAR, PlanConfig, SpecError

    given = given_fields(args)
    own = getattr(args, DEFAULTS, None) or {}
    out: dict = {}
    for f in dataclasses.fields(PlanConfig):
        if f.name not in given:
            if f.name in own:
                out[f.name] = own[f.name]
            continue
        v = getattr(args, f.name)
        if f.name in _LISTS:
            v = [t.strip() for t in v.split(",") if t.strip()]
            if f.name == "lora_targets":
                if not v:
                    raise SpecError("--lora-targets is empty")
                if ALL_LINEAR in v:
                    v = [ALL_LINEAR]
        out[f.name] = v
    return out


def config_dict_from_mapping(entry) -> dict:
    """The :meth:`PlanConfig.from_dict` dict of a mapping keyed by flag names without the dashes (``compute-dtype``,
    ``padded``, ``no-kbit-upcast: true``) or by field names (``compute_dtype``, ``padding_mask``,
    ``kbit_upcast: false``), as a validation matrix entry is written. Values keep their YAML/JSON types (from_dict
    checks them); a list field also takes a comma-separated string. An unknown key is a one-line SpecError."""
    from quantlab.specs import ALL_LINEAR, PlanConfig, SpecError

    keys: dict[str, tuple[str, bool]] = {}  # spelling -> (field, value inverted)
    for f in dataclasses.fields(PlanConfig):
        if f.name == "model":
            continue
        flag = flag_name(f.name)[2:]
        keys[f.name] = (f.name, False)
        keys[flag] = keys[flag.replace("-", "_")] = (f.name, flag.startswith("no-"))  # --no-X stores False
    out: dict = {}
    for k, v in entry.items():
        if str(k) not in keys:
            raise SpecError(f"unknown configuration key {k!r} (keys are the plan flags without dashes, e.g. "
                            "compute-dtype, or PlanConfig field names)")
        name, inverted = keys[str(k)]
        if inverted:
            if not isinstance(v, bool):
                raise SpecError(f"{k} must be true or false, got {v!r}")
            v = not v
        if name in _LISTS and isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        if name == "lora_targets" and isinstance(v, list) and ALL_LINEAR in v:
            v = [ALL_LINEAR]
        out[name] = v
    return out


# ---- flags a configuration ignores (specs assumption 5: a flag the method ignores is an error when given) ----
_TRAINING_ONLY = ("optimizer", "training_precision", "grad_checkpointing", "grad_accum", "keep_grads", "zero", "fsdp",
                  "offload", "padding_mask", "kbit_upcast", "loss", "loop", "optimizer_in_backward", "packed",
                  "qat_group", "eval_batch")
_BY_METHOD = {"lora_r": ("lora", "qlora"), "lora_alpha": ("lora", "qlora"), "lora_targets": ("lora", "qlora"),
              "lora_dropout": ("lora", "qlora"), "freeze_last_layers": ("freeze",), "freeze_modules": ("freeze",),
              "adapter_size": ("adapter",), "num_virtual_tokens": ("prefix", "prompt")}


def ignored_flag(cfg, given, *, any_precision: bool = False, adapters: bool = False) -> str | None:
    """Why the first flag in ``given`` (PlanConfig field names) does nothing for ``cfg``, or None. The value-level
    contradictions (inference with --zero 3, ...) are PlanConfig's own (specs assumption 5); this catches a flag
    given explicitly whose value the configuration never reads, default or not. ``any_precision``: the command
    plans several weight precisions (compare), so the precision-dependent flags apply; ``adapters``: an inference
    plan serves LoRA adapters (``--adapters K``), so the LoRA flags describe them."""
    method = cfg.method.value
    training = cfg.method.is_training
    order = {f.name: i for i, f in enumerate(dataclasses.fields(type(cfg)))}
    for f in sorted(given, key=order.__getitem__):
        if f in _TRAINING_ONLY and not training:
            return f"{flag_name(f)} applies to training; this plan is for inference (drop it, or give --method)"
        if f == "kv_dtype" and training:
            return f"{flag_name(f)} applies to inference (a training step keeps no KV cache); drop it"
        if f in _BY_METHOD and training and method not in _BY_METHOD[f]:
            return f"{flag_name(f)} applies to --method {' or '.join(_BY_METHOD[f])}, not {method} (drop it)"
        if f in _BY_METHOD and not training and not (adapters and f.startswith("lora_")):
            return f"{flag_name(f)} applies to --method {' or '.join(_BY_METHOD[f])}; this plan is for inference"
        if any_precision:
            continue
        if f == "group_size" and cfg.precision.value != "int4":
            return f"--group-size applies to int4 weights, not {cfg.precision.value} (drop it)"
        if f == "kbit_upcast" and not cfg.precision.is_kbit:
            return f"--no-kbit-upcast applies to k-bit weights (nf4, fp4, int8, int4), not {cfg.precision.value}"
    return None


def check_given(cfg, given, *, any_precision: bool = False, adapters: bool = False) -> None:
    """Raise a one-line SpecError for :func:`ignored_flag`."""
    from quantlab.specs import SpecError

    why = ignored_flag(cfg, given, any_precision=any_precision, adapters=adapters)
    if why:
        raise SpecError(why)

