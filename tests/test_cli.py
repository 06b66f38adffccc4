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
