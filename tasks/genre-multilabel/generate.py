#!/usr/bin/env python
"""Generate the genre-multilabel task: a short book/film blurb -> 1 to 3 genre labels out of eight.

Multi-label classification data (``{"text": ..., "labels": [...]}``, the layout
:mod:`quantlab.data.classification` reads). Seeded and template-based, so the data set is reproducible and
licence-free:

1. Each blurb draws 1 label (45 %), 2 labels (40 %) or 3 labels (15 %) out of ``LABELS``.
2. Every label contributes one clause built from its own template and vocabulary (a hero, a setting, an event);
   clauses are joined in random order with neutral connectives and a neutral opener/closer.
3. Ambiguity, so the task is not a keyword lookup:
   - weak evidence: with probability 0.3 a label contributes only its setting (``where``), no hero nor event;
   - distractor words: with probability 0.35 a word from a genre that is not a label sits in a neutral clause
     ("a story told over one winter near the castle");
   - negated distractors: with probability 0.3 a whole clause of a genre that is not a label is denied ("there is
     no dragon rider and nobody awakens an ancient dragon"): its words are present, its label is not;
   - genres share some words on purpose (``night`` is in horror and thriller, ``secret`` in mystery, romance and
     thriller).
4. Held-out phrasing: each genre has four heroes, settings and events; the training split is written from the
   first three of each, the validation and test splits from the fourth only (``wizard`` trains, ``sorceress``
   tests), so a score after fine-tuning says how far the encoder generalises to genre phrases it never saw with a
   label, not how well it memorised templates. Records are deduplicated by text over all splits, 840 / 180 / 180
   into ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` (fixed seed). There is no ``data.jsonl``: the generation tasks of ``quantlab lab merge`` are the
   ones with a ``data.jsonl``, and these records are not prompt/response pairs.

    python tasks/genre-multilabel/generate.py     # writes the three splits (1,200 records)
"""

import json
import random
from pathlib import Path

LABELS = ("fantasy", "science-fiction", "mystery", "romance", "horror", "historical", "comedy", "thriller")
VOCAB = {
    "fantasy": {"who": ["a young sorceress", "an exiled elf prince", "a dragon rider", "the last wizard"],
                "where": ["an enchanted forest", "a floating castle", "the kingdom of Eldra", "a realm of giants"],
                "what": ["must recover a cursed crown", "learns a forbidden spell", "awakens an ancient dragon",
                         "bargains with a fairy queen"]},
    "science-fiction": {"who": ["a starship engineer", "an android medic", "a colony pilot", "a rogue AI"],
                        "where": ["a space station orbiting Mars", "a generation ship", "a distant exoplanet",
                                  "a city of robots"],
                        "what": ["discovers an alien signal", "jumps through a wormhole", "rewrites its own code",
                                 "survives a reactor breach in orbit"]},
    "mystery": {"who": ["a retired detective", "an amateur sleuth", "a village constable", "a forensic clerk"],
                "where": ["a quiet seaside town", "a locked library", "an old manor house", "a snowbound inn"],
                "what": ["investigates a baffling murder", "follows a trail of clues", "uncovers a family secret",
                         "questions every suspect at dinner"]},
    "romance": {"who": ["a florist", "a shy violinist", "two rival chefs", "a widowed baker"],
                "where": ["a summer wedding", "a little Paris cafe", "a vineyard in bloom", "a small bookshop"],
                "what": ["falls in love with a stranger", "shares a secret kiss", "rekindles an old flame",
                         "finds a heart worth the risk"]},
    "horror": {"who": ["a night nurse", "a grieving mother", "a group of campers", "a priest"],
               "where": ["a haunted asylum", "a cellar beneath the church", "a cabin in dark woods",
                         "a fog-bound cemetery"],
               "what": ["hears something breathing in the walls", "is stalked by a demon", "wakes the restless dead",
                        "sees blood on the mirror at night"]},
    "historical": {"who": ["a Roman centurion", "a Victorian governess", "a medieval stonemason", "a Tudor spy"],
                   "where": ["the court of Henry VIII", "London in 1850", "a Napoleonic battlefield",
                             "the siege of Constantinople"],
                   "what": ["serves a dying empire", "survives the plague years", "rides with the cavalry",
                            "keeps the king's letters"]},
    "comedy": {"who": ["a hapless substitute teacher", "a clumsy wedding planner", "two bickering roommates",
                       "a talking goat"],
               "where": ["a chaotic family reunion", "a disastrous talent show", "an office party gone wrong",
                         "a very silly road trip"],
               "what": ["tells one lie that snowballs hilariously", "accidentally adopts twelve cats",
                        "bungles every plan with slapstick", "trades jokes with a grumpy landlord"]},
    "thriller": {"who": ["a burned-out agent", "a whistleblower", "a hostage negotiator", "a hacker on the run"],
                 "where": ["a city under lockdown", "a train speeding through the night", "a border checkpoint",
                           "a server room in Berlin"],
                 "what": ["races to stop a bomb", "is framed for an assassination", "must expose a conspiracy",
                          "keeps a secret that could get her killed"]},
}
TEMPLATES = ["{who} in {where} {what}", "in {where}, {who} {what}", "{who} {what} in {where}"]
OPENERS = ["", "A novel: ", "Now a film: ", "From a bestselling author, ", "Book one. "]
JOINERS = [". Meanwhile, ", "; and ", ". Then ", ", while "]
NEUTRAL = ["a story told over one winter near the {d}", "with a cast that never quite trusts the {d}",
           "a tale that begins with a letter about the {d}"]
