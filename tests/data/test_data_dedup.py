"""Duplicates on small planted sets: exact (normalised), near (MinHash LSH candidates, exact Jaccard verified),
semantic (blocked nearest neighbours; the real all-MiniLM-L6-v2 on a handful of records)."""

import random

import pytest

from quantlab.data import dedup
from quantlab.errors import QuantlabError


def test_exact_keeps_the_first():
    d = dedup.exact(["a b", "c", "a b", "a b", "c"])
    assert [(x.index, x.of) for x in d] == [(2, 0), (3, 0), (4, 1)]
    assert [(x.index, x.of) for x in dedup.exact(["a", "b", "a"], keep=[1, 2])] == []


def _words(rng, n):
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                    for _ in range(n))


def test_near_finds_the_planted_pairs_and_only_them():
    """200 random 30-word texts; 20 copies with one character changed near the end (Jaccard >= 0.95 by
    construction) and 20 with a third of the words replaced (Jaccard far below 0.9): exactly the first 20 are
    near duplicates of their sources."""
    rng = random.Random(1)
    texts = [_words(rng, 30) for _ in range(200)]
    planted = {}
    for k in range(20):
        src = rng.randrange(200)
        t = texts[src]
        texts.append(t[:-2] + ("x" if t[-2] != "x" else "y") + t[-1])
        planted[len(texts) - 1] = src
    for k in range(20):
        w = texts[k].split()
        w[::3] = [_words(rng, 1) for _ in w[::3]]
        texts.append(" ".join(w))
    found = {d.index: d.of for d in dedup.near(texts, 0.9)}
    assert found == planted
    assert all(dedup.jaccard(dedup.shingles(texts[i]), dedup.shingles(texts[j])) >= 0.9 for i, j in found.items())


def test_lsh_bands_reach_the_stated_recall():
    """P(candidate | J = t) = 1 - (1 - t^r)^b >= 0.99 with the most rows per band (fewest false candidates)."""
    for t in (0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        b, r = dedup.lsh_bands(t)
        assert b * r <= dedup.NUM_PERM
        assert 1 - (1 - t ** r) ** b >= dedup.LSH_RECALL
        b2 = dedup.NUM_PERM // (r + 1)
        assert r == dedup.NUM_PERM or 1 - (1 - t ** (r + 1)) ** b2 < dedup.LSH_RECALL
    assert dedup.lsh_bands(0.9) == (12, 10)


def test_blocked_neighbours_equal_the_full_matrix():
    """Greedy keep-first over blocks of 7 rows gives what the full n x n similarity matrix gives."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 16))
    emb = np.concatenate([base, base[:10] + 0.05 * rng.normal(size=(10, 16))])[rng.permutation(40)]
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    got = [(d.index, d.of) for d in dedup.semantic_from_embeddings(emb, 0.9, block=7)]
    full = emb @ emb.T
    kept, want = [], []
    for i in range(len(emb)):
        prev = [j for j in kept if full[i, j] >= 0.9]
        if prev:
            want.append((i, prev[0]))
        else:
            kept.append(i)
    assert got == want and len(got) == 10


def test_semantic_with_the_real_model():
    """Paraphrases (cosine well above 0.85 with all-MiniLM-L6-v2) are found; unrelated sentences are not."""
    texts = ["How do I reset my password?", "The cat sat on the warm windowsill all afternoon.",
             "What are the steps to reset my password?", "Stock prices fell sharply on Monday morning.",
             "A cat was sitting on the warm window sill for the whole afternoon."]
    d = dedup.semantic(texts, 0.8, progress=False)
    assert sorted((x.index, x.of) for x in d) == [(2, 0), (4, 1)]
    assert all(0.8 <= x.similarity <= 1.0 for x in d)


@pytest.mark.parametrize("v", [0, -0.1, 1.01, float("nan"), float("inf")])
def test_thresholds_outside_0_1_are_refused(v):
    with pytest.raises(QuantlabError, match=r"must be in \(0, 1\]"):
        dedup.check_threshold("--near", v)
    assert dedup.check_threshold("--near", 1) == 1.0
