"""Output errors at the CLI's top level: a closed pipe ends quietly (exit 0, nothing on stderr, as Unix tools do);
an output that cannot be written (stdout on a full device, an unwritable output file) is one line, exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1"}


def _closed_pipe(args):
    """Run quantlab with stdout a pipe whose reader reads one line and closes it (``| head -1``)."""
    p = subprocess.Popen([sys.executable, "-m", "quantlab", *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    return p.wait(timeout=120), err


@pytest.mark.parametrize("args", [["profiles"], ["profiles", "--format", "json"], ["plan", "--model", "8b"],
                                  ["plan", "--model", "8b", "--format", "json"], ["--help"]])
def test_a_closed_pipe_ends_quietly(args):
    rc, err = _closed_pipe(args)
    assert rc == 0 and err == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["profiles"], ["plan", "--model", "8b", "--format", "json"], ["--help"]])
def test_a_full_device_is_one_line_exit_2(args):
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "quantlab", *args], cwd=ROOT, env=_env(), stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "internal error" not in p.stderr
    assert "cannot write to stdout" in p.stderr and "Exception ignored" not in p.stderr


def test_an_unwritable_output_file_is_one_line_exit_2(tmp_path, capsys):
    from quantlab.cli import main

    target = tmp_path / "not-a-dir"
    target.write_text("")  # a file where a folder is needed: any OSError below it
    rc = main(["plan", "--model", "8b", "--method", "lora", "--emit", "deepspeed", "--emit-dir", str(target / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "internal error" not in err and str(target / "x") in err


def test_an_oserror_from_a_command_is_exit_2_not_internal(monkeypatch, capsys):
    from quantlab import cli

    def boom(args):
        raise PermissionError(13, "Permission denied", "/nope/out.md")

    monkeypatch.setattr(cli, "_run", lambda args: boom(args))
    assert cli.main(["profiles"]) == 2
    err = capsys.readouterr().err
    assert err == "quantlab: error: cannot write /nope/out.md: Permission denied\n"


def test_only_the_named_subcommand_is_built_but_help_lists_them_all(capsys):
    from quantlab.cli import COMMANDS, build_parser

    full = build_parser()
    one = build_parser("plan")
    names = lambda p: set(next(a for a in p._actions if a.dest == "command").choices)  # noqa: E731
    assert names(one) == {"plan"} and names(full) == set(COMMANDS)
    assert names(build_parser("no-such-command")) == set(COMMANDS)  # the error lists every command
