"""Quality of a (quantized) model against its reference: perplexity, KL divergence, top-1 agreement, per-layer
SQNR of the weights, and accuracy on the shipped cloze task.

1. Perplexity: exp of the mean next-token negative log-likelihood over non-overlapping windows of the
   held-out text (``texts/heldout.txt``), each window scored from its own start (no carried context).
2. KL divergence KL(reference || model) of the next-token distributions, and the share of positions where
   both pick the same top-1 token, on the first ``kl_windows`` windows; the reference log-probabilities are kept
   in fp16 (the error this adds is below 1e-3 nats), its top-1 tokens from fp32.
3. SQNR per linear (Signal-to-Quantization-Noise Ratio, dB) = 10 log10(|W|^2 / |W - W_q|^2), as torchao's
   ``compute_error``. For bitsandbytes layers W_q is bitsandbytes' own dequantization of the stored weights
   (``dequantize_4bit`` with the layer's quant state; ``int8_vectorwise_dequant`` of the int8 codes and row scales
   ``SCB``), taken before any forward pass (see ``weight_source``). Other backends (GPTQ, torchao) have no single
   public dequantize across versions, so W_q is read back by running the layer on the identity matrix
   (``layer(I) - bias`` = W_q^T), through the backend's own kernel; the two routes agree on bitsandbytes layers
   (tests/lab/test_quality.py).
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
    window_nll: tuple = ()  # summed NLL of each window (to compare another model on exactly the same tokens)

    @staticmethod
    def perplexity_of(window_nll, window_tokens: int) -> float:
        """Perplexity of the first len(window_nll) windows, each scoring ``window_tokens`` targets."""
        return math.exp(sum(window_nll) / (len(window_nll) * window_tokens))


def _device(model):
    return next(model.parameters()).device


def score_text(model, windows, reference=None, keep: int = 0, progress=None):
    """Score ``windows``; returns (TextScore, kept reference of the first ``keep`` windows: (fp16 log-probs,
    fp32 top-1 token ids) per window). ``reference`` takes such a kept list (or bare log-prob tensors)."""
    import torch
    import torch.nn.functional as F

    dev = _device(model)
    nll_sum, count = 0.0, 0
    kl_sum, agree, kl_count = 0.0, 0, 0
    kept, per_window = [], []
    with torch.inference_mode():
        for i, w in enumerate(windows):
            w = w.to(dev)
            logits = model(w).logits[0, :-1].float()
            logp = F.log_softmax(logits, dim=-1)
            tgt = w[0, 1:]
            w_nll = float(-logp.gather(1, tgt[:, None]).sum())
            nll_sum += w_nll
            per_window.append(w_nll)
            count += tgt.numel()
            if i < keep:  # fp16 log-probs for KL; the top-1 token from fp32 (fp16 rounding would flip near-ties)
                kept.append((logp.to(torch.float16).cpu(), logp.argmax(-1).cpu()))
            if reference is not None and i < len(reference):
                ref_lp, ref_top = reference[i] if isinstance(reference[i], tuple) else (reference[i], None)
                ref = ref_lp.to(dev).float()
                ref_top = ref.argmax(-1) if ref_top is None else ref_top.to(dev)
                kl_sum += float((ref.exp() * (ref - logp)).sum())
                agree += int((ref_top == logp.argmax(-1)).sum())
                kl_count += tgt.numel()
            if progress:
                progress()
    mean = nll_sum / max(count, 1)
    s = TextScore(perplexity=math.exp(mean), nll=mean, tokens=count, window_nll=tuple(per_window))
    if kl_count:
        s.kl, s.top1_agreement, s.kl_tokens = kl_sum / kl_count, agree / kl_count, kl_count
    return s, kept


def bnb_dequantized_weight(layer):
    """bitsandbytes' dequantization of a Linear4bit / Linear8bitLt weight (fp32, shape out x in), or None when the
    layer is not a bitsandbytes layer or its weight is in bitsandbytes' CPU inference packing (bitsandbytes 0.50
    repacks 4-bit weights at the first eval-mode forward on AVX512-BF16 CPUs; dequantize_4bit does not read it)."""
    w = getattr(layer, "weight", None)
    cls = type(w).__name__ if w is not None else ""
    if cls not in ("Params4bit", "Int8Params"):
        return None
    import bitsandbytes.functional as bf

    with __import__("torch").inference_mode():
        if cls == "Params4bit":
            qs = w.quant_state
            if qs is None or getattr(qs, "packing_format_for_cpu", False):
                return None
            return bf.dequantize_4bit(w.data, qs).float().reshape(qs.shape)
        scb = getattr(w, "SCB", None) if getattr(w, "SCB", None) is not None else getattr(layer.state, "SCB", None)
        if scb is None:
            return None
        return bf.int8_vectorwise_dequant(w.data, scb).float()


def weight_source(layer) -> str:
    """Which route :func:`effective_weight` takes for ``layer``: 'bitsandbytes' or 'identity'."""
    return "bitsandbytes" if bnb_dequantized_weight(layer) is not None else "identity"


def effective_weight(layer, in_features: int, dtype, route: str = "auto"):
    """W_q (out x in, fp32): bitsandbytes' dequantization for its layers, else layer(I) - bias transposed
    (assumption 3). ``route='identity'`` forces the kernel route (used to cross-check the two)."""
    import torch

    if route == "auto":
        w = bnb_dequantized_weight(layer)
        if w is not None:
            return w.cpu()

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
    """Assumption 4. The shared context runs once (only its last position's logits are computed,
    ``logits_to_keep=1``); its KV cache is repeated for the four choices, which then run as one right-padded batch
    on top of it. Right padding cannot change earlier positions under a causal mask, and padded positions are never
    read, so each choice's score equals scoring ``context + choice`` alone (tests/lab/test_quality.py checks this),
    at about a quarter of the tokens of running every choice with its own copy of the context."""
    import torch
    import torch.nn.functional as F

    from quantlab.lab.model import cache_kwarg, output_cache

    dev = _device(model)
    right = 0
    last_scores.clear()
    pad = tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for it in items:
            ctx = tokenizer(it["context"], add_special_tokens=False)["input_ids"]
            conts = [tokenizer(" " + ch, add_special_tokens=False)["input_ids"] for ch in it["choices"]]
            out = model(torch.tensor([ctx], device=dev), use_cache=True, logits_to_keep=1)
            first = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts each choice's first token
            scores = [float(first[c[0]]) for c in conts]
            width = max(len(c) for c in conts) - 1
            if width > 0:
                cache = output_cache(out)
                cache.batch_repeat_interleave(len(conts))
                batch = torch.tensor([c[:-1] + [pad] * (width - len(c) + 1) for c in conts], device=dev)
                mask = torch.ones(len(conts), len(ctx) + width, dtype=torch.long, device=dev)
                logp = F.log_softmax(model(batch, attention_mask=mask, use_cache=True,
                                           **{cache_kwarg(model): cache}).logits.float(), dim=-1)
                for k, c in enumerate(conts):
                    # token c[j] (j >= 1) is predicted at position j-1 of the continuation batch
                    scores[k] += sum(float(logp[k, j - 1, c[j]]) for j in range(1, len(c)))
            right += int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
            last_scores.append(scores)
    return right / len(items)
