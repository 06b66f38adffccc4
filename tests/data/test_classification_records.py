"""The labelled-classification reader: records as written, and every malformed record a one-line file:line error."""

import json

import pytest

from quantlab.data.classification import label_set, multi_hot, read_labelled
from quantlab.errors import QuantlabError


def _write(path, lines):
    path.write_bytes(b"".join((l if isinstance(l, bytes) else json.dumps(l).encode()) + b"\n" for l in lines))
    return path


def test_reads_texts_labels_and_lines(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"text": "a dragon", "labels": ["fantasy"]}, b"",
                                      {"text": "a ghost ship", "labels": ["horror", "science-fiction"], "id": 7}])
    recs = read_labelled(p)
    assert [(r.line, r.text, r.labels) for r in recs] == [(1, "a dragon", ("fantasy",)),
                                                          (3, "a ghost ship", ("horror", "science-fiction"))]
    labels = label_set(recs)
    assert labels == ("fantasy", "horror", "science-fiction")
    assert multi_hot(recs, labels) == [[1, 0, 0], [0, 1, 1]]


@pytest.mark.parametrize("line, says", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"labels": ["x"]}).encode(), "'text'"),
    (json.dumps({"text": "  ", "labels": ["x"]}).encode(), "'text'"),
    (json.dumps({"text": "t", "labels": "x"}).encode(), "'labels' must be a non-empty list"),
    (json.dumps({"text": "t", "labels": []}).encode(), "'labels' must be a non-empty list"),
    (json.dumps({"text": "t", "labels": ["x", 3]}).encode(), "non-empty strings"),
    (json.dumps({"text": "t", "labels": ["x", "x"]}).encode(), "repeated"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_malformed_record_is_one_line_naming_file_and_line(tmp_path, line, says):
    p = _write(tmp_path / "d.jsonl", [{"text": "ok", "labels": ["x"]}, line])
    with pytest.raises(QuantlabError) as e:
        read_labelled(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:2: ") and says in msg and "\n" not in msg


def test_unknown_label_against_a_given_set(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"text": "ok", "labels": ["x"]}, {"text": "t", "labels": ["y"]}])
    with pytest.raises(QuantlabError, match=r":2: unknown label 'y' \(labels: x\)"):
        read_labelled(p, labels=("x",))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(QuantlabError, match="not found"):
        read_labelled(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(QuantlabError, match="holds no records"):
        read_labelled(tmp_path / "e.jsonl")


def test_shipped_genre_task_reads_and_has_one_to_three_labels():
    from quantlab.lab.classify import TASK_DIR

    splits = {n: read_labelled(TASK_DIR / f"{n}.jsonl") for n in ("train", "val", "test")}
    labels = label_set(*splits.values())
    assert 6 <= len(labels) <= 8
    texts = [r.text for recs in splits.values() for r in recs]
    assert len(texts) == len(set(texts))  # deduplicated, so no test text is a training text
    assert all(1 <= len(r.labels) <= 3 for recs in splits.values() for r in recs)
    for recs in splits.values():  # every label appears in every split (ROC-AUC per label is defined)
        assert label_set(recs) == labels
    counts = {k: sum(len(r.labels) == k for r in splits["train"]) for k in (1, 2, 3)}
    assert min(counts.values()) > 0
    import runpy

    vocab = runpy.run_path(str(TASK_DIR / "generate.py"))["VOCAB"]  # held-out phrasing (its assumption 4)
    held = [v[k][3] for v in vocab.values() for k in ("who", "where", "what")]
    assert not any(h in r.text for h in held for r in splits["train"])
    assert all(any(h in r.text for h in held) for r in splits["test"])


def test_cli_bad_record_exits_2_with_one_line(tmp_path, capsys):
    from quantlab.cli import main

    p = _write(tmp_path / "bad.jsonl", [{"text": "ok", "labels": ["x"]}, {"text": "t"}])
    assert main(["lab", "classify", "--train", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{p}:2:" in err and len(err.splitlines()) == 1
