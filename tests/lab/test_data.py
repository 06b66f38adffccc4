import json

import pytest

from quantlab.errors import QuantlabError
from quantlab.lab import data


class Tok:
    """A whitespace tokenizer: enough to test lengths, weights and padding without a model."""

    eos_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) for w in text.split()]}


def write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_bad_records_reported_by_line(tmp_path):
    p = write(tmp_path, [json.dumps({"prompt": "a", "response": "b"}), "{oops", json.dumps({"prompt": "x"})])
    with pytest.raises(QuantlabError, match=r"2 bad record\(s\): line 2: .*line 3: needs string fields"):
        data.read_jsonl(p)


def test_empty_file(tmp_path):
    with pytest.raises(QuantlabError, match="no records"):
        data.read_jsonl(write(tmp_path, [""]))


def test_messages_format_and_whitespace(tmp_path):
    p = write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "hi   there\t you"},
                                                  {"role": "assistant", "content": " ok "}]})])
    r = data.read_jsonl(p)[0]
    assert r.messages == (("user", "hi there you"),) and r.response == "ok"
    assert r.prompt == "user: hi there you"  # display/deduplication form


def test_messages_need_roles_and_a_user_turn(tmp_path):
    bad = [json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
           json.dumps({"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]})]
    with pytest.raises(QuantlabError, match=r"2 bad record.*line 1: message 1 needs a role.*line 2: no user message"):
        data.read_jsonl(write(tmp_path, bad))


def test_exact_and_near_duplicates_removed():
    rs = [data.Record("extract the name from: Maria is 34", "Maria", 1),
          data.Record("extract the name from: Maria is 34", "Maria", 2),
          data.Record("extract the name from: Maria is 35", "Maria", 3),
          data.Record("something else entirely different", "x", 4)]
    kept, rep = data.dedupe(rs, 0.7)
    assert [r.line for r in kept] == [1, 4] and rep.exact == 1 and rep.near == 1


def test_split_is_seeded():
    rs = [data.Record(f"p{i}", f"r{i}", i) for i in range(50)]
    a, b = data.split(rs, seed=3), data.split(rs, seed=3)
    assert a == b and len(a[0]) + len(a[1]) + len(a[2]) == 50
    assert data.split(rs, seed=4)[0] != a[0]


def test_prompt_loss_weight_and_too_long():
    rs = [data.Record("one two three", "four five", 7)]
    ex = data.tokenize(rs, Tok(), max_len=10, prompt_loss_weight=0.0)[0]
    assert ex.weights == [0.0] * ex.prompt_len + [1.0] * (len(ex.input_ids) - ex.prompt_len)
    ex1 = data.tokenize(rs, Tok(), max_len=10, prompt_loss_weight=1.0)[0]
    assert set(ex1.weights) == {1.0}
    with pytest.raises(QuantlabError, match="line 7 has 6 tokens"):
        data.tokenize(rs, Tok(), max_len=5)


def test_dynamic_padding():
    pytest.importorskip("torch")
    exs = [data.Example([1, 2, 3], [0, 1, 1], 1, 1), data.Example([4, 5], [0, 1], 1, 2)]
    ids, mask, w = data.collate(exs, pad_id=9)
    assert ids.shape == (2, 3) and ids[1].tolist() == [4, 5, 9] and mask[1].tolist() == [1, 1, 0]
    assert w[1].tolist() == [0, 1, 0]
