"""`include:` in a validation matrix: the encoder rows are part of the one matrix, ids unique across files,
and a bad include is one line."""

from pathlib import Path

import pytest

from quantlab.commands.validate import load_matrix
from quantlab.errors import QuantlabError
from quantlab.validate_encoder import EncoderCase

ROOT = Path(__file__).resolve().parents[2]


def test_the_matrix_includes_the_encoder_rows():
    cases = load_matrix(ROOT / "profiles/validation/matrix.yaml")
    enc = [c for c in cases if isinstance(c, EncoderCase)]
    own = load_matrix(ROOT / "profiles/validation/encoder-matrix.yaml")
    assert [c.id for c in enc] == [c.id for c in own] and len(enc) >= 16
    assert {c.model for c in enc} >= {"bert-base-uncased", "roberta-base", "modernbert-base"}
    # --only reaches into an included file
    one = load_matrix(ROOT / "profiles/validation/matrix.yaml", ("bert-seqcls-k0-fp32",))
    assert [c.id for c in one] == ["bert-seqcls-k0-fp32"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


ROW = "{id: %s, model: llama-3.2-1b, precision: fp32, compute-dtype: fp32}"


def test_duplicate_id_across_files_is_one_line(tmp_path):
    _write(tmp_path / "b.yaml", f"configurations:\n  - {ROW % 'x'}\n")
    a = _write(tmp_path / "a.yaml", f"include: b.yaml\nconfigurations:\n  - {ROW % 'x'}\n")
    with pytest.raises(QuantlabError, match="configuration x: duplicate id"):
        load_matrix(a)


def test_missing_and_circular_includes_are_one_line(tmp_path):
    a = _write(tmp_path / "a.yaml", f"include: [nope.yaml]\nconfigurations:\n  - {ROW % 'x'}\n")
    with pytest.raises(QuantlabError, match="nope.yaml does not exist"):
        load_matrix(a)
    _write(tmp_path / "a.yaml", f"include: a.yaml\nconfigurations:\n  - {ROW % 'x'}\n")
    with pytest.raises(QuantlabError, match="includes itself"):
        load_matrix(a)
    _write(tmp_path / "a.yaml", f"include: 3\nconfigurations:\n  - {ROW % 'x'}\n")
    with pytest.raises(QuantlabError, match="include must be a file name"):
        load_matrix(a)


def test_only_names_missing_across_files(tmp_path):
    _write(tmp_path / "b.yaml", f"configurations:\n  - {ROW % 'y'}\n")
    a = _write(tmp_path / "a.yaml", f"include: b.yaml\nconfigurations:\n  - {ROW % 'x'}\n")
    assert [c.id for c in load_matrix(a, ("y",))] == ["y"]
    with pytest.raises(QuantlabError, match="no configuration with id z"):
        load_matrix(a, ("y", "z"))
