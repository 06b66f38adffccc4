"""The command line: parse, call the library, render. ``main(argv) -> int``.

Each subcommand lives in ``quantlab/commands/<name>.py`` with ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``. Heavy imports (torch, transformers, pandas) happen inside
``func``, so ``quantlab plan`` never imports torch. A :class:`QuantlabError` (bad input) is printed as
one line on stderr with exit code 2; it is never a traceback.

Start-up cost: when the first argument names a subcommand, only that subcommand's module is imported and
its parser built, alone, as the root parser (``quantlab plan`` pays neither for ``lab``'s or ``validate``'s flags
nor for a second parser); ``quantlab``, ``quantlab --help`` and an unknown command build them all, so the
listing and the error are the same.

Output errors: a closed pipe (``quantlab profiles | head -1``) ends quietly with exit 0, as Unix tools do;
any other error writing stdout or an output file (a full device, an unwritable path) is one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types

from quantlab import __version__
from quantlab.errors import QuantlabError


class _Deferred(types.ModuleType):
    """A stand-in for a stdlib module in ``sys.modules`` that imports the real one on the first read of a name it
    lacks, then takes on the real module's namespace (and hands ``sys.modules`` back to it)."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def _defer_inspect() -> None:
    """Let ``inspect`` load on first use. ``dataclasses`` imports it at the top but calls it only for a dataclass
    without a docstring (``inspect.signature``; CPython 3.11-3.13 ``Lib/dataclasses.py``), and the import pulls
    ``ast``, ``dis`` and ``tokenize``: about 5 ms of a 45 ms ``quantlab plan`` start on a 2-core machine, paid by
    every command that never touches it. Written here because the stdlib's ``importlib.util.LazyLoader`` does
    not defer it: the ``import`` statement reads the module's ``__spec__`` (``import_ensure_initialized`` in
    CPython's ``Python/import.c``) and any attribute read loads a LazyLoader module. The stand-in keeps the real
    spec, so ``import inspect`` and ``importlib.util.find_spec`` see what they would; the first other name read
    (torch and the lab read many) loads the real module."""
    if "inspect" in sys.modules:
        return
    import importlib.util

    spec = importlib.util.find_spec("inspect")
    if spec is None:
        return
    module = _Deferred("inspect")
    module.__spec__, module.__loader__, module.__package__ = spec, spec.loader, ""
    sys.modules["inspect"] = module


# Subcommand modules, in the order --help lists them. A module that is absent is skipped.
COMMANDS = ("plan", "compare", "profiles", "lab", "report", "validate", "recommend", "data")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"quantlab: error: {message} (see '{self.prog} --help')\n")

    def _print_message(self, message: str, file=None) -> None:  # argparse swallows OSError here; main reports it
        if message:
            (file or sys.stderr).write(message)

    def _get_formatter(self):
        # argparse builds a formatter for every add_argument call (to check the metavar) and, without a width,
        # each one imports shutil (with bz2, lzma, zlib: about 2 ms of a start) for get_terminal_size. The width
        # is that function's columns, minus 2 as argparse takes it (CPython 3.11 Lib/argparse.py HelpFormatter).
        return self.formatter_class(prog=self.prog, width=_help_width())


def _help_width() -> int:
    """``shutil.get_terminal_size().columns - 2`` (COLUMNS, else the terminal on stdout, else 80), without shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` (a name in :data:`COMMANDS`) just that subcommand is registered."""
    p = _Parser(
        prog="quantlab",
        description="Plan LLM memory for inference and fine-tuning on any GPU, and measure it in the lab.",
        epilog="Examples:\n  quantlab plan --model 13b --method qlora --gpu rtx-4090\n"
               "  quantlab compare --model 8b --method lora\n  quantlab profiles\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"quantlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in (only,) if only in COMMANDS else COMMANDS:
        try:
            mod = importlib.import_module(f"quantlab.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"quantlab.commands.{name}":
                continue
            raise
        mod.register(sub)
    return p


class _OnlyOne:
    """Stands in for the subparsers action when the first argument names a command: the command's parser is built
    as the root parser (prog ``quantlab NAME``, as argparse names a subparser), so a start pays for one parser,
    not two (each costs argparse's formatter and gettext lookups)."""

    def __init__(self) -> None:
        self.parser: argparse.ArgumentParser | None = None

    def add_parser(self, name: str, **kw) -> argparse.ArgumentParser:
        kw.pop("help", None)
        kw.pop("aliases", None)
        self.parser = _Parser(prog=f"quantlab {name}", **kw)
        return self.parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command (a name in :data:`COMMANDS`), alone: what ``quantlab NAME ...`` parses with."""
    only = _OnlyOne()
    importlib.import_module(f"quantlab.commands.{name}").register(only)
    only.parser.set_defaults(command=name)
    return only.parser


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at devnull so the interpreter's final flush does not print
    'Exception ignored ... BrokenPipeError' (the pattern the Python docs give for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout already closed or not a real file
        pass


def _flush_stdout() -> None:
    """Flush here, inside the error handling, so a full device is reported rather than lost at exit."""
    if sys.stdout is not None:
        sys.stdout.flush()


def _output_error(e: OSError) -> str:
    where = f" {e.filename}" if getattr(e, "filename", None) else " to stdout"
    return f"quantlab: error: cannot write{where}: {e.strerror or e}"


def _run(args) -> int:
    rc = int(args.func(args) or 0)
    _flush_stdout()
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _defer_inspect()
    try:
        if argv and argv[0] in COMMANDS:
            parser, rest = command_parser(argv[0]), argv[1:]
        else:
            parser, rest = build_parser(argv[0] if argv else None), argv
        try:
            args = parser.parse_args(rest)
        except SystemExit:  # --help, --version, a usage error: flush here so a failed write is reported below
            _flush_stdout()
            raise
        if not getattr(args, "func", None):
            parser.print_help()
            _flush_stdout()
            return 0 if args.command is None else 2
        return _run(args)
    except QuantlabError as e:
        print(f"quantlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantlab: interrupted (nothing half-written: results are saved atomically)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head -1`): end quietly, as Unix tools do
        _silence_stdout()
        return 0
    except OSError as e:  # an output that cannot be written: stdout on a full device, an unwritable --out path
        if os.environ.get("QUANTLAB_DEBUG"):
            raise
        _silence_stdout()  # stdout may be the device that failed; the message goes to stderr
        try:
            print(_output_error(e), file=sys.stderr)
        except OSError:
            pass
        return 2
    except Exception as e:  # a bug, not bad input: say so in one line; QUANTLAB_DEBUG=1 shows the traceback
        if os.environ.get("QUANTLAB_DEBUG"):
            raise
        print(f"quantlab: internal error: {type(e).__name__}: {e} (rerun with QUANTLAB_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def entry() -> int:
    return main(sys.argv[1:])
