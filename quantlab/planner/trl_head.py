"""TRL's fused LM head: the bytes it saves for backward and the transients of its forward and backward.

TRL 1.16.0's SFT, DPO, KTO, GRPO and RLOO trainers patch the model with ``add_fused_lm_head``
(``trl/trainer/utils.py``), so that ``model(..., labels=..., fused_lm_head=True)`` returns per-token
log-probabilities without building the (batch, seq, vocab) logits: the backbone's last hidden state goes through
``ChunkedLogProbFunction`` (``trl/kernels/chunked_logprob.py``), which projects it onto the vocabulary one
``TOKEN_CHUNK_SIZE x chunk_size`` tile at a time and folds each tile into online-logsumexp statistics. This module
replaces, for those trainers, the logits term of :mod:`quantlab.planner.memory` (its assumption 6, the HF loss).
Pure arithmetic, standard library only.

Assumptions (numbered H1, H2, ...; TRL 1.16.0 as installed in this project's ``.venv``, torch 2.13):

H1. Shapes (``add_fused_lm_head._fused_forward``): the hidden states are ``last_hidden_state[:, :-1]`` and the
    labels ``labels[:, 1:]``. On a device with Triton (CUDA, XPU: ``_use_triton``) only the positions whose label is
    not -100 are scored (``compact``): N = the scored tokens, ``hidden_states[mask]`` and ``labels[mask]`` are new
    tensors (N x H in the hidden dtype, N int64). Elsewhere (the CPU) every position is scored, N = B x (S-1):
    ``hidden_states.reshape(-1, H)`` is a copy when B > 1 (the slice is not contiguous) and a view of the last hidden
    state when B == 1 (so autograd keeps the whole B x S x H storage), and ``labels.clamp(min=0)`` a new N int64.
H2. Saved for backward by ``ChunkedLogProbFunction.forward``: the hidden rows (H1), the weight (a parameter, not an
    activation), the targets (H1), ``log_z`` (fp32 N) and ``entropy`` (fp32 N) when ``"entropy"`` is among the
    requested outputs (else ``log_z`` fills that slot again). Outside the function the wrapper's per-token outputs
    are scattered back: on the compact path ``new_zeros(mask.shape).masked_scatter(mask, x)`` saves the bool mask
    (B x (S-1), once: the same tensor for every output); elsewhere ``x.view(mask.shape).masked_fill(~mask, 0)``
    saves a fresh ``~mask`` per differentiable output (``log_probs``, and ``entropy`` when requested; the others are
    marked non-differentiable). The loss divides by ``mask.sum().clamp(min=1)`` (an int64 scalar, saved: 8 bytes).
H3. Forward transient (``forward``): seven fp32 N-vectors (running max, sum of exponentials, x·exp sum, squared
    sum, logit sum, max before the target, target logit) and ``mm_buf``, ``min(N, TOKEN_CHUNK_SIZE) x chunk_size``
    in the compute dtype, with ``chunk_size = _CHUNKED_LOGPROB_CHUNK_SIZE = 32768`` whatever the vocabulary (a
    vocabulary of 256 still allocates 32,768 columns). The compute dtype is the autocast dtype under autocast, else
    the hidden dtype; ``hidden[chunk].to(compute)`` and ``weight[chunk].to(compute)`` copy only when the dtypes differ
    (AMP: fp32 hidden states and fp32 master weights). On the Triton path the fold is a kernel (no tile-sized
    temporaries). On the torch path (``_forward_tile``) the fold holds three fp32 tiles (``z``, ``z - max``,
    ``exp``; ``e * z`` for the entropy replaces the middle one) of ``n x min(V, chunk_size)``, plus the bool
    ``before_target`` tile when ``"is_top1"`` is requested (it stays bound through the fold), plus a few per-token
    vectors of the tile (H6).
H4. Backward transient (``backward``): fp32 ``grad_hidden`` (N x H, when the hidden states need a gradient), fp32
    ``grad_weight`` (V x H, when the head trains), ``mm_buf`` again, the chunk copies of H3; the torch fold
    (``_backward_tile``) holds seven fp32 tiles and a bool one at its peak (``y``, ``z``, ``log_p``, ``p``, ``grad``,
    ``is_target.float() - p`` and its product with the incoming gradient; ``is_target``); on a CPU, or in fp32, or
    before torch 2.8, ``_addmm_fp32`` adds ``a.float()`` and ``b.float()`` copies where the operands are half
    (CUDA with bf16/fp16 uses ``addmm(out_dtype=float32)``: none). At ``return``, ``grad_hidden.to(hidden.dtype)``
    and ``grad_weight.to(weight.dtype)`` are copies unless the dtype is fp32, made while ``mm_buf`` and both fp32
    gradients are still bound: the backward's peak.
H5. Past the function, the gradient reaches the last hidden state through the wrapper's indexing: the compact path's
    ``index`` backward (zeros B x (S-1) x H, then ``index_put_``) and the ``[:, :-1]`` slice backward (zeros
    B x S x H), each beside its incoming gradient; the torch path's slice backward beside the N x H gradient.
H6. The torch forward fold also holds, at its peak, per-token vectors of the tile: ``targets - vocab_start``
    (int64), the new running max and the rescale (fp32), and the row sum of ``e * z`` when entropy or
    ``log_sum_sq_probs`` is requested (:data:`FOLD_VECTOR_BYTES`); the backward fold's peak holds no per-token
    vector beyond its tiles. Not modelled: the per-sequence sums the trainer takes after the forward (bytes per
    sequence, not per token) and the wrapper's short-lived scalars.

The experimental ORPO and CPO/SimPO trainers do not use the fused head: they build every logit
(:func:`logits_head`, H7-H9; ``trl/experimental/orpo/orpo_trainer.py`` and ``trl/experimental/cpo/cpo_trainer.py``
``concatenated_forward``, ``trl/trainer/utils.py`` ``selective_log_softmax``, TRL 1.16.0).

H7. Kept: the model returns the logits of the P = 2B concatenated sequences, P x S x V in lm_head's output dtype
    (no loss inside the model: ``model(input_ids, attention_mask, use_cache=False)``), alive until the end of
    backward.
H8. Saved outside the model by the loss (P x (S-1) positions): ``get_batch_logps`` with ``average_log_prob=True``
    (ORPO always; CPO for ``simpo`` and ``ipo``) clones the shifted labels and calls ``selective_log_softmax``,
    whose fp32/fp64 branch saves the int64 gather index (8 bytes a position) and one ``logsumexp`` result per
    sequence row (4 a position; the rows are views of the logits, already kept), then the bool loss mask (1 a
    position) and the int64 per-sequence token count the mean divides by (8 a sequence); a half-precision
    branch keeps each row's ``log_softmax`` instead (P x (S-1) x V in the logits dtype; not measured here).
    The pair-level loss saves a few fp32 B-vectors: ORPO's ``odds_ratio_loss`` six (``exp``, ``log1p``,
    ``logsigmoid``'s input and buffer, for chosen and rejected where they apply: 24 bytes a pair), SimPO's
    ``logsigmoid`` two (8 a pair). ORPO's NLL term (``cross_entropy_loss(all_logits[:B], ...)``,
    ``nn.CrossEntropyLoss`` in the logits' dtype, no upcast) saves the chosen sequences' ``log_softmax``
    (B x (S-1) x V) and their int64 targets; CPO with ``cpo_alpha=0`` (SimPO's setting) runs no NLL term.
H9. The backward's peak above H7 and H8 (measured on this CPU, fp32, tiny Llama, reports/preference-cpu): two
    P x (S-1) x V gradient buffers in the logits' dtype at once: ``gather``'s backward (a zeros tensor it
    scatters into) and the per-row ``logsumexp`` gradients stacked by ``unbind``'s backward, before they are summed
    into the gradient of the shifted logits.
"""

