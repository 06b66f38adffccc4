#!/usr/bin/env python
"""Generate the shipped multiple-choice cloze task (seeded, reproducible) from quantlab/lab/texts/task_source.txt.

Each item: the 40 words before a position, the word that follows (the answer) and three distractor words drawn
from the same text's vocabulary. A model scores each choice by the log-likelihood of " <word>" after the
context; accuracy is the share of items where the answer scores highest (chance: 25%).

    python scripts/make_cloze_task.py   # rewrites quantlab/lab/texts/cloze_task.jsonl
"""

import json
import random
import re
from pathlib import Path

TEXTS = Path(__file__).resolve().parent.parent / "quantlab" / "lab" / "texts"
N_ITEMS, CONTEXT_WORDS, SEED = 120, 40, 1234


def main() -> None:
    words = (TEXTS / "task_source.txt").read_text().split()
    clean = [re.sub(r"[^A-Za-z]", "", w) for w in words]
    vocab = sorted({w.lower() for w in clean if len(w) >= 4})
    rng = random.Random(SEED)
    cands = [i for i in range(CONTEXT_WORDS, len(words)) if len(clean[i]) >= 4 and clean[i] == words[i]]
    picks = sorted(rng.sample(cands, N_ITEMS))
    lines = []
    for i in picks:
        answer = words[i]
        distractors = rng.sample([v for v in vocab if v != answer.lower()], 3)
        choices = [answer] + distractors
        rng.shuffle(choices)
        lines.append(json.dumps({"context": " ".join(words[i - CONTEXT_WORDS:i]), "choices": choices,
                                 "answer": choices.index(answer)}))
    (TEXTS / "cloze_task.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} items")


if __name__ == "__main__":
    main()
