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
    """Two distinct Parameter objects on one storage (a tie made by hand, as a checkpoint loader or a user's
    ``lm_head.weight = nn.Parameter(embed.weight.data)`` makes it): ``model.parameters()`` yields both, since it
    deduplicates by object, so only the storage dedup counts the V x h bytes once."""
    from quantlab.lab.model import tiny_model

    m = tiny_model("llama", tie_word_embeddings=False)
    emb = m.get_input_embeddings().weight
    m.lm_head.weight = torch.nn.Parameter(emb.data)
    params = list(m.parameters())
    assert m.lm_head.weight is not emb and any(p is m.lm_head.weight for p in params) and any(p is emb for p in params)
    buffers = sum(b.numel() * b.element_size() for b in m.buffers())
    naive = sum(p.numel() * p.element_size() for p in params) + buffers
    tb = measure.model_bytes(m)
    assert tb.total == naive - emb.numel() * emb.element_size()
    assert tb.total < naive


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


def test_cuda_figures_are_none_on_cpu_and_rss_always_set():
    with measure.measure_memory() as r:
        x = torch.ones(2**20)
    del x
    assert r.rss_peak_bytes > 0 and r.rss_delta_bytes >= 0
    if not torch.cuda.is_available():
        assert r.cuda_allocated_bytes is None and r.cuda_reserved_bytes is None and r.nvml_process_bytes is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_allocator_calibrated_within_5_percent():
    """A 256 MiB tensor allocated inside the phase raises max_memory_allocated by 256 MiB (within 5%);
    reserved >= allocated; NVML's process figure (CUDA context included) >= reserved when NVML sees the process."""
    n = 256 * 2**20
    torch.cuda.init()
    base = torch.cuda.memory_allocated()
    with measure.measure_memory() as r:
        x = torch.ones(n // 4, device="cuda")
        del x
    assert abs(r.cuda_allocated_bytes - base - n) / n < 0.05
    assert r.cuda_reserved_bytes >= r.cuda_allocated_bytes
    if r.nvml_process_bytes is not None:
        assert r.nvml_process_bytes >= r.cuda_reserved_bytes
