"""Make the quantlab-docs continued-pre-training task: text records of this project's own documentation.

The domain is quantlab's prose about fine-tuning memory (planner assumptions, quantization formats, the lab's
instruments): text SmolLM2 cannot have seen in pre-training, written in this repository, so it carries no licence
beyond the repository's. Deterministic: everything is read from one git commit (:data:`COMMIT`) with ``git show``,
not from the working tree, so rerunning this script gives the same bytes whatever the checkout holds.

1. Sources, in path order: every module, class and function docstring (``ast.get_docstring``, in the order
   ``ast.walk`` visits them) of ``quantlab/**/*.py``, and every ``docs/*.md`` file, at :data:`COMMIT`.
2. A source is cut into paragraphs (blank-line separated), and consecutive paragraphs of one source are joined
   into records of at most :data:`MAX_CHARS` characters (a longer paragraph is a record of its own).
3. Held out by source file, not by record, so no paragraph of a held-out file is trained on: a file is held out
   when the first byte of BLAKE2b-64(path) is below 52 (about one file in five), and the held-out records are
   capped at :data:`HELDOUT_CHARS` characters (about 8k tokens; the perplexity evaluation runs on a CPU).
4. ``data.jsonl`` holds the training records (the lab splits its validation part off), ``test.jsonl`` the held-out
   ones (the lab's default test file for this task).

Run: ``python tasks/quantlab-docs/generate.py`` (from the repository root).
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from pathlib import Path

COMMIT = "4759790ba408272125f2fa97963771521ec0bb49"
MAX_CHARS = 1200
HELDOUT_CHARS = 32000
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout


def sources() -> list[tuple[str, str]]:
    """(path, text) of every source (assumption 1)."""
    paths = sorted(p for p in git("ls-tree", "-r", "--name-only", COMMIT).splitlines()
                   if (p.startswith("quantlab/") and p.endswith(".py")) or (p.startswith("docs/") and p.endswith(".md")))
    out = []
    for p in paths:
        text = git("show", f"{COMMIT}:{p}")
        if p.endswith(".py"):
            tree = ast.parse(text)
            docs = [ast.get_docstring(n) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
            text = "\n\n".join(d for d in docs if d)
        if text.strip():
            out.append((p, text))
    return out


def records(text: str) -> list[str]:
    """Paragraphs joined up to MAX_CHARS (assumption 2)."""
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    out, cur = [], ""
    for p in paras:
        if cur and len(cur) + 2 + len(p) > MAX_CHARS:
            out.append(cur)
            cur = p
        else:
            cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        out.append(cur)
    return out


def held_out(path: str) -> bool:
    return hashlib.blake2b(path.encode(), digest_size=8).digest()[0] < 52


def main() -> None:
    train, test, used = [], [], 0
    for path, text in sources():
        recs = records(text)
        if held_out(path):
            for r in recs:
                if used + len(r) <= HELDOUT_CHARS:
                    test.append(r)
                    used += len(r)
        else:
            train += recs
    for name, recs in (("data.jsonl", train), ("test.jsonl", test)):
        (HERE / name).write_text("".join(json.dumps({"text": r}, ensure_ascii=False) + "\n" for r in recs),
                                 encoding="utf-8")
        print(f"{name}: {len(recs)} records, {sum(map(len, recs)):,} characters")


if __name__ == "__main__":
    main()
