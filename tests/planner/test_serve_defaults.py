"""The serving flags read plain data (planner/serve_defaults.py); it must be what the serving planner uses."""

import dataclasses
import subprocess
import sys

from quantlab.planner import serve_defaults as D
from quantlab.planner.serving import Cache, Engine, Mode, ServeConfig


def test_choices_are_the_enums():
    assert D.MODES == tuple(m.value for m in Mode)
    assert D.ENGINES == tuple(e.value for e in Engine)
    assert D.CACHES == tuple(c.value for c in Cache)


def test_defaults_are_serveconfigs():
    fields = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    for k, v in D.DEFAULTS.items():
        assert getattr(fields[k], "value", fields[k]) == v, k
    assert fields["new_tokens"] == D.DEFAULT_NEW_TOKENS


def test_plan_parser_does_not_import_the_serving_planner():
    """(pathlib is left out: an editable install's .pth finder imports it before quantlab does)"""
    code = ("import sys; from quantlab.cli import command_parser; command_parser('plan'); "
            "bad = [m for m in ('quantlab.planner.serving', 'typing', 'csv', 'shlex') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
