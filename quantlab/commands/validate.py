"""``quantlab validate``: run the lab on exactly the configuration the planner planned, compare per component.

One configuration takes the configuration flags of ``quantlab plan`` (:func:`quantlab.commands.flags.add_config_arguments`), plus
``--weights`` and ``--scale`` (how the lab builds the model); a matrix file (``--matrix``) lists many, each entry
the same flags as keys. The comparison itself is :mod:`quantlab.validate`.

Matrix file (YAML or JSON)::

    scales:                       # named scale-downs: HF config.json overrides of a profile
      llama-small: {num_hidden_layers: 2, hidden_size: 256, intermediate_size: 1024, vocab_size: 4096}
    defaults: {batch: 2, seq: 64} # applied to every entry (an entry's own keys win)
    include: [more.yaml]          # optional: further matrix files (relative to this one), their own scales and
                                  # defaults; ids are unique across them
    configurations:
      - {id: llama-lora-bf16, model: llama-3.2-1b, scale: llama-small, method: lora, precision: bf16,
         compute-dtype: bf16}

Keys are plan flags without the dashes (``compute-dtype``, ``padded``, ``no-kbit-upcast: true``) or PlanConfig field
names (``compute_dtype``, ``padding_mask``, ``kbit_upcast: false``), read by
:func:`quantlab.commands.flags.config_dict_from_mapping` into :meth:`PlanConfig.from_dict`; lists may also be
comma-separated strings (``lora-targets: q_proj,v_proj``); ``scale`` is a name under ``scales`` or a mapping;
``weights`` is ``random`` (default) or ``pretrained`` (the embedded smollm2-135m only). The serving flags of
``quantlab plan --method inference`` (``mode``, ``new-tokens``, ``prompt-tokens``, ``concurrency``, ``cache``,
``greedy``, ``adapters``, ``merged``, ...; :func:`quantlab.commands.serve_flags.add_serving_arguments`) make an
inference entry a serving one, planned by :mod:`quantlab.planner.serving` (``batch`` is the concurrency and
``seq`` the whole context, prompt plus new tokens, as there)::

    - {id: smollm2-generate-c4, model: smollm2-135m, weights: pretrained, precision: fp32, compute-dtype: fp32,
       mode: generate, batch: 4, seq: 64, new-tokens: 8}

Issue #13's methods take ``quantlab plan``'s names and flags (:mod:`quantlab.commands.variant_flags`,
:mod:`quantlab.commands.preference_flags`): ``method: bitfit | dora | ptuning | distill`` with ``encoder-hidden-size``,
``encoder-type``, ``encoder-num-layers``, ``teacher``, ``distill-beta``, plus ``teacher-scale`` (the teacher's
config.json overrides, as ``scale`` is the student's); ``method: dpo | orpo | simpo | kto | reward`` with ``policy``
(lora, full), ``reference`` (dpo, kto), ``beta`` (not reward) (``batch`` is pairs, KTO's completions, and ``seq`` the
trainer's max_length; the row is planned for the step measured); ``method: grpo`` with ``num-generations``,
``max-completion-length``, ``beta``, ``num-iterations``, ``steps-per-generation`` (``batch`` is completions per
step, ``seq`` prompt + completion; :mod:`quantlab.validate_grpo`). They are
measured by their own lab code (:mod:`quantlab.validate` assumption 13). ``method: adapter`` (bottleneck adapters,
``adapter-size``, ``keep-grads: true``) is the planned method itself, measured by the same step over the lab's
plain-torch adapter (assumption 14)::

    - {id: llama-ptuning-mlp-fp32, method: ptuning, model: llama-3.2-1b, scale: llama-3.2-1b/16,
       num-virtual-tokens: 20, encoder-hidden-size: 128, precision: fp32, compute-dtype: fp32, keep-grads: true}

An entry whose ``model`` names an encoder profile (``profiles/encoders/``: bert-base-uncased, roberta-base,
modernbert-base, all-minilm-l6-v2) is an encoder row (profiles/validation/encoder-matrix.yaml): the keys of
``quantlab plan --model ENCODER`` (``head``, ``num-labels``, ``train-last-k``, ``batch``, ``seq``) plus
``precision`` (fp32, bf16) and ``padded``, measured by the lab's encoder step and planned by the encoder planner
(:mod:`quantlab.validate_encoder`); the file's ``defaults`` apply to it where they are encoder keys::

    - {id: bert-seqcls-k2-fp32, model: bert-base-uncased, scale: bert-base/12, head: seq-cls, num-labels: 6,
       train-last-k: 2}

``expect: {component: error}`` marks a known miss (profiles/validation/known-misses.yaml): the row keeps its targets
and is reported as a miss; the error it was measured at is shown beside it (``expected_errors``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

from quantlab.errors import QuantlabError

FORMATS = ("table", "json", "csv", "markdown")
SUMMARY_KEYS = ("component", "configurations", "mean_abs_error", "worst_error", "worst_id", "worst_under",
                "worst_under_id", "target", "ok")
ROW_COLUMNS = ("id", "model", "method", "precision", "compute_dtype", "training_precision", "optimizer", "batch", "seq",
               "attn", "grad_checkpointing")


def register(sub) -> None:
    from quantlab.commands.plan import add_plan_arguments
    from quantlab.commands.serve_flags import add_serving_arguments

    p = sub.add_parser(
        "validate", help="run the lab on a planned configuration and compare predicted with measured, per component",
        description="Build the planned model (the embedded SmolLM2-135M, or random weights from a profile's "
                    "architecture, optionally scaled down), run one training step (or an inference prefill) on a "
                    "synthetic batch of exactly batch x seq tokens, and compare the planner with what the lab "
                    "measured, component by component: weights, quantization constants, adapters, gradients, "
                    "optimizer states, saved activations, logits and loss buffers, KV cache, and the peak of live "
                    "tensor bytes (allocated). On a CPU the planner plans with device=cpu (no CUDA context or "
                    "allocator reserve) and tensor bytes are counted exactly: targets are 2% per component and 3% "
                    "for the total. On a GPU the CUDA allocator and NVML are read (allocated 3%, reserved and "
                    "process 6%); --device is not read: the lab plans for where it runs (cuda when torch sees a "
                    "GPU, else cpu). Exit status: 0 when every configuration meets its targets, 1 when one misses, 2 "
                    "for bad input.",
        epilog="Examples:\n"
               "  quantlab validate --model smollm2-135m --method lora --precision fp32 --compute-dtype fp32 "
               "--batch 1 --seq 64\n"
               "  quantlab validate --model llama-3.2-1b --scale num_hidden_layers=2,hidden_size=256,"
               "intermediate_size=1024,vocab_size=4096 --method qlora --compute-dtype fp32 --batch 2 --seq 64\n"
               "  quantlab validate --model smollm2-135m --method inference --precision fp32 --compute-dtype fp32 "
               "--mode generate --seq 64 --new-tokens 8 --concurrency 4 --adapters 2\n"
               "  quantlab validate --model llama-3.2-1b --scale num_hidden_layers=2,vocab_size=4096 --method ptuning "
               "--num-virtual-tokens 20 --encoder-hidden-size 128 --precision fp32 --compute-dtype fp32 --keep-grads --batch 2 --seq 64\n"
               "  quantlab validate --model gpt2 --scale n_layer=2,n_embd=256,n_head=4,vocab_size=4096 --method adapter "
               "--adapter-size 16 --precision fp32 --compute-dtype fp32 --keep-grads --batch 2 --seq 64\n"
               "  quantlab validate --matrix profiles/validation/matrix.yaml --out reports/validation-cpu "
               "--append-measurements\n"
               "A serving flag (--mode, --new-tokens, --concurrency, --cache, --greedy, --adapters, --merged, ...) makes "
               "an inference configuration a serving one: the lab runs transformers' generate (or the score forward) "
               "and the serving planner predicts it (quantlab/validate.py assumption 9).\n"
               "Random weights are fine for memory (quality needs real ones). Errors are (predicted - measured) / "
               "measured: negative means the planner under-predicts, the dangerous direction.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(p, model_required=False, preference=True)  # --method also names the issue #13 methods
    add_serving_arguments(p)
    lab = p.add_argument_group("how the lab builds the model")
    lab.add_argument("--weights", choices=("random", "pretrained"), default=None,
                     help="random: weights drawn from the profile's architecture (any profile; fine for memory); "
                          "pretrained: the embedded smollm2-135m (default for it)")
    lab.add_argument("--scale", default="", metavar="KEY=VALUE,...",
                     help="config.json overrides that scale the architecture down so it runs on a CPU, e.g. "
                          "num_hidden_layers=2,vocab_size=4096; the planner gets the same scaled spec")
    lab.add_argument("--teacher-scale", default=None, metavar="KEY=VALUE,...",
                     help="--method distill: config.json overrides that scale the teacher's architecture down, as "
                          "--scale does the student's (default: none)")
    lab.add_argument("--matrix", default=None, metavar="FILE",
                     help="a YAML/JSON file of configurations (see profiles/validation/matrix.yaml) instead of "
                          "--model and the plan flags")
    lab.add_argument("--only", default="", metavar="ID,...", help="with --matrix: run only these configuration ids")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=FORMATS, default="table",
                   help="table (rich, per configuration and the summary), json, csv or markdown on stdout")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="also write validation.md, validation.csv, validation.json and validation.png (predicted vs "
                        "measured with the y = x line) there, atomically")
    o.add_argument("--append-measurements", nargs="?", const="reports/measurements.jsonl", default=None,
                   metavar="PATH", help="append the measured total of each configuration that met its targets to PATH "
                                        "(default reports/measurements.jsonl) in the ground-truth format, so "
                                        "tests/test_groundtruth.py checks it too (a re-run replaces its rows)")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    p.set_defaults(func=run)


# ---- configurations ----------------------------------------------------------------------------------------

def _parse_scale(text: str) -> dict:
    out = {}
    for part in (x.strip() for x in text.split(",") if x.strip()):
        if "=" not in part:
            raise QuantlabError(f"--scale: {part!r} is not KEY=VALUE (e.g. num_hidden_layers=2)")
        k, v = (s.strip() for s in part.split("=", 1))
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def case_from_flags(args, *, id: str, weights: str | None, scale: dict):
    """The :class:`quantlab.validate.Case` of parsed configuration flags (serving flags make a serving case)."""
    from quantlab.commands.flags import config_dict_from_args
    from quantlab.commands.serve_flags import SERVE_DESTS, serving_given

    if not args.model:
        raise QuantlabError("give --model (and the plan flags) or --matrix FILE")
    serve = None
    if serving_given(args):
        serve = {d: getattr(args, d) for d in SERVE_DESTS if getattr(args, d, None) is not None}
    config = config_dict_from_args(args)
    # the issue #13 methods: the same reading as a matrix entry's (method_values_from_mapping)
    entry = {"method": args.method, "precision": getattr(args, "precision", None)}
    entry.update({d: getattr(args, d) for d in VARIANT_KEYS + PREFERENCE_ALL if getattr(args, d, None) is not None})
    if getattr(args, "teacher_scale", None):
        entry["teacher_scale"] = _parse_scale(args.teacher_scale)
    method_kw, rest = method_values_from_mapping(entry)
    if method_kw:
        config["method"] = rest["method"]
        for k, v in rest.items():
            if k not in ("method", "precision") and k not in config and k.replace("-", "_") not in VARIANT_KEYS \
                    + PREFERENCE_ALL + ("teacher_scale",):
                config[k] = v  # the trainer's defaults (DPO: gradient checkpointing on)
    return case_from_dict(args.model, config, id=id, weights=weights, scale=scale, serve=serve, **method_kw)


# ---- the issue #13 methods: PEFT variants, distillation (variant_flags) and DPO (preference_flags) -----------
# matrix key -> destination of the quantlab plan flag (commands/variant_flags.py, commands/preference_flags.py);
# teacher-scale is the lab's own: config.json overrides of the teacher's profile, as ``scale`` is the student's
VARIANT_KEYS = ("encoder_hidden_size", "encoder_type", "encoder_num_layers", "teacher", "teacher_precision",
                "distill_beta", "student_method")
PREFERENCE_KEYS = ("policy", "reference", "beta")  # the preference flags the lab runs (TRL's trainers)
PREFERENCE_ALL = ("policy", "reference", "num_generations", "max_completion_length", "beta", "num_labels",
                  "reward_model", "num_iterations", "steps_per_generation")
# the GRPO lab's flags (quantlab/lab/grpo.py through quantlab/validate_grpo.py)
GRPO_KEYS = ("policy", "num_generations", "max_completion_length", "beta", "num_iterations", "steps_per_generation")
# quantlab/lab/preference.py OBJECTIVES, and GRPO (quantlab/lab/grpo.py)
LAB_PREFERENCE = ("dpo", "orpo", "simpo", "kto", "reward", "grpo")
LAB_METHODS = LAB_PREFERENCE + ("bitfit", "dora", "ptuning", "distill")


def method_values_from_mapping(entry: dict) -> tuple[dict, dict]:
    """Split a matrix entry whose ``method`` is a PEFT variant (bitfit, dora, ptuning, distill) or DPO into
    (``case_from_dict`` keywords: ``variant``, ``given``, ``teacher``, the rest, with ``method`` set to the
    PlanConfig method it plans over). The names and flags are ``quantlab plan``'s: parsed by
    :func:`quantlab.commands.variant_flags.take_variant` and :func:`quantlab.commands.preference_flags.take_preference`
    (their one-line SpecErrors pass through). Any other entry comes back unchanged, and a variant key in it is a
    one-line error as for ``quantlab plan``."""
    from quantlab.commands.preference_flags import PREFERENCE_METHODS, take_preference, trainer_defaults
    from quantlab.commands.variant_flags import VARIANTS, take_variant
    from quantlab.specs import SpecError

    ns = argparse.Namespace(**{k: None for k in VARIANT_KEYS + PREFERENCE_ALL})
    rest, teacher_scale = {}, None
    for k, v in entry.items():
        d = str(k).replace("-", "_")
        if d == "teacher_scale":
            teacher_scale = v
        elif d in VARIANT_KEYS or d in PREFERENCE_ALL:
            setattr(ns, d, v)
        else:
            rest[k] = v
    method = rest.get("method")
    ns.method = method
    ns.precision = rest.get("precision")
    if method in PREFERENCE_METHODS and method not in LAB_PREFERENCE:
        raise SpecError(f"method {method}: the lab measures {', '.join(LAB_PREFERENCE)} (TRL's trainers, "
                        f"quantlab/lab/preference.py); {method} is planned only (quantlab plan --method {method})")
    if method not in LAB_METHODS:
        if teacher_scale is not None:
            raise SpecError("teacher-scale applies to method distill")
        take_variant(ns)  # a variant key here: one line naming the methods it applies to
        take_preference(ns)
        return {}, entry
    for d in ("num_generations", "max_completion_length", "num_iterations", "steps_per_generation"):
        v = getattr(ns, d)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise SpecError(f"{d.replace('_', '-')} must be an integer, got {v!r}")
    for d in PREFERENCE_ALL:
        if d not in (GRPO_KEYS if method == "grpo" else PREFERENCE_KEYS) and getattr(ns, d) is not None:
            raise SpecError(f"{d.replace('_', '-')} does not apply to {method} (the lab runs TRL's trainer with its "
                            "defaults)")
    for d in ("encoder_hidden_size", "encoder_num_layers"):
        v = getattr(ns, d)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise SpecError(f"{d.replace('_', '-')} must be an integer, got {v!r}")
    if ns.distill_beta is not None and (isinstance(ns.distill_beta, bool)
                                        or not isinstance(ns.distill_beta, (int, float))):
        raise SpecError(f"distill-beta must be a number, got {ns.distill_beta!r}")
    if ns.beta is not None and (isinstance(ns.beta, bool) or not isinstance(ns.beta, (int, float))):
        raise SpecError(f"beta must be a number, got {ns.beta!r}")
    for d in ("teacher", "teacher_precision", "student_method", "policy", "reference", "encoder_type"):
        v = getattr(ns, d)
        if v is not None and not isinstance(v, str):
            raise SpecError(f"{d.replace('_', '-')} must be a name, got {v!r}")
    from quantlab.commands.preference_flags import POLICY_METHODS
    from quantlab.commands.variant_flags import ENCODER_TYPES, STUDENT_METHODS
    from quantlab.planner.preference import Reference
    from quantlab.specs import Precision

    choices = {"encoder_type": ENCODER_TYPES, "teacher_precision": tuple(p.value for p in Precision),
               "student_method": STUDENT_METHODS, "policy": POLICY_METHODS,
               "reference": tuple(r.value for r in Reference)}
    for d, ok in choices.items():
        v = getattr(ns, d)
        if v is not None and v not in ok:
            raise SpecError(f"{d.replace('_', '-')} must be one of {', '.join(ok)}, got {v!r}")
    if teacher_scale is not None and method != "distill":
        raise SpecError(f"teacher-scale applies to method distill, not {method}")
    kw: dict = {}
    if method in VARIANTS:
        v = take_variant(ns)
        if method == "distill" and teacher_scale:
            import dataclasses as dc

            from quantlab.groundtruth import model_spec

            if not isinstance(teacher_scale, dict):
                raise SpecError("teacher-scale must be a mapping of config.json keys")
            v = dc.replace(v, distill=dc.replace(v.distill, teacher=model_spec(ns.teacher, teacher_scale)))
        kw["variant"] = v
        if method == "distill":
            from quantlab.profiles import load_model

            kw["teacher"] = (load_model(ns.teacher).name, tuple(sorted((teacher_scale or {}).items())))
    else:
        kw["variant"] = take_preference(ns)
    rest["method"] = ns.method
    if method in LAB_PREFERENCE:  # TRL's trainer configs default gradient checkpointing on (preference_flags)
        for k, val in trainer_defaults({str(k).replace("-", "_") for k in rest}).items():
            rest[k] = val
    return kw, rest


def case_from_dict(model: str, config: dict, *, id: str, weights: str | None, scale: dict, serve: dict | None = None,
                   variant=None, teacher: tuple | None = None):
    """The :class:`quantlab.validate.Case` of a :meth:`PlanConfig.from_dict` dict on profile ``model`` (the spec
    scaled by ``scale``; the lab decides the device: cuda when torch sees a GPU, else cpu). ``serve``: serving
    values by destination (:func:`quantlab.commands.serve_flags.serve_config_from_values`), for an inference plan.

    A key the configuration ignores is a one-line error, as for ``quantlab plan`` (``flags.check_given``), and so
    is a sequence beyond the model's ``max_position_embeddings``: the lab cannot run it (learned position
    embeddings have no row for it; the planner only warns, serving S9)."""
    from quantlab.commands.flags import check_given
    from quantlab.groundtruth import model_spec
    from quantlab.lab.measure import cuda_available
    from quantlab.profiles import load_model
    from quantlab.specs import DeviceMode, Method, PlanConfig, SpecError
    from quantlab.validate import Case, lab_refusal

    if not isinstance(scale, dict):
        raise QuantlabError(f"{id}: scale must be a mapping of config.json keys")
    resolved = load_model(model)
    spec = model_spec(resolved.name, scale) if scale else resolved.spec
    pc = PlanConfig.from_dict(config, model=spec)
    s = None
    if serve is not None:
        if pc.method is not Method.INFERENCE:
            flag = "--" + next(iter(serve)).replace("_", "-")
            raise SpecError(f"{flag} is a serving flag; it applies to --method inference")
        from quantlab.commands.serve_flags import serve_config_from_values

        s = serve_config_from_values(pc, serve, frozenset(config))
        pc = s.plan
    check_given(pc, frozenset(config), adapters=bool(s is not None and (s.adapters or s.merged)))
    if variant is not None:
        from quantlab.validate import method_refusal

        why = method_refusal(pc, variant)
        if why:
            raise SpecError(why)
    why = lab_refusal(pc, s)  # before the device is set: a sharded plan is refused as such
    if why:
        raise QuantlabError(why)
    positions = pc.seq + (pc.num_virtual_tokens if pc.method is Method.PROMPT else 0)
    if positions > spec.max_position_embeddings:
        raise SpecError(f"seq {positions} is beyond {spec.name}'s max_position_embeddings "
                        f"({spec.max_position_embeddings}): the lab cannot run it; give --seq at most "
                        f"{spec.max_position_embeddings - (positions - pc.seq)}")
    pc = dataclasses.replace(pc, device=DeviceMode.CUDA if cuda_available() else DeviceMode.CPU)
    if s is not None:
        s = dataclasses.replace(s, plan=pc)
    hf = dict(resolved.config)
    hf.update(scale)
    weights = weights or ("pretrained" if resolved.name == "smollm2-135m" and not scale else "random")
    if (variant is not None or pc.method is Method.ADAPTER) and weights == "pretrained":
        raise SpecError("the issue #13 methods are validated on random weights at a scale (give a scale)")
    return Case(id, pc, resolved.name, weights, tuple(sorted(scale.items())), hf, serve=s, variant=variant,
                teacher=teacher)


def _expect(v, where: str) -> tuple:
    """A matrix entry's ``expect``: {component: the error measured when it was found to miss} (a known miss,
    profiles/validation/known-misses.yaml); kept on the case and shown in its row, the target unchanged."""
    from quantlab.validate import CPU_TOTALS, GPU_TOTALS, TENSOR_COMPONENTS

    if v is None:
        return ()
    names = TENSOR_COMPONENTS + GPU_TOTALS + CPU_TOTALS
    if not isinstance(v, dict) or not v:
        raise QuantlabError(f"{where}: expect must be a mapping of component: error, e.g. {{activations: -0.11}}")
    for k, e in v.items():
        if k not in names:
            raise QuantlabError(f"{where}: expect names an unknown component {k!r} (known: {', '.join(names)})")
        if isinstance(e, bool) or not isinstance(e, (int, float)):
            raise QuantlabError(f"{where}: expect {k} must be a number (the error as a fraction), got {e!r}")
    return tuple(sorted((str(k), float(e)) for k, e in v.items()))


def load_matrix(path: str | Path, only: tuple[str, ...] = ()) -> list:
    """The cases of a matrix file and of the files it includes (module docstring); a bad entry is a one-line
    QuantlabError naming it."""
    cases, seen = _load_matrix(Path(path), only, set(), ())
    if only:
        missing = [x for x in only if x not in seen]
        if missing:
            raise QuantlabError(f"{path}: no configuration with id {', '.join(missing)}")
    return cases


def _load_matrix(p: Path, only: tuple[str, ...], seen: set, chain: tuple) -> tuple[list, set]:
    """One matrix file's cases, then those of its ``include:`` files (paths relative to it, each with its own
    scales and defaults); ``seen`` is every id so far (an id is unique across the files)."""
    if p.resolve() in chain:
        raise QuantlabError(f"{p}: includes itself (through {' -> '.join(str(c) for c in chain)})")
    if not p.is_file():
        raise QuantlabError(f"matrix file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise their own types: one line either way
        raise QuantlabError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} "
                            f"({str(e).splitlines()[0][:160]})") from e
    if isinstance(doc, list):
        doc = {"configurations": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("configurations"), list) or not doc["configurations"]:
        raise QuantlabError(f"{p}: expected a list of configurations (or a mapping with 'configurations:')")
    scales = doc.get("scales") or {}
    defaults = doc.get("defaults") or {}
    from quantlab.commands.encoder_plan import is_encoder
    from quantlab.commands.flags import config_dict_from_mapping
    from quantlab.commands.serve_flags import serving_values_from_mapping
    from quantlab.validate_encoder import KEYS as ENCODER_KEYS
    from quantlab.validate_encoder import case_from_mapping as encoder_case

    includes = doc.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(x, str) and x for x in includes):
        raise QuantlabError(f"{p}: include must be a file name or a list of them (relative to {p.parent})")
    cases = []
    for i, raw in enumerate(doc["configurations"], 1):
        if not isinstance(raw, dict):
            raise QuantlabError(f"{p}: configuration {i} is not a mapping")
        entry = {**defaults, **raw}
        id = str(entry.pop("id", f"config-{i}"))
        where = f"{p}: configuration {id}"
        if id in seen:
            raise QuantlabError(f"{where}: duplicate id")
        seen.add(id)
        if isinstance(raw.get("model"), str) and is_encoder(raw["model"]):  # quantlab/validate_encoder.py
            enc_defaults = {k: v for k, v in defaults.items() if str(k).replace("_", "-") in ENCODER_KEYS}
            try:
                case = encoder_case({**raw, "id": id}, scales=scales, defaults=enc_defaults, index=i)
            except QuantlabError as e:
                raise QuantlabError(f"{p}: {e}") from e
            if not only or id in only:
                cases.append(case)
            continue
        weights = entry.pop("weights", None)
        expect = _expect(entry.pop("expect", None), where)
        scale = entry.pop("scale", None) or {}
        if isinstance(scale, str):
            if scale not in scales:
                raise QuantlabError(f"{where}: unknown scale {scale!r} (known: {', '.join(scales) or 'none'})")
            scale = scales[scale]
        if only and id not in only:
            continue
        try:
            model = entry.pop("model", None)
            if not isinstance(model, str) or not model:
                raise QuantlabError("give model: a profile name")
            method_kw, entry = method_values_from_mapping(entry)
            serve, entry = serving_values_from_mapping(entry)
            case = case_from_dict(model, config_dict_from_mapping(entry), id=id, weights=weights,
                                  scale=dict(scale), serve=serve or None, **method_kw)
            cases.append(dataclasses.replace(case, expect=expect) if expect else case)
        except QuantlabError as e:
            raise QuantlabError(f"{where}: {e}") from e
    for inc in includes:
        more, seen = _load_matrix(p.parent / inc, only, seen, chain + (p.resolve(),))
        cases.extend(more)
    return cases, seen


# ---- running -----------------------------------------------------------------------------------------------

def run(args) -> int:
    from quantlab.validate import lab_refusal

    if args.matrix:
        cases = load_matrix(args.matrix, tuple(x.strip() for x in args.only.split(",") if x.strip()))
    else:
        cases = [case_from_flags(args, id="cli", weights=args.weights, scale=_parse_scale(args.scale))]
    from quantlab.validate_encoder import EncoderCase

    for c in cases:  # refuse before anything runs
        if isinstance(c, EncoderCase):  # refused at load (quantlab/validate_encoder.py)
            continue
        why = lab_refusal(c.config, c.serve)
        if why:
            raise QuantlabError(f"{c.id}: {why}")
    rows = run_cases(cases, progress=args.progress)
    return report(rows, fmt=args.format, out=args.out, append=args.append_measurements)


def run_cases(cases, *, progress: bool = False, readings=None) -> list[dict]:
    import contextlib

    from quantlab.lab.progress import track
    from quantlab.validate import validate
    from quantlab.validate_encoder import EncoderCase, run_encoder_case

    def one(c):
        return run_encoder_case(c) if isinstance(c, EncoderCase) else validate(c, readings=readings)

    # libraries imported on the way (deepspeed, gptqmodel via peft) print banners on stdout: keep stdout for the
    # report (--format json/csv must parse)
    with contextlib.redirect_stdout(sys.stderr):
        return [one(c) for c in track(cases, "validating", total=len(cases), enabled=progress)]


def report(rows: list[dict], *, fmt: str = "table", out: str | None = None, append: str | None = None,
           stream=None) -> int:
    from quantlab.validate import summarize

    stream = stream or sys.stdout
    summary = summarize(rows)
    if fmt == "json":
        json.dump({"configurations": rows, "summary": summary}, stream, indent=2, default=str)
        print(file=stream)
    elif fmt == "csv":
        stream.write(rows_csv(rows))
    elif fmt == "markdown":
        stream.write(markdown(rows, summary))
    else:
        render_table(rows, summary)
    if out:
        for path in write_outputs(rows, summary, Path(out)):
            print(f"wrote {path}", file=sys.stderr)
    if append:
        n = append_measurements(rows, Path(append))
        missed = sum(1 for r in rows if not r.get("ok"))
        print(f"appended {n} measurement rows to {append}" + (f" ({missed} missed a target and are kept with "
              "their error)" if missed else ""), file=sys.stderr)
    return 0 if all(s["ok"] is not False for s in summary) else 1  # ok None: shown, not a target


# ---- rendering -----------------------------------------------------------------------------------------------

def _pct(e) -> str:
    return "" if e is None else f"{100 * e:+.2f}%"


def _flat(row: dict) -> dict:
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}


def rows_csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(_flat(r))
    return buf.getvalue()


def _components(rows):
    """Components and totals that some configuration measured as non-zero (or predicted so)."""
    from quantlab.validate import GPU_TOTALS, TENSOR_COMPONENTS

    return [k for k in TENSOR_COMPONENTS + GPU_TOTALS
            if any(r.get(f"meas_{k}_bytes") is not None and (r.get(f"meas_{k}_bytes") or r.get(f"pred_{k}_bytes"))
                   for r in rows)]


def summary_markdown(summary: list[dict]) -> str:
    lines = ["| component | configurations | mean abs error | worst error | worst under-prediction | target | ok |",
             "|---|---:|---:|---:|---:|---:|:-:|"]
    for s in summary:
        under = _pct(s["worst_under"]) + (f" ({s['worst_under_id']})" if s["worst_under_id"] else "")
        lines.append(f"| {s['component']} | {s['configurations']} | {100 * s['mean_abs_error']:.3f}% | "
                     f"{_pct(s['worst_error'])} ({s['worst_id']}) | {under} | {'-' if s['target'] is None else format(100 * s['target'], '.0f') + '%'} | "
                     f"{'-' if s['ok'] is None else 'yes' if s['ok'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], summary: list[dict]) -> str:
    comps = _components(rows)
    head = "| id | method | precision | " + " | ".join(comps) + " | ok |"
    lines = ["## Summary", "", summary_markdown(summary), "## Per configuration",
             "", "Each cell: predicted / measured bytes (error).", "", head,
             "|" + "---|" * (len(comps) + 4)]
    for r in rows:
        cells = []
        for k in comps:
            m = r.get(f"meas_{k}_bytes")
            cells.append("" if m is None else f"{r.get(f'pred_{k}_bytes'):,} / {m:,} ({_pct(r.get(f'err_{k}'))})")
        prec = r["precision"] + ("+dq" if r.get("double_quant") else "")
        lines.append(f"| {r['id']} | {r['method']} | {prec} | " + " | ".join(cells) + f" | {'yes' if r['ok'] else 'no'} |")
    return "\n".join(lines) + "\n"


def render_table(rows: list[dict], summary: list[dict]) -> None:
    from rich.table import Table

    from quantlab.units import console

    con = console()
    comps = _components(rows)
    t = Table(title="Predicted vs measured (error = (pred - meas) / meas)")
    t.add_column("id")
    t.add_column("method")
    for k in comps:
        t.add_column(k, justify="right")
    t.add_column("ok")
    for r in rows:
        t.add_row(r["id"], r["method"], *[_pct(r.get(f"err_{k}")) for k in comps], "yes" if r["ok"] else "[red]no[/]")
    con.print(t)
    s = Table(title="Summary")
    for k in ("component", "configs", "mean |err|", "worst", "worst under-prediction", "target", "ok"):
        s.add_column(k)
    for x in summary:
        s.add_row(x["component"], str(x["configurations"]), f"{100 * x['mean_abs_error']:.3f}%",
                  f"{_pct(x['worst_error'])} ({x['worst_id']})",
                  _pct(x["worst_under"]) + (f" ({x['worst_under_id']})" if x["worst_under_id"] else ""),
                  "-" if x["target"] is None else f"{100 * x['target']:.0f}%", "-" if x["ok"] is None else "yes" if x["ok"] else "[red]NO[/]")
    con.print(s)


def plot_png(rows: list[dict], path: Path) -> Path:
    """Predicted vs measured: one point per configuration and component, log-log, with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantlab.fileio import atomic_write_bytes

    comps = _components(rows)
    fig, ax = plt.subplots(figsize=(7, 6))
    lo, hi = float("inf"), 0.0
    for k in comps:
        pts = [(r[f"meas_{k}_bytes"], r[f"pred_{k}_bytes"]) for r in rows
               if r.get(f"meas_{k}_bytes") and r.get(f"pred_{k}_bytes")]
        if not pts:
            continue
        xs, ys = zip(*pts)
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        ax.scatter(xs, ys, s=30 if k == "allocated" else 14, marker="D" if k == "allocated" else "o", label=k,
                   alpha=0.8)
    if hi > 0:
        ax.plot([lo / 1.5, hi * 1.5], [lo / 1.5, hi * 1.5], "k--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured bytes")
    ax.set_ylabel("predicted bytes")
    ax.set_title(f"quantlab validate: {len(rows)} configurations")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_outputs(rows: list[dict], summary: list[dict], out: Path) -> list[Path]:
    from quantlab.fileio import atomic_write_text

    out = Path(out)
    return [atomic_write_text(out / "validation.md", markdown(rows, summary)),
            atomic_write_text(out / "validation.csv", rows_csv(rows)),
            atomic_write_text(out / "validation.json", json.dumps({"configurations": rows, "summary": summary},
                                                                  indent=2, default=str) + "\n"),
            plot_png(rows, out / "validation.png")]


