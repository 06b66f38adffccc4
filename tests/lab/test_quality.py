"""Quality instruments: SQNR, perplexity, KL / top-1 agreement, cloze scoring, the shipped texts.

Golden numbers are derived in the docstrings; everything runs on tiny random models built from a config (seconds),
except the text-size check, which only needs the embedded tokenizer.
"""

import math
import tempfile

import pytest

torch = pytest.importorskip("torch")

from quantlab.lab import quality  # noqa: E402
from quantlab.lab.model import tiny_model  # noqa: E402


def test_sqnr_golden():
    """W = 1 everywhere, noise 0.1 everywhere: 10 log10(n / (0.01 n)) = 20 dB exactly."""
    ref = torch.ones(8, 16)
    assert quality.sqnr_db(ref, ref + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert quality.sqnr_db(ref, ref) == float("inf")


def test_identity_route_reads_back_the_weight_without_bias():
    lin = torch.nn.Linear(16, 8, bias=True)
    w = quality.effective_weight(lin, 16, torch.float32)
    assert torch.allclose(w, lin.weight, atol=1e-6)


def test_perplexity_matches_transformers_loss():
    """Our NLL over a window equals the mean cross-entropy transformers computes with labels=input_ids."""
    m = tiny_model("llama").eval()
    x = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    s, _ = quality.score_text(m, [x])
    with torch.no_grad():
        loss = float(m(x, labels=x).loss)
    assert s.tokens == 63
    assert s.nll == pytest.approx(loss, rel=1e-5)
    assert s.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


def test_kl_zero_against_itself_and_positive_against_a_perturbed_copy():
    m = tiny_model("llama").eval()
    xs = [torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    _, kept = quality.score_text(m, xs, keep=2)
    same, _ = quality.score_text(m, xs, reference=kept)
    assert same.kl < 1e-3 and same.top1_agreement == 1.0 and same.kl_tokens == 62
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other, _ = quality.score_text(m, xs, reference=kept)
    assert other.kl > 10 * same.kl + 1e-3 and other.top1_agreement < 1.0


def test_token_windows_are_non_overlapping_and_capped():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    ws = quality.token_windows(Tok(), "x" * 1000, 100, 550)
    assert len(ws) == 5 and ws[1][0, 0].item() == 100 and all(w.shape == (1, 100) for w in ws)


def test_cloze_batched_scores_equal_unpadded_scores():
    """Left padding with a mask and shifted position ids must not change any choice's log-likelihood."""
    from quantlab.lab.model import load_tokenizer, resolve

    tok = load_tokenizer(resolve("smollm2-135m"), progress=False)
    m = tiny_model("llama", vocab_size=len(tok)).eval()
    items = quality.load_cloze()[:3]
    quality.cloze_accuracy(m, tok, items)
    for it, got in zip(items, quality.last_scores):
        ctx = tok(it["context"], add_special_tokens=False)["input_ids"]
        for ch, score in zip(it["choices"], got):
            c = tok(" " + ch, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(m(torch.tensor([ctx + c])).logits[0].float(), -1)
            want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(c))
            assert score == pytest.approx(want, abs=2e-3), (it["context"][-30:], ch)


@pytest.fixture(scope="module")
def tiny_folder():
    m = tiny_model("llama", hidden_size=128, intermediate_size=256)
    d = tempfile.mkdtemp(prefix="quantlab-tiny-")
    m.save_pretrained(d)
    return d, quality.reference_linear_weights(m)


@pytest.mark.parametrize("kind,floor", [("int8", 38.0), ("nf4", 18.0), ("fp4", 15.0)])
def test_bitsandbytes_dequantize_agrees_with_the_kernel(tiny_folder, kind, floor):
    """bitsandbytes' own dequantization (the SQNR route for its layers) and the layer's kernel on the identity
    matrix give the same W_q (agreement > 40 dB), and the SQNR vs fp32 clears the method's floor: a random
    normal weight quantized to int8 per row gives ~44 dB, to 4 bits per 64-block ~20 dB (NF4) / ~18 dB (FP4)."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    d, ref = tiny_folder
    q = BitsAndBytesConfig(load_in_8bit=True) if kind == "int8" else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=torch.float32)
    qm = AutoModelForCausalLM.from_pretrained(d, quantization_config=q, device_map="cpu", dtype=torch.float32).eval()
    mods = dict(qm.named_modules())
    for name in list(ref)[:3]:
        mod = mods[name]
        assert quality.weight_source(mod) == "bitsandbytes"
        a = quality.effective_weight(mod, ref[name].shape[1], torch.float32)
        b = quality.effective_weight(mod, ref[name].shape[1], torch.float32, route="identity")
        assert quality.sqnr_db(a, b) > 40, name
        assert quality.sqnr_db(ref[name], a) > floor, name
    sq = quality.layer_sqnr(qm, ref, torch.float32)
    assert len(sq) == 14 and min(sq.values()) > floor


def test_shipped_texts_are_long_enough_and_distinct():
    """Held-out text >= 20,000 tokens; the GPTQ calibration text shares no 200-character passage with it."""
    from quantlab.lab.model import load_tokenizer, resolve

    tok = load_tokenizer(resolve("smollm2-135m"), progress=False)
    held, calib = quality.read_text("heldout.txt"), quality.read_text("calibration.txt")
    assert len(tok(held, add_special_tokens=False)["input_ids"]) >= 20_000
    assert not any(calib[i:i + 200] in held for i in range(0, len(calib) - 200, 500))
    items = quality.load_cloze()
    assert len(items) == 120 and all(len(it["choices"]) == 4 and 0 <= it["answer"] < 4 for it in items)
