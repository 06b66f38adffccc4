"""Reading labelled-classification JSONL: one text and its labels a line (multi-label or single-label).

Assumptions:

1. One JSON object a line; blank lines are skipped. A record has a ``text`` string and a ``labels`` list of 1 or
   more distinct non-empty strings (the layout of ``tasks/genre-multilabel``; one label is a single-label record).
   Other keys are ignored.
2. A line that is not UTF-8, not JSON, not an object, or without a valid ``text``/``labels`` is a one-line error
   naming ``file:line`` (:class:`~quantlab.errors.QuantlabError`, exit 2): the data set is refused, nothing is
   dropped silently (the same rule as :mod:`quantlab.data.records`).
3. The label set is the sorted union of the labels over the files read, unless ``labels`` is given; a record with
   a label outside a given set is an error naming the label and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError


@dataclass(frozen=True)
class LabelledText:
    """One record: its 1-based ``line``, its ``text`` and its ``labels`` in file order."""

    line: int
    text: str
    labels: tuple


def _labels(v) -> tuple:
    if not isinstance(v, list) or not v:
        raise ValueError("'labels' must be a non-empty list of strings")
    if not all(isinstance(x, str) and x.strip() for x in v):
        raise ValueError("'labels' must hold non-empty strings only")
    if len(set(v)) != len(v):
        dup = next(x for x in v if v.count(x) > 1)
        raise ValueError(f"label {dup!r} is repeated")
    return tuple(v)


def read_labelled(path: str | Path, labels: tuple | None = None) -> list[LabelledText]:
    """The records of a labelled-classification JSONL file (assumptions 1-3)."""
    p = Path(path)
    if not p.is_file():
        raise QuantlabError(f"data file {p} not found" if not p.exists() else f"data file {p} is not a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise QuantlabError(f"cannot read data file {p}: {e.strerror or e}") from None
    known = set(labels) if labels is not None else None
    out: list[LabelledText] = []
    for i, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise QuantlabError(f"{p}:{i}: the line is not UTF-8") from None
        except json.JSONDecodeError as e:
            raise QuantlabError(f"{p}:{i}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise QuantlabError(f"{p}:{i}: a record must be a JSON object with 'text' and 'labels'")
        if not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise QuantlabError(f"{p}:{i}: a record needs a non-empty string field 'text'")
        try:
            labs = _labels(obj.get("labels"))
        except ValueError as e:
            raise QuantlabError(f"{p}:{i}: {e}") from None
        if known is not None:
            bad = [x for x in labs if x not in known]
            if bad:
                raise QuantlabError(f"{p}:{i}: unknown label {bad[0]!r} (labels: {', '.join(labels)})")
        out.append(LabelledText(i, obj["text"], labs))
    if not out:
        raise QuantlabError(f"{p} holds no records")
    return out


def label_set(*record_lists) -> tuple:
    """The sorted union of the labels of ``record_lists`` (assumption 3)."""
    return tuple(sorted({x for recs in record_lists for r in recs for x in r.labels}))


def multi_hot(records, labels: tuple) -> list[list[int]]:
    """One 0/1 row per record over ``labels`` (the target layout of ``BCEWithLogitsLoss``)."""
    index = {x: j for j, x in enumerate(labels)}
    rows = []
    for r in records:
        row = [0] * len(labels)
        for x in r.labels:
            row[index[x]] = 1
        rows.append(row)
    return rows
