"""Flags of the preference methods (``--method dpo|orpo|simpo|kto|reward|grpo``), kept apart from the PlanConfig
flags of :mod:`quantlab.commands.flags`: :func:`add_preference_arguments` adds them to a parser, and
:func:`preference_from_args` turns the parsed values into a :class:`~quantlab.planner.preference.PreferenceConfig`
(the library never sees the Namespace). Defaults come from the dataclass, so they exist once."""

from __future__ import annotations

import argparse
import dataclasses

from quantlab.planner.preference import Objective, PreferenceConfig, Reference, objective

PREFERENCE_METHODS = tuple(o.value for o in Objective) + ("ppo",)  # ppo: a one-line error (TRL 1.16 has none)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PreferenceConfig)}


def add_preference_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("preference tuning (TRL 1.16)")
    g.add_argument("--reference", choices=[r.value for r in Reference], default=_DEFAULTS["reference"].value,
                   help="DPO/KTO/GRPO reference: auto = PEFT's disabled adapter for a PEFT policy, else a second "
                        "copy; precomputed = precompute_ref_log_probs (no reference in memory) (default: %(default)s)")
    g.add_argument("--num-generations", type=int, default=_DEFAULTS["num_generations"],
                   help="grpo: completions per prompt (required; more = a larger generation KV cache)")
    g.add_argument("--max-completion-length", type=int, default=_DEFAULTS["max_completion_length"],
                   help="grpo: new tokens per completion, taken from --seq (default: %(default)s)")
    g.add_argument("--beta", type=float, default=_DEFAULTS["beta"],
                   help="KL coefficient; grpo loads a reference only when beta > 0 (default: the trainer's)")
    g.add_argument("--num-labels", type=int, default=_DEFAULTS["num_labels"],
                   help="reward: labels of the classification head (RewardTrainer needs 1) (default: %(default)s)")


def is_preference(method: str) -> bool:
    return method in PREFERENCE_METHODS


def preference_from_args(args: argparse.Namespace, method: str | None = None) -> PreferenceConfig:
    """The PreferenceConfig of the parsed flags; ``method`` (default ``args.method``) names the objective.
    Bad values raise a one-line SpecError."""
    return PreferenceConfig(objective=objective(method or args.method), reference=Reference(args.reference),
                            num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                            beta=args.beta, num_labels=args.num_labels)