from __future__ import annotations

from collections import namedtuple

TOKEN_CHUNK_SIZE = 4096  # trl/kernels/chunked_logprob.py (TRL 1.16.0)
CHUNK_SIZE = 32768  # trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE (TRL 1.16.0)
OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
FORWARD_VECTORS = 7  # H3: fp32 N-vectors allocated by forward whatever is requested
FOLD_VECTOR_BYTES = 16  # H6: the torch forward fold's per-token vectors at its peak (targets - vocab_start, int64;
# the new running max and the rescale, fp32); 4 more with entropy or log_sum_sq_probs (the row sum of e * z)

# the outputs each trainer asks of the policy's head (``add_fused_lm_head(..., outputs=...)`` in TRL 1.16.0); a
# reference model is patched with the default ("log_probs",)
TRAINER_OUTPUTS = {
    "sft": ("log_probs", "entropy", "is_top1"),  # sft_trainer.py
    "dpo": ("log_probs", "entropy", "mean_logits", "is_top1"),  # dpo_trainer.py (+ log_sum_sq_probs with WPO weights)
    "kto": ("log_probs", "entropy", "mean_logits"),  # kto_trainer.py
    "grpo": ("log_probs", "entropy"),  # grpo_trainer.py
    "reference": ("log_probs",),  # the default, for every reference model
}


