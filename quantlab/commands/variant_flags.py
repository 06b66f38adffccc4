"""Flags of the PEFT variants and distillation (``--method bitfit|dora|ptuning|distill``, issue #13), kept apart
from the PlanConfig flags (:mod:`quantlab.commands.flags`) as the preference flags are
(:mod:`quantlab.commands.preference_flags`).

The four are *modes* over existing PlanConfig methods (:mod:`quantlab.planner.peft_methods`): bitfit plans over
``full``, dora over ``lora`` (``qlora`` on nf4/fp4 weights: QDoRA), ptuning over ``prompt`` and distill over the
student's method (``--student-method``, default full). :func:`take_variant` puts that method in ``args.method`` so
every PlanConfig rule (``flags.check_given``, the recipe) sees an ordinary fine-tune, and returns a
:class:`Variant` that :func:`variant_plan` and :func:`variant_fit` plan. Every variant flag has no value unless
given (its default is shown in --help), so a flag the variant ignores is a one-line error."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from quantlab.specs import Method, ModelSpec, PlanConfig, Precision, SpecError

# variant -> the PlanConfig method it plans over (distill: the student's, --student-method)
VARIANTS = {"bitfit": Method.FULL.value, "dora": Method.LORA.value, "ptuning": Method.PROMPT.value, "distill": None}
VARIANT_METHODS = tuple(VARIANTS)
STUDENT_METHODS = tuple(m.value for m in Method if m.is_training)
STUDENT_DEFAULT = Method.FULL.value
# peft_methods is imported only when a variant is planned: its PTuningConfig and DistillConfig dataclasses have no
# docstring, and dataclasses then calls inspect.signature, which loads ast/dis/tokenize at every CLI start (tests/
# test_cli.py). Their defaults are mirrored here and pinned against the dataclasses by
# tests/commands/test_plan_variants.py (cliwire-patches.md 1: docstrings there would let this read them directly).
ENCODER_TYPES = ("mlp", "lstm")  # peft_methods.EncoderType
_PT = {"encoder_type": "mlp", "encoder_num_layers": 2}  # PTuningConfig defaults
_DC = {"beta": 0.5}  # DistillConfig defaults
# variant flag -> the variants it applies to
_APPLIES = {"encoder_hidden_size": ("ptuning",), "encoder_type": ("ptuning",), "encoder_num_layers": ("ptuning",),
            "teacher": ("distill",), "teacher_precision": ("distill",), "distill_beta": ("distill",),
            "student_method": ("distill",)}
METHOD_HELP_VARIANTS = ("; or a PEFT variant / distillation (issue #13): bitfit (biases only, over full), dora "
                        "(LoRA with use_dora=True; QDoRA on nf4), ptuning (PEFT's prompt encoder over prompt tuning: "
                        "needs --encoder-hidden-size), distill (TRL 1.16 GKD: needs --teacher)")


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("PEFT variants and distillation (issue #13; with --method bitfit|dora|ptuning|"
                                  "distill)")
    g.add_argument("--encoder-hidden-size", type=int, default=None, metavar="E",
                   help="ptuning: width E of PEFT's prompt encoder (required: PromptEncoderConfig has no default); "
                        "the MLP head adds 4·(h·E + E² + E·h) bytes of fp32 parameters, more for --encoder-type lstm "
                        "(default: none)")
    g.add_argument("--encoder-type", choices=ENCODER_TYPES, default=None,
                   help="ptuning: PEFT's reparameterisation (mlp, or a 2-layer bidirectional LSTM: ~10x the "
                        f"parameters) (default: {_PT['encoder_type']})")
    g.add_argument("--encoder-num-layers", type=int, default=None, metavar="N",
                   help=f"ptuning --encoder-type lstm: LSTM layers (default: {_PT['encoder_num_layers']})")
    g.add_argument("--teacher", default=None, metavar="MODEL",
                   help="distill: the teacher model (a model name as --model takes it), kept for the whole run "
                        "beside the student; same vocabulary required (GKD compares logits token by token) "
                        "(default: none; required with distill)")
    g.add_argument("--teacher-precision", choices=[p.value for p in Precision], default=None,
                   help="distill: the teacher's weights (default: the student's precision)")
    g.add_argument("--distill-beta", type=float, default=None, metavar="X",
                   help="distill: GKD's beta (0.5 generalized JSD: 15 T x vocab tensors at the loss's peak; 0 "
                        f"forward KL: 7; 1 reverse KL: 8) (default: {_DC['beta']})")
    g.add_argument("--student-method", choices=STUDENT_METHODS, default=None,
                   help=f"distill: how the student trains (TRL's GKDTrainer takes a peft_config for a LoRA student) "
                        f"(default: {STUDENT_DEFAULT})")


@dataclass(frozen=True)
class Variant:
    """A variant plan's own settings: its name and, for ptuning / distill, the peft_methods configuration."""

    name: str
    ptuning: PM.PTuningConfig | None = None
    distill: PM.DistillConfig | None = None

    def to_dict(self) -> dict:
        d: dict = {"name": self.name}
        if self.ptuning is not None:
            d.update(encoder_hidden_size=self.ptuning.encoder_hidden_size,
                     encoder_type=self.ptuning.encoder_type.value, encoder_num_layers=self.ptuning.encoder_num_layers)
        if self.distill is not None:
            tp = self.distill.teacher_precision
            d.update(teacher=self.distill.teacher.to_dict(), teacher_precision=tp.value if tp else None,
                     beta=self.distill.beta)
        return d

    @classmethod
    def from_dict(cls, d) -> "Variant":
        """The inverse of :meth:`to_dict` (a bad document is a SpecError)."""
        from quantlab.planner import peft_methods as PM

        if not isinstance(d, dict) or d.get("name") not in VARIANTS:
            raise SpecError(f"variant must name one of {', '.join(VARIANTS)}")
        name = d["name"]
        known = {"name"} | ({"encoder_hidden_size", "encoder_type", "encoder_num_layers"} if name == "ptuning" else
                            {"teacher", "teacher_precision", "beta"} if name == "distill" else set())
        bad = sorted(set(d) - known)
        if bad:
            raise SpecError(f"unknown variant key {bad[0]!r} for {name}")
        try:
            if name == "ptuning":
                return cls(name, ptuning=PM.PTuningConfig(d.get("encoder_hidden_size"),
                                                          PM.EncoderType(d.get("encoder_type")),
                                                          d.get("encoder_num_layers")))
            if name == "distill":
                tp = d.get("teacher_precision")
                beta = d.get("beta")
                if isinstance(beta, bool) or not isinstance(beta, (int, float)):
                    raise SpecError(f"variant beta must be a number, got {beta!r}")
                return cls(name, distill=PM.DistillConfig(ModelSpec.from_dict(d.get("teacher")), float(beta),
                                                          Precision(tp) if tp is not None else None))
        except ValueError as e:  # an unknown enum value
            raise SpecError(f"variant {name}: {e}") from None
        return cls(name)

    def describe(self) -> str:
        """What the table's header line calls it."""
        from quantlab.planner import peft_methods as PM

        if self.name == "bitfit":
            return "bitfit (biases only)"
        if self.name == "dora":
            return "dora (PEFT 0.21 use_dora=True)"
        if self.name == "ptuning":
            pt = self.ptuning
            layers = f", {pt.encoder_num_layers} layers" if pt.encoder_type is PM.EncoderType.LSTM else ""
            return f"ptuning (PEFT 0.21 prompt encoder: {pt.encoder_type.value}, E = {pt.encoder_hidden_size}{layers})"
        dc = self.distill
        tp = dc.teacher_precision.value if dc.teacher_precision else "the student's precision"
        return f"distill (TRL 1.16 GKD, beta {dc.beta}; teacher {dc.teacher.name} in {tp})"


