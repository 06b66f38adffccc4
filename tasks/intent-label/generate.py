#!/usr/bin/env python
"""Generate the intent-label task: a customer message -> one of five intent labels.

A classification-like task: the answer is one word out of ``billing``, ``shipping``, ``refund``, ``account`` and
``technical`` (the prompt lists them). Balanced over the labels, seeded and template-based (slot fillers per
label), so the data set is reproducible and licence-free.

    python tasks/intent-label/generate.py     # writes tasks/intent-label/data.jsonl (400 records)
"""

import json
import random
from pathlib import Path

LABELS = ("billing", "shipping", "refund", "account", "technical")
SLOTS = {
    "billing": ["I was charged twice for my {item}", "why is there an extra fee on my invoice for the {item}",
                "my card was billed the wrong amount for the {item}", "the {item} subscription price went up",
                "please explain the charge for the {item} on my statement"],
    "shipping": ["my {item} has not arrived yet", "where is the parcel with my {item}",
                 "the tracking number for my {item} does not work", "can you deliver the {item} to my office",
                 "the courier left my {item} at the wrong door"],
    "refund": ["I want my money back for the {item}", "please refund the broken {item}",
               "how long does a refund for the {item} take", "I returned the {item} but got no refund",
               "can I return the {item} and get a refund"],
    "account": ["I cannot log in to my account to see the {item}", "please change the email on my account",
                "how do I reset my password", "I want to delete my account and the saved {item}",
                "my account got locked after I ordered the {item}"],
    "technical": ["the {item} keeps crashing when I open it", "the app shows an error when I add the {item}",
                  "my {item} will not connect to wifi", "the {item} firmware update failed",
                  "the website freezes when I view the {item}"],
}
ITEMS = """headphones lamp blender jacket router kettle camera printer backpack monitor speaker watch keyboard
tablet heater""".split()
OPENERS = ["", "Hello, ", "Hi team, ", "Urgent: ", "Good morning. ", "Hey, "]
PROMPT = ("Classify the customer message as one of: " + ", ".join(LABELS) + ".\nMessage: {s}")


def main(n: int = 400, seed: int = 13) -> None:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        label = LABELS[len(out) % len(LABELS)]
        opener, body = rng.choice(OPENERS), rng.choice(SLOTS[label]).format(item=rng.choice(ITEMS))
        if not opener.endswith(", "):  # a new sentence starts with a capital
            body = body[0].upper() + body[1:]
        s = opener + body + rng.choice(".!?")
        if s in seen:
            continue
        seen.add(s)
        out.append({"prompt": PROMPT.format(s=s), "response": label})
    rng.shuffle(out)
    path = Path(__file__).resolve().parent / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"wrote {len(out)} records to {path}")


if __name__ == "__main__":
    main()
