"""Quality filters: which records a fine-tune should not see, and why. One reason per record, the first that
applies in :data:`FILTERS` order.

Assumptions:

1. ``non_utf8``: the line's bytes are not valid UTF-8 (records assumption 3); a mis-encoded record teaches
   mojibake.
2. ``empty``: a field the kind needs is empty after stripping whitespace (a prompt, a response, a text, a chosen
   or a rejected answer, any message's content), or a preference pair whose chosen and rejected answers are the
   same (no preference signal).
3. ``template_only``: the record holds nothing but chat-template markup and unfilled placeholders once those are
   removed: role markers (``<|im_start|>user``, ``[INST]``, ``<s>``, ``### Response:``, ``Human:`` ...) and
   placeholders (``{input}``, ``{{question}}``, ``<PLACEHOLDER>``); what is left has no letter or digit. Such a
   record is a template rendered without its data.
4. ``charset_mix``: a word mixes letters of two scripts (Latin with Cyrillic or Greek homoglyphs: "pаypal" with a
   Cyrillic a), or the text carries the signature of UTF-8 read as Latin-1 (mojibake: "Ã©", "â€™") or the
   replacement character U+FFFD. Scripts are the first word of each letter's Unicode name (LATIN, CYRILLIC, ...);
   digits, punctuation and CJK mixing across words are fine (bilingual records are legitimate). Not a mix:
   modifier letters (superscripts such as the transpose in "QKᵀ": Unicode "MODIFIER LETTER ..."), and Greek
   letters beside Latin ones unless one of them looks like a Latin letter (:data:`GREEK_HOMOGLYPHS`: "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"
   and "οικν"): math notation such as "ΣT" or "μs" is legitimate, a Greek omicron in "gοogle" is not.
5. ``too_long``: more tokens than ``--max-len`` (the rendered record, :mod:`quantlab.data.lengths`), checked only
   when ``--max-len`` is given; truncation would teach a cut answer, so the record is dropped, not cut.
"""

from __future__ import annotations

import re
import unicodedata

from quantlab.data.records import Record

FILTERS = ("non_utf8", "empty", "template_only", "charset_mix", "too_long")

_MARKUP = re.compile(
    r"<\|[^|>]{0,40}\|>(?:\s*(?:system|user|assistant|tool)\b)?"  # <|im_start|>user, <|eot_id|>
    r"|\[/?INST\]|<</?SYS>>|</?s>|<bos>|<eos>|<start_of_turn>|<end_of_turn>"
    r"|\{\{[^{}]{0,60}\}\}|\{[A-Za-z_][A-Za-z0-9_]{0,40}\}|<[A-Z_]{3,40}>"  # {{x}}, {input}, <PLACEHOLDER>
    r"|^\s*#{1,4}\s*(?:instruction|input|response|output|system|user|assistant)\s*:?"
    r"|\b(?:human|assistant|user|system)\s*:", re.IGNORECASE | re.MULTILINE)
_MOJIBAKE = re.compile("[\u00c3\u00c2][\u0080-\u00bf]|\u00e2\u20ac[\u0080-\u00bf\u2018-\u203a\u2122\u0153\u017e]|\ufffd")
_WORD = re.compile(r"\w+")


GREEK_HOMOGLYPHS = frozenset("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοικν")  # Greek letters that pass for Latin ones (assumption 4)


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    try:
        name = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return None
    return None if name == "MODIFIER" else name


def template_only(text: str) -> bool:
    """Assumption 3: nothing with a letter or digit is left once markup and placeholders are removed."""
    rest = _MARKUP.sub(" ", text)
    return not any(c.isalnum() for c in rest)


def charset_mix(text: str) -> bool:
    """Assumption 4: a mixed-script word, mojibake, or U+FFFD."""
    if _MOJIBAKE.search(text):
        return True
    for w in _WORD.findall(text):
        if w.isascii():
            continue
        scripts = {s for s in map(_script, w) if s is not None}
        if scripts == {"LATIN", "GREEK"} and not GREEK_HOMOGLYPHS.intersection(w):
            continue  # math notation (assumption 4)
        if len(scripts) > 1:
            return True
    return False


def _fields_empty(r: Record) -> bool:
    for v in r.fields.values():
        if isinstance(v, list):
            if any(not m["content"].strip() for m in v):
                return True
        elif not v.strip():
            return True
    if r.kind == "preference":
        return r.fields["chosen"] == r.fields["rejected"]
    return False


def reason(r: Record, tokens: int | None = None, max_len: int | None = None) -> str | None:
    """The first filter (assumptions 1-5) that removes ``r``, or None to keep it."""
    if not r.utf8:
        return "non_utf8"
    if _fields_empty(r):
        return "empty"
    text = r.text
    if template_only(text):
        return "template_only"
    if charset_mix(text):
        return "charset_mix"
    if max_len is not None and tokens is not None and tokens > max_len:
        return "too_long"
    return None
