#!/usr/bin/env python
"""Generate the date-iso task: a date written out in English -> the ISO 8601 date ``YYYY-MM-DD``.

A second *format* task beside json-extract: the answer is a fixed-width string the prompt names only as "ISO",
so a fine-tune learns the exact layout (zero-padded month and day, year first). Seeded and template-based, so the
data set is reproducible and licence-free (every line is made here).

    python tasks/date-iso/generate.py     # writes tasks/date-iso/data.jsonl (400 records)
"""

import datetime
import json
import random
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def ordinal(d: int) -> str:
    suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


TEMPLATES = [
    lambda y, m, d: f"{MONTHS[m - 1]} {d}, {y}",
    lambda y, m, d: f"{d} {MONTHS[m - 1]} {y}",
    lambda y, m, d: f"the {ordinal(d)} of {MONTHS[m - 1]} {y}",
    lambda y, m, d: f"{MONTHS[m - 1][:3]} {d} {y}",
    lambda y, m, d: f"{ordinal(d)} {MONTHS[m - 1]}, {y}",
    lambda y, m, d: f"{d}/{m}/{y} (day/month/year)",
]
PROMPT = "Write this date in ISO format.\nDate: {s}"


def main(n: int = 400, seed: int = 11) -> None:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        y, m = rng.randint(1950, 2049), rng.randint(1, 12)
        d = rng.randint(1, (datetime.date(y + (m == 12), m % 12 + 1, 1) - datetime.timedelta(days=1)).day)
        s = rng.choice(TEMPLATES)(y, m, d)
        if s in seen:
            continue
        seen.add(s)
        out.append({"prompt": PROMPT.format(s=s), "response": f"{y:04d}-{m:02d}-{d:02d}"})
    path = Path(__file__).resolve().parent / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"wrote {len(out)} records to {path}")


if __name__ == "__main__":
    main()
