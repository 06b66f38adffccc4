"""Token lengths, the text histogram, percentiles and the batches a dataloader draws."""

import pytest

from quantlab.data import lengths as L
from quantlab.data.records import Record


def test_histogram_text_golden():
    """Lengths 10..21 in 4 bins of width 3: [10,13) holds 10,11,12, etc.; bars scale to the largest bin."""
    h = L.histogram([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 21, 21], bins=4)
    assert h.edges == (10, 13, 16, 19, 22) and h.counts == (3, 3, 3, 5)
    assert L.histogram_text(h, bar=10) == ("[10, 13)  3  ######\n[13, 16)  3  ######\n[16, 19)  3  ######\n"
                                           "[19, 22)  5  ##########")


def test_nearest_rank_percentiles():
    v = list(range(1, 101))
    assert (L.percentile(v, 50), L.percentile(v, 95), L.percentile(v, 100)) == (50, 95, 100)
    assert L.percentile([7], 95) == 7
    s = L.summary([3, 1, 2])
    assert (s["min"], s["p50"], s["max"], s["total"]) == (1, 2, 3, 6)


def test_batch_widths_are_the_longest_of_each_seeded_batch():
    lens = [5, 1, 9, 3, 7, 2, 8]
    import random

    order = list(range(7))
    random.Random(3).shuffle(order)
    want = [max(lens[i] for i in order[a:a + 3]) for a in (0, 3, 6)]
    assert L.batch_widths(lens, 3, seed=3) == want
    assert L.batch_sizes(7, 3) == [3, 3, 1]
    assert L.packed_rows(lens, 10) == 3  # 35 tokens -> 3 full rows, the partial one dropped


def test_token_lengths_with_the_embedded_tokenizer(smol_tokenizer):
    """A text record is its tokens plus EOS; a prompt record through the chat template is longer than its parts;
    a preference record is its longer side."""
    tok = smol_tokenizer
    text = Record(1, "text", {"text": "hello world, this is a test"}, b"")
    n = len(tok("hello world, this is a test", add_special_tokens=False)["input_ids"])
    pr = Record(2, "prompt", {"prompt": "hello world,", "response": "this is a test"}, b"")
    pref = Record(3, "preference", {"prompt": "q", "chosen": "a much longer chosen answer here", "rejected": "no"}, b"")
    got = L.token_lengths(tok, [text, pr, pref])
    assert got[0] == n + 1
    assert got[1] > n + 1  # template markup around the turns
    assert got[2] == len(tok("q\na much longer chosen answer here", add_special_tokens=False)["input_ids"]) + 1


def test_histogram_png_is_a_png():
    png = L.histogram_png([3, 5, 5, 8, 13], "t", max_len=10)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
