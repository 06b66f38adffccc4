"""Quality of a (quantized) model against its reference: perplexity, KL divergence, top-1 agreement, per-layer
SQNR of the weights, and accuracy on the shipped cloze task.

1. Perplexity: exp of the mean next-token negative log-likelihood over non-overlapping windows of the
   held-out text (``texts/heldout.txt``), each window scored from its own start (no carried context).
2. KL divergence KL(reference || model) of the next-token distributions, and the share of positions where
   both pick the same top-1 token, on the first ``kl_windows`` windows; the reference log-probabilities are kept
   in fp16 (the error this adds is below 1e-3 nats).
3. SQNR per linear (Signal-to-Quantization-Noise Ratio, dB) = 10 log10(|W|^2 / |W - W_q|^2). W_q is read back
   by running the quantized layer on the identity matrix (``layer(I) - bias`` = W_q^T), so every backend
   (bitsandbytes, GPTQ, torchao) is measured the same way, through its own kernels.
4. Cloze accuracy: each choice is scored by the summed log-likelihood of " <word>" after the context; the item
   counts as right when the answer scores highest (four choices: chance is 25%).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

TEXTS = Path(__file__).resolve().parent / "texts"


def read_text(name: str) -> str:
    return (TEXTS / name).read_text(encoding="utf-8")


def token_windows(tokenizer, text: str, window: int, max_tokens: int | None = None):
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens:
        ids = ids[:max_tokens]
    n = len(ids) // window
    return [torch.tensor([ids[i * window:(i + 1) * window]]) for i in range(n)]


@dataclass
class TextScore:
    perplexity: float
    nll: float
    tokens: int
    kl: float | None = None
    top1_agreement: float | None = None
    kl_tokens: int = 0


def _device(model):
    return next(model.parameters()).device


def score_text(model, windows, reference=None, keep: int = 0, progress=None):
    """Score ``windows``; returns (TextScore, kept log-probs of the first ``keep`` windows in fp16)."""
    import torch
    import torch.nn.functional as F

    dev = _device(model)
    nll_sum, count = 0.0, 0
    kl_sum, agree, kl_count = 0.0, 0, 0
    kept = []
    with torch.inference_mode():
        for i, w in enumerate(windows):
            w = w.to(dev)
            logits = model(w).logits[0, :-1].float()
            logp = F.log_softmax(logits, dim=-1)
            tgt = w[0, 1:]
            nll_sum += float(-logp.gather(1, tgt[:, None]).sum())
            count += tgt.numel()
            if i < keep:
                kept.append(logp.to(torch.float16).cpu())
            if reference is not None and i < len(reference):
                ref = reference[i].to(dev).float()
                kl_sum += float((ref.exp() * (ref - logp)).sum())
                agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
                kl_count += tgt.numel()
            if progress:
                progress()
    mean = nll_sum / max(count, 1)
    s = TextScore(perplexity=math.exp(mean), nll=mean, tokens=count)
    if kl_count:
        s.kl, s.top1_agreement, s.kl_tokens = kl_sum / kl_count, agree / kl_count, kl_count
    return s, kept


def effective_weight(layer, in_features: int, dtype):
    """W_q as the layer computes with it: layer(I) - bias, transposed (assumption 3)."""
    import torch

    dev = _device(layer) if any(True for _ in layer.parameters()) else torch.device("cpu")
    with torch.inference_mode():
        eye = torch.eye(in_features, dtype=dtype, device=dev)
        out = layer(eye).float()
        bias = getattr(layer, "bias", None)
        if bias is not None:
            out = out - bias.float()
    return out.t()


def sqnr_db(ref, q) -> float:
    noise = float(((ref - q) ** 2).sum())
    sig = float((ref ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(sig / noise)


def layer_sqnr(model, reference_weights: dict, dtype) -> dict:
    """SQNR (dB) of each block linear of ``model`` against ``reference_weights`` (name -> fp32 weight)."""
    out = {}
    modules = dict(model.named_modules())
    for name, ref in reference_weights.items():
        mod = modules.get(name)
        if mod is None:
            continue
        q = effective_weight(mod, ref.shape[1], dtype)
        out[name] = sqnr_db(ref.float(), q.cpu())
    return out


def reference_linear_weights(model) -> dict:
    """fp32 copies of the block linears' weights (the SQNR reference)."""
    import torch

    return {n: m.weight.detach().float().cpu().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}" and "lm_head" not in n}


def load_cloze(path: Path | None = None) -> list[dict]:
    p = path or TEXTS / "cloze_task.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]


last_scores: list = []  # per-item choice scores of the last call (for inspection and tests)


def cloze_accuracy(model, tokenizer, items: list[dict]) -> float:
    """Assumption 4. The four choices of an item run as one left-padded batch, and only the last positions'
    logits are computed (``logits_to_keep``): the vocabulary projection dominates the cost of short inputs."""
    import torch
    import torch.nn.functional as F

    dev = _device(model)
    right = 0
    last_scores.clear()
    pad = tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for it in items:
            ctx = tokenizer(it["context"], add_special_tokens=False)["input_ids"]
            conts = [tokenizer(" " + ch, add_special_tokens=False)["input_ids"] for ch in it["choices"]]
            seqs = [ctx + c for c in conts]
            width = max(len(s) for s in seqs)
            keep = max(len(c) for c in conts) + 1
            batch = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=dev)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=dev)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(batch, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits.float()
            logp = F.log_softmax(logits, dim=-1)  # positions width-keep .. width-1
            scores = []
            for k, c in enumerate(conts):
                # token c[j] sits at position width-len(c)+j and is predicted by the logits one position before
                idx = [keep - len(c) - 1 + j for j in range(len(c))]
                scores.append(float(logp[k, idx, c].sum()))
            right += int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
            last_scores.append(scores)
    return right / len(items)
