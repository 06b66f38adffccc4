"""Instruction data for fine-tunes: read, check, clean, deduplicate, split, tokenize, pad.

1. Records are JSONL, one object a line: ``{"prompt": ..., "response": ...}`` or ``{"messages": [{"role",
   "content"}, ...]}`` whose last message is the assistant's answer (the earlier ones, system turns and earlier
   assistant turns included, are the prompt). A bad line is reported by its line number; a data set with bad
   lines is refused (nothing is dropped silently).
2. Whitespace is normalised (runs of spaces/tabs to one space, line ends stripped, runs of blank lines to one).
3. Exact duplicates (after normalisation) are removed, then near duplicates: two records whose character
   5-gram shingle sets have a Jaccard similarity >= ``near_threshold`` (default 0.9) keep only the first.
   Computed by hand over all pairs (sets of shingles, with the size bound J(A, B) <= min(|A|, |B|) / max(|A|, |B|)
   skipping pairs that cannot reach the threshold): exact, deterministic and download-free, fine for the
   thousands of records a CPU fine-tune uses; for millions a MinHash-LSH index (e.g. datasketch) is the tool.
4. The split is seeded (``random.Random(seed)``), so train/validation/test are reproducible.
5. Prompts are rendered with the model's chat template (the prompt as one user turn, or the record's own messages,
   plus the generation prompt) when the tokenizer has one, else as plain text; the response follows, then the
   end-of-sequence token. ``prompt_loss_weight`` scales the loss of prompt tokens (0: learn from the response
   only; 1: prompt and response alike).
6. A record longer than ``max_len`` tokens is an error that names its line (truncating it would teach a cut answer);
   under packing (7) there is no per-record limit (``max_len=None``): the stream is cut into rows anyway.
7. Batches are padded dynamically to their longest record (right padding, loss weight 0 on pads), or to a fixed
   width (``pad_to``). With padding, transformers builds an attention mask (under SDPA on a CPU every layer then
   saves an fp32 batch x 1 x seq x seq mask for backward, and grouped-query K/V are repeated to all heads), so a
   padded step saves more than an unpadded one of the same shape. ``pack`` instead concatenates the examples
   (each ending in EOS) into one stream cut into rows of exactly ``width`` tokens: no padding, no mask, the
   batch x seq shape the planner assumes (as TRL's ``packing=True``: an example may attend to the one before it
   in its row, and the last partial row is dropped).
"""

from __future__ import annotations

import json
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.errors import QuantlabError


@dataclass(frozen=True)
class Record:
    """One example. ``messages`` holds the prompt turns as ((role, content), ...) for chat records."""

    prompt: str
    response: str
    line: int
    messages: tuple = ()


def normalise(s: str) -> str:
    s = re.sub(r"[ \t]+", " ", s)
    s = "\n".join(l.strip() for l in s.splitlines())
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


ROLES = ("system", "user", "assistant")


def _from_obj(obj, line: int) -> Record:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2 or not all(isinstance(m, dict) for m in msgs):
            raise ValueError("'messages' must be a list of at least two {role, content} objects")
        for k, m in enumerate(msgs):
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"message {k + 1} needs a role ({', '.join(ROLES)}) and a string content")
        if msgs[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's")
        turns = tuple((m["role"], normalise(m["content"])) for m in msgs[:-1])
        if not any(role == "user" for role, _ in turns):
            raise ValueError("no user message before the assistant's answer")
        prompt = "\n".join(f"{role}: {c}" for role, c in turns)  # for display and deduplication
        return Record(prompt, normalise(msgs[-1]["content"]), line, turns)
    if not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("response"), str):
        raise ValueError("needs string fields 'prompt' and 'response' (or 'messages')")
    return Record(normalise(obj["prompt"]), normalise(obj["response"]), line)


