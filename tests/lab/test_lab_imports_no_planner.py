"""The lab measures; it does not predict (issue #16 item 1). No module under quantlab/lab/ imports the planner,
at module level or inside a function: the planner's figures are set beside the lab's measurements by
``quantlab.validate_lab`` (and ``quantlab.validate``), which the command layer calls.

The scan reads the source with ``ast`` (nothing is imported), so a lazy import inside a function is caught too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "quantlab" / "lab"

# Modules still importing the planner, each a known remaining exception. The lead empties this set at merge:
# finetune_plan.py is being rewritten on the `trainer` branch (its `from_plan_config` / fine-tune plan calls
# quantlab.planner.plan), which must move that call to the validation side (quantlab/validate_lab.py or
# quantlab/validate.py) and leave the lab with the PlanConfig only.
EXCEPTIONS = {"quantlab/lab/finetune_plan.py"}

# The lab's one way into the validation side: a command entry point kept at its old path (the committed report
# reproduces with `python -m quantlab.lab.throughput_check`), as (module, function) pairs.
ENTRY_POINTS = {("quantlab/lab/throughput_check.py", "main")}


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[:-node.level]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str) -> list[tuple[str, int, str | None]]:
    """Every module an import in ``source`` brings in, as (absolute name, line, enclosing top-level function);
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule)."""
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = func
            if func is None and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                f = child.name
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, f) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                mod = _absolute(child, module)
                found.append((mod, child.lineno, f))
                found.extend((f"{mod}.{a.name}", child.lineno, f) for a in child.names)
            elif (isinstance(child, ast.Call) and getattr(child.func, "attr", getattr(child.func, "id", None))
                  in ("import_module", "__import__") and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)):
                found.append((child.args[0].value, child.lineno, f))
            visit(child, f)

    visit(ast.parse(source), None)
    return found


def _is(name: str, target: str) -> bool:
    return name == target or name.startswith(target + ".")


def _lab_modules():
    for p in sorted(LAB.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        yield rel, ".".join(p.relative_to(ROOT).with_suffix("").parts), p.read_text()


MODULES = list(_lab_modules())


def test_the_scanner_sees_every_form_of_import():
    src = """
import quantlab.planner
import quantlab.planner.throughput as tp
from quantlab import planner
from quantlab.planner import plan
from quantlab.planner.recommend import _sum
from .. import planner as p2
from ..planner.memory import ds_master_dtype
import importlib

def lazy():
    from quantlab.planner import plan
    importlib.import_module("quantlab.planner.throughput")

from quantlab import specs, profiles  # not the planner
from quantlab.lab import measure
"""
    hits = [(n, line, f) for n, line, f in imports_of(src, "quantlab.lab.x") if _is(n, "quantlab.planner")]
    assert sorted({line for _, line, _ in hits}) == [2, 3, 4, 5, 6, 7, 8, 12, 13]
    assert {f for _, line, f in hits if line >= 12} == {"lazy"}
    assert not any(_is(n, "quantlab.planner") for n, line, _ in imports_of(src, "quantlab.lab.x") if line > 13)


@pytest.mark.parametrize("rel,module,source", MODULES, ids=[m[0] for m in MODULES])
def test_lab_module_does_not_import_the_planner(rel, module, source):
    if rel in EXCEPTIONS:
        pytest.skip(f"{rel}: a known remaining exception (EXCEPTIONS)")
    hits = [f"line {line}: {name}" for name, line, _ in imports_of(source, module) if _is(name, "quantlab.planner")]
    assert not hits, f"{rel} imports the planner ({'; '.join(hits)}): set the prediction in quantlab/validate_lab.py"


@pytest.mark.parametrize("rel,module,source", MODULES, ids=[m[0] for m in MODULES])
def test_lab_module_reaches_validate_lab_only_from_an_entry_point(rel, module, source):
    hits = [f"line {line} ({func})" for name, line, func in imports_of(source, module)
            if _is(name, "quantlab.validate_lab") and (rel, func) not in ENTRY_POINTS]
    assert not hits, f"{rel} imports quantlab.validate_lab outside a command entry point: {', '.join(hits)}"


def test_exceptions_are_still_needed():
    """An exception whose module no longer imports the planner (or is gone) must leave EXCEPTIONS."""
    modules = {rel: (module, source) for rel, module, source in MODULES}
    stale = [rel for rel in EXCEPTIONS
             if rel not in modules or not any(_is(n, "quantlab.planner") for n, _, _ in imports_of(*modules[rel][::-1]))]
    assert not stale, f"remove {stale} from EXCEPTIONS: they no longer import the planner"
