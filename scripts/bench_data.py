"""Scale benchmark of ``quantlab data inspect``: synthetic records with planted exact, near and semantic duplicates.

    PYTHONPATH=$PWD python scripts/bench_data.py [--n 100000] [--out reports/data]

The generator is deterministic (``random.Random(seed)``):
1. Unique records: ``prompt`` and ``response`` of 8 words each, drawn uniformly from the words (3+ letters) of the
   lab's shipped texts (``quantlab/lab/texts/calibration.txt`` and ``heldout.txt``: about 1,900 words), so two
   unique records share little by chance.
2. Each duplicate copies an earlier unique record (its source) and is placed at a random position after it, so
   "the first occurrence stays" keeps the source:
   - exact: the source with its case and whitespace changed (equal after normalisation);
   - near: the source with one edit within the last characters of the response (a letter changed, doubled or
     dropped, or punctuation added), kept only if the exact Jaccard of the character 5-gram sets is >= 0.92;
   - semantic: the source's 16 words with every other adjacent pair swapped ("a b c d e f" -> "b a c d f e"),
     split back into prompt and response: the same words and meaning, a different surface (character 5-gram
     Jaccard < 0.9, so near dedup does not take it).
3. The command is the real CLI (``python -m quantlab data inspect FILE --semantic 0.85 --near 0.9 --format json
   --write-clean ...``, one process); its per-pass timings (``timings_s``) and the removal record give the figures.
   Recall = planted duplicates removed as duplicates / planted; precision = planted among the records removed as
   duplicates. Per kind, a planted duplicate counts for its own pass (exact / near / semantic).
The machine is shared: the load average (1, 5, 15 min) is recorded before and after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "quantlab" / "lab" / "texts"


def vocabulary() -> list[str]:
    text = (TEXTS / "calibration.txt").read_text(encoding="utf-8") + (TEXTS / "heldout.txt").read_text(encoding="utf-8")
    return sorted({w.lower() for w in re.findall(r"[A-Za-z]{3,}", text)})


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.casefold()).strip()


def _jac(a: str, b: str) -> float:
    sa = {a[i:i + 5] for i in range(max(1, len(a) - 4))}
    sb = {b[i:i + 5] for i in range(max(1, len(b) - 4))}
    return len(sa & sb) / len(sa | sb)


def _key(r: dict) -> str:
    return _norm(r["prompt"]) + "\u241e" + _norm(r["response"])


def _exact(r: dict, rng: random.Random) -> dict:
    p = r["prompt"].upper() if rng.random() < 0.5 else r["prompt"].capitalize()
    return {"prompt": "  " + p.replace(" ", "  ", 1), "response": r["response"] + " \t"}


def _near(r: dict, rng: random.Random) -> dict | None:
    for _ in range(20):
        s = r["response"]
        k = rng.randrange(max(1, len(s) - 4), len(s))
        op = rng.randrange(4)
        if op == 0:
            s = s[:k] + rng.choice("abcdefghijklmnopqrstuvwxyz") + s[k + 1:]
        elif op == 1:
            s = s[:k] + s[k] + s[k:]
        elif op == 2:
            s = s[:k] + s[k + 1:]
        else:
            s = s + rng.choice(".!?;")
        cand = {"prompt": r["prompt"], "response": s}
        if _key(cand) != _key(r) and _jac(_key(cand), _key(r)) >= 0.92:
            return cand
    return None


def _semantic(r: dict) -> dict:
    w = (r["prompt"] + " " + r["response"]).split()
    for i in range(0, len(w) - 1, 4):
        w[i], w[i + 1] = w[i + 1], w[i]
    h = len(w) // 2
    return {"prompt": " ".join(w[:h]), "response": " ".join(w[h:])}


def generate(n: int, seed: int = 0, exact: float = 0.06, near: float = 0.07, semantic: float = 0.07):
    """(records in file order, truth): truth[i] is None for a unique record, else (kind, index of its source)."""
    rng = random.Random(seed)
    vocab = vocabulary()
    n_dup = {"exact": int(n * exact), "near": int(n * near), "semantic": int(n * semantic)}
    n_unique = n - sum(n_dup.values())
    uniques, seen = [], set()
    while len(uniques) < n_unique:
        w = [rng.choice(vocab) for _ in range(16)]
        r = {"prompt": " ".join(w[:8]), "response": " ".join(w[8:])}
        if _key(r) not in seen:
            seen.add(_key(r))
            uniques.append(r)
    items = [(float(i), r, None) for i, r in enumerate(uniques)]
    for kind, count in n_dup.items():
        made = 0
        while made < count:
            src = rng.randrange(n_unique)
            d = _exact(uniques[src], rng) if kind == "exact" else _near(uniques[src], rng) if kind == "near" \
                else _semantic(uniques[src])
            if d is None or (kind == "semantic" and _jac(_key(d), _key(uniques[src])) >= 0.9):
                continue
            items.append((rng.uniform(src + 0.5, n_unique), d, (kind, src)))
            made += 1
    items.sort(key=lambda t: t[0])
    pos = {}
    records, truth = [], []
    for k, (_, r, t) in enumerate(items):
        if t is None:
            pos[id(r)] = k
        records.append(r)
        truth.append(t)
    src_pos = {i: pos[id(u)] for i, u in enumerate(uniques)}
    truth = [None if t is None else (t[0], src_pos[t[1]]) for t in truth]
    return records, truth


def score(truth, removals: list[dict], kinds=("exact", "near", "semantic")) -> dict:
    """Recall and precision of the planted duplicates of ``kinds`` (the passes that ran), overall and per kind
    (lines are 1-based). A removed planted duplicate of a kind out of scope is not counted either way."""
    planted = {i + 1: t for i, t in enumerate(truth) if t is not None and t[0] in kinds}
    other = {i + 1 for i, t in enumerate(truth) if t is not None and t[0] not in kinds}
    removals = [r for r in removals if r["line"] not in other]
    dup = {r["line"]: r for r in removals if r["reason"].endswith("_duplicate")}
    tp = [ln for ln in dup if ln in planted]
    out = {"planted": len(planted), "removed_as_duplicates": len(dup), "true_positives": len(tp),
           "recall": len(tp) / len(planted) if planted else None,
           "precision": len(tp) / len(dup) if dup else None,
           "of_line_is_source": sum(dup[ln].get("of_line") == planted[ln][1] + 1 for ln in tp) / len(tp) if tp else None,
           "filtered_unique_records": sum(1 for r in removals if not r["reason"].endswith("_duplicate"))}
    for kind in kinds:
        mine = {ln for ln, t in planted.items() if t[0] == kind}
        found = {ln for ln, r in dup.items() if r["reason"] == f"{kind}_duplicate"}
        out[kind] = {"planted": len(mine), "found": len(found), "recall": len(mine & found) / len(mine) if mine else None,
                     "precision": len(mine & found) / len(found) if found else None,
                     "removed_by_any_pass": len(mine & set(dup)) / len(mine) if mine else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "reports" / "data"))
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the generated file here (default: a temp dir)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    records, truth = generate(a.n, a.seed)
    gen_s = time.perf_counter() - t0
    work = Path(a.keep or tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"synthetic-{a.n}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    # pass 1: exact + near only (the 60 s target); pass 2: with semantic (the 10 min target). Each result is
    # written as soon as it exists, so a long semantic pass does not hold back the first figures.
    for name, extra in (("exact-near", []), ("semantic", ["--semantic", "0.85"])):
        cmd = [sys.executable, "-m", "quantlab", "data", "inspect", str(data), "--near", "0.9", *extra,
               "--format", "json", "--write-clean", str(work / f"clean-{name}.jsonl")]
        load_before = os.getloadavg()
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t
        load_after = os.getloadavg()
        if proc.returncode != 0:
            print(f"quantlab data inspect failed with exit {proc.returncode}", file=sys.stderr)
            return 1
        doc = json.loads(proc.stdout)
        removals = [json.loads(x) for x in (work / f"clean-{name}.removed.jsonl").read_text().splitlines()]
        ts = doc["timings_s"]
        result = {
            "command": "PYTHONPATH=$PWD python scripts/bench_data.py --n %d --seed %d" % (a.n, a.seed),
            "inspect_command": " ".join(["python", "-m", "quantlab"] + cmd[3:]).replace(str(work), "$WORK"),
            "records": a.n, "generate_s": round(gen_s, 2), "wall_s": round(wall, 2),
            "exact_plus_near_s": round(ts["read_s"] + ts["exact_s"] + ts["near_s"], 2),
            "semantic_s": ts.get("semantic_s"), "timings_s": ts, "cpu_s": doc["cpu_s"],
            "exact_plus_near_cpu_s": round(sum(doc["cpu_s"][k] for k in ("read_s", "exact_s", "near_s")), 2),
            "targets": {"exact_plus_near_s": 60, "semantic_s": 600, "recall": 0.95, "precision": 0.95},
            "score": score(truth, removals, ("exact", "near") if name == "exact-near" else
                           ("exact", "near", "semantic")),
            "counts": {k: doc[k] for k in ("records", "records_kept", "exact_duplicates", "near_duplicates",
                                           "semantic_duplicates")},
            "near_method": doc["near_method"],
            "machine": {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                        "load_avg_after": [round(x, 2) for x in load_after], "python": sys.version.split()[0]},
        }
        results[name] = result
        (out / f"bench-{a.n}-{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
