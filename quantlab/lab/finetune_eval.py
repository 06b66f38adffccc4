"""Task metrics of a fine-tune: greedy answers to the test prompts, exact match and token F1.

1. Answers are greedy (``do_sample=False``) continuations of the rendered prompt (:func:`quantlab.lab.data.
   render_prompt`), generated in left-padded batches, at most ``max_new_tokens`` tokens.
2. Exact match: when the reference is a JSON value, the first JSON value in the answer (decoded from its first
   ``{`` or ``[`` with ``json.JSONDecoder.raw_decode``, so nested objects and trailing text are handled) must equal
   the reference after parsing (key order and spacing do not matter; text that does not parse is wrong). Other
   references compare as stripped strings.
3. Token F1 (SQuAD-style): precision and recall of the multiset of lower-cased alphanumeric tokens of the answer
   against the reference's.
"""

from __future__ import annotations

import json
import re


def _tokens(s: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", s.lower())


def token_f1(pred: str, ref: str) -> float:
    p, r = _tokens(pred), _tokens(ref)
    if not p or not r:
        return float(p == r)
    common = sum(min(p.count(t), r.count(t)) for t in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def first_json(text: str):
    """The first JSON object or array in ``text``, or raise ValueError."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            return dec.raw_decode(text[m.start():])[0]
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON value")


def exact_match(pred: str, ref: str) -> bool:
    try:
        want = json.loads(ref)
    except json.JSONDecodeError:
        return pred.strip() == ref.strip()
    if not isinstance(want, (dict, list)):
        return pred.strip() == ref.strip()
    try:
        return first_json(pred) == want
    except ValueError:
        return False


def generate_answers(model, tok, records, max_new_tokens: int, batch: int = 20) -> list[str]:
    """Greedy answers to ``records`` (:class:`quantlab.lab.data.Record` or prompt strings) (assumption 1)."""
    import torch

    from quantlab.lab.data import render_prompt

    dev = next(model.parameters()).device
    side = tok.padding_side
    tok.padding_side = "left"
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(records), batch):
                texts = [render_prompt(tok, r) for r in records[i:i + batch]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
        model.train(was_training)
    return out


def task_scores(model, tok, records, eval_items: int, max_new_tokens: int) -> dict:
    """Exact match and token F1 over the first ``eval_items`` test records (assumptions 2, 3)."""
    recs = records[:eval_items]
    answers = generate_answers(model, tok, recs, max_new_tokens)
    em = sum(exact_match(a, r.response) for a, r in zip(answers, recs)) / len(recs)
    f1 = sum(token_f1(a, r.response) for a, r in zip(answers, recs)) / len(recs)
    return {"exact_match": em, "token_f1": f1, "items": len(recs), "sample": answers[0] if answers else "",
            "answers": answers}