def is_variant(method: str | None) -> bool:
    return method in VARIANTS


def variant_given(args: argparse.Namespace) -> list[str]:
    """The variant flags given (their dests), in declaration order."""
    return [k for k in _APPLIES if getattr(args, k, None) is not None]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def base_method(name: str, args: argparse.Namespace) -> str:
    """The PlanConfig method a variant plans over: dora on nf4/fp4 weights is QDoRA (qlora)."""
    if name == "distill":
        return getattr(args, "student_method", None) or STUDENT_DEFAULT
    if name == "dora" and getattr(args, "precision", None) in (Precision.NF4.value, Precision.FP4.value):
        return Method.QLORA.value
    return VARIANTS[name]


def variant_from_args(args: argparse.Namespace, name: str, *, strict: bool = True) -> Variant:
    """The Variant ``name`` of the parsed flags. Missing or bad values, and (``strict``) a flag the variant
    ignores, raise a one-line SpecError; without ``strict`` such a flag is left out (``compare --methods``)."""
    from quantlab.planner import peft_methods as PM

    for k in variant_given(args):
        if name not in _APPLIES[k] and strict:
            raise SpecError(f"{_flag(k)} applies to --method {' or '.join(_APPLIES[k])}, not {name} (drop it)")
    if name == "ptuning":
        E = args.encoder_hidden_size
        if E is None:
            raise SpecError("--method ptuning needs --encoder-hidden-size E (PEFT's PromptEncoderConfig has no "
                            "default)")
        etype = PM.EncoderType(args.encoder_type or _PT["encoder_type"])
        if args.encoder_num_layers is not None and etype is not PM.EncoderType.LSTM:
            raise SpecError("--encoder-num-layers applies to --encoder-type lstm (the MLP head's layers are fixed)")
        return Variant(name, ptuning=PM.PTuningConfig(E, etype, args.encoder_num_layers or _PT["encoder_num_layers"]))
    if name == "distill":
        if not args.teacher:
            raise SpecError("--method distill needs --teacher MODEL (a model name as --model takes it)")
        from quantlab.profiles import load_model

        teacher = load_model(args.teacher).spec
        tp = Precision(args.teacher_precision) if args.teacher_precision else None
        beta = _DC["beta"] if args.distill_beta is None else args.distill_beta
        return Variant(name, distill=PM.DistillConfig(teacher, beta, tp))
    return Variant(name)


