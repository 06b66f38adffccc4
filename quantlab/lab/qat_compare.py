"""QAT against PTQ at the same bit width, on the same data and steps (see :mod:`quantlab.lab.qat`).

Two full fine-tunes from the same start, same seed, batches and learning rate: one with int4 fake quantization
(QAT, then converted to int4), one plain and then post-training quantized with the same torchao config. Three rows
(kind ``qat``): ``qat-int4`` (the QAT model after conversion), ``full-fp32`` (the plain fine-tune before
quantization: the upper bound) and ``full-then-ptq-int4``. Each is scored on the task's test split (exact match,
token F1) and by perplexity on the shipped held-out text (``quantlab/lab/texts/heldout.txt``, the PTQ lab's
text), so the report says whether QAT recovered what PTQ lost, on both.
"""

from __future__ import annotations

import dataclasses

PPL_WINDOW, PPL_TOKENS = 256, 2048


def perplexity(model, tok, tokens: int = PPL_TOKENS) -> tuple[float, int]:
    """(perplexity, scored tokens) on the held-out text, non-overlapping windows of PPL_WINDOW tokens."""
    from quantlab.lab import quality

    windows = quality.token_windows(tok, quality.read_text("heldout.txt"), PPL_WINDOW, tokens)
    s = quality.score_text(model, windows)[0]
    return s.perplexity, s.tokens


def compare(cfg, log=print, out=None, progress: bool = True, evaluate_before: bool = True):
    """[(method, metrics, artifacts)] for qat-int4, full-fp32, full-then-ptq-int4. ``cfg`` is a QAT config (its plan a
    full fine-tune, ``cfg.qat``); the plain run is the same config with ``qat=False``."""
    from quantlab.lab.finetune import history_csv, loss_curve_png, run_finetune, task_scores
    from quantlab.lab.measure import model_bytes
    from quantlab.lab.qat import convert_qat, ptq

    def scored(model, tok, data, base: dict) -> dict:
        s = task_scores(model, tok, data.test_records, cfg)
        ppl, n = perplexity(model, tok)
        return dict(base, meas_exact_match=s["exact_match"], meas_token_f1=s["token_f1"], meas_perplexity=ppl,
                    meas_ppl_tokens=n, meas_served_weight_bytes=model_bytes(model).total)

    def art(res, name, title):
        if out is None:
            return {}
        return {"loss_curve": str(loss_curve_png(res.history, out / f"{name}-loss.png", title)),
                "history": str(history_csv(res.history, out / f"{name}-history.csv"))}

    rows = []
    qat = run_finetune(dataclasses.replace(cfg, qat=True), log=log, keep_model=True, evaluate_after=False,
                       evaluate_before=evaluate_before, progress=progress)
    convert_qat(qat.model, cfg.qat_group_size)
    m = scored(qat.model, qat.tokenizer, qat.data, qat.metrics)
    rows.append(("qat-int4", m, art(qat, "qat-int4", f"QAT (int4 fake quantization, group {cfg.qat_group_size})")))
    log(f"QAT int4: exact match {m['meas_exact_match']:.2f}, perplexity {m['meas_perplexity']:.2f}")
    del qat
    plain = run_finetune(dataclasses.replace(cfg, qat=False), log=log, keep_model=True, evaluate_after=False,
                         evaluate_before=evaluate_before, progress=progress)
    m_fp = scored(plain.model, plain.tokenizer, plain.data, plain.metrics)
    rows.append(("full-fp32", m_fp, art(plain, "full-fp32", "full fine-tune (fp32), the PTQ baseline's start")))
    log(f"plain fine-tune (fp32): exact match {m_fp['meas_exact_match']:.2f}, perplexity {m_fp['meas_perplexity']:.2f}")
    ptq(plain.model, cfg.qat_group_size)
    m_ptq = scored(plain.model, plain.tokenizer, plain.data, plain.metrics)
    rows.append(("full-then-ptq-int4", m_ptq, {}))
    log(f"PTQ int4 of the plain fine-tune: exact match {m_ptq['meas_exact_match']:.2f}, perplexity "
        f"{m_ptq['meas_perplexity']:.2f}")
    return rows
