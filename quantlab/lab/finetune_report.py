"""Fine-tune and QAT runs rendered for people: one run's summary (the CLI prints it) and the comparison table
of stored runs (Markdown / CSV / JSON), from the same store rows ``quantlab report`` reads.

Memory is shown in MiB (2^20 bytes); stored values stay integer bytes. ``planner`` columns are the planner's
prediction for the measured step's exact shape (batch x padded width); '-' where it has none.
"""

from __future__ import annotations

import csv
import io
import json

from quantlab.units import MiB, fmt_bytes

COMPONENTS = (("weights", "weights"), ("quant_constants", "quant. constants"), ("adapters", "adapters"),
              ("gradients", "gradients"), ("optimizer", "optimizer states"),
              ("activations", "activations (saved for backward)"), ("logits_loss", "logits + loss"))


def _f(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _mib(v) -> str:
    return "-" if v is None else f"{v / MiB:.1f}"


def summary(name: str, m: dict, artifacts: dict | None = None) -> str:
    """A few lines for one run: speed, task score before/after, memory per component (measured vs planner)."""
    lines = [f"{name}: {m.get('meas_steps')} steps, {_f(m.get('meas_s_per_step'))} s/step (median), "
             f"{_f(m.get('meas_train_tok_per_s'), '.0f')} trained tokens/s, load {_f(m.get('meas_load_s'), '.1f')} s"
             + (", stopped early" if m.get("meas_stopped_early") else "")]
    em0, em1 = m.get("meas_exact_match_before"), m.get("meas_exact_match")
    if em1 is not None:
        lines.append(f"  task: exact match {_f(em0)} -> {_f(em1)}, token F1 {_f(m.get('meas_token_f1_before'))} -> "
                     f"{_f(m.get('meas_token_f1'))}" + (f", perplexity {_f(m['meas_perplexity'])}"
                                                         if m.get("meas_perplexity") is not None else ""))
    if m.get("meas_domain_perplexity") is not None or m.get("meas_domain_perplexity_before") is not None:
        lines.append(f"  text: domain perplexity {_f(m.get('meas_domain_perplexity_before'))} -> "
                     f"{_f(m.get('meas_domain_perplexity'))} ({m.get('meas_domain_tokens') or 0:,} held-out tokens), "
                     f"general (licence text) {_f(m.get('meas_general_perplexity_before'))} -> "
                     f"{_f(m.get('meas_general_perplexity'))}")
    if m.get("meas_final_train_loss") is not None:
        lines.append(f"  loss: train {_f(m.get('meas_final_train_loss'), '.4f')}, validation "
                     f"{_f(m.get('meas_final_val_loss'), '.4f')} (best {_f(m.get('meas_best_val_loss'), '.4f')})")
    if m.get("meas_step_batch"):
        lines.append(f"  memory per component on step 2 (batch {m['meas_step_batch']} x {m['meas_step_seq']} tokens), "
                     "measured | planner:")
        for key, label in COMPONENTS:
            meas, pred = m.get(f"meas_{key}_bytes"), m.get(f"pred_{key}_bytes")
            if meas or pred:
                lines.append(f"    {label:<34}{fmt_bytes(meas, 'MiB'):>14} | {fmt_bytes(pred, 'MiB'):>12}")
        lines.append(f"    trainable parameters {m.get('meas_trainable_params'):,} of {m.get('meas_params'):,}; by dtype: "
                     + ", ".join(f"{k[16:]} {fmt_bytes(v, 'MiB')}" for k, v in sorted(m.items())
                                 if k.startswith("meas_param_bytes_")))
    lines.append(f"  process: peak RSS {fmt_bytes(m.get('meas_peak_rss_bytes'), 'GiB')}"
                 + (f"; CUDA step peak allocated {fmt_bytes(m['meas_step_peak_allocated_bytes'], 'GiB')}, reserved "
                    f"{fmt_bytes(m.get('meas_step_peak_reserved_bytes'), 'GiB')}"
                    if m.get("meas_step_peak_allocated_bytes") is not None else ""))
    for k, v in (artifacts or {}).items():
        lines.append(f"  {k.replace('_', ' ')}: {v}")
    return "\n".join(lines)


def precision_label(config: dict) -> str | None:
    """A stored run's precision in the plan's words: the weights, then the compute dtype where it differs, then
    ``amp`` (``nf4/fp32``, ``fp32``, ``fp32/bf16 amp``). Rows stored before the lab took the plan's flags (no
    ``compute_dtype``) named a recipe (fp32, bf16, amp-bf16): shown as stored."""
    w, c = config.get("precision"), config.get("compute_dtype")
    if c is None:
        return w
    return f"{w}{'' if c == w else '/' + c}{' amp' if config.get('training_precision') == 'amp' else ''}"


TABLE = [  # (header, function of (record, metrics))
    ("kind", lambda r, m: r.kind),
    ("method", lambda r, m: r.method),
    ("precision", lambda r, m: precision_label(r.config)),
    ("steps", lambda r, m: _f(m.get("meas_steps"), "d") if m.get("meas_steps") is not None else "-"),
    ("s/step", lambda r, m: _f(m.get("meas_s_per_step"))),
    ("tok/s", lambda r, m: _f(m.get("meas_train_tok_per_s"), ".0f")),
    ("EM before", lambda r, m: _f(m.get("meas_exact_match_before"))),
    ("EM after", lambda r, m: _f(m.get("meas_exact_match"))),
    ("F1 before", lambda r, m: _f(m.get("meas_token_f1_before"))),
    ("F1 after", lambda r, m: _f(m.get("meas_token_f1"))),
    ("perplexity", lambda r, m: _f(m.get("meas_perplexity"))),
    ("domain ppl before", lambda r, m: _f(m.get("meas_domain_perplexity_before"))),
    ("domain ppl after", lambda r, m: _f(m.get("meas_domain_perplexity"))),
    ("general ppl before", lambda r, m: _f(m.get("meas_general_perplexity_before"))),
    ("general ppl after", lambda r, m: _f(m.get("meas_general_perplexity"))),
    ("val loss", lambda r, m: _f(m.get("meas_final_val_loss"), ".4f")),
    ("trainable", lambda r, m: f"{m['meas_trainable_params']:,}" if m.get("meas_trainable_params") is not None else "-"),
    ("weights MiB", lambda r, m: _mib(m.get("meas_weights_bytes"))),
    ("quant MiB", lambda r, m: _mib(m.get("meas_quant_constants_bytes"))),
    ("adapters MiB", lambda r, m: _mib(m.get("meas_adapters_bytes"))),
    ("grads MiB", lambda r, m: _mib(m.get("meas_gradients_bytes"))),
    ("optim MiB", lambda r, m: _mib(m.get("meas_optimizer_bytes"))),
    ("activations MiB", lambda r, m: _mib(m.get("meas_activations_bytes"))),
    ("planner act. MiB", lambda r, m: _mib(m.get("pred_activations_bytes"))),
    ("logits+loss MiB", lambda r, m: _mib(m.get("meas_logits_loss_bytes"))),
    ("step shape", lambda r, m: f"{m['meas_step_batch']}x{m['meas_step_seq']}" if m.get("meas_step_batch") else "-"),
    ("peak RSS MiB", lambda r, m: _mib(m.get("meas_peak_rss_bytes"))),
    ("load avg", lambda r, m: _f(r.env.get("loadavg_1m"), ".1f")),
]

NOTES = [
    "EM / F1: exact match of the parsed JSON and token F1 on the task's test split, greedy decoding, before and "
    "after the fine-tune (QLoRA's 'before' is its NF4 base; QAT rows: after conversion to int4 / PTQ).",
    "memory: integer bytes of distinct tensor storages on the second optimizer step (after the optimizer states "
    "exist): weights (not adapters, quantization constants apart), adapters (PEFT's trainable parameters), "
    "gradients, optimizer states, activations = tensors the model's backbone saves for backward "
    "(saved_tensors_hooks, deduplicated by storage), logits + loss = the logits and what the head and the loss "
    "save (rows made on Trainer, harness 5: Trainer frees the logits before backward; the planner's logits_loss "
    "also counts backward's two fp32 T x vocab gradient buffers and keeps the logits live). "
    "planner act.: quantlab's prediction for the same step shape.",
    "domain / general ppl (text records, continued pre-training): perplexity on the held-out domain rows and on "
    "the first 4,096 tokens of the lab's licence text, windows of the run's --seq, before and after.",
    "s/step: median optimizer step (evaluation excluded); tok/s: non-padding tokens trained per second; peak RSS: "
    "process resident set over the run (sampled every 5 ms); load avg: the machine's 1-minute load when stored.",
]


def finetune_table(records, fmt: str = "markdown") -> str:
    """The comparison of fine-tune / QAT runs in ``fmt`` (markdown, csv, json)."""
    rows = [{h: f(r, r.metrics) for h, f in TABLE} for r in records]
    if fmt == "json":
        return json.dumps([{"kind": r.kind, "method": r.method, "config": r.config, "metrics": r.metrics,
                            "artifacts": r.artifacts} for r in records], indent=2, default=str) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[h for h, _ in TABLE])
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    heads = [h for h, _ in TABLE if any(row[h] not in ("-", None) for row in rows)]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(str(row[h]) for h in heads) + " |" for row in rows]
    return "\n".join(out) + "\n"
