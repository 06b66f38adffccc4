"""quantlab.data.preference: TRL 1.16 preference pairs read from JSONL, bad records as one line naming file:line."""

import json

import pytest

from quantlab.data.preference import read_pairs
from quantlab.errors import QuantlabError


def write(tmp_path, *records, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_standard_and_conversational_pairs(tmp_path):
    chat = [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}]
    bad = [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]
    path = write(tmp_path, {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " No.", "id": 7}, "",
                 {"chosen": chat, "rejected": bad})
    pairs = read_pairs(path)
    assert [p.line for p in pairs] == [1, 3]
    assert pairs[0].trl() == {"prompt": "Say hi.", "chosen": " Hi!", "rejected": " No."}
    assert pairs[0].extra == {"id": 7} and not pairs[0].conversational
    # implicit prompt: the common prefix of the turns (trl.data_utils.extract_prompt)
    assert pairs[1].conversational
    assert pairs[1].trl() == {"prompt": chat[:1], "chosen": chat[1:], "rejected": bad[1:]}


def test_implicit_string_prompt_matches_trl(tmp_path):
    from trl.data_utils import extract_prompt

    ex = {"chosen": "The sky is blue today", "rejected": "The sky is green today"}
    pair = read_pairs(write(tmp_path, ex))[0]
    assert pair.trl() == extract_prompt(ex)


@pytest.mark.parametrize("record,words", [
    ({"prompt": "p", "chosen": "a"}, "'rejected' is missing"),
    ({"prompt": "p", "rejected": "a"}, "'chosen' is missing"),
    ({"prompt": "p", "chosen": "a", "rejected": 3}, "'rejected' must be a string or a list"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "identical"),
    ({"prompt": "p", "chosen": "  ", "rejected": "a"}, "'chosen' is empty"),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant",
                                                                                     "content": "b"}]}, "mixes"),
    ({"chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "x"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "must end with the assistant"),
    ({"chosen": [{"role": "bot", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "needs a role"),
    ([1, 2], "not a JSON object"),
    ('{"chosen": "a", ', "is not JSON"),
])
def test_bad_record_is_one_line_with_file_and_line(tmp_path, record, words):
    path = write(tmp_path, {"prompt": "ok", "chosen": "yes", "rejected": "no"}, record)
    with pytest.raises(QuantlabError) as e:
        read_pairs(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: line 2") and words in msg and "\n" not in msg


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(QuantlabError, match="not found"):
        read_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(QuantlabError, match="holds no records"):
        read_pairs(write(tmp_path, "", "  "))


def test_shipped_json_prefs_task_reads():
    """tasks/json-prefs: every chosen answer is the json-extract JSON object; every rejected one is not JSON, or
    JSON that is a different object (a wrong key, value or type)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "tasks" / "json-prefs"
    test, train = read_pairs(root / "test.jsonl"), read_pairs(root / "data.jsonl")
    assert (len(test), len(train)) == (40, 360)
    assert not {p.prompt for p in test} & {p.prompt for p in train}  # held out
    for p in test + train:
        chosen = json.loads(p.chosen)
        assert set(chosen) == {"first_name", "age_years", "home_city"}
        try:
            rejected = json.loads(p.rejected)
        except ValueError:
            assert p.extra["kind"] in ("missing_quote", "trailing_comma", "single_quotes")
        else:
            assert rejected != chosen and p.extra["kind"] in ("wrong_key", "wrong_value", "age_as_string")


def test_unpaired_rows_for_kto_keep_the_pairs_order_and_prompt():
    """R7: each pair gives its chosen completion (label True) then its rejected one (False); an implicit prompt is
    extracted first (R2), so both rows share it."""
    from quantlab.data.preference import Pair, unpaired

    rows = unpaired([Pair(3, "Q: a? A: yes", "Q: a? A: no"), Pair(4, "x", "y", "P")])
    assert [(r.line, r.prompt, r.completion, r.label) for r in rows] == [
        (3, "Q: a? A:", " yes", True), (3, "Q: a? A:", " no", False), (4, "P", "x", True), (4, "P", "y", False)]
    assert not rows[0].conversational
    conv = Pair(1, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}])
    c, r = unpaired([conv])
    assert c.prompt == [{"role": "user", "content": "q"}] and c.completion == [{"role": "assistant", "content": "a"}]
    assert c.conversational and c.label and not r.label
