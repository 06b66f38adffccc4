"""TRL 1.16's ChunkedLogProbFunction on this CPU (the torch path) against quantlab.planner.trl_head, byte for byte.

Saved tensors are counted with saved_tensors_hooks (quantlab.lab.saved_tensors.count_saved: storages deduplicated),
the forward and backward peaks with the CPU allocator's events (quantlab.validate.cpu_peak: growth over the bytes
alive when the window opens). Golden case (docstring arithmetic): N = 126 tokens, H = 64, V = 256, fp32, frozen head:
mm_buf = 126 x 32768 x 4 = 16,515,072 (sized by chunk_size, not by the vocabulary), seven fp32 vectors 28 x 126 =
3,528, the fold's three fp32 tiles 12 x 126 x 256 = 387,072 and 16 x 126 = 2,016 of per-token vectors: 16,907,688.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from quantlab.lab.saved_tensors import count_saved  # noqa: E402
from quantlab.planner.trl_head import CHUNK_SIZE, fused_head  # noqa: E402
from quantlab.validate import cpu_peak  # noqa: E402

ALL = ("log_probs", "entropy", "mean_logits", "is_top1")
CASES = [  # (N, H, V, head trains, outputs)
    (126, 64, 256, False, ("log_probs",)),
    (126, 64, 256, True, ALL),
    (300, 32, 1000, False, ("log_probs", "entropy")),
    (50, 16, 40000, True, ("log_probs",)),  # two vocabulary tiles
    (5000, 8, 100, True, ("log_probs",)),  # two token chunks (TOKEN_CHUNK_SIZE 4096)
]


def _run(N, H, V, trains, outs):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    torch.manual_seed(0)
    hidden = torch.randn(N, H, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(V, H) * 0.1, requires_grad=trains)
    targets = torch.randint(0, V, (N,))
    with cpu_peak() as fwd:
        with count_saved(exclude=[weight]) as saved:
            out = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, CHUNK_SIZE, None, 1.0, outs)
    g = torch.randn_like(out[0])
    with cpu_peak() as bwd:
        torch.autograd.backward(out[0], g)
    return saved.bytes, fwd.peak, bwd.peak


@pytest.mark.parametrize("N,H,V,trains,outs", CASES)
def test_chunked_logprob_matches_the_model(N, H, V, trains, outs):
    saved, fwd, bwd = _run(N, H, V, trains, outs)
    f = fused_head(batch=1, seq=N + 1, hidden=H, vocab=V, hidden_bytes=4, compute_bytes=4, weight_bytes=4,
                   head_trains=trains, triton=False, outputs=outs)
    assert saved == f.saved_function - (f.saved_hidden - N * H * 4)  # the leaf passed here is N x H, not the S x H base
    assert fwd == f.forward_transient
    # the one-off 144 bytes autograd's engine allocates on its first backward in a process are tolerated
    assert 0 <= bwd - f.backward_transient <= 144


def test_golden_forward():
    f = fused_head(batch=1, seq=127, hidden=64, vocab=256, hidden_bytes=4, compute_bytes=4, weight_bytes=4,
                   head_trains=False, triton=False)
    assert f.forward_transient == 16_907_688


def test_triton_path_scores_fewer_and_has_no_tiles():
    cpu = fused_head(batch=2, seq=2048, hidden=4096, vocab=128256, hidden_bytes=2, compute_bytes=2, weight_bytes=2,
                     head_trains=False, triton=False)
    gpu = fused_head(batch=2, seq=2048, hidden=4096, vocab=128256, hidden_bytes=2, compute_bytes=2, weight_bytes=2,
                     head_trains=False, triton=True, scored=1000)
    assert gpu.tokens == 1000 < cpu.tokens == 2 * 2047
    # Triton: mm_buf (1000 x 32768 bf16) + seven fp32 vectors, nothing tile-sized besides
    assert gpu.forward_transient == 1000 * 32768 * 2 + 7 * 4 * 1000
    assert gpu.saved < cpu.saved


def test_bad_input():
    with pytest.raises(ValueError):
        fused_head(batch=1, seq=1, hidden=8, vocab=8, hidden_bytes=4, compute_bytes=4, weight_bytes=4,
                   head_trains=False, triton=False)
    with pytest.raises(ValueError):
        fused_head(batch=1, seq=8, hidden=8, vocab=8, hidden_bytes=4, compute_bytes=4, weight_bytes=4,
                   head_trains=False, triton=True, scored=100)
    with pytest.raises(ValueError):
        fused_head(batch=1, seq=8, hidden=8, vocab=8, hidden_bytes=4, compute_bytes=4, weight_bytes=4,
                   head_trains=False, triton=False, outputs=("logits",))
