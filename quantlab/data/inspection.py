"""``quantlab data inspect``: the whole report on one data set, and its cleaned copy.

Order of the passes (each runs over what the earlier ones kept, in file order; a record is removed for one reason,
the first that applies): the quality filters (:mod:`quantlab.data.quality`), exact duplicates, near duplicates,
semantic duplicates (:mod:`quantlab.data.dedup`). Token lengths (:mod:`quantlab.data.lengths`) are counted for
every record (the too-long filter needs them) and summarised over the kept ones: the set a fine-tune would train
on, and the one :mod:`quantlab.data.dataplan` plans from.

``--write-clean OUT`` copies the kept records' lines byte for byte, in their order, and writes the removal record
beside it (one JSON object a line: ``line``, ``reason``, and for a duplicate ``of_line`` and ``similarity``). Both
files are checked writable before any work and written atomically (``quantlab.fileio``): a failed or interrupted
run leaves the old files or none, never half of one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.data import dedup, lengths, quality
from quantlab.data.records import Record, normalised_text, read_records

REASONS = quality.FILTERS + ("exact_duplicate", "near_duplicate", "semantic_duplicate")


@dataclass(frozen=True)
class InspectOptions:
    """What to check. ``semantic`` None skips semantic dedup (it loads an embedding model); ``model`` None is the
    embedded SmolLM2 tokenizer; ``tokenizer`` False skips token lengths (no histogram, no too-long filter)."""

    path: str
    kind: str | None = None
    model: str | None = None
    near: float = 0.9
    semantic: float | None = None
    max_len: int | None = None
    tokenizer: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        dedup.check_threshold("--near", self.near)
        if self.semantic is not None:
            dedup.check_threshold("--semantic", self.semantic)
        if self.max_len is not None and self.max_len < 1:
            from quantlab.errors import QuantlabError

            raise QuantlabError(f"--max-len must be at least 1, got {self.max_len}")


@dataclass
class Inspection:
    """The result: the records, why each removed one went, the token lengths and the report document."""

    records: list[Record]
    removed: dict[int, dict] = field(default_factory=dict)  # index -> {"reason", "of", "similarity"}
    tokens: list[int] | None = None
    doc: dict = field(default_factory=dict)

    @property
    def kept(self) -> list[int]:
        return [i for i in range(len(self.records)) if i not in self.removed]

    def removal_lines(self) -> list[dict]:
        out = []
        for i in sorted(self.removed):
            r = self.removed[i]
            row = {"line": self.records[i].line, "reason": r["reason"]}
            if r.get("of") is not None:
                row.update(of_line=self.records[r["of"]].line, similarity=round(r["similarity"], 4))
            out.append(row)
        return out


def _wrap(progress: bool) -> Callable | None:
    if not progress:
        return None
    from tqdm import tqdm

    return lambda it, total=None, desc=None: tqdm(it, total=total, desc=desc, file=sys.stderr, leave=False)


class _Clock:
    """Wall and CPU seconds (all threads of this process) per pass: on a shared machine the two differ."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t = self._c = 0.0

    def start(self) -> None:
        self._t, self._c = time.perf_counter(), time.process_time()

    def stop(self, name: str) -> None:
        self.wall[name] = time.perf_counter() - self._t
        self.cpu[name] = time.process_time() - self._c


def inspect(opts: InspectOptions) -> Inspection:
    clock = _Clock()
    clock.start()
    records, kind = read_records(opts.path, opts.kind)
    clock.stop("read_s")
    ins = Inspection(records)
    tok_name = None
    if opts.tokenizer:
        clock.start()
        tok = lengths.load_tokenizer(opts.model, progress=opts.progress)
        tok_name = opts.model or "smollm2-135m"
        ins.tokens = lengths.token_lengths(tok, records)
        clock.stop("tokenize_s")
    clock.start()
    for i, r in enumerate(records):
        why = quality.reason(r, ins.tokens[i] if ins.tokens else None, opts.max_len)
        if why:
            ins.removed[i] = {"reason": why}
    clock.stop("filters_s")
    clock.start()
    norm = [normalised_text(r) for r in records]
    for d in dedup.exact(norm, ins.kept):
        ins.removed[d.index] = {"reason": "exact_duplicate", "of": d.of, "similarity": d.similarity}
    clock.stop("exact_s")
    clock.start()
    for d in dedup.near(norm, opts.near, ins.kept, progress=_wrap(opts.progress)):
        ins.removed[d.index] = {"reason": "near_duplicate", "of": d.of, "similarity": d.similarity}
    clock.stop("near_s")
    if opts.semantic is not None:
        clock.start()
        for d in dedup.semantic([r.text for r in records], opts.semantic, ins.kept, progress=opts.progress,
                                wrap=_wrap(opts.progress)):
            ins.removed[d.index] = {"reason": "semantic_duplicate", "of": d.of, "similarity": d.similarity}
        clock.stop("semantic_s")
    ins.doc = _document(ins, opts, kind, tok_name, clock)
    return ins


def _document(ins: Inspection, opts: InspectOptions, kind: str, tok_name, clock: _Clock) -> dict:
    counts = {k: 0 for k in REASONS}
    for r in ins.removed.values():
        counts[r["reason"]] += 1
    b, r = dedup.lsh_bands(opts.near)
    kept = ins.kept
    doc = {
        "file": str(opts.path), "kind": kind, "records": len(ins.records), "records_kept": len(kept),
        "records_removed": len(ins.removed),
        "exact_duplicates": counts["exact_duplicate"], "near_duplicates": counts["near_duplicate"],
        "semantic_duplicates": counts["semantic_duplicate"] if opts.semantic is not None else None,
        "filtered": {k: counts[k] for k in quality.FILTERS},
        "near_threshold": opts.near,
        "near_method": {"library": "datasketch MinHashLSH", "shingles": f"character {dedup.SHINGLE}-grams of the "
                        "normalised text", "num_perm": dedup.NUM_PERM, "bands": b, "rows_per_band": r,
                        "candidate_probability_at_threshold": round(1 - (1 - opts.near ** r) ** b, 4),
                        "verified": "exact Jaccard of the shingle sets"},
        "semantic_threshold": opts.semantic,
        "semantic_model": dedup.EMBED_MODEL if opts.semantic is not None else None,
        "max_len": opts.max_len, "tokenizer": tok_name, "tokens": None, "histogram": None,
        "timings_s": {k: round(v, 3) for k, v in clock.wall.items()},
        "cpu_s": {k: round(v, 3) for k, v in clock.cpu.items()},
    }
    if ins.tokens is not None and kept:
        kt = [ins.tokens[i] for i in kept]
        h = lengths.histogram(kt)
        doc["tokens"] = lengths.summary(kt)
        doc["histogram"] = {"edges": list(h.edges), "counts": list(h.counts)}
    return doc


def kept_lengths(ins: Inspection) -> list[int]:
    return [ins.tokens[i] for i in ins.kept] if ins.tokens is not None else []


def clean_bytes(ins: Inspection) -> bytes:
    return b"".join(ins.records[i].raw + b"\n" for i in ins.kept)


def removal_bytes(ins: Inspection) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in ins.removal_lines()).encode("utf-8")


def removed_path(clean: str | Path) -> Path:
    """Where the removal record goes beside ``--write-clean OUT``: OUT's name with ``.removed.jsonl``."""
    p = Path(clean)
    stem = p.name[:-len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(stem + ".removed.jsonl")
