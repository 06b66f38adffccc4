"""Fine-tune data for the lab: read, filter, deduplicate, split, tokenize, pad or pack. One data path: the reader,
the quality filters, exact/near/semantic dedup and the length summary are :mod:`quantlab.data`'s, the code behind
``quantlab data inspect``; this module adds only what a training run needs beyond them (the lab's checks of chat
turns, the prompt/answer split, the loss weights, the batch layout).

1. Records are JSONL, read by :func:`quantlab.data.records.read_records`: one kind a file, detected from the first
   record (``messages`` chat, ``prompt`` + ``response``, ``text``) or forced; a record without its kind's fields,
   a line that is not JSON or a missing file is a one-line error naming the line (nothing is dropped silently).
   The lab trains three kinds: ``prompt`` (supervised pairs), ``chat`` (the last message is the assistant's answer,
   the earlier ones, system and earlier assistant turns included, are the prompt; a user turn is required) and
   ``text`` (continued pre-training: every token is a target). Preference pairs are refused (they are DPO's).
2. The quality filters of :mod:`quantlab.data.quality` (non-UTF-8, empty, template-only, charset mix) remove a
   record, which the run reports by reason and line; the too-long filter is not applied: a record longer than
   ``max_len`` tokens is an error naming its line (truncating or dropping it would teach a cut answer, or hide a
   wrong ``--seq``); under packing there is no per-record limit (the stream is cut into rows anyway).
3. Deduplication is :mod:`quantlab.data.dedup` in file order, the first occurrence kept: exact (the normalised
   text: NFKC, case-folded, whitespace collapsed), near (datasketch MinHash LSH over character 5-gram shingles,
   every candidate verified by its exact Jaccard >= ``near_threshold``; 1 turns it off) and, when
   ``semantic_threshold`` is given, semantic (all-MiniLM-L6-v2 cosine). A user's validation / test file is
   deduplicated with the training data, the held-out records first, so a training record that duplicates a
   held-out one is the one removed (no test item is also trained on: ``decontaminated`` counts them).
4. Training text keeps its case and is whitespace-normalised (runs of spaces/tabs to one space, line ends
   stripped, runs of blank lines to one), as the lab always trained.
5. The split is seeded (``random.Random(seed)`` shuffles the kept records; the first ``int(n * test)`` (at least 1)
   are the test split, the next ``int(n * val)`` (at least 1) validation, the rest train), so train/validation/test
   are reproducible. A split whose ratio is 0 is empty and comes from its file instead.
6. Prompts are rendered with the model's chat template (the prompt as one user turn, or the record's own messages,
   plus the generation prompt) when the tokenizer has one, else as plain text; the response follows, then the
   end-of-sequence token. ``prompt_loss_weight`` scales the loss of prompt tokens (0: learn from the response
   only; 1: prompt and response alike). A text record is its text plus EOS, every token weighted 1 (no prompt
   mask).
7. Batches are padded dynamically to their longest record (right padding, loss weight 0 on pads), or to a fixed
   width (``pad_to``). With padding, transformers builds an attention mask (under SDPA on a CPU every layer then
   saves an fp32 batch x 1 x seq x seq mask for backward, and grouped-query K/V are repeated to all heads), so a
   padded step saves more than an unpadded one of the same shape. ``pack`` instead concatenates the examples
   (each ending in EOS) into one stream cut into rows of exactly ``width`` tokens: no padding, no mask, the
   batch x seq shape the planner assumes (as TRL's ``packing=True``: an example may attend to the one before it
   in its row, and the last partial row is dropped). Text records are always packed.
8. Length statistics are :func:`quantlab.data.lengths.summary` of the tokenized examples (nearest-rank
   percentiles, EOS included).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.data import dedup as _dedup
from quantlab.data import lengths as _lengths
from quantlab.data import quality as _quality
from quantlab.data import records as _records
from quantlab.errors import QuantlabError

LAB_KINDS = ("prompt", "chat", "text")


@dataclass(frozen=True)
class Record:
    """One example. ``messages`` holds the prompt turns as ((role, content), ...) for chat records; a ``text``
    record has an empty prompt and its text as ``response``."""

    prompt: str
    response: str
    line: int
    messages: tuple = ()
    kind: str = "prompt"

    def parts(self) -> list[str]:
        """The text pieces in :mod:`quantlab.data.records` order (the dedup key's)."""
        if self.kind == "text":
            return [self.response]
        if self.messages:
            return [c for _, c in self.messages] + [self.response]
        return [self.prompt, self.response]


def normalise(s: str) -> str:
    """Whitespace normalisation of training text (assumption 4)."""
    s = re.sub(r"[ \t]+", " ", s)
    s = "\n".join(l.strip() for l in s.splitlines())
    s = re.sub(r"\n{3,}", "\n\n", s)
    return s.strip()


def _lab_record(r: _records.Record) -> Record:
    """A :class:`quantlab.data.records.Record` as the lab trains it (assumption 1); ValueError says why not."""
    f = r.fields
    if r.kind == "text":
        return Record("", normalise(f["text"]), r.line, (), "text")
    if r.kind == "prompt":
        return Record(normalise(f["prompt"]), normalise(f["response"]), r.line)
    msgs = f["messages"]
    if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
        raise ValueError("a chat record the lab trains on ends with the assistant's answer after at least one turn")
    turns = tuple((m["role"], normalise(m["content"])) for m in msgs[:-1])
    if not any(role == "user" for role, _ in turns):
        raise ValueError("no user message before the assistant's answer")
    prompt = "\n".join(f"{role}: {c}" for role, c in turns)  # for display
    return Record(prompt, normalise(msgs[-1]["content"]), r.line, turns, "chat")


@dataclass
class Loaded:
    """One file as the lab reads it: its kind, the records kept by the quality filters, and (line, reason) of
    those the filters removed."""

    path: Path
    kind: str
    records: list
    filtered: list = field(default_factory=list)


def load(path: str | Path, kind: str | None = None, what: str = "data file") -> Loaded:
    """Read and filter one file (assumptions 1, 2)."""
    p = Path(path)
    if not p.exists():
        raise QuantlabError(f"{what} {p} not found")
    recs, kind = _records.read_records(p, kind)
    if kind not in LAB_KINDS:
        raise QuantlabError(f"{p} holds {kind} records (DPO/ORPO pairs); the fine-tune lab trains prompt/response, "
                            "chat or text records")
    out, filtered = [], []
    for r in recs:
        why = _quality.reason(r)
        if why:
            filtered.append((r.line, why))
            continue
        try:
            out.append(_lab_record(r))
        except ValueError as e:
            raise QuantlabError(f"{p}: line {r.line}: {e}") from None
    if not out:
        raise QuantlabError(f"{p}: every record was removed by the quality filters "
                            f"({', '.join(sorted({w for _, w in filtered}))})")
    return Loaded(p, kind, out, filtered)


def read_jsonl(path: str | Path, kind: str | None = None) -> list[Record]:
    """The records of ``path`` the quality filters keep (:func:`load`)."""
    return load(path, kind).records


def dedup_key(r: Record) -> str:
    """The normalised text exact and near dedup compare (:func:`quantlab.data.records.normalised_text`)."""
    return _records.SEP.join(_records.normalise(x) for x in r.parts())


@dataclass
class DedupeReport:
    exact: int = 0
    near: int = 0
    semantic: int = 0
    decontaminated: int = 0  # training records removed as duplicates of a validation/test-file record
    filtered: dict = field(default_factory=dict)  # quality-filter reason -> records removed
    removed_lines: list = field(default_factory=list)  # (removed line, the line it duplicates)
    filtered_lines: list = field(default_factory=list)  # (line, reason)


def dedupe(records: list[Record], near_threshold: float = 0.9, semantic_threshold: float | None = None,
           held_out: int = 0) -> tuple[list[Record], DedupeReport]:
    """Drop exact, then near, then (optionally) semantic duplicates, the first occurrence kept (assumption 3).
    The first ``held_out`` records are a user's validation/test records: they come first, so a later (training)
    record duplicating one is the one removed; the kept list is in the given order."""
    _dedup.check_threshold("--near", near_threshold)
    if semantic_threshold is not None:
        _dedup.check_threshold("--semantic", semantic_threshold)
    rep = DedupeReport()
    keys = [dedup_key(r) for r in records]
    removed: dict[int, int] = {}

    def drop(dups, counter):
        for d in dups:
            removed[d.index] = d.of
            setattr(rep, counter, getattr(rep, counter) + 1)

    keep = lambda: [i for i in range(len(records)) if i not in removed]  # noqa: E731
    drop(_dedup.exact(keys, keep()), "exact")
    if near_threshold < 1:
        drop(_dedup.near(keys, near_threshold, keep()), "near")
    if semantic_threshold is not None:
        drop(_dedup.semantic(["\n".join(r.parts()) for r in records], semantic_threshold, keep(), progress=False),
             "semantic")
    for i in sorted(removed):
        rep.removed_lines.append((records[i].line, records[removed[i]].line))
        if i >= held_out > removed[i]:
            rep.decontaminated += 1
    return [r for i, r in enumerate(records) if i not in removed], rep


def check_ratios(val: float, test: float) -> None:
    for name, v in (("--val-ratio", val), ("--test-ratio", test)):
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise QuantlabError(f"{name} must be in [0, 1), got {v}")
    if val + test >= 1:
        raise QuantlabError(f"--val-ratio {val} + --test-ratio {test} = {val + test:g} leaves no training records "
                            "(they must sum below 1: train gets the rest)")


def split(records: list[Record], val: float = 0.1, test: float = 0.1, seed: int = 0):
    """(train, validation, test) of a seeded shuffle (assumption 5)."""
    check_ratios(val, test)
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_test = max(1, int(len(idx) * test)) if test > 0 else 0
    n_val = max(1, int(len(idx) * val)) if val > 0 else 0
    if len(idx) < n_test + n_val + 1:
        raise QuantlabError(f"{len(records)} records are too few to split into train/validation/test (need "
                            f"{n_test + n_val + 1})")
    t = [records[i] for i in idx[:n_test]]
    v = [records[i] for i in idx[n_test:n_test + n_val]]
    tr = [records[i] for i in idx[n_test + n_val:]]
    return tr, v, t


def render_prompt(tokenizer, record: Record | str) -> str:
    """The text the model sees before its answer (assumption 6)."""
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
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for r in records:
        if r.kind == "text":  # continued pre-training: every token is a target (assumption 6)
            ids = tokenizer(r.response, add_special_tokens=False)["input_ids"] + eos
            out.append(Example(ids, [1.0] * len(ids), 0, r.line))
            continue
        p = tokenizer(render_prompt(tokenizer, r), add_special_tokens=False)["input_ids"]
        a = tokenizer(r.response, add_special_tokens=False)["input_ids"] + eos
        ids = p + a
        if max_len is not None and len(ids) > max_len:
            raise QuantlabError(f"record at line {r.line} has {len(ids)} tokens, more than the context of {max_len} "
                                "(raise --seq, use --packing, or shorten it)")
        out.append(Example(ids, [prompt_loss_weight] * len(p) + [1.0] * len(a), len(p), r.line))
    return out


def length_stats(examples: list[Example]) -> dict:
    """Token lengths of ``examples`` (assumption 8), in the lab's metric names."""
    s = _lengths.summary([len(e.input_ids) for e in examples])
    return {"records": s["count"], "tokens_min": s["min"], "tokens_median": s["p50"], "tokens_max": s["max"],
            "tokens_p95": s["p95"], "tokens_total": s["total"],
            "response_tokens_median": _lengths.percentile([len(e.input_ids) - e.prompt_len for e in examples], 50)}


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


def pack(examples: list[Example], width: int, what: str = "") -> list[Example]:
    """Concatenate ``examples`` and cut the stream into rows of exactly ``width`` tokens (assumption 7)."""
    ids, w = [], []
    for e in examples:
        ids += e.input_ids
        w += e.weights
    rows = [Example(ids[i:i + width], w[i:i + width], 0, examples[0].line) for i in range(0, len(ids) - width + 1, width)]
    if not rows:
        raise QuantlabError(f"{len(ids)} {what + ' ' if what else ''}tokens are too few to pack into one row of "
                            f"{width} (lower --seq or give more data)")
    return rows


@dataclass
class Prepared:
    train: list
    val: list
    test_records: list
    test: list
    stats: dict
    dedupe: DedupeReport
    kind: str = "prompt"

    def summary(self) -> str:
        s, d = self.stats["train"], self.dedupe
        filt = "".join(f", {n} {why}" for why, n in sorted(d.filtered.items()))
        sem = f", {d.semantic} semantic" if d.semantic else ""
        dec = f" ({d.decontaminated} duplicated a validation/test-file record)" if d.decontaminated else ""
        return (f"data ({self.kind} records): {len(self.train)} train / {len(self.val)} validation / "
                f"{len(self.test)} test records; train tokens min {s['tokens_min']}, median {s['tokens_median']:g}, "
                f"p95 {s['tokens_p95']}, max {s['tokens_max']}; removed {d.exact} exact and {d.near} near{sem} "
                f"duplicates{dec}{filt}"
                + (f" (lines {', '.join(str(a) for a, _ in (d.filtered_lines + d.removed_lines)[:5])}"
                   f"{', ...' if len(d.removed_lines) + len(d.filtered_lines) > 5 else ''})"
                   if d.removed_lines or d.filtered_lines else ""))


def prepare(path: str | Path, tokenizer, max_len: int | None = 256, prompt_loss_weight: float = 0.0, seed: int = 0,
            near_threshold: float = 0.9, *, semantic_threshold: float | None = None, val_ratio: float | None = None,
            test_ratio: float | None = None, val_file: str | Path | None = None,
            test_file: str | Path | None = None, kind: str | None = None) -> Prepared:
    """Read, filter, deduplicate, split and tokenize (assumptions 1-8). ``val_file`` / ``test_file`` replace the
    split's validation / test part (their ratio then defaults to 0; a ratio above 0 with its file is an error);
    they must hold the training data's kind. Ratios left None: 0.1 each."""
    if val_file is not None and val_ratio:
        raise QuantlabError("give --val-ratio or --val-file, not both")
    if test_file is not None and test_ratio:
        raise QuantlabError("give --test-ratio or --test-file, not both")
    val_ratio = (0.0 if val_file is not None else 0.1) if val_ratio is None else val_ratio
    test_ratio = (0.0 if test_file is not None else 0.1) if test_ratio is None else test_ratio
    check_ratios(val_ratio, test_ratio)
    main = load(path, kind)
    extra = {}
    for name, f in (("val", val_file), ("test", test_file)):
        if f is not None:
            other = load(f, None, f"--{name}-file")
            if other.kind != main.kind:
                raise QuantlabError(f"--{name}-file {f} holds {other.kind} records, the training data {main.kind} "
                                    "records (give the same format)")
            extra[name] = other
    held = [r for name in ("val", "test") if name in extra for r in extra[name].records]
    kept, rep = dedupe(held + main.records, near_threshold, semantic_threshold, held_out=len(held))
    for lo in [main] + list(extra.values()):
        rep.filtered_lines += lo.filtered
    for _, why in rep.filtered_lines:
        rep.filtered[why] = rep.filtered.get(why, 0) + 1
    held_ids = {id(r) for r in held}
    train_recs = [r for r in kept if id(r) not in held_ids]
    tr, va, te = split(train_recs, val_ratio, test_ratio, seed)
    for name, part in (("val", va), ("test", te)):
        if name in extra:
            mine = {id(r) for r in extra[name].records}
            part += [r for r in kept if id(r) in mine]
    if not va:
        raise QuantlabError("no validation records: give --val-ratio above 0 or a --val-file")
    if not te:
        raise QuantlabError("no test records: give --test-ratio above 0 or a --test-file")
    train = tokenize(tr, tokenizer, max_len, prompt_loss_weight)
    val = tokenize(va, tokenizer, max_len, prompt_loss_weight)
    test = tokenize(te, tokenizer, max_len, prompt_loss_weight)
    stats = {"train": length_stats(train), "val": length_stats(val), "test": length_stats(test),
             "exact_duplicates": rep.exact, "near_duplicates": rep.near, "semantic_duplicates": rep.semantic,
             "decontaminated": rep.decontaminated, "filtered": dict(rep.filtered)}
    return Prepared(train, val, te, test, stats, rep, main.kind)
