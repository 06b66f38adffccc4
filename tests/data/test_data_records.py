"""Reading data sets: the four kinds are detected from the first record (or forced), a record without its kind's
fields is a one-line error naming its line, a non-UTF-8 line is kept for the filter to count."""

import pytest
from conftest import write_jsonl

from quantlab.data.records import normalise, normalised_text, read_records
from quantlab.errors import QuantlabError

KINDS = {
    "prompt": {"prompt": "Add 2 and 3.", "response": "5"},
    "chat": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    "text": {"text": "Raw text for continued pre-training."},
    "preference": {"prompt": "Pick one.", "chosen": "A, because it is right.", "rejected": "B."},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_is_detected(tmp_path, kind):
    recs, got = read_records(write_jsonl(tmp_path / "d.jsonl", [KINDS[kind]] * 3))
    assert got == kind and len(recs) == 3 and [r.line for r in recs] == [1, 2, 3]


def test_preference_with_conversational_chosen(tmp_path):
    row = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
           "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}
    recs, kind = read_records(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert kind == "preference" and recs[0].parts() == ["q", "good", "q", "bad"]


def test_kind_can_be_forced(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "t", "prompt": "p", "response": "r"}])
    assert read_records(p)[1] == "prompt"
    assert read_records(p, "text")[1] == "text"


def test_a_record_without_its_fields_names_its_line(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [KINDS["prompt"], KINDS["prompt"], {"prompt": "only a prompt"}])
    with pytest.raises(QuantlabError, match=r"line 3: a prompt record needs string fields 'prompt' and 'response'"):
        read_records(p)


def test_forced_kind_that_does_not_match(tmp_path):
    with pytest.raises(QuantlabError, match="line 1: .*'messages'.*given by --kind"):
        read_records(write_jsonl(tmp_path / "d.jsonl", [KINDS["text"]]), "chat")


def test_missing_file_and_non_json(tmp_path):
    with pytest.raises(QuantlabError, match="not found"):
        read_records(tmp_path / "nope.jsonl")
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\n{not json\n')
    with pytest.raises(QuantlabError, match="line 2 is not JSON"):
        read_records(p)


def test_non_utf8_line_is_a_record_marked_for_the_filter(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [KINDS["text"]], raw_lines=(b'{"text": "caf\xe9"}',))
    recs, _ = read_records(p)
    assert [r.utf8 for r in recs] == [True, False] and recs[1].raw == b'{"text": "caf\xe9"}'


def test_normalised_text_keeps_field_boundaries():
    """NFKC + casefold + whitespace runs; the field separator keeps ("a b", "c") apart from ("a", "b c")."""
    assert normalise("  Ｈｅｌｌｏ\t\n WORLD ") == "hello world"
    from quantlab.data.records import Record

    a = Record(1, "prompt", {"prompt": "a b", "response": "c"}, b"")
    b = Record(2, "prompt", {"prompt": "a", "response": "b c"}, b"")
    assert normalised_text(a) != normalised_text(b)
