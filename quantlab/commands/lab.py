"""``quantlab lab ...``: real runs. Each lab subcommand is its own module ``quantlab/commands/lab_<name>.py``
with ``register(subparsers)``, so the PTQ, fine-tune and validation work stay in separate files."""

from __future__ import annotations

import argparse
import importlib

LAB_COMMANDS = ("ptq", "finetune", "merge", "classify", "grpo")


def register(sub) -> None:
    p = sub.add_parser(
        "lab", help="run real quantization and fine-tuning experiments on a real model",
        description="Real runs on a real model (default: the embedded SmolLM2-135M-Instruct), measured for memory, "
                    "speed and quality, stored in reports/quantlab.sqlite and rendered by 'quantlab report'.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    lab_sub = p.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", parser_class=type(p))
    for name in LAB_COMMANDS:
        try:
            mod = importlib.import_module(f"quantlab.commands.lab_{name}")
        except ModuleNotFoundError as e:
            if e.name == f"quantlab.commands.lab_{name}":
                continue
            raise
        mod.register(lab_sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
