"""QAT against PTQ at the same bit width, on the same data and steps (see :mod:`quantlab.lab.qat`).

Two full fine-tunes from the same start: one with int4 fake quantization (QAT, then converted), one plain and
then post-training quantized with the same torchao config. Both are scored on the task (exact match, token F1)
and on held-out perplexity; the plain fine-tune is also scored before quantization, as the upper bound.
"""

from __future__ import annotations

import dataclasses


def _ppl(model, tok, tokens: int = 1024) -> float:
    from quantlab.lab import quality

    windows = quality.token_windows(tok, quality.read_text("heldout.txt"), 256, tokens)
    return quality.score_text(model, windows)[0].perplexity


def compare(cfg, log=print, out=None):
    from quantlab.lab.finetune import loss_curve_png, run_finetune, task_scores
    from quantlab.lab.qat import convert_qat, ptq

    rows = []
    qat = run_finetune(dataclasses.replace(cfg, method="qat"), log=log, keep_model=True)
    convert_qat(qat.model, cfg.qat_group_size)
    s = task_scores(qat.model, qat.tokenizer, qat.data.test_records, cfg)
    m = dict(qat.metrics, meas_exact_match=s["exact_match"], meas_token_f1=s["token_f1"],
             meas_perplexity=_ppl(qat.model, qat.tokenizer))
    art = {"loss_curve": str(loss_curve_png(qat.history, out / "qat-loss.png", "QAT (int4 fake quant)"))} if out else {}
    rows.append(("qat-int4", m, art))
    log(f"QAT int4: exact match {m['meas_exact_match']:.2f}, perplexity {m['meas_perplexity']:.2f}")
    plain = run_finetune(dataclasses.replace(cfg, method="full"), log=log, keep_model=True, evaluate_before=False)
    m_fp = dict(plain.metrics, meas_perplexity=_ppl(plain.model, plain.tokenizer))
    rows.append(("full-fp32", m_fp, {}))
    ptq(plain.model, cfg.qat_group_size)
    s = task_scores(plain.model, plain.tokenizer, plain.data.test_records, cfg)
    m_ptq = dict(plain.metrics, meas_exact_match=s["exact_match"], meas_token_f1=s["token_f1"],
                 meas_perplexity=_ppl(plain.model, plain.tokenizer))
    rows.append(("full-then-ptq-int4", m_ptq, {}))
    log(f"PTQ int4 of the plain fine-tune: exact match {m_ptq['meas_exact_match']:.2f}, perplexity "
        f"{m_ptq['meas_perplexity']:.2f}")
    return rows
