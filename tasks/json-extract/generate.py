#!/usr/bin/env python
"""Generate the json-extract task: an English sentence about a person -> a JSON object in a fixed schema
``{"first_name", "age_years", "home_city"}`` that the prompt does not spell out: the model must learn it.

Seeded and template-based, so the data set is reproducible and licence-free (every sentence is made here).

    python tasks/json-extract/generate.py     # writes tasks/json-extract/data.jsonl (400 records)
"""

import json
import random
from pathlib import Path

NAMES = """Maria Ahmed Chen Olga Tomas Priya Kwame Lena Diego Aiko Noah Fatima Ivan Sofia Mateo Amara Jonas Mei Omar
Clara Ravi Elena Yusuf Ingrid Pablo Hana Leon Zara Felix Nadia Hugo Leila Oscar Anya Samuel Rosa Kenji Alba Emil
Ines""".split()
CITIES = """Lisbon Nairobi Oslo Lima Hanoi Dublin Porto Accra Kyoto Quito Tunis Riga Bergen Cusco Lyon Graz Perth Leeds
Turin Dakar Malmo Krakow Bilbao Cork Utrecht Gdansk Seville Tartu Basel Split""".split()
TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "{name}, aged {age}, lives in {city}.",
    "Living in {city}, {name} is {age}.",
    "Meet {name} from {city}, who just turned {age}.",
    "{name} ({age}) moved to {city} last year.",
    "At {age}, {name} calls {city} home.",
    "{city} is where {name}, {age}, works as a teacher.",
    "Our new colleague {name} is {age} and based in {city}.",
]
PROMPT = "Extract the person's name, age and city from the sentence as a JSON object.\nSentence: {s}"


def main(n: int = 400, seed: int = 7) -> None:
    rng = random.Random(seed)
    out = []
    seen = set()
    while len(out) < n:
        name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
        t = rng.choice(TEMPLATES)
        s = t.format(name=name, age=age, city=city)
        if s in seen:
            continue
        seen.add(s)
        out.append({"prompt": PROMPT.format(s=s),
                    "response": json.dumps({"first_name": name, "age_years": age, "home_city": city})})
    path = Path(__file__).resolve().parent / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"wrote {len(out)} records to {path}")


if __name__ == "__main__":
    main()
