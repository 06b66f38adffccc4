"""The lab's data path (quantlab.lab.data) on quantlab.data's reader, filters, dedup and length summary."""

import json
import random

import pytest

from quantlab.data import lengths
from quantlab.errors import QuantlabError
from quantlab.lab import data


class Tok:
    """A whitespace tokenizer: enough to test lengths, weights and padding without a model."""

    eos_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) for w in text.split()]}


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def pr(p, r):
    return json.dumps({"prompt": p, "response": r})


def test_bad_records_reported_by_line(tmp_path):
    """The shared reader (quantlab.data.records) names the first bad line; the data set is refused."""
    with pytest.raises(QuantlabError, match=r"line 2 is not JSON"):
        data.read_jsonl(write(tmp_path, [pr("a", "b"), "{oops", json.dumps({"prompt": "x"})]))
    with pytest.raises(QuantlabError, match=r"line 3: a prompt record needs string fields 'prompt' and 'response'"):
        data.read_jsonl(write(tmp_path, [pr("a", "b"), pr("c", "d"), json.dumps({"prompt": "x"})]))


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(QuantlabError, match="no records"):
        data.read_jsonl(write(tmp_path, [""]))
    with pytest.raises(QuantlabError, match="not found"):
        data.read_jsonl(tmp_path / "nope.jsonl")


def test_messages_format_and_whitespace(tmp_path):
    p = write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "hi   there\t you"},
                                                  {"role": "assistant", "content": " ok "}]})])
    r = data.read_jsonl(p)[0]
    assert r.messages == (("user", "hi there you"),) and r.response == "ok" and r.kind == "chat"
    assert r.prompt == "user: hi there you"  # display form


