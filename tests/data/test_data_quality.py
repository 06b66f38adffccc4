"""The quality filters, one reason per record (the first that applies)."""

import pytest

from quantlab.data.quality import charset_mix, reason, template_only
from quantlab.data.records import Record


def rec(kind="prompt", utf8=True, **fields):
    return Record(1, kind, fields, b"", utf8)


def test_each_filter():
    assert reason(rec(prompt="fine", response="also fine")) is None
    assert reason(rec(prompt="fine", response="ok", utf8=False)) == "non_utf8"
    assert reason(rec(prompt="   ", response="ok")) == "empty"
    assert reason(rec("preference", chosen="same", rejected="same")) == "empty"
    assert reason(rec("chat", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}])) \
        == "empty"
    assert reason(rec(prompt="{{instruction}}", response="<|im_start|>assistant")) == "template_only"
    assert reason(rec(prompt="Log in to pаypal", response="ok")) == "charset_mix"  # Cyrillic a
    assert reason(rec(prompt="Cafe", response="CafÃ© is nice")) == "charset_mix"  # UTF-8 read as Latin-1
    assert reason(rec(prompt="a b c", response="d"), tokens=9, max_len=8) == "too_long"
    assert reason(rec(prompt="a b c", response="d"), tokens=8, max_len=8) is None


@pytest.mark.parametrize("text", ["### Instruction:\n{input}\n### Response:", "[INST] <<SYS>> <</SYS>> [/INST]",
                                  "<s>Human: {question}\nAssistant:</s>", "<PLACEHOLDER>"])
def test_template_only(text):
    assert template_only(text)


@pytest.mark.parametrize("text", ["### Instruction:\nAdd 2 and 3\n### Response:\n5", "User: what is {x}? It is 4"])
def test_template_with_content_is_kept(text):
    assert not template_only(text)


@pytest.mark.parametrize("text", ["Привет, мир and hello world", "東京 Tokyo", "naïve café déjà vu", "x² ≤ 3"])
def test_scripts_mixed_across_words_are_fine(text):
    assert not charset_mix(text)


@pytest.mark.parametrize("text,mixed", [("QKᵀ scores", False), ("ΣT over the heads", False), ("10 μs", False),
                                        ("gοogle", True), ("Аpple", True)])
def test_math_notation_is_not_a_homoglyph(text, mixed):
    """Superscript modifier letters and Greek math symbols beside Latin letters are notation; a Greek omicron or a
    Cyrillic A inside a Latin word is a homoglyph."""
    assert charset_mix(text) is mixed
