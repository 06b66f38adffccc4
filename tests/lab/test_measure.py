"""The instruments, calibrated against tensors of known size."""

import pytest

torch = pytest.importorskip("torch")

from quantlab.lab import measure  # noqa: E402


def test_tensor_bytes_known_sizes_and_dedup():
    a = torch.zeros(1000, 250)  # 250,000 float32 = 1,000,000 bytes
    b = a.view(-1)  # same storage: counted once
    c = torch.zeros(10, dtype=torch.float16)
    tb = measure.tensor_bytes([a, b, c])
    assert tb.total == 1_000_000 + 20
    assert tb.by_dtype == {"float32": 1_000_000, "float16": 20}


def test_model_bytes_counts_tied_weights_once():
    from quantlab.lab.model import tiny_model

    m = tiny_model("llama", tie_word_embeddings=True)
    tb = measure.model_bytes(m)
    assert tb.total == sum(p.numel() for p in m.parameters()) * 4 + sum(b.numel() * b.element_size() for b in m.buffers())


def test_rss_tracker_calibrated_within_5_percent():
    """Allocating and touching 256 MiB shows up as a 256 MiB RSS peak delta, within 5%."""
    n = 256 * 2**20
    with measure.track_rss(interval=0.001) as r:
        x = torch.ones(n // 4)
        x += 1
        del x
    assert abs(r.delta - n) / n < 0.05, r.delta


def test_median_time_runs_warmup_and_repeats():
    calls = []
    t = measure.median_time(lambda: calls.append(1), warmup=2, repeat=3)
    assert len(calls) == 5 and t >= 0
