"""Token lengths with the model's tokenizer, their histogram, and the batches a dataloader draws from them.

Assumptions:

1. A record is tokenized as a fine-tune feeds it to the model: chat and prompt records through the tokenizer's
   chat template (the prompt as a user turn, the response as the assistant's) when it has one, else as
   ``prompt\\nresponse``; a text record as its text; each followed by the end-of-sequence token (as
   ``quantlab/lab/data.py`` and TRL's SFTTrainer append it). A preference record is two sequences, prompt +
   chosen and prompt + rejected; its length is the longer one (both are padded to one width in TRL's DPO
   collator, ``trl/trainer/dpo_trainer.py`` ``DataCollatorForPreference``).
2. The tokenizer is the model's own (``quantlab.lab.model``: the embedded SmolLM2, a local transformers folder, or
   a GGUF, converted once to the cache). Batch calls to the fast (Rust) tokenizer.
3. Dynamic padding: the sampler draws a seeded shuffle of the records (``random.Random(seed)``, as a
   ``RandomSampler`` draws a permutation each epoch; the order differs from torch's generator, the distribution
   of batch widths does not) and cuts it into batches of ``batch`` records, the last one partial
   (``drop_last=False``, the transformers Trainer default). A batch is padded to its longest record
   (``DataCollatorWithPadding``, ``padding="longest"``). Packing (``--packing``): the records, each ending in EOS,
   are concatenated and cut into rows of exactly ``max_len`` tokens (TRL ``packing=True``); the last partial row
   is dropped, every batch is ``batch`` x ``max_len``.
4. Percentiles are nearest-rank: p-th percentile = the ceil(p/100 * n)-th smallest value.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from quantlab.data.records import Record
from quantlab.errors import QuantlabError


def load_tokenizer(model: str | None, progress: bool = True):
    """The tokenizer of ``model`` (assumption 2); one that cannot be loaded is a one-line error."""
    from quantlab.lab import model as lm

    src = lm.resolve(model)
    try:
        return lm.load_tokenizer(src, progress=progress)
    except QuantlabError:
        raise
    except (ImportError, MemoryError):
        raise
    except Exception as e:  # transformers raises OSError, ValueError, JSON errors...: one line
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QuantlabError(f"cannot load the tokenizer of {model or 'the embedded model'}: {msg[:200]}") from None


def _chat_text(tok, messages: list) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def rendered(tok, r: Record) -> list[str]:
    """The sequence(s) a fine-tune feeds for ``r`` (assumption 1), without the EOS token."""
    f = r.fields
    if r.kind == "text":
        return [f["text"]]
    if r.kind == "chat":
        return [_chat_text(tok, f["messages"])]
    if r.kind == "prompt":
        if getattr(tok, "chat_template", None):
            return [_chat_text(tok, [{"role": "user", "content": f["prompt"]},
                                     {"role": "assistant", "content": f["response"]}])]
        return [f["prompt"] + "\n" + f["response"]]
    out = []
    for side in ("chosen", "rejected"):
        v = f[side]
        if isinstance(v, list):
            msgs = ([{"role": "user", "content": f["prompt"]}] if f.get("prompt") else []) + v
            out.append(_chat_text(tok, msgs))
        else:
            out.append((f.get("prompt", "") + "\n" if f.get("prompt") else "") + v)
    return out


def token_lengths(tok, records: Sequence[Record], chunk: int = 2048) -> list[int]:
    """Tokens per record (assumption 1), EOS included."""
    eos = 1 if getattr(tok, "eos_token_id", None) is not None else 0
    seqs, owner = [], []
    for k, r in enumerate(records):
        for s in rendered(tok, r):
            seqs.append(s)
            owner.append(k)
    out = [0] * len(records)
    for a in range(0, len(seqs), chunk):
        ids = tok(seqs[a:a + chunk], add_special_tokens=False)["input_ids"]
        for k, x in zip(owner[a:a + chunk], ids):
            out[k] = max(out[k], len(x) + eos)
    return out


def percentile(values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile (assumption 4)."""
    v = sorted(values)
    if not v:
        raise ValueError("no values")
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def summary(lengths: Sequence[int]) -> dict:
    return {"count": len(lengths), "min": min(lengths), "p50": percentile(lengths, 50),
            "p95": percentile(lengths, 95), "max": max(lengths), "mean": sum(lengths) / len(lengths),
            "total": sum(lengths)}


@dataclass(frozen=True)
class Histogram:
    """Equal-width bins from the shortest record up: ``edges`` has one more entry than ``counts``; bin k holds
    lengths in [edges[k], edges[k + 1])."""

    edges: tuple[int, ...]
    counts: tuple[int, ...]


def histogram(lengths: Sequence[int], bins: int = 12) -> Histogram:
    lo, top = min(lengths), max(lengths)
    width = max(1, math.ceil((top - lo + 1) / bins))
    n = math.ceil((top - lo + 1) / width)
    counts = [0] * n
    for x in lengths:
        counts[(x - lo) // width] += 1
    return Histogram(tuple(lo + i * width for i in range(n + 1)), tuple(counts))


def histogram_text(h: Histogram, bar: int = 40) -> str:
    """One line per bin: ``[lo, hi)  count  ####``, bars scaled to the largest bin."""
    peak = max(h.counts) or 1
    lw = len(str(h.edges[-1]))
    cw = len(str(peak))
    lines = []
    for lo, hi, c in zip(h.edges, h.edges[1:], h.counts):
        lines.append(f"[{lo:>{lw}}, {hi:>{lw}})  {c:>{cw}}  {'#' * round(bar * c / peak)}".rstrip())
    return "\n".join(lines)


def histogram_png(lengths: Sequence[int], title: str, max_len: int | None = None, bins: int = 40) -> bytes:
    """The histogram as PNG bytes (matplotlib, Agg backend), with p50 / p95 / max marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.hist(lengths, bins=bins, color="#4c72b0")
    for k, (p, style) in enumerate((("p50", ":"), ("p95", "--"), ("max", "-"))):
        v = max(lengths) if p == "max" else percentile(lengths, int(p[1:]))
        ax.axvline(v, color="#c44e52", linestyle=style, linewidth=1)
        ax.text(v, ax.get_ylim()[1] * (0.95 - 0.08 * k), f" {p} {v}", color="#c44e52", fontsize=8, va="top")
    if max_len:
        ax.axvline(max_len, color="black", linewidth=1)
        ax.text(max_len, ax.get_ylim()[1] * 0.8, f" --max-len {max_len}", fontsize=8, va="top")
    ax.set_xlabel("tokens per record (model's tokenizer, EOS included)")
    ax.set_ylabel("records")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def batch_widths(lengths: Sequence[int], batch: int, seed: int = 0) -> list[int]:
    """Dynamic padding (assumption 3): the width of each batch of a seeded shuffle, in draw order."""
    if batch < 1:
        raise QuantlabError(f"--batch must be at least 1, got {batch}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [max(lengths[i] for i in order[a:a + batch]) for a in range(0, len(order), batch)]


def batch_sizes(n: int, batch: int) -> list[int]:
    """Records in each batch of :func:`batch_widths` (the last one partial)."""
    return [min(batch, n - a) for a in range(0, n, batch)]


def packed_rows(lengths: Sequence[int], max_len: int) -> int:
    """Rows of exactly ``max_len`` tokens that packing cuts (assumption 3)."""
    return sum(lengths) // max_len