WEAK = ["most of it happens in {where}", "the last chapter is set in {where}", "it opens in {where}"]
NEGATED = ["there is no {who} here, and nobody {what}", "despite the cover, it is not set in {where}",
           "forget {who}: nobody in this book {what}"]
DISTRACTORS = {"fantasy": ["castle", "spell"], "science-fiction": ["robot", "orbit"], "mystery": ["clue", "suspect"],
               "romance": ["kiss", "wedding"], "horror": ["ghost", "cemetery"], "historical": ["empire", "plague"],
               "comedy": ["joke", "goat"], "thriller": ["bomb", "agent"]}


def blurb(rng: random.Random, held: bool) -> dict:
    pick = (lambda xs: xs[3]) if held else (lambda xs: rng.choice(xs[:3]))  # assumption 4
    k = rng.choices((1, 2, 3), weights=(45, 40, 15))[0]
    labels = rng.sample(LABELS, k)
    clauses = []
    for lab in labels:
        v = VOCAB[lab]
        if rng.random() < 0.3:  # assumption 3: weak evidence, the setting alone
            clauses.append(rng.choice(WEAK).format(where=pick(v["where"])))
            continue
        clauses.append(rng.choice(TEMPLATES).format(who=pick(v["who"]), where=pick(v["where"]),
                                                    what=pick(v["what"])))
    others = [g for g in LABELS if g not in labels]
    if rng.random() < 0.35:  # assumption 3: a distractor word from a genre that is not a label
        clauses.append(rng.choice(NEUTRAL).format(d=rng.choice(DISTRACTORS[rng.choice(others)])))
    if rng.random() < 0.3:  # assumption 3: a denied clause of a genre that is not a label
        v = VOCAB[rng.choice(others)]
        clauses.append(rng.choice(NEGATED).format(who=pick(v["who"]), what=pick(v["what"]),
                                                  where=pick(v["where"])))
    rng.shuffle(clauses)
    text = clauses[0]
    for c in clauses[1:]:
        text += rng.choice(JOINERS) + c
    opener = rng.choice(OPENERS)
    text = opener + (text[0].upper() + text[1:] if not opener.endswith(", ") else text) + "."
    return {"text": text, "labels": sorted(labels, key=LABELS.index)}


def main(n_train: int = 840, n_val: int = 180, n_test: int = 180, seed: int = 17) -> None:
    rng = random.Random(seed)
    seen: set = set()

    def draw(n: int, held: bool) -> list:
        out = []
        while len(out) < n:
            r = blurb(rng, held)
            if r["text"] not in seen:
                seen.add(r["text"])
                out.append(r)
        return out

    train, heldout = draw(n_train, False), draw(n_val + n_test, True)
    rng.shuffle(train)
    rng.shuffle(heldout)
    here = Path(__file__).resolve().parent
    for name, part in (("train", train), ("val", heldout[:n_val]), ("test", heldout[n_val:])):
        (here / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"wrote {len(part)} records to {here / (name + '.jsonl')}")


if __name__ == "__main__":
    main()
