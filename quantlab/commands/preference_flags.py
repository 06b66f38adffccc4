"""Flags of the preference methods (``--method dpo|orpo|simpo|kto|reward|grpo``), kept apart from the PlanConfig
flags of :mod:`quantlab.commands.flags`: :func:`add_preference_arguments` adds them to a parser, and
:func:`take_preference` turns the parsed values into a :class:`~quantlab.planner.preference.PreferenceConfig`
(the library never sees the Namespace). Defaults come from the dataclass, so they exist once.

``--method`` names the objective (TRL's trainer); how the policy itself trains is ``--policy``, the PlanConfig
method (default lora: a PEFT policy is TRL's usual preference setup, and its reference is the disabled adapter,
``preference.py`` P3). :func:`take_preference` puts the policy in ``args.method`` so every PlanConfig rule
(``flags.check_given``, the recipe) sees an ordinary fine-tune. Every preference flag has no value unless given,
so a flag the objective ignores is a one-line error, as ``flags.ignored_flag`` does for PlanConfig flags."""

from __future__ import annotations

import argparse
import dataclasses

from quantlab.planner.preference import Objective, PreferenceConfig, Reference, objective
from quantlab.specs import Method, SpecError

PREFERENCE_METHODS = tuple(o.value for o in Objective) + ("ppo",)  # ppo: a one-line error (TRL 1.16 has none)
POLICY_METHODS = tuple(m.value for m in Method if m.is_training)
POLICY_DEFAULT = Method.LORA.value
# What every TRL 1.16 trainer config sets where TrainingArguments differs (trl/trainer/base_config.py
# ``_BaseConfig``, the parent of DPOConfig, KTOConfig, RewardConfig, GRPOConfig, ORPOConfig and CPOConfig):
# gradient checkpointing defaults to True. A preference plan takes it unless the user gives the flag.
TRAINER_DEFAULTS = {"grad_checkpointing": True}
TRAINER_DEFAULTS_NOTE = ("gradient checkpointing on: TRL 1.16's trainer configs default "
                         "gradient_checkpointing=True (trl/trainer/base_config.py); --no-grad-checkpointing turns it off")
# _BaseConfig also sets bf16=True unless fp16 is set (its __post_init__): autocast over the model as loaded. With
# bf16 weights that is planned as pure bf16 compute: autocast over half-precision weights is not modelled apart.
BF16_NOTE = ("TRL's bf16=True default autocasts the model as loaded: with bf16 weights it is planned as pure bf16 "
             "compute (autocast over half-precision weights is not modelled apart)")


def trainer_defaults(given) -> dict:
    """The TRL trainer defaults (:data:`TRAINER_DEFAULTS`) for the fields the user did not give."""
    return {k: v for k, v in TRAINER_DEFAULTS.items() if k not in given}
METHOD_HELP = ("inference, or a fine-tune: full (all weights train: most memory), freeze (last k blocks), lora, qlora "
               "(LoRA on 4-bit weights: least memory), adapter, prefix, prompt, ia3; or a TRL 1.16 preference "
               "objective: dpo, kto (a reference forward per step), orpo, simpo (no reference), reward (a "
               "1-label classification head), grpo (generation, then training); the policy trains as --policy")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PreferenceConfig)}
# preference flag -> the objectives it applies to (None: every objective)
_APPLIES = {"policy": None, "reference": ("dpo", "kto", "grpo"), "num_generations": ("grpo",),
            "max_completion_length": ("grpo",), "beta": ("dpo", "kto", "grpo", "orpo", "simpo"),
            "num_labels": ("reward",), "reward_model": ("grpo",), "num_iterations": ("grpo",),
            "steps_per_generation": ("grpo",)}