def take_variant(args: argparse.Namespace) -> Variant | None:
    """The Variant a variant ``--method`` asks for, with ``args.method`` set to the method it plans over; None for
    any other method, where a variant flag is a one-line error. Call it before ``take_preference``: a preference
    flag with a variant is an error naming the variant."""
    method = getattr(args, "method", None)
    if not is_variant(method):
        given = variant_given(args)
        if given:
            raise SpecError(f"{_flag(given[0])} applies to --method {' or '.join(_APPLIES[given[0]])}, not {method}")
        return None
    from quantlab.commands.preference_flags import preference_given

    pref = preference_given(args)
    if pref:
        raise SpecError(f"{_flag(pref[0])} applies to the preference methods, not {method} (drop it)")
    v = variant_from_args(args, method)
    args.method = base_method(method, args)
    return v


def variant_for(args: argparse.Namespace, name: str) -> Variant:
    """The Variant of one ``compare --methods`` row: the flags that apply to ``name``."""
    return variant_from_args(args, name, strict=False)


def unused_variant_flag(args: argparse.Namespace, names) -> str | None:
    """``compare --methods``: why a variant flag given applies to none of the rows, or None."""
    for k in variant_given(args):
        if not set(_APPLIES[k]) & set(names):
            return f"{_flag(k)} applies to --methods {' or '.join(_APPLIES[k])}, which the list does not name (drop it)"
    return None


def reword(e: SpecError, v: Variant, cfg_method: str) -> SpecError:
    """A PlanConfig flag error of the base method, reworded to name the variant the user asked for."""
    text = str(e)
    old = f", not {cfg_method} (drop it)"
    if old in text:
        return SpecError(text.replace(old, f", not {v.name} (planned over {cfg_method}; drop it)"))
    return e


def check_recipe(cfg: PlanConfig, v: Variant, given) -> None:
    """A variant refuses gradient checkpointing (peft_methods: not measured); when the recipe turned it on (QLoRA's
    prepare_model_for_kbit_training) rather than the user, say so instead of 'drop --grad-checkpointing'."""
    if cfg.grad_checkpointing and "grad_checkpointing" not in given:
        raise SpecError(f"{v.name} with gradient checkpointing is not modelled, and the {cfg.method.value} recipe on "
                        f"{cfg.precision.value} weights turns it on (prepare_model_for_kbit_training); give "
                        "--no-grad-checkpointing to plan it without")


def variant_plan(cfg: PlanConfig, v: Variant):
    """The peft_methods plan of ``v`` over ``cfg`` (its one-line SpecErrors pass through)."""
    from quantlab.planner import peft_methods as PM

    if v.name == "bitfit":
        return PM.bitfit_plan(cfg)
    if v.name == "dora":
        return PM.dora_plan(cfg)
    if v.name == "ptuning":
        return PM.ptuning_plan(cfg, v.ptuning)
    return PM.distill_plan(cfg, v.distill)


def variant_fit(cfg: PlanConfig, v: Variant, gpu):
    """``fit.fit`` for a variant plan (fit.py cannot take a plan function yet: /work/notes/cliwire-patches.md): the
    verdict (process bytes with the GPU's CUDA context, fit.py assumptions 1 and 7), the largest batch and the
    longest sequence that fit (fit.py assumption 2's reference search, preference.py's ``_largest``). The variants
    are planned for one GPU only (peft_methods refuses sharding), so ``min_gpus`` is 1 when it fits, else None, and
    there are no suggestions."""
    import sys

    import quantlab.planner.fit  # noqa: F401  (the package exports the function ``fit`` under the module's name)
    from quantlab.planner.preference import _largest

    F = sys.modules["quantlab.planner.fit"]
    cfg = F.for_gpu(cfg, gpu)
    p = F.on_gpu(variant_plan(cfg, v), gpu)
    ok = p.process_bytes <= gpu.memory_bytes

    def fits(c: PlanConfig) -> bool:
        try:
            return variant_plan(c, v).process_bytes <= F.budget(c, gpu)
        except (SpecError, ValueError):  # an invalid shape (bitfit, distill: seq < 2) does not fit
            return False

    max_batch = _largest(lambda b: fits(dataclasses.replace(cfg, batch=b)), 1 << 16)
    max_seq = _largest(lambda s: s < 2 or fits(dataclasses.replace(cfg, seq=s)),
                       max(cfg.model.max_position_embeddings, cfg.seq), low=2)
    return F.Fit(gpu=gpu, plan=p, fits=ok, margin_bytes=gpu.memory_bytes - p.process_bytes, max_batch=max_batch,
                 max_seq=max_seq, min_gpus=1 if ok else None, min_gpus_sharding="" if ok else "one GPU only",
                 suggestions=())
