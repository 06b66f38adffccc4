"""Reading fine-tuning JSONL: four kinds of record, detected or forced, one normalised text each.

Assumptions:

1. One JSON object a line; blank lines are skipped. The kinds and the fields each needs:
   - ``prompt``: ``prompt`` and ``response`` strings (supervised fine-tuning pairs, as ``quantlab lab finetune``
     reads them);
   - ``chat``: ``messages``, a list of at least one ``{"role", "content"}`` object (role system, user, assistant
     or tool; content a string), as transformers' ``apply_chat_template`` takes them;
   - ``text``: a ``text`` string (continued pre-training on raw text);
   - ``preference``: ``chosen`` and ``rejected`` (strings, or message lists as TRL's conversational preference
     format has them), with an optional ``prompt`` string (TRL's DPO/ORPO/KTO-pair layout).
2. Detection reads the first record: ``messages`` means chat, ``chosen`` preference, ``prompt`` prompt, ``text``
   text (in that order). Every later record must carry its kind's fields: a record without them is a one-line
   error naming its line (the data set is refused, nothing is dropped silently). ``--kind`` forces a kind.
3. A line that is not UTF-8 is not an error: it is decoded with replacement characters, kept as a record and
   removed by the non-UTF-8 filter (:mod:`quantlab.data.quality`), so the report counts it. A line that is not
   JSON is an error (it is no record at all).
4. The normalised text (the key of exact and near deduplication) is Unicode NFKC, case-folded, with every run of
   whitespace collapsed to one space, fields joined in a fixed order with a field separator (U+241E) that no
   normalised field contains, so {"prompt": "a b", "response": "c"} and {"prompt": "a", "response": "b c"} differ.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError

KINDS = ("prompt", "chat", "text", "preference")
ROLES = ("system", "user", "assistant", "tool")
SEP = "\u241e"  # SYMBOL FOR RECORD SEPARATOR: joins fields in the normalised text (assumption 4)
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Record:
    """One record: its 1-based ``line``, its ``kind``, its fields (``fields``: name -> str or message list),
    the ``raw`` bytes of its line (what ``--write-clean`` copies) and whether those bytes were UTF-8."""

    line: int
    kind: str
    fields: dict
    raw: bytes
    utf8: bool = True

    def parts(self) -> list[str]:
        """The record's text pieces in a fixed order (message contents in turn order)."""
        out = []
        for name in _ORDER[self.kind]:
            v = self.fields.get(name)
            if v is None:
                continue
            if isinstance(v, list):
                out += [m["content"] for m in v]
            else:
                out.append(v)
        return out

    @property
    def text(self) -> str:
        """The record's content as one display string (fields joined by newlines)."""
        return "\n".join(self.parts())


_ORDER = {"prompt": ("prompt", "response"), "chat": ("messages",), "text": ("text",),
          "preference": ("prompt", "chosen", "rejected")}


def normalise(s: str) -> str:
    """NFKC, case-folded, whitespace runs to one space, stripped (assumption 4)."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def normalised_text(r: Record) -> str:
    return SEP.join(normalise(p) for p in r.parts())


def detect_kind(obj) -> str | None:
    """The kind a record's keys say (assumption 2), or None."""
    if not isinstance(obj, dict):
        return None
    for key, kind in (("messages", "chat"), ("chosen", "preference"), ("prompt", "prompt"), ("text", "text")):
        if key in obj:
            return kind
    return None


def _messages(v, what: str) -> list:
    if not isinstance(v, list) or not v or not all(isinstance(m, dict) for m in v):
        raise ValueError(f"'{what}' must be a non-empty list of {{role, content}} objects")
    for k, m in enumerate(v):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"'{what}' message {k + 1} needs a role ({', '.join(ROLES)}) and a string content")
    return [{"role": m["role"], "content": m["content"]} for m in v]


def fields_of(obj, kind: str) -> dict:
    """The fields ``kind`` needs from ``obj`` (assumption 1); ValueError says which are missing."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if kind == "chat":
        return {"messages": _messages(obj.get("messages"), "messages")}
    if kind == "text":
        if not isinstance(obj.get("text"), str):
            raise ValueError("a text record needs a string field 'text'")
        return {"text": obj["text"]}
    if kind == "prompt":
        if not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("response"), str):
            raise ValueError("a prompt record needs string fields 'prompt' and 'response'")
        return {"prompt": obj["prompt"], "response": obj["response"]}
    out: dict = {}
    for name in ("chosen", "rejected"):
        v = obj.get(name)
        if isinstance(v, str):
            out[name] = v
        elif isinstance(v, list):
            out[name] = _messages(v, name)
        else:
            raise ValueError("a preference record needs 'chosen' and 'rejected' (strings or message lists)")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str):
            raise ValueError("a preference record's 'prompt' must be a string")
        out["prompt"] = obj["prompt"]
    return out


def read_records(path: str | Path, kind: str | None = None) -> tuple[list[Record], str]:
    """(records, kind) of a JSONL file (assumptions 1-3); a missing file or a bad record is a one-line error."""
    p = Path(path)
    if kind is not None and kind not in KINDS:
        raise QuantlabError(f"unknown --kind {kind!r}; kinds: {', '.join(KINDS)}")
    if not p.is_file():
        raise QuantlabError(f"data file {p} not found" if not p.exists() else f"data file {p} is not a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise QuantlabError(f"cannot read data file {p}: {e.strerror or e}") from None
    records: list[Record] = []
    forced = kind is not None
    for i, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            s, utf8 = raw.decode("utf-8"), True
        except UnicodeDecodeError:
            s, utf8 = raw.decode("utf-8", errors="replace"), False
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise QuantlabError(f"{p}: line {i} is not JSON ({e.msg} at column {e.colno})") from None
        if kind is None:
            kind = detect_kind(obj)
            if kind is None:
                raise QuantlabError(f"{p}: line {i}: cannot tell the record kind (expected 'prompt'+'response', "
                                    "'messages', 'text' or 'chosen'+'rejected'); give --kind")
        try:
            fields = fields_of(obj, kind)
        except ValueError as e:
            how = "given by --kind" if forced else "detected from the first record; --kind forces one"
            raise QuantlabError(f"{p}: line {i}: {e} (kind {kind}, {how})") from None
        records.append(Record(i, kind, fields, raw, utf8))
    if not records:
        raise QuantlabError(f"{p} holds no records")
    return records, kind