def read_jsonl(path: str | Path) -> list[Record]:
    p = Path(path)
    if not p.is_file():
        raise QuantlabError(f"data file {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QuantlabError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    records, errors = [], []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            r = _from_obj(json.loads(raw), i)
            if not r.prompt or not r.response:
                raise ValueError("empty prompt or response")
            records.append(r)
        except (json.JSONDecodeError, ValueError) as e:
            errors.append(f"line {i}: {e.msg if isinstance(e, json.JSONDecodeError) else e}")
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise QuantlabError(f"{p}: {len(errors)} bad record(s): {'; '.join(errors[:3])}{more}")
    if not records:
        raise QuantlabError(f"{p} holds no records")
    return records


def _shingles(s: str, k: int = 5) -> frozenset:
    return frozenset(s[i:i + k] for i in range(max(1, len(s) - k + 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class DedupeReport:
    exact: int = 0
    near: int = 0
    removed_lines: list = field(default_factory=list)  # (removed line, the line it duplicates)


def dedupe(records: list[Record], near_threshold: float = 0.9) -> tuple[list[Record], DedupeReport]:
    """Drop exact, then near duplicates (assumption 3); the first occurrence stays."""
    rep = DedupeReport()
    first: dict = {}
    kept = []
    for r in records:
        key = (r.prompt, r.response)
        if key in first:
            rep.exact += 1
            rep.removed_lines.append((r.line, first[key]))
            continue
        first[key] = r.line
        kept.append(r)
    if near_threshold >= 1:
        return kept, rep
    out, sh = [], []
    for r in kept:
        s = _shingles(r.prompt + "\n" + r.response)
        dup = next((line for line, t in sh if min(len(s), len(t)) >= near_threshold * max(len(s), len(t))
                    and jaccard(s, t) >= near_threshold), None)
        if dup is not None:
            rep.near += 1
            rep.removed_lines.append((r.line, dup))
            continue
        out.append(r)
        sh.append((r.line, s))
    return out, rep


def split(records: list[Record], val: float = 0.1, test: float = 0.1, seed: int = 0):
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_test, n_val = max(1, int(len(idx) * test)), max(1, int(len(idx) * val))
    if len(idx) < n_test + n_val + 1:
        raise QuantlabError(f"{len(records)} records are too few to split into train/validation/test (need 3)")
    t = [records[i] for i in idx[:n_test]]
    v = [records[i] for i in idx[n_test:n_test + n_val]]
    tr = [records[i] for i in idx[n_test + n_val:]]
    return tr, v, t


def render_prompt(tokenizer, record: Record | str) -> str:
    """The text the model sees before its answer (assumption 5)."""
    if isinstance(record, str):
        record = Record(record, "", 0)
    turns = [{"role": r, "content": c} for r, c in record.messages] or [{"role": "user", "content": record.prompt}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    if record.messages:
        return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant: "
    return record.prompt + "\n"


@dataclass
class Example:
    input_ids: list
    weights: list  # per-token loss weight (0 for ignored)
    prompt_len: int
    line: int


def tokenize(records: list[Record], tokenizer, max_len: int | None, prompt_loss_weight: float = 0.0) -> list[Example]:
    if not 0.0 <= prompt_loss_weight <= 1.0:
        raise QuantlabError("prompt-loss-weight must be in [0, 1]")
    out = []
    eos = tokenizer.eos_token_id
    for r in records:
        p = tokenizer(render_prompt(tokenizer, r), add_special_tokens=False)["input_ids"]
        a = tokenizer(r.response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids = p + a
        if max_len is not None and len(ids) > max_len:
            raise QuantlabError(f"record at line {r.line} has {len(ids)} tokens, more than the context of {max_len} "
                                "(raise --max-len or shorten it)")
        out.append(Example(ids, [prompt_loss_weight] * len(p) + [1.0] * len(a), len(p), r.line))
    return out


def length_stats(examples: list[Example]) -> dict:
    n = sorted(len(e.input_ids) for e in examples)
    return {"records": len(n), "tokens_min": n[0], "tokens_median": statistics.median(n), "tokens_max": n[-1],
            "tokens_p95": n[min(len(n) - 1, int(0.95 * len(n)))], "tokens_total": sum(n),
            "response_tokens_median": statistics.median(len(e.input_ids) - e.prompt_len for e in examples)}


def collate(batch: list[Example], pad_id: int, pad_to: int | None = None):
    """Pad to the longest example of this batch, or to ``pad_to`` (assumption 7): (ids, attention mask, weights)."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    if pad_to is not None:
        if pad_to < width:
            raise QuantlabError(f"a batch holds {width} tokens, more than the fixed width {pad_to}")
        width = pad_to
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    w = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        w[i, :n] = torch.tensor(e.weights)
    return ids, mask, w


def pack(examples: list[Example], width: int) -> list[Example]:
    """Concatenate ``examples`` and cut the stream into rows of exactly ``width`` tokens (assumption 7)."""
    ids, w = [], []
    for e in examples:
        ids += e.input_ids
        w += e.weights
    rows = [Example(ids[i:i + width], w[i:i + width], 0, examples[0].line) for i in range(0, len(ids) - width + 1, width)]
    if not rows:
        raise QuantlabError(f"{len(ids)} tokens are too few to pack into one row of {width}")
    return rows


@dataclass
class Prepared:
    train: list
    val: list
    test_records: list
    test: list
    stats: dict
    dedupe: DedupeReport

    def summary(self) -> str:
        s = self.stats["train"]
        return (f"data: {len(self.train)} train / {len(self.val)} validation / {len(self.test)} test records; "
                f"train tokens min {s['tokens_min']}, median {s['tokens_median']:g}, p95 {s['tokens_p95']}, max "
                f"{s['tokens_max']}; removed {self.dedupe.exact} exact and {self.dedupe.near} near duplicates"
                + (f" (lines {', '.join(str(a) for a, _ in self.dedupe.removed_lines[:5])}"
                   f"{', ...' if len(self.dedupe.removed_lines) > 5 else ''})" if self.dedupe.removed_lines else ""))


def prepare(path: str | Path, tokenizer, max_len: int | None = 256, prompt_loss_weight: float = 0.0, seed: int = 0,
            near_threshold: float = 0.9) -> Prepared:
    records = read_jsonl(path)
    records, rep = dedupe(records, near_threshold)
    tr, va, te = split(records, seed=seed)
    train = tokenize(tr, tokenizer, max_len, prompt_loss_weight)
    val = tokenize(va, tokenizer, max_len, prompt_loss_weight)
    test = tokenize(te, tokenizer, max_len, prompt_loss_weight)
    stats = {"train": length_stats(train), "val": length_stats(val), "test": length_stats(test),
             "exact_duplicates": rep.exact, "near_duplicates": rep.near}
    return Prepared(train, val, te, test, stats, rep)
