"""Instruction data for fine-tunes: read, check, clean, deduplicate, split, tokenize, pad.

1. Records are JSONL, one object a line: ``{"prompt": ..., "response": ...}`` or ``{"messages": [{"role", "content"},
   ...]}`` whose last message is the assistant's answer. A bad line is reported by its line number; a data set
   with bad lines is refused (nothing is dropped silently).
2. Whitespace is normalised (runs of spaces/tabs to one space, line ends stripped, blank-line runs to one).
3. Exact duplicates (after normalisation) are removed, then near duplicates: two records whose character
   5-gram shingle sets have a Jaccard similarity >= ``near_threshold`` (default 0.9) keep only the first. This is
   computed by hand (all pairs, sets of shingles): fine for the thousands of records a CPU fine-tune uses, and it
   avoids a model download; for large sets a MinHash index (datasketch) would be the tool.
4. The split is seeded (``random.Random(seed)``), so train/validation/test are reproducible.
5. Prompts are rendered with the model's chat template (user turn + generation prompt) when it has one; the
   response follows, then the end-of-sequence token. ``prompt_loss_weight`` scales the loss of prompt tokens
   (0: learn from the response only; 1: prompt and response alike).
6. A record longer than ``max_len`` tokens is an error that names its line (truncating it would teach a cut answer).
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
    prompt: str
    response: str
    line: int


def normalise(s: str) -> str:
    s = re.sub(r"[ \t]+", " ", s)
    s = "\n".join(l.strip() for l in s.splitlines())
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


def _from_obj(obj, line: int) -> Record:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2 or not all(isinstance(m, dict) for m in msgs):
            raise ValueError("'messages' must be a list of at least two {role, content} objects")
        if msgs[-1].get("role") != "assistant":
            raise ValueError("the last message must be the assistant's")
        prompt = "\n".join(str(m.get("content", "")) for m in msgs[:-1] if m.get("role") != "system")
        return Record(normalise(prompt), normalise(str(msgs[-1].get("content", ""))), line)
    if not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("response"), str):
        raise ValueError("needs string fields 'prompt' and 'response' (or 'messages')")
    return Record(normalise(obj["prompt"]), normalise(obj["response"]), line)


def read_jsonl(path: str | Path) -> list[Record]:
    p = Path(path)
    if not p.is_file():
        raise QuantlabError(f"data file {p} not found")
    records, errors = [], []
    for i, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
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


def _shingles(s: str, k: int = 5) -> set:
    return {s[i:i + k] for i in range(max(1, len(s) - k + 1))}


@dataclass
class DedupeReport:
    exact: int = 0
    near: int = 0
    removed_lines: list = field(default_factory=list)


def dedupe(records: list[Record], near_threshold: float = 0.9) -> tuple[list[Record], DedupeReport]:
    rep = DedupeReport()
    seen, kept = set(), []
    for r in records:
        key = (r.prompt, r.response)
        if key in seen:
            rep.exact += 1
            rep.removed_lines.append(r.line)
            continue
        seen.add(key)
        kept.append(r)
    if near_threshold >= 1:
        return kept, rep
    out, sh = [], []
    for r in kept:
        s = _shingles(r.prompt + "\n" + r.response)
        if any(len(s & t) / len(s | t) >= near_threshold for t in sh):
            rep.near += 1
            rep.removed_lines.append(r.line)
            continue
        out.append(r)
        sh.append(s)
    return out, rep


def split(records: list[Record], val: float = 0.1, test: float = 0.1, seed: int = 0):
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_test, n_val = max(1, int(len(idx) * test)), max(1, int(len(idx) * val))
    if len(idx) < n_test + n_val + 1:
        raise QuantlabError(f"{len(records)} records are too few to split into train/validation/test")
    t = [records[i] for i in idx[:n_test]]
    v = [records[i] for i in idx[n_test:n_test + n_val]]
    tr = [records[i] for i in idx[n_test + n_val:]]
    return tr, v, t


def render_prompt(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


@dataclass
class Example:
    input_ids: list
    weights: list  # per-token loss weight (0 for ignored)
    prompt_len: int
    line: int


def tokenize(records: list[Record], tokenizer, max_len: int, prompt_loss_weight: float = 0.0) -> list[Example]:
    if not 0.0 <= prompt_loss_weight <= 1.0:
        raise QuantlabError("prompt-loss-weight must be in [0, 1]")
    out = []
    eos = tokenizer.eos_token_id
    for r in records:
        p = tokenizer(render_prompt(tokenizer, r.prompt), add_special_tokens=False)["input_ids"]
        a = tokenizer(r.response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids = p + a
        if len(ids) > max_len:
            raise QuantlabError(f"record at line {r.line} has {len(ids)} tokens, more than the context of {max_len} "
                                "(raise --max-len or shorten it)")
        out.append(Example(ids, [prompt_loss_weight] * len(p) + [1.0] * len(a), len(p), r.line))
    return out


def length_stats(examples: list[Example]) -> dict:
    n = sorted(len(e.input_ids) for e in examples)
    return {"records": len(n), "tokens_min": n[0], "tokens_median": statistics.median(n), "tokens_max": n[-1],
            "tokens_p95": n[min(len(n) - 1, int(0.95 * len(n)))], "tokens_total": sum(n)}


def collate(batch: list[Example], pad_id: int):
    """Dynamic padding: pad to the longest example of this batch (right padding, weight 0 on pads)."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    w = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        w[i, :n] = torch.tensor(e.weights)
    return ids, mask, w


@dataclass
class Prepared:
    train: list
    val: list
    test_records: list
    test: list
    stats: dict
    dedupe: DedupeReport


def prepare(path: str | Path, tokenizer, max_len: int = 256, prompt_loss_weight: float = 0.0, seed: int = 0,
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
