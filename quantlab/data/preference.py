"""Reading preference JSONL (DPO / ORPO / SimPO / reward pairs) as TRL 1.16's preference trainers take it.

:mod:`quantlab.data.records` reads every kind for ``quantlab data inspect`` (dedup, lengths); this module is the
stricter reader a preference run needs: one :class:`Pair` per record, checked the way TRL's trainers use it.

Assumptions (R1, R2, ...), from ``trl/data_utils.py`` (``is_conversational``, ``extract_prompt``,
``maybe_apply_chat_template``) and ``trl/trainer/dpo_trainer.py`` (TRL 1.16.0):

R1. One JSON object a line; blank lines are skipped; a line that is not JSON, or a record that breaks R2-R5, is a
    one-line error naming the file and the line, as :mod:`quantlab.data.records` writes them (the data set is
    refused, nothing is dropped silently).
R2. A record has ``chosen`` and ``rejected``, and may have ``prompt`` (TRL's explicit-prompt layout). Without a
    prompt TRL takes the longest common prefix of chosen and rejected as the prompt (``extract_prompt``); so does
    :meth:`Pair.split`.
R3. The standard format has strings; the conversational format has lists of ``{"role", "content"}`` messages
    (role system, user, assistant or tool; content a string). One record uses one format throughout (TRL decides
    the format from the first field it looks at and applies the chat template to all of them).
R4. A conversational completion (chosen, rejected) ends with the assistant's message: it is what the policy is
    scored on.
R5. Chosen and rejected differ: an identical pair has a DPO loss gradient of zero (the margin is 0 by
    construction) and teaches nothing.
R6. Fields other than prompt/chosen/rejected are kept (``extra``) and ignored by the trainers.
R7. KTO is unpaired (``trl/trainer/kto_trainer.py``: rows of ``prompt``, ``completion`` and a boolean ``label``,
    True for a desirable completion): :func:`unpaired` turns each pair into two rows, the chosen completion with
    label True then the rejected one with label False, in the pairs' order (the prompt is the pair's, explicit or
    extracted, R2). KTOConfig's default sampler is sequential (its KL term pairs neighbours in a batch), so a batch
    of an even size holds as many desirable as undesirable completions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.data.records import ROLES
from quantlab.errors import QuantlabError

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    """One preference record: its 1-based ``line``, ``prompt`` (None when implicit, R2), ``chosen`` and
    ``rejected`` (strings, or message lists in the conversational format, R3) and any other fields (R6)."""

    line: int
    chosen: str | list
    rejected: str | list
    prompt: str | list | None = None
    extra: dict = field(default_factory=dict)

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)

    def split(self) -> tuple:
        """(prompt, chosen, rejected) with the prompt explicit: the record's own, else the longest common prefix of
        chosen and rejected (R2, as ``trl.data_utils.extract_prompt``: message by message for conversations)."""
        if self.prompt is not None:
            return self.prompt, self.chosen, self.rejected
        c, r = self.chosen, self.rejected
        n = 0
        for n in range(min(len(c), len(r))):  # extract_prompt's loop, quirks kept (TRL 1.16 data_utils.py)
            if c[n] != r[n]:
                if c[n - 1] == " ":  # the space before the completion goes with the completion
                    n -= 1
                break
        return c[:n], c[n:], r[n:]

    def trl(self) -> dict:
        """The record as a TRL preference dataset row (``prompt``, ``chosen``, ``rejected``)."""
        p, c, r = self.split()
        return {"prompt": p, "chosen": c, "rejected": r}


@dataclass(frozen=True)
class Unpaired:
    """One KTO row (R7): the pair's ``line``, ``prompt``, one ``completion`` and its ``label`` (True: chosen)."""

    line: int
    prompt: str | list
    completion: str | list
    label: bool

    @property
    def conversational(self) -> bool:
        return isinstance(self.completion, list)


def unpaired(pairs) -> list[Unpaired]:
    """KTO's unpaired rows of preference pairs (R7): chosen -> True, rejected -> False, pair by pair."""
    out = []
    for p in pairs:
        prompt, chosen, rejected = p.split()
        out += [Unpaired(p.line, prompt, chosen, True), Unpaired(p.line, prompt, rejected, False)]
    return out


def _messages(v, what: str) -> list:
    if not v or not all(isinstance(m, dict) for m in v):
        raise ValueError(f"'{what}' must be a non-empty list of {{role, content}} objects")
    for k, m in enumerate(v, 1):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"'{what}' message {k} needs a role ({', '.join(ROLES)}) and a string content")
    return [{"role": m["role"], "content": m["content"]} for m in v]


def pair_of(obj, line: int) -> Pair:
    """The :class:`Pair` of one decoded record (R2-R6); ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if missing:
        raise ValueError(f"a preference record needs 'chosen' and 'rejected'; '{missing[0]}' is missing")
    vals = {k: obj[k] for k in FIELDS if k in obj}
    kinds = {k: "list" if isinstance(v, list) else "str" if isinstance(v, str) else None for k, v in vals.items()}
    for k, kind in kinds.items():
        if kind is None:
            raise ValueError(f"'{k}' must be a string or a list of messages, got {type(vals[k]).__name__}")
    if len(set(kinds.values())) > 1:
        which = ", ".join(f"{k} {v}" for k, v in kinds.items())
        raise ValueError(f"one record mixes the standard (strings) and conversational (message lists) formats "
                         f"({which})")
    if kinds["chosen"] == "list":
        vals = {k: _messages(v, k) for k, v in vals.items()}
        for k in ("chosen", "rejected"):
            if vals[k][-1]["role"] != "assistant":
                raise ValueError(f"'{k}' must end with the assistant's message (the completion scored)")
    elif not vals["chosen"].strip() or not vals["rejected"].strip():
        raise ValueError(f"'{'chosen' if not vals['chosen'].strip() else 'rejected'}' is empty")
    if vals["chosen"] == vals["rejected"]:
        raise ValueError("'chosen' and 'rejected' are identical: the pair teaches nothing (a DPO margin of 0)")
    extra = {k: v for k, v in obj.items() if k not in FIELDS}
    return Pair(line, vals["chosen"], vals["rejected"], vals.get("prompt"), extra)


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a preference JSONL file (R1-R6); a missing file or a bad record is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise QuantlabError(f"data file {p} not found" if not p.exists() else f"data file {p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QuantlabError(f"{p}: not UTF-8 (byte {e.start}); preference data is read as text") from None
    except OSError as e:
        raise QuantlabError(f"cannot read data file {p}: {e.strerror or e}") from None
    out = []
    for i, s in enumerate(text.split("\n"), 1):
        if not s.strip():
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise QuantlabError(f"{p}: line {i} is not JSON ({e.msg} at column {e.colno})") from None
        try:
            out.append(pair_of(obj, i))
        except ValueError as e:
            raise QuantlabError(f"{p}: line {i}: {e}") from None
    if not out:
        raise QuantlabError(f"{p} holds no records")
    return out
