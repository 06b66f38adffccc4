"""The CLI contract every subcommand shares: help that teaches, one-line errors, exit code 2."""

import subprocess
import sys

from quantlab.cli import main


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_one_line_exit_2(capsys):
    try:
        rc = main(["no-such-command"])
    except SystemExit as e:  # argparse exits through SystemExit; our parser keeps it to one line
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err


def test_import_quantlab_stays_light():
    """`import quantlab` and the CLI parser must not import torch, transformers or pandas."""
    code = ("import sys, quantlab.cli; quantlab.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'transformers', 'pandas', 'peft', 'bitsandbytes') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy modules imported at CLI start: {out}"


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "quantlab", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "quantlab" in r.stdout


def test_plan_start_defers_inspect_and_shutil():
    """`quantlab plan` loads neither inspect (ast, dis, tokenize) nor shutil (bz2, lzma) at start: the stand-in
    for inspect loads the real module on first use, and help output keeps the terminal width. With the profile
    cache warm (the first run compiles it), no profile is parsed with pyyaml either: the encoder profiles, which
    every plan consults to tell an encoder --model apart, are compiled with the others."""
    # only what the plan itself loads counts: the interpreter's start (an editable install's finder) may load
    # some of these modules before quantlab is imported
    code = ("import sys, io, contextlib; base = set(sys.modules); from quantlab.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    rc = main(['plan', '--model', '8b', '--method', 'lora', '--format', 'json'])\n"
            "loaded = [m for m in ('ast', 'dis', 'tokenize', 'shutil', 'bz2', 'lzma', 'yaml', 'pathlib') if m in sys.modules and m not in base]\n"
            "import inspect\n"
            "sig = str(inspect.signature(main))\n"
            "print(rc, ','.join(loaded) or '-', sig, type(sys.modules['inspect']).__name__, 'ast' in sys.modules)")
    # -S: no site-packages (as the bench's cold start, scripts/bench_planner.py, runs quantlab from a checkout); the
    # JSON plan path needs only the standard library
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-S", "-c", code]
    subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)  # warms the profile cache
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out[0] == "0"
    assert out[1] == "-", f"loaded at start: {out[1]}"
    assert out[-2:] == ["module", "True"]  # the real inspect took over on first use
    assert "argv" in " ".join(out[2:-2])


def test_help_width_is_argparse_own(monkeypatch):
    """The parser hands argparse the width argparse would take itself (shutil's terminal size, minus 2)."""
    import argparse

    from quantlab.cli import command_parser

    for cols in ("60", "132"):
        monkeypatch.setenv("COLUMNS", cols)
        p = command_parser("plan")
        ours = p.format_help()
        monkeypatch.setattr(type(p), "_get_formatter", argparse.ArgumentParser._get_formatter)
        assert ours == p.format_help()
        monkeypatch.undo()
    monkeypatch.setenv("COLUMNS", "60")
    narrow = command_parser("plan").format_help()
    monkeypatch.setenv("COLUMNS", "132")
    assert command_parser("plan").format_help() != narrow