def test_messages_need_roles_and_a_user_turn(tmp_path):
    bad_role = json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})
    with pytest.raises(QuantlabError, match=r"line 1: 'messages' message 1 needs a role"):
        data.read_jsonl(write(tmp_path, [bad_role]))
    no_user = json.dumps({"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]})
    with pytest.raises(QuantlabError, match=r"line 1: no user message"):
        data.read_jsonl(write(tmp_path, [no_user]))
    not_last = json.dumps({"messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(QuantlabError, match=r"line 1: .*ends with the assistant's answer"):
        data.read_jsonl(write(tmp_path, [not_last]))


def test_one_kind_a_file_and_no_preference_pairs(tmp_path):
    chat = json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
    with pytest.raises(QuantlabError, match=r"line 2: a prompt record needs"):
        data.read_jsonl(write(tmp_path, [pr("a", "b"), chat]))
    with pytest.raises(QuantlabError, match="preference records"):
        data.read_jsonl(write(tmp_path, [json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})]))


def test_quality_filters_remove_and_report_by_line(tmp_path):
    """quantlab.data.quality's filters: an empty response, mojibake, template-only and a non-UTF-8 line are removed
    and reported (line, reason); the other records are kept."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join([pr("ok one", "fine").encode(), pr("empty answer", " ").encode(),
                              pr("caf\u00c3\u00a9 menu", "x").encode(), pr("{input}", "<|im_start|>assistant").encode(),
                              b'{"prompt": "bad \xff byte", "response": "y"}', pr("ok two", "also fine").encode()])
                  + b"\n")
    lo = data.load(p)
    assert [r.line for r in lo.records] == [1, 6]
    assert lo.filtered == [(2, "empty"), (3, "charset_mix"), (4, "template_only"), (5, "non_utf8")]


def test_exact_and_near_duplicates_removed():
    rs = [data.Record("extract the name from: Maria is 34", "Maria", 1),
          data.Record("Extract the  name from: Maria is 34", "Maria", 2),  # exact after case/whitespace
          data.Record("extract the name from: Maria is 35", "Maria", 3),
          data.Record("something else entirely different", "x", 4)]
    kept, rep = data.dedupe(rs, 0.7)
    assert [r.line for r in kept] == [1, 4] and rep.exact == 1 and rep.near == 1
    assert rep.removed_lines == [(2, 1), (3, 1)]
    kept, rep = data.dedupe(rs, 1.0)  # 1: near dedup off
    assert [r.line for r in kept] == [1, 3, 4] and rep.near == 0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_threshold_outside_0_1_is_an_error(bad):
    with pytest.raises(QuantlabError, match=r"--near must be in \(0, 1\]"):
        data.dedupe([data.Record("a", "b", 1)], bad)


def test_split_is_seeded_and_the_json_extract_split_is_unchanged():
    """The split rule is the lab's old one (seeded shuffle, test first, then validation), and the shipped task keeps
    all 400 records through the new filters and dedup, so the split of every stored json-extract run is the same:
    its test lines are those of random.Random(0).shuffle over the 400 indices."""
    rs = [data.Record(f"p{i}", f"r{i}", i) for i in range(50)]
    a, b = data.split(rs, seed=3), data.split(rs, seed=3)
    assert a == b and len(a[0]) + len(a[1]) + len(a[2]) == 50
    assert data.split(rs, seed=4)[0] != a[0]
    from pathlib import Path

    task = Path(data.__file__).resolve().parents[2] / "tasks" / "json-extract" / "data.jsonl"
    kept, rep = data.dedupe(data.read_jsonl(task))
    assert len(kept) == 400 and rep.exact == rep.near == 0
    idx = list(range(400))
    random.Random(0).shuffle(idx)
    tr, va, te = data.split(kept, seed=0)
    assert [r.line for r in te] == [i + 1 for i in idx[:40]] and [r.line for r in va] == [i + 1 for i in idx[40:80]]


@pytest.mark.parametrize("val,test,says", [(0.5, 0.5, "sum below 1"), (-0.1, 0.1, "--val-ratio must be in"),
                                           (0.1, 1.0, "--test-ratio must be in")])
def test_split_ratios_must_sum_right(val, test, says):
    with pytest.raises(QuantlabError, match=says):
        data.split([data.Record(f"p{i}", "r", i) for i in range(10)], val, test)


def test_ratio_zero_gives_an_empty_part():
    tr, va, te = data.split([data.Record(f"p{i}", "r", i) for i in range(10)], 0.0, 0.2)
    assert (len(tr), len(va), len(te)) == (8, 0, 2)


def test_val_and_test_files(tmp_path):
    """A user's validation / test file replaces that part of the split; a training record duplicating a held-out one
    is removed (decontaminated); a file of another format is a one-line error."""
    train = write(tmp_path, [pr(f"question number {i} about {w}", f"answer {i}") for i, w in
                             enumerate("alpha beta gamma delta epsilon zeta eta theta iota kappa".split())]
                  + [pr("the held out question", "held")], "train.jsonl")
    test = write(tmp_path, [pr("the held out question", "held"), pr("another test question", "t")], "test.jsonl")
    val = write(tmp_path, [pr("a validation question", "v")], "val.jsonl")
    p = data.prepare(train, Tok(), max_len=64, val_file=val, test_file=test)
    assert [r.prompt for r in p.test_records] == ["the held out question", "another test question"]
    assert len(p.val) == 1 and len(p.train) == 10 and p.dedupe.decontaminated == 1
    assert p.stats["decontaminated"] == 1
    chat = write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "x"},
                                                     {"role": "assistant", "content": "y"}]})], "chat.jsonl")
    with pytest.raises(QuantlabError, match=r"--val-file .*chat.jsonl holds chat records, the training data prompt"):
        data.prepare(train, Tok(), val_file=chat)
    with pytest.raises(QuantlabError, match=r"--test-file .*nope.jsonl not found"):
        data.prepare(train, Tok(), test_file=tmp_path / "nope.jsonl")
    with pytest.raises(QuantlabError, match="give --val-ratio or --val-file"):
        data.prepare(train, Tok(), val_file=val, val_ratio=0.2)
    with pytest.raises(QuantlabError, match="no validation records"):
        data.prepare(train, Tok(), val_ratio=0.0)


def test_prompt_loss_weight_and_too_long():
    rs = [data.Record("one two three", "four five", 7)]
    ex = data.tokenize(rs, Tok(), max_len=10, prompt_loss_weight=0.0)[0]
    assert ex.weights == [0.0] * ex.prompt_len + [1.0] * (len(ex.input_ids) - ex.prompt_len)
    ex1 = data.tokenize(rs, Tok(), max_len=10, prompt_loss_weight=1.0)[0]
    assert set(ex1.weights) == {1.0}
    with pytest.raises(QuantlabError, match="line 7 has 6 tokens"):
        data.tokenize(rs, Tok(), max_len=5)


def test_text_records_are_all_targets_and_pack_without_padding(tmp_path):
    """Continued pre-training: a text record is its tokens + EOS, every one a target (no prompt mask), any length;
    packing concatenates them into rows of exactly the width (the last partial row dropped)."""
    p = write(tmp_path, [json.dumps({"text": " ".join(["word"] * n)}) for n in (5, 9, 30)])
    recs = data.read_jsonl(p)
    assert [r.kind for r in recs] == ["text"] * 3
    ex = data.tokenize(recs, Tok(), max_len=None)
    assert [len(e.input_ids) for e in ex] == [6, 10, 31] and all(set(e.weights) == {1.0} for e in ex)
    assert all(e.prompt_len == 0 and e.input_ids[-1] == 0 for e in ex)
    rows = data.pack(ex, 8)
    assert len(rows) == 47 // 8 and all(len(r.input_ids) == 8 and set(r.weights) == {1.0} for r in rows)
    assert [t for r in rows for t in r.input_ids] == [t for e in ex for t in e.input_ids][:40]


def test_length_stats_are_the_shared_summary():
    ex = [data.Example(list(range(n)), [1.0] * n, 1, i) for i, n in enumerate([3, 9, 4, 7, 20])]
    s, ref = data.length_stats(ex), lengths.summary([3, 9, 4, 7, 20])
    assert (s["tokens_min"], s["tokens_median"], s["tokens_p95"], s["tokens_max"], s["tokens_total"]) == \
        (ref["min"], ref["p50"], ref["p95"], ref["max"], ref["total"]) == (3, 7, 20, 20, 43)


def test_dynamic_padding():
    pytest.importorskip("torch")
    exs = [data.Example([1, 2, 3], [0, 1, 1], 1, 1), data.Example([4, 5], [0, 1], 1, 2)]
    ids, mask, w = data.collate(exs, pad_id=9)
    assert ids.shape == (2, 3) and ids[1].tolist() == [4, 5, 9] and mask[1].tolist() == [1, 1, 0]
    assert w[1].tolist() == [0, 1, 0]
