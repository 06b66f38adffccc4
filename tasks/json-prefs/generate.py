#!/usr/bin/env python
"""Generate the json-prefs task: preference pairs for DPO derived from json-extract. For every json-extract record
the prompt is the same, ``chosen`` is its valid JSON answer and ``rejected`` a subtly wrong one, made by one of six
seeded corruptions (``kind`` names it):

- ``missing_quote``: one double quote of a key or a string value dropped (not JSON);
- ``trailing_comma``: a comma before the closing brace (not JSON);
- ``single_quotes``: Python-dict quoting (not JSON);
- ``wrong_key``: one key renamed to the name the base model writes instead (``name``, ``age``, ``city``): valid
  JSON, wrong schema;
- ``wrong_value``: the age off by 1-9 or the city replaced by another of the task's cities: valid JSON, wrong fact;
- ``age_as_string``: ``"age_years": "68"``: valid JSON, wrong type.

Seeded (``random.Random(seed)``), so the pairs are reproducible; the split is seeded too: 40 test pairs, the rest
train (``data.jsonl``, as every shipped task names its training file, and ``test.jsonl``).

    python tasks/json-prefs/generate.py     # reads tasks/json-extract/data.jsonl, writes data.jsonl and test.jsonl
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "json-extract" / "data.jsonl"
KINDS = ("missing_quote", "trailing_comma", "single_quotes", "wrong_key", "wrong_value", "age_as_string")
BASE_KEYS = {"first_name": "name", "age_years": "age", "home_city": "city"}  # what the base model writes
N_TEST = 40


def corrupt(answer: str, kind: str, rng: random.Random, cities: list[str]) -> str:
    obj = json.loads(answer)
    if kind == "missing_quote":
        quotes = [i for i, ch in enumerate(answer) if ch == '"']
        i = rng.choice(quotes)
        return answer[:i] + answer[i + 1:]
    if kind == "trailing_comma":
        return answer[:-1] + ", }" if rng.random() < 0.5 else answer[:-1] + ",}"
    if kind == "single_quotes":
        return answer.replace('"', "'")
    if kind == "wrong_key":
        key = rng.choice(list(obj))
        return json.dumps({(BASE_KEYS[k] if k == key else k): v for k, v in obj.items()})
    if kind == "wrong_value":
        if rng.random() < 0.5:
            obj["age_years"] += rng.choice([-1, 1]) * rng.randint(1, 9)
        else:
            obj["home_city"] = rng.choice([c for c in cities if c != obj["home_city"]])
        return json.dumps(obj)
    if kind == "age_as_string":
        obj["age_years"] = str(obj["age_years"])
        return json.dumps(obj)
    raise ValueError(kind)


def main(seed: int = 11) -> None:
    rng = random.Random(seed)
    records = [json.loads(l) for l in SOURCE.read_text().splitlines() if l.strip()]
    cities = sorted({json.loads(r["response"])["home_city"] for r in records})
    pairs = []
    for k, r in enumerate(records):
        kind = KINDS[k % len(KINDS)] if k < len(KINDS) else rng.choice(KINDS)
        rejected = corrupt(r["response"], kind, rng, cities)
        assert rejected != r["response"]
        pairs.append({"prompt": r["prompt"], "chosen": r["response"], "rejected": rejected, "kind": kind})
    rng.shuffle(pairs)
    for name, part in (("test.jsonl", pairs[:N_TEST]), ("data.jsonl", pairs[N_TEST:])):
        (HERE / name).write_text("".join(json.dumps(p) + "\n" for p in part))
        print(f"wrote {len(part)} pairs to {HERE / name}")


if __name__ == "__main__":
    main()