class FusedHead(namedtuple("FusedHead", "tokens saved saved_hidden saved_function hidden_is_view outputs_kept forward_transient "
                                        "backward_transient input_grad_transient")):
    """Bytes of one fused-head call (H1-H5), integers:

    ``tokens`` (N, the rows scored), ``saved`` (every tensor saved for backward by the function and its wrapper,
    H2, the hidden rows included), ``saved_hidden`` (the hidden rows' storage alone), ``hidden_is_view`` (that
    storage is the last hidden state's own: B == 1 on the torch path), ``outputs_kept`` (the per-token outputs the
    model returns, B x (S-1) each, H2), ``forward_transient`` (the peak above the saved tensors and the outputs during
    the forward, H3), ``backward_transient`` (the function's backward peak above the saved tensors and its incoming
    fp32 gradient of N values, H4) and ``input_grad_transient`` (the peak of H5, after the function's buffers are freed)."""

    __slots__ = ()

    @property
    def backward_peak(self) -> int:
        """The larger of the function's backward and the indexing backward after it (H4, H5)."""
        return max(self.backward_transient, self.input_grad_transient)


def _check(name: str, v: int, low: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def fused_head(*, batch: int, seq: int, hidden: int, vocab: int, hidden_bytes: int, compute_bytes: int,
               weight_bytes: int, head_trains: bool, triton: bool, outputs: tuple[str, ...] = ("log_probs",),
               scored: int | None = None, hidden_grad: bool = True, cpu_matmul: bool | None = None,
               no_grad: bool = False) -> FusedHead:
    """The fused head over ``batch`` sequences of ``seq`` tokens (H1-H6).

    ``hidden_bytes``: the dtype of the last hidden state (fp32 under AMP); ``compute_bytes``: the autocast dtype
    under autocast, else the hidden dtype; ``weight_bytes``: lm_head's weight dtype; ``triton``: the compact Triton
    path (CUDA); ``scored``: tokens whose label is not -100 (default every one of B x (S-1); only the Triton path
    scores fewer); ``cpu_matmul``: ``_addmm_fp32`` takes the ``.float()`` branch (default: not Triton);
    ``no_grad``: a reference forward (nothing saved, no backward)."""
    for name, v in (("batch", batch), ("seq", seq), ("hidden", hidden), ("vocab", vocab)):
        _check(name, v)
    if seq < 2:
        raise ValueError("seq must be at least 2: the fused head scores next-token labels")
    unknown = set(outputs) - set(OPTIONAL_OUTPUTS) - {"log_probs"}
    if unknown:
        raise ValueError(f"unknown fused-head outputs {sorted(unknown)}; known: log_probs, {', '.join(OPTIONAL_OUTPUTS)}")
    B, S, H, V = batch, seq, hidden, vocab
    r, c, w = hidden_bytes, compute_bytes, weight_bytes
    positions = B * (S - 1)
    if scored is None:
        scored = positions
    _check("scored", scored, 0)
    if scored > positions:
        raise ValueError(f"scored tokens {scored} exceed the {positions} next-token positions of {B} x {S}")
    N = scored if triton else positions  # H1
    n = min(N, TOKEN_CHUNK_SIZE)
    cols = min(V, CHUNK_SIZE)
    cpu_matmul = (not triton) if cpu_matmul is None else cpu_matmul
    entropy = "entropy" in outputs
    # H1: the hidden rows and targets the function receives
    if triton:
        hidden_rows, hidden_is_view = N * H * r, False
    elif B == 1:
        hidden_rows, hidden_is_view = S * H * r, True  # a view keeps the whole last hidden state
    else:
        hidden_rows, hidden_is_view = N * H * r, False
    targets = 8 * N
    # H2: the per-token outputs returned (each B x (S-1); is_top1 bool)
    kept = sum(1 if o == "is_top1" else 4 for o in ("log_probs",) + tuple(o for o in OPTIONAL_OUTPUTS if o in outputs))
    outputs_kept = kept * positions
    # H3: the forward's own peak
    mm = n * CHUNK_SIZE * c
    vectors = FORWARD_VECTORS * 4 * N
    hc = n * H * c if r != c else 0  # hidden chunk in the compute dtype
    hc2 = min(n, N - n) * H * c if (r != c and N > n) else 0  # the next chunk's copy while the last is bound
    wc = cols * H * c if w != c else 0  # weight chunk in the compute dtype
    tile = n * cols
    if triton:
        fold_f = 0
    else:
        rowsum = 4 if (entropy or "log_sum_sq_probs" in outputs) else 0
        fold_f = 3 * 4 * tile + (tile if "is_top1" in outputs else 0) + (FOLD_VECTOR_BYTES + rowsum) * n
    forward = vectors + mm + hc + max(wc, fold_f, hc2)
    if no_grad:
        return FusedHead(N, 0, 0, 0, hidden_is_view, outputs_kept, forward + (hidden_rows if not hidden_is_view else 0)
                         + targets, 0, 0)
    diff_outputs = 2 if entropy else 1
    masks = positions if triton else diff_outputs * positions  # H2
    function = hidden_rows + targets + 4 * N * (2 if entropy else 1)
    saved = function + masks + 8
    # H4: the backward's own peak (above the saved tensors and its incoming fp32 gradient): its buffers
    grad_in = 0
    gh = 4 * N * H if hidden_grad else 0
    gw = 4 * V * H if head_trains else 0
    base = grad_in + gh + gw + mm + hc + wc
    fold_b = 0 if triton else 7 * 4 * tile + tile
    addmm = 0
    if cpu_matmul:
        if c != 4 and hidden_grad:
            addmm = max(addmm, 4 * tile + 4 * cols * H)  # tile.float(), w_chunk.float()
        if c != 4 and head_trains:
            addmm = max(addmm, 4 * tile + 4 * n * H)  # tile.t().float(), hidden_chunk.float()
    ret = (N * H * r if (r != 4 and hidden_grad) else 0) + (V * H * w if (w != 4 and head_trains) else 0)
    backward = base + max(fold_b, addmm, ret)
    # H5: the gradient of the last hidden state through the wrapper's indexing
    if not hidden_grad:
        input_grad = 0
    elif triton:
        input_grad = max(N + positions, positions + B * S) * H * r
    else:
        input_grad = (N + B * S) * H * r
    return FusedHead(N, saved, hidden_rows, function, hidden_is_view, outputs_kept, forward, backward, input_grad)


def logits_head(*, pairs: int, seq: int, vocab: int, logits_bytes: int, nll: bool) -> tuple[int, int, int]:
    """(kept, saved, transient) bytes of the ORPO / CPO head over ``pairs`` chosen/rejected pairs (P = 2 x pairs
    sequences) of ``seq`` tokens (H7-H9). ``nll``: ORPO's NLL term on the chosen sequences (CPO: ``cpo_alpha`` >
    0); ``logits_bytes``: lm_head's output dtype."""
    for name, v in (("pairs", pairs), ("seq", seq), ("vocab", vocab)):
        _check(name, v)
    if seq < 2:
        raise ValueError("seq must be at least 2: the loss scores next-token labels")
    B, S, V, L = pairs, seq, vocab, logits_bytes
    P = 2 * B
    pos = P * (S - 1)
    kept = P * S * V * L  # H7
    logps = (8 + 4 + 1) * pos + 8 * P if L >= 4 else (V * L + 8 + 1) * pos + 8 * P  # H8 (half: log_softmax rows)
    pair = 24 * B if nll else 8 * B
    ce = (B * (S - 1) * V * L + 8 * B * (S - 1) + 4) if nll else 0
    transient = 2 * pos * V * L  # H9
    return kept, logps + pair + ce, transient