def measurement_source(device: str) -> str:
    import platform
    import subprocess

    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except Exception:
        commit = "unknown"
    import os

    where = f"{os.cpu_count()}-core CPU" if device == "cpu" else "GPU"
    libs = []
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            libs.append(f"{name} {__import__(name).__version__}")
        except Exception:
            pass
    return (f"quantlab validate on {where} ({platform.machine()}), torch {torch.__version__}, {', '.join(libs)}; "
            f"git commit {commit}; peak live tensor bytes (profiler allocator events) over one training step or "
            "prefill; random weights unless the model is the embedded smollm2-135m")


def append_measurements(rows: list[dict], path: Path) -> int:
    """Append (or replace, by id) one ground-truth row per measured configuration, pass or fail; returns how many.

    Each row keeps what validation found (``validation``: ``ok``, the planned and measured allocated bytes, the
    error, and the components that missed their target), so the accuracy the ground-truth test reports over this
    file counts the misses too (a file of passes only is biased toward agreement)."""
    from quantlab.fileio import atomic_write_text
    from quantlab.validate import measurement_row

    new = {}
    for r in rows:
        m = measurement_row(r, source=measurement_source(r.get("device", "cpu")))
        if m is not None:
            m["validation"] = validation_result(r)
            new[m["id"]] = m
    old = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    if json.loads(line).get("id") in new:
                        continue  # a re-run replaces its own row
                except json.JSONDecodeError:
                    pass
                old.append(line)
    atomic_write_text(path, "\n".join(old + [json.dumps(m) for m in new.values()]) + "\n")
    return len(new)


def validation_result(r: dict) -> dict:
    """What validation found for one configuration, as a measurement row keeps it."""
    from quantlab.validate import missed_targets

    return {"ok": bool(r.get("ok")), "planned_bytes": r.get("pred_allocated_bytes"),
            "measured_bytes": r.get("meas_allocated_bytes"), "error": r.get("err_allocated"),
            "missed": missed_targets(r)}
