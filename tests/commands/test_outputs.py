"""Bad outputs and contradictory input: one line on stderr, exit 2, checked before anything is printed, nothing
half-written. Closed pipes end quietly. Tables read at 80 columns and in a log file."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAN = ["plan", "--model", "8b", "--method", "lora", "--num-gpus", "2", "--zero", "2"]
REC = ["recommend", "--model", "8b", "--method", "lora", "--train-tokens", "1e8", "--gpus", "a100,h100"]


def ql(*argv, cwd=ROOT, env=None, stdout=subprocess.PIPE):
    e = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    e.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "quantlab", *argv], cwd=cwd, env=e, stdout=stdout,
                          stderr=subprocess.PIPE)


def one_line_exit_2(r, needle):
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not r.stdout, "printed before failing"


@pytest.mark.parametrize("argv,needle", [
    (PLAN + ["--emit", "deepspeed", "--emit-dir", "/dev/null/x"], "--emit-dir /dev/null/x: /dev/null is not a folder"),
    (PLAN + ["--emit", "deepspeed", "--emit-dir", "/dev/null"], "/dev/null is not a folder"),
    (PLAN + ["--emit", "deepspeed", "--emit-dir", "/proc/x"], "--emit-dir"),
    (PLAN + ["--emit", "deepspeed", "--format", "json", "--emit-dir", "/dev/null/x"], "not a folder"),
    (REC + ["--out", "/dev/null/x.md"], "--out /dev/null/x.md"),
    (REC + ["--plot", "/dev/null/x.png"], "--plot /dev/null/x.png"),
    (REC + ["--out", "/dev/null/x/r.md", "--plot", "ok.png"], "--out"),
    (REC + ["--plot", "/proc/x.png"], "--plot /proc/x.png"),
    (["report", "--out", "/dev/null/x.md"], "--out /dev/null/x.md"),
    (["compare", "--model", "8b", "--precisions", ","], "--precisions is empty"),
    (["compare", "--model", "8b", "--precisions", ""], "--precisions is empty"),
    (["compare", "--model", "8b", "--precisions", "nf4,nf4"], "twice"),
    (["compare", "--model", "8b", "--precisions", "nf4,int3"], "unknown precision 'int3'"),
    (["compare", "--model", "8b", "--method", "lora", "--lora-targets", ","], "--lora-targets is empty"),
    (["plan", "--model", "8b", "--method", "lora", "--lora-targets", " , "], "--lora-targets is empty"),
    (REC + ["--gpus", ","], "--gpus is empty"),
    (["recommend", "--model", "8b", "--method", "lora", "--lora-targets", ","], "--lora-targets is empty"),
    (["plan"], "give --model"),
])
def test_refused_before_anything_is_printed(tmp_path, argv, needle):
    one_line_exit_2(ql(*argv, cwd=tmp_path), needle)
    assert not any(tmp_path.iterdir()), "something was written"


def test_emit_into_a_file_is_refused_and_the_file_kept(tmp_path):
    f = tmp_path / "launch"
    f.write_text("mine")
    one_line_exit_2(ql(*PLAN, "--emit", "deepspeed", "--emit-dir", str(f)), "is not a folder")
    assert f.read_text() == "mine"


def test_unwritable_folder_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        one_line_exit_2(ql(*REC, "--out", str(d / "r.md")), "is not writable")
    finally:
        d.chmod(0o700)


def test_emit_writes_files_and_prints_the_plan(tmp_path):
    r = ql(*PLAN, "--emit", "deepspeed", "--emit-dir", str(tmp_path / "a" / "b"), "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["config"]["zero"] == 2
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == \
        ["accelerate_config.yaml", "ds_config.json", "launch.sh"]


def test_recommend_out_and_plot_written(tmp_path):
    r = ql(*REC, "--out", "r.md", "--format", "markdown", cwd=tmp_path)
    assert r.returncode == 0 and not r.stdout
    assert (tmp_path / "r.md").read_text().startswith("# GPU recommendation")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["plan", "--model", "7b"], ["plan", "--model", "7b", "--format", "json"],
                                  ["profiles"], ["compare", "--model", "7b"], REC])
def test_stdout_to_a_full_device_is_one_line_exit_2(argv):
    with open("/dev/full", "wb") as full:
        r = ql(*argv, stdout=full)
    err = r.stderr.decode()
    assert r.returncode == 2 and "cannot write to stdout" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv", [["profiles"], ["plan", "--model", "7b", "--format", "json"], REC])
def test_closed_pipe_ends_quietly(argv):
    e = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    e["PYTHONPATH"] = str(ROOT)
    p = subprocess.Popen([sys.executable, "-m", "quantlab", *argv], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # the reader (head -1) is gone before the first write
    err = p.stderr.read().decode()
    assert p.wait() == 0 and err == "", err


def _width(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("argv", [
    ["plan", "--model", "8b", "--method", "lora", "--gpu", "t4"],
    ["plan", "--model", "70b", "--method", "full", "--num-gpus", "8", "--zero", "3", "--gpu", "h100"],
    ["compare", "--model", "8b", "--method", "lora", "--gpu", "rtx-4090"],
    ["compare", "--model", "8b", "--gpu", "h100"],
    ["compare", "--model", "8b", "--method", "qlora", "--precisions", "nf4,int8"],
    ["profiles"],
    REC,
    ["recommend", "--model", "8b", "--serve-tokens-per-day", "1e9", "--gpus", "a100,h100,l4"],
])
def test_tables_fit_80_columns_and_logs_have_no_escapes(argv):
    """In a log file (not a TTY, no $COLUMNS) and at COLUMNS=80: no line wider than 80, no ANSI escapes, no
    truncated number (rich's ellipsis), no trailing padding."""
    for env in ({}, {"COLUMNS": "80"}):
        r = ql(*argv, env=env)
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert _width(out) <= 80, "\n" + out
        assert "\x1b[" not in out and "\u2026" not in out
        assert all(line == line.rstrip() for line in out.splitlines())


def test_columns_is_honoured():
    wide = ql("profiles", "--kind", "models", env={"COLUMNS": "160"}).stdout.decode()
    assert "meta-llama/Llama-3.1-8B" in wide and _width(wide) > 80
    assert "meta-llama/" not in ql("profiles", "--kind", "models").stdout.decode()


def test_help_shows_every_default():
    for cmd in ("plan", "compare", "recommend"):
        out = ql(cmd, "--help", env={"COLUMNS": "300"}).stdout.decode()
        blocks = {b.split()[0]: b for b in re.split(r"\n {2}(?=-)", out) if b.startswith("-")}
        for flag in ("--batch", "--seq", "--lora-targets", "--method", "--precision", "--compute-dtype", "--format",
                     "--gpus" if cmd == "recommend" else "--gpu", "--zero", "--padded"):
            assert "(default: " in blocks[flag], (cmd, flag, blocks[flag])


def test_every_option_of_the_planning_commands_states_its_default():
    import argparse

    from quantlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("plan", "compare", "recommend", "profiles", "report"):
        for a in sub.choices[cmd]._actions:
            if not a.option_strings or a.dest == "help" or a.help is argparse.SUPPRESS or a.required:
                continue
            if cmd in ("compare", "recommend") and a.dest == "model":
                continue
            assert "(default: " in (a.help or ""), (cmd, a.option_strings)
