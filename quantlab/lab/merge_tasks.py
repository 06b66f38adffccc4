"""The shipped tasks a merge is scored on, each with its own metric.

Every merged model, every single adapter and every baseline is scored on the *test split* of every task, the split
a lab fine-tune holds out (:func:`quantlab.lab.data.split` with the same seed, after the same deduplication), so no
score is measured on data an adapter trained on.

1. Answers are greedy continuations of the rendered prompt (:func:`quantlab.lab.finetune_eval.generate_answers`),
   at most the task's ``max_new_tokens`` (long enough for its longest reference answer).
2. The metrics, one *primary* per task (the ``score`` a merge table shows) and the others beside it:

   - ``json-extract``: exact match of the first JSON value of the answer with the reference after parsing
     (:func:`quantlab.lab.finetune_eval.exact_match`: key order and spacing do not matter); token F1 beside it.
   - ``date-iso``: exact match of the answer's first line with the ``YYYY-MM-DD`` reference; ``field_accuracy``
     (the share of year, month and day fields right in the first ``dddd-dd-dd`` of the answer) beside it.
   - ``intent-label``: accuracy of the answer's first word (lower-cased, punctuation stripped) against the label;
     ``macro_f1`` over the five labels (the mean of the per-label F1, a label never predicted nor present
     skipped) beside it.
   - any other JSONL (``--data``): exact match and token F1, as a lab fine-tune scores it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantlab.errors import QuantlabError
from quantlab.lab.finetune_eval import exact_match, generate_answers, token_f1

TASKS = Path(__file__).resolve().parent.parent.parent / "tasks"
INTENT_LABELS = ("billing", "shipping", "refund", "account", "technical")


def _first_line(s: str) -> str:
    s = s.strip()
    return s.splitlines()[0].strip() if s else ""


def _first_word(s: str) -> str:
    m = re.search(r"[A-Za-z]+", s)
    return m.group(0).lower() if m else ""


def json_metrics(answers: list[str], refs: list[str]) -> dict:
    n = len(refs)
    return {"exact_match": sum(exact_match(a, r) for a, r in zip(answers, refs)) / n,
            "token_f1": sum(token_f1(a, r) for a, r in zip(answers, refs)) / n}


def date_metrics(answers: list[str], refs: list[str]) -> dict:
    n = len(refs)
    em = sum(_first_line(a) == r for a, r in zip(answers, refs)) / n
    fields = 0
    for a, r in zip(answers, refs):
        m = re.search(r"(\d{4})-(\d{2})-(\d{2})", a)
        if m:
            fields += sum(x == y for x, y in zip(m.groups(), r.split("-")))
    return {"exact_match": em, "field_accuracy": fields / (3 * n)}


def label_metrics(answers: list[str], refs: list[str]) -> dict:
    preds = [_first_word(a) for a in answers]
    n = len(refs)
    f1s = []
    for lab in sorted(set(refs) | set(preds) & set(INTENT_LABELS)):
        tp = sum(p == lab and r == lab for p, r in zip(preds, refs))
        fp = sum(p == lab and r != lab for p, r in zip(preds, refs))
        fn = sum(p != lab and r == lab for p, r in zip(preds, refs))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": sum(p == r for p, r in zip(preds, refs)) / n, "macro_f1": sum(f1s) / len(f1s)}


@dataclass(frozen=True)
class TaskMetric:
    """How one task is scored (assumption 2): ``primary`` names the figure a merge table shows."""

    primary: str
    max_new_tokens: int
    metrics: Callable[[list, list], dict]


METRICS = {
    "json-extract": TaskMetric("exact_match", 40, json_metrics),
    "date-iso": TaskMetric("exact_match", 12, date_metrics),
    "intent-label": TaskMetric("accuracy", 6, label_metrics),
}
GENERIC = TaskMetric("exact_match", 32, json_metrics)


def known_tasks() -> list[str]:
    return sorted(d.name for d in TASKS.iterdir() if (d / "data.jsonl").is_file()) if TASKS.is_dir() else []


def task_path(task: str) -> Path:
    """The data file of a shipped task, or of a JSONL path given as the task."""
    p = TASKS / task / "data.jsonl"
    if p.is_file():
        return p
    q = Path(task)
    if q.suffix == ".jsonl" and q.is_file():
        return q
    raise QuantlabError(f"unknown task {task!r} (known: {', '.join(known_tasks()) or 'none installed'}, or a "
                        ".jsonl file)")


def metric_of(task: str) -> TaskMetric:
    return METRICS.get(task, GENERIC)


def splits(task: str, seed: int = 0):
    """(train, val, test) records of ``task`` exactly as a lab fine-tune splits them (same dedupe, same seed)."""
    from quantlab.lab.data import dedupe, read_jsonl, split

    records, _ = dedupe(read_jsonl(task_path(task)))
    return split(records, seed=seed)


@dataclass(frozen=True)
class TaskSet:
    """The test records of each task, read once and scored many times."""

    tests: dict  # task -> list of Record

    @classmethod
    def load(cls, tasks, items: int, seed: int = 0) -> "TaskSet":
        if items <= 0:
            raise QuantlabError(f"eval-items must be a positive integer, got {items}")
        return cls({t: splits(t, seed)[2][:items] for t in tasks})

    def score(self, model, tok) -> dict:
        """{task: {metric: value, ..., "score": primary, "items": n}} for ``model`` as it is now."""
        out = {}
        for task, recs in self.tests.items():
            m = metric_of(task)
            answers = generate_answers(model, tok, recs, m.max_new_tokens)
            vals = m.metrics(answers, [r.response for r in recs])
            out[task] = {**vals, "score": vals[m.primary], "metric": m.primary, "items": len(recs),
                         "sample": answers[0] if answers else ""}
        return out
