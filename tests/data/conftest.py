"""Shared helpers for the data tests: small JSONL files written per test, the embedded tokenizer loaded once."""

import json
from pathlib import Path

import pytest


def write_jsonl(path: Path, rows, raw_lines: tuple = ()) -> Path:
    """Write ``rows`` (dicts) as JSONL, then ``raw_lines`` (bytes) as they are."""
    data = b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in rows) + b"".join(x + b"\n" for x in raw_lines)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def smol_tokenizer():
    from quantlab.data.lengths import load_tokenizer

    return load_tokenizer("smollm2-135m", progress=False)