def add_preference_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("preference tuning (TRL 1.16; with --method dpo|orpo|simpo|kto|reward|grpo)")
    g.add_argument("--policy", choices=POLICY_METHODS, default=None,
                   help="how the policy trains under a preference --method: lora, qlora (least memory; the reference "
                        "is the disabled adapter), full (a second full copy is the reference), ... "
                        f"(default: {POLICY_DEFAULT})")
    g.add_argument("--reference", choices=[r.value for r in Reference], default=None,
                   help="DPO/KTO/GRPO reference: auto = PEFT's disabled adapter for a PEFT policy, else a second "
                        "copy; precomputed = precompute_ref_log_probs (no reference in memory) "
                        f"(default: {_DEFAULTS['reference'].value})")
    g.add_argument("--num-generations", type=int, default=None, metavar="N",
                   help="grpo: completions per prompt (required with grpo; more = a larger generation KV cache) "
                        "(default: none)")
    g.add_argument("--max-completion-length", type=int, default=None, metavar="N",
                   help="grpo: new tokens per completion, taken from --seq "
                        f"(default: {_DEFAULTS['max_completion_length']})")
    g.add_argument("--beta", type=float, default=None, metavar="X",
                   help="KL coefficient; grpo loads a reference only when beta > 0 (default: the trainer's: DPO/KTO "
                        "0.1, GRPO 0.0)")
    g.add_argument("--num-labels", type=int, default=None, metavar="N",
                   help="reward: labels of the sequence-classification head that replaces lm_head; RewardTrainer "
                        f"scores each sequence with one (0: no head, refused) (default: {_DEFAULTS['num_labels']})")
    g.add_argument("--num-iterations", type=int, default=None, metavar="N",
                   help="grpo: optimizer steps per generation batch (TRL's num_iterations); above 1 TRL scores the "
                        "old policy with one more no-grad forward after generate (preference P4) "
                        f"(default: {_DEFAULTS['num_iterations']})")
    g.add_argument("--steps-per-generation", type=int, default=None, metavar="N",
                   help="grpo: micro-batches per generation batch (more = one larger generate: a larger KV cache); "
                        "when it x --num-iterations does not divide --grad-accum, TRL adds the old policy's no-grad "
                        "forward (default: --grad-accum)")
    g.add_argument("--reward-model", default=None, metavar="NAME",
                   help="grpo: a reward model (a model name as --model takes it) loaded as "
                        "AutoModelForSequenceClassification and kept for the run (default: none, reward functions)")


def is_preference(method: str | None) -> bool:
    return method in PREFERENCE_METHODS


def preference_given(args: argparse.Namespace) -> list[str]:
    """The preference flags given (their dests), in declaration order."""
    return [k for k in _APPLIES if getattr(args, k, None) is not None]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _applies(k: str, obj: Objective) -> bool:
    return _APPLIES[k] is None or obj.value in _APPLIES[k]


def preference_from_args(args: argparse.Namespace, method: str | None = None, *,
                         strict: bool = True) -> PreferenceConfig:
    """The PreferenceConfig of the parsed flags; ``method`` (default ``args.method``) names the objective.
    Bad values, and (``strict``) a flag the objective ignores, raise a one-line SpecError; without ``strict``
    such a flag is left out (``compare --methods``: one row's flag is not another's)."""
    obj = objective(method or args.method)
    skip = set()
    for k in preference_given(args):
        if not _applies(k, obj):
            if strict:
                raise SpecError(f"{_flag(k)} applies to --method {' or '.join(_APPLIES[k])}, not {obj.value} "
                                "(drop it)")
            skip.add(k)
    args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in skip})
    if obj is Objective.REWARD and getattr(args, "num_labels", None) == 0:
        raise SpecError("--method reward needs a sequence-classification head (RewardTrainer scores each sequence "
                        "with AutoModelForSequenceClassification, num_labels=1); --num-labels 0 leaves none")
    kw = {k: getattr(args, k) for k in ("num_generations", "max_completion_length", "beta", "num_labels",
                                        "num_iterations", "steps_per_generation")
          if getattr(args, k, None) is not None}
    if getattr(args, "reference", None) is not None:
        kw["reference"] = Reference(args.reference)
    if getattr(args, "reward_model", None) is not None:
        from quantlab.profiles import load_model

        kw["reward_model"] = load_model(args.reward_model).spec
    return PreferenceConfig(objective=obj, **kw)


def take_preference(args: argparse.Namespace) -> PreferenceConfig | None:
    """The PreferenceConfig a preference ``--method`` asks for, with ``args.method`` set to the policy's method
    (``--policy``, default lora); None for any other method, where a preference flag is a one-line error."""
    method = getattr(args, "method", None)
    if not is_preference(method):
        given = preference_given(args)
        if given:
            raise SpecError(f"{_flag(given[0])} applies to the preference methods (--method "
                            f"{'|'.join(o.value for o in Objective)}), not {method}")
        return None
    pref = preference_from_args(args, method)
    args.method = args.policy or POLICY_DEFAULT
    return pref


def preference_for(args: argparse.Namespace, method: str) -> PreferenceConfig:
    """The PreferenceConfig of one ``compare --methods`` row: the flags that apply to ``method``."""
    return preference_from_args(args, method, strict=False)
