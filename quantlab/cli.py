"""The command line: parse, call the library, render. ``main(argv) -> int``.

Each subcommand lives in ``quantlab/commands/<name>.py`` with ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``. Heavy imports (torch, transformers, pandas) happen inside
``func``, so ``quantlab plan`` never imports torch. A :class:`QuantlabError` (bad input) is printed as
one line on stderr with exit code 2; it is never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from quantlab import __version__
from quantlab.errors import QuantlabError

# Subcommand modules, in the order --help lists them. A module that is absent is skipped.
COMMANDS = ("plan", "compare", "profiles", "lab", "report", "validate", "recommend")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"quantlab: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="quantlab",
        description="Plan LLM memory for inference and fine-tuning on any GPU, and measure it in the lab.",
        epilog="Examples:\n  quantlab plan --model 13b --method qlora --gpu rtx-4090\n"
               "  quantlab compare --model 8b --method lora\n  quantlab profiles\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"quantlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"quantlab.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"quantlab.commands.{name}":
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except QuantlabError as e:
        print(f"quantlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantlab: interrupted (nothing half-written: results are saved atomically)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug, not bad input: say so in one line; QUANTLAB_DEBUG=1 shows the traceback
        if os.environ.get("QUANTLAB_DEBUG"):
            raise
        print(f"quantlab: internal error: {type(e).__name__}: {e} (rerun with QUANTLAB_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def entry() -> int:
    return main(sys.argv[1:])
