"""``quantlab lab finetune --method dpo|orpo|simpo|kto|reward``: TRL's preference trainers in the lab
(:mod:`quantlab.lab.preference`), their scores before and after, and the measured step beside
:func:`quantlab.planner.preference.preference_plan` for the same step (the lab does not import the planner; this
command layer holds both). DPO writes reports/dpo-cpu; the other objectives reports/preference-cpu (one
``<objective>.md`` section each, collected in its README).

:func:`run_from_args` is what ``lab finetune`` dispatches to (the flags it shares: ``--model``, ``--task``,
``--data``, ``--test-file``, ``--max-steps``, ``--batch`` (pairs), ``--seq`` (DPOConfig.max_length), ``--lora-r``,
``--lora-alpha``, ``--lora-targets``, ``--lr``, ``--beta``, ``--out``; a flag left at its default takes
:class:`~quantlab.lab.preference.DPORun`'s). ``python -m quantlab.commands.lab_preference`` runs it alone.

The comparison, per component (C1-C3):

C1. The planned step is the measured one: the measured sequences / 2 pairs, the measured padded width, padded
    when the attention mask had padding (planner activations A3c), checkpointing as the trainer ran (DPOConfig's
    default: on), LoRA on the same targets, fp32 weights and
    compute, AdamW, ``--device cpu`` (tensor bytes, no CUDA context or allocator reserve).
C2. weights, adapters, gradients and optimizer states compare one to one. ``activations`` compares what the
    measured policy forward saved for backward (backbone + fused head: StepProbe's ``activations`` +
    ``logits_loss``) with the plan's ``activations`` (preference P2: the backbone's saved tensors plus the fused
    head's saved rows).
C2b. The other objectives (the same C1 step; KTO's sequences are its completions, not pairs): ORPO / SimPO
    compare the backbone's saved tensors with ``activations`` and the logits the model returns plus what the loss
    saves outside the model (the lab's loss counter) with ``preference.logits_loss_saved`` (trl_head H7-H8); a
    reward model's ``activations`` include the score head's input (preference P5).
C3. ``allocated``: the CPU allocator's peak over the step (StepProbe) against the plan's peak allocated. The
    planned transients (``logits_both_sequences``: the fused head's chunk buffers; ``reference_forward``) have no
    separate measurement: they are inside the measured peak, and are listed with the plan only. A reference
    model (a full policy) is a second model the probe does not hook: its storages are counted once
    (``reference_bytes``) and added to the measured peak, since they are live through the step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

OUT = "reports/dpo-cpu"


def planned_step(res: dict):
    """(PlanConfig, PreferenceConfig) of the measured step (C1)."""
    from quantlab.planner.preference import PAIRED, Objective, PreferenceConfig, Reference
    from quantlab.profiles import load_model
    from quantlab.specs import DType, DeviceMode, Method, ModelSpec, PlanConfig, Precision

    c = res["config"]
    if res.get("model_spec"):  # stored with the run (a model folder may be gone by the time it is re-planned)
        spec = ModelSpec.from_dict(res["model_spec"])
    else:
        spec = load_model(c["model"] if c["model"] != "embedded" else "smollm2-135m").spec
    method = Method.FULL if c.get("policy") == "full" else Method.LORA
    lora = {} if method is Method.FULL else dict(lora_r=c["lora_r"], lora_alpha=c["lora_alpha"],
                                                 lora_targets=tuple(c["lora_targets"]))
    obj = Objective(res.get("objective", "dpo"))
    pairs = obj in PAIRED  # the measured sequences are 2 x pairs (preference P1); KTO's are the batch
    cfg = PlanConfig(model=spec, method=method, precision=Precision.FP32,
                     compute_dtype=DType.FP32, batch=res["step_sequences"] // (2 if pairs else 1), seq=res["step_seq"],
                     **lora, padding_mask=bool(res["step_padded"]), grad_checkpointing=bool(res["grad_checkpointing"]),
                     device=DeviceMode.CPU)
    ref = res.get("reference")
    pref = PreferenceConfig(obj, reference=Reference(ref) if ref in ("adapter", "copy") else Reference.AUTO,
                            beta=res.get("beta", c.get("beta")))
    return cfg, pref


def compare_rows(res: dict) -> list[dict]:
    """Planned vs measured bytes per component (C2, C3); ``error`` = (planned - measured) / measured."""
    from quantlab.planner.preference import logits_loss_saved, preference_plan

    cfg, pref = planned_step(res)
    p = preference_plan(cfg, pref)
    m = res["measurement"]
    comps = p.components
    obj = res.get("objective", "dpo")
    pairs = [("weights", comps.get("weights", 0), m.get("meas_weights_bytes")),
             ("adapters", comps.get("adapters", 0), m.get("meas_adapters_bytes")),
             ("gradients", comps.get("gradients", 0), m.get("meas_gradients_bytes")),
             ("optimizer", comps.get("optimizer", 0), m.get("meas_optimizer_bytes"))]
    if obj in ("dpo", "kto"):
        pairs += [("activations (saved: backbone + fused head)", comps.get("activations", 0),
                   (m.get("meas_activations_bytes") or 0) + (m.get("meas_logits_loss_bytes") or 0)),
                  ("reference_weights", comps.get("reference_weights", 0), res.get("reference_bytes", 0)),
                  ("logits (fused head transient)" if obj == "kto" else
                   "logits_both_sequences (fused head transient)",
                   comps.get("logits" if obj == "kto" else "logits_both_sequences", 0), None),
                  ("reference_forward (transient)", comps.get("reference_forward", 0), None)]
    elif obj in ("orpo", "simpo"):
        pairs += [("activations (saved: backbone)", comps.get("activations", 0), m.get("meas_activations_bytes")),
                  ("logits_loss_saved (logits + what the loss saves)", logits_loss_saved(cfg, pref),
                   (m.get("meas_logits_loss_bytes") or 0) + (res.get("loss_saved_bytes") or 0)),
                  ("logits_both_sequences (saved + the loss backward's transient)",
                   comps.get("logits_both_sequences", 0), None)]
    else:  # reward
        pairs += [("activations (saved: backbone + score head input)", comps.get("activations", 0),
                   m.get("meas_activations_bytes"))]
        if "backward_transient" in comps:
            pairs.append(("backward_transient (last block's MLP backward)", comps["backward_transient"], None))
        if "block_recompute" in comps:  # checkpointing: the recompute phase holds the MLP backward (P5)
            pairs.append(("block_recompute (checkpointing: one block recomputed, with its backward)",
                          comps["block_recompute"], None))
    pairs.append(("allocated (peak over the step)", p.peak_allocated_bytes,
                  None if m.get("meas_allocated_bytes") is None else m["meas_allocated_bytes"]
                  + res.get("reference_bytes", 0)))  # StepProbe counts the policy; a reference model is live too
    rows = []
    for name, pred, meas in pairs:
        err = None if meas in (None, 0) else (pred - meas) / meas
        if meas == 0 and pred == 0:
            err = 0.0
        rows.append({"component": name, "pred_bytes": pred, "meas_bytes": meas, "error": err})
    return rows


def report_text(res: dict, rows: list[dict], command: str) -> str:
    from quantlab.units import MiB

    e = res["env"]
    c = res["config"]

    def mib(v):
        return "-" if v is None else f"{v / MiB:.2f}"

    def f4(k):
        v = res.get(k)
        return "-" if v is None else f"{v:.4f}"

    lines = [
        f"# DPO on the embedded SmolLM2-135M-Instruct (fp32, LoRA, CPU), json-prefs task", "",
        f"Made by `{command}` (torch {e['torch']}, transformers {e['transformers']}, peft {e['peft']}, trl "
        f"{e['trl']}, Python {e['python']}; {e['cpu']}, {e['cores']} cores shared with other jobs, "
        f"{e['torch_threads']} torch thread(s), 1-minute load {e['load_avg_1m']:.1f} at the end; no GPU).", "",
        f"TRL `DPOTrainer` (sigmoid loss, beta {c['beta']}), PEFT LoRA r {c['lora_r']} alpha {c['lora_alpha']} on "
        f"{','.join(c['lora_targets'])}, reference = the policy with its adapter disabled ({res['reference']}), "
        f"AdamW lr {c['lr']} constant, {c['max_steps']} steps of {c['batch']} pairs ({2 * c['batch']} sequences), "
        f"max_length {c['max_length']}; {res['train_pairs']} training pairs, {res['test_pairs']} held-out pairs "
        f"(tasks/json-prefs/test.jsonl, never trained on). Wall time: load {res['load_s']:.0f} s, one evaluation "
        f"{res['eval_s']:.0f} s, training {res['train_s']:.0f} s ({res['s_per_step']:.2f} s/step).", "",
        "## Held-out pairs, before and after", "",
        "| metric | before | after |", "|---|---|---|",
    ]
    for k, what in (("rewards/accuracies", "reward accuracy (chosen reward > rejected)"),
                    ("rewards/margins", "reward margin (mean chosen - rejected)"),
                    ("rewards/chosen", "reward chosen (mean)"), ("rewards/rejected", "reward rejected (mean)"),
                    ("logps/chosen", "policy log p(chosen), summed (mean)"),
                    ("logps/rejected", "policy log p(rejected), summed (mean)"), ("loss", "DPO loss")):
        lines.append(f"| {what} | {f4('before_' + k)} | {f4('after_' + k)} |")
    lines += [
        "", "- Rewards are TRL's DPO implicit rewards, beta x (log p_policy - log p_ref) summed over the completion "
        "tokens, from `trainer.evaluate()` on the held-out pairs. Before training the LoRA B matrices are zero, so "
        "the policy is the reference: every reward is exactly 0 and the accuracy 0 (a tie is not a win); the "
        "log-prob rows say what the base model itself prefers before training.", "",
        f"## Memory of optimizer step {res['measured_step']} beside `preference_plan`", "",
        f"Measured step: {res['step_sequences']} sequences x {res['step_seq']} tokens "
        f"({'padded: the collator pads to the longest' if res['step_padded'] else 'no padding'}), "
        f"{res['trainable_params']:,} trainable parameters. Planned with `quantlab plan --model smollm2-135m "
        f"--method dpo --policy lora --precision fp32 --compute-dtype fp32 --batch {res['step_sequences'] // 2} "
        f"--seq {res['step_seq']} --lora-r {c['lora_r']} --lora-alpha {c['lora_alpha']} --lora-targets "
        f"{','.join(c['lora_targets'])}{' --padded' if res['step_padded'] else ''}"
        f"{' --grad-checkpointing' if res['grad_checkpointing'] else ''} --device cpu` (gradient checkpointing: "
        f"{'on, TRL DPOConfig default' if res['grad_checkpointing'] else 'off'}; MiB = 2^20 "
        "bytes; error = (planned - measured) / measured).", "",
        "| component | planned MiB | measured MiB | planned bytes | measured bytes | error |",
        "|---|---|---|---|---|---|"]
    for r in rows:
        err = "-" if r["error"] is None else f"{100 * r['error']:+.2f}%"
        meas_b = "-" if r["meas_bytes"] is None else f"{r['meas_bytes']:,}"
        lines.append(f"| {r['component']} | {mib(r['pred_bytes'])} | {mib(r['meas_bytes'])} | {r['pred_bytes']:,} "
                     f"| {meas_b} | {err} |")
    lines += ["", "Reading it:", ""] + reading(res, rows)
    lines += ["", "- measured: StepProbe (quantlab/lab/measure.py): distinct tensor storages of weights, adapters, "
              "gradients and AdamW states after the step; activations = what the policy's forward saved for "
              "backward (saved_tensors_hooks, deduplicated by storage; backbone and TRL's fused LM head); allocated "
              "= live tensor bytes at the window's start plus the CPU allocator's peak growth over the step (the "
              "reference's no-grad forward included; a reference model's own storages added).",
              "- `-`: not measured separately (a transient inside the measured peak) or not applicable.",
              "- notes from the instrument: " + ("; ".join(res["measurement_notes"]) or "none") + " (the "
              "instrument's note is about the supervised planner, memory.py; preference_plan models TRL's fused "
              "head, preference P2).",
              "- More DPO rows (LoRA and full policies, checkpointing on and off, a reference copy, Qwen2 and GPT-2 "
              "architectures): [matrix.md](matrix.md)."]
    return "\n".join(lines) + "\n"


def reading(res: dict, rows: list[dict]) -> list[str]:
    """What the figures say, derived from them (so a re-run or a re-plan keeps the text true)."""
    out = []
    b, a = res.get("before_rewards/accuracies"), res.get("after_rewards/accuracies")
    if a is not None and b is not None:
        out.append(f"- Held-out reward accuracy {b:.2f} -> {a:.2f} and mean margin "
                   f"{res['before_rewards/margins']:.3f} -> {res['after_rewards/margins']:.3f} after "
                   f"{res['config']['max_steps']} steps: the policy ranks the valid JSON above the corrupted "
                   f"answer on {round(a * res['test_pairs'])} of {res['test_pairs']} pairs it never trained on.")
    lc0, lc1 = res.get("before_logps/chosen"), res.get("after_logps/chosen")
    lr0, lr1 = res.get("before_logps/rejected"), res.get("after_logps/rejected")
    if None not in (lc0, lc1, lr0, lr1):
        how = ("both fell: the margin grew by pushing the rejected answers down faster than the chosen ones "
               "(the chosen likelihood also dropping under DPO is a known effect of its loss, which constrains "
               "only the difference)" if lc1 < lc0 and lr1 < lr0 else
               "the chosen rose and the rejected fell" if lc1 > lc0 and lr1 < lr0 else "see the table")
        out.append(f"- Summed log-probabilities: chosen {lc0:.1f} -> {lc1:.1f}, rejected {lr0:.1f} -> {lr1:.1f}; "
                   f"{how}.")
    exact = [r["component"].split(" ")[0] for r in rows if r["meas_bytes"] is not None and r["error"] == 0]
    alloc = next(r for r in rows if r["component"].startswith("allocated"))
    out.append(f"- Memory: {', '.join(exact)} equal the plan to the byte for the measured step; the step's "
               f"allocator peak is {100 * alloc['error']:+.2f}% off the planned peak allocated"
               + (" (over-predicted: the safe direction)." if alloc["error"] and alloc["error"] > 0 else "."))
    if res.get("replanned_at"):
        out.append(f"- The planned columns were recomputed at git {res['replanned_at']} by `python -m "
                   "quantlab.commands.lab_preference --out reports/dpo-cpu --replan` (the measured figures are the "
                   "run's).")
    return out


TRAINERS = {"dpo": "`DPOTrainer` (sigmoid loss)", "orpo": "`ORPOTrainer` (trl.experimental.orpo; beta = lambda)",
            "simpo": "`CPOTrainer` (trl.experimental.cpo) with loss_type=\"simpo\", cpo_alpha=0",
            "kto": "`KTOTrainer` (unpaired: each pair gives a desirable and an undesirable completion)",
            "reward": "`RewardTrainer` on AutoModelForSequenceClassification(num_labels=1), pairwise loss"}
METRIC_NAMES = {
    "rewards/accuracies": "reward accuracy (chosen reward > rejected)",
    "rewards/margins": "reward margin (mean chosen - rejected)",
    "rewards/chosen": "reward chosen (mean)", "rewards/rejected": "reward rejected (mean)",
    "logps/chosen": "policy log p(chosen) (mean; ORPO/SimPO: per token)",
    "logps/rejected": "policy log p(rejected) (mean; ORPO/SimPO: per token)",
    "log_odds_ratio": "ORPO log odds ratio (mean log sigmoid)", "nll_loss": "ORPO NLL of chosen",
    "kl": "KTO KL estimate (policy vs reference, mismatched pairs)",
    "accuracy": "reward accuracy (chosen score > rejected score)", "margin": "reward margin (mean chosen - rejected score)",
    "mean_reward": "mean score", "loss": "loss"}


def objective_report(res: dict, rows: list[dict], command: str) -> str:
    """The section of one objective's run (``<objective>.md``; the README of reports/preference-cpu collects
    them): the command, the held-out scores before and after, planned vs measured per component."""
    from quantlab.units import MiB

    e, c, obj = res["env"], res["config"], res.get("objective", "dpo")

    def mib(v):
        return "-" if v is None else f"{v / MiB:.2f}"

    ref = {"adapter": "the policy with its adapter disabled", "copy": "a second model",
           "none": "none (the objective has no reference)"}[res["reference"]]
    policy = (f"PEFT LoRA r {c['lora_r']} alpha {c['lora_alpha']} on {','.join(c['lora_targets'])}"
              + (" (+ the score head, modules_to_save)" if obj == "reward" else "")
              if c.get("policy", "lora") == "lora" else "full policy")
    title = {"dpo": "DPO", "orpo": "ORPO", "simpo": "SimPO", "kto": "KTO", "reward": "Reward model"}[obj]
    lines = [f"## {title}", "",
             f"Made by `{command}` (torch {e['torch']}, transformers {e['transformers']}, peft {e['peft']}, trl "
             f"{e['trl']}; {e['cpu']}, {e['cores']} cores shared with other jobs, {e['torch_threads']} torch "
             f"thread(s), 1-minute load {e['load_avg_1m']:.1f} at the end; no GPU).", "",
             f"TRL {TRAINERS[obj]}{'' if res.get('beta') is None else ', beta ' + str(res['beta'])}, {policy}, "
             f"reference: {ref}; AdamW lr {c['lr']} constant, {c['max_steps']} steps of {c['batch']} "
             f"{'completions' if obj == 'kto' else 'pairs'}, max_length {c['max_length']}; {res['train_pairs']} "
             f"training pairs ({res.get('train_rows', res['train_pairs'])} rows), {res['test_pairs']} held-out pairs "
             f"(tasks/json-prefs/test.jsonl). Wall time: load {res['load_s']:.0f} s, one evaluation "
             f"{res['eval_s']:.0f} s, training {res['train_s']:.0f} s ({res['s_per_step']:.2f} s/step).", "",
             "| held-out metric (trainer.evaluate) | before | after |", "|---|---|---|"]
    for k in [k[len("before_"):] for k in res if k.startswith("before_")]:
        b, a = res.get("before_" + k), res.get("after_" + k)
        if b is None and a is None:
            continue
        f4 = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {METRIC_NAMES.get(k, k)} | {f4(b)} | {f4(a)} |")
    lines += ["", f"Memory of optimizer step {res['measured_step']}: {res['step_sequences']} sequences x "
              f"{res['step_seq']} tokens ({'padded' if res['step_padded'] else 'no padding'}), "
              f"{res['trainable_params']:,} trainable parameters, gradient checkpointing "
              f"{'on (TRL default)' if res['grad_checkpointing'] else 'off'}; planned by `preference_plan` for the "
              "measured step (`--device cpu`; MiB = 2^20 bytes; error = (planned - measured) / measured).", "",
              "| component | planned MiB | measured MiB | planned bytes | measured bytes | error |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        err = "-" if r["error"] is None else f"{100 * r['error']:+.2f}%"
        meas_b = "-" if r["meas_bytes"] is None else f"{r['meas_bytes']:,}"
        lines.append(f"| {r['component']} | {mib(r['pred_bytes'])} | {mib(r['meas_bytes'])} | {r['pred_bytes']:,} "
                     f"| {meas_b} | {err} |")
    notes = "; ".join(res["measurement_notes"]) or "none"
    lines += ["", f"- instrument notes: {notes}"
              + (" (the lab's loss counter, lab/preference.py D4, measures what the loss saves outside the model: "
                 "it is in the logits_loss_saved row)." if obj in ("orpo", "simpo") else ".")]
    if res.get("replanned_at"):
        lines.append(f"- The planned columns were recomputed at git {res['replanned_at']} (`--replan`); the measured "
                     "figures are the run's.")
    return "\n".join(lines) + "\n"


def run_config(cfg, out: Path, command: str, *, log) -> dict:
    """Run, compare and write ``out``/{<objective>.json, the report, <objective>-history.csv}; the result dict.
    DPO writes README.md in reports/dpo-cpu (dpo.md elsewhere); the other objectives ``<objective>.md``, and in
    reports/preference-cpu the README collecting every objective's section (:func:`write_readme`)."""
    from quantlab.lab.preference import run_preference

    out.mkdir(parents=True, exist_ok=True)
    res = run_preference(cfg, out, log=log)
    res["command"] = command
    res["model_spec"] = model_spec(cfg.model)
    name = res["objective"]
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")  # the measured run first, whatever follows
    _write_report(out, res)
    return res


def _write_report(out: Path, res: dict) -> None:
    rows = compare_rows(res)
    res["comparison"] = rows
    name = res.get("objective", "dpo")
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    if name == "dpo":
        (out / report_name(out)).write_text(report_text(res, rows, res["command"]))
    else:
        (out / f"{name}.md").write_text(objective_report(res, rows, res["command"]))
    if out.resolve() == Path(PREFERENCE_OUT).resolve():
        write_readme(out)


PREFERENCE_OUT = "reports/preference-cpu"
README_HEAD = """# ORPO, SimPO, KTO and reward models on the embedded SmolLM2-135M-Instruct (fp32, LoRA, CPU), json-prefs

Each section is one short run of TRL 1.16's trainer (quantlab/lab/preference.py, `quantlab lab finetune --method
orpo|simpo|kto|reward`): held-out scores before and after with the trainer's own metrics, and one optimizer step
measured by StepProbe beside `preference_plan` for the same step (quantlab/commands/lab_preference.py). The DPO run
is [reports/dpo-cpu](../dpo-cpu/README.md). The same objectives on scaled random models are the validation-matrix
rows `*-orpo-*`, `*-simpo-*`, `*-kto-*`, `*-reward-*` (profiles/validation/matrix.yaml): [matrix.md](matrix.md).
Files: `<objective>.json` (the run, measured and planned), `<objective>-history.csv` (per-step log),
`<objective>.md` (the section below).
"""


def write_readme(out: Path) -> None:
    """README.md of reports/preference-cpu: the head, a summary row per objective run (held-out accuracy and
    margin before -> after; the step's planned vs measured peak) and each objective's section."""
    from quantlab.units import MiB

    parts = [README_HEAD]
    summary = ["| objective | steps | held-out accuracy before -> after | margin before -> after | planned / measured "
               "peak allocated (MiB) | error | components exact to the byte |", "|---|---|---|---|---|---|---|"]
    sections = []
    for name in ("orpo", "simpo", "kto", "reward"):
        f, j = out / f"{name}.md", out / f"{name}.json"
        if not (f.is_file() and j.is_file()):
            continue
        sections.append(f.read_text())
        res = json.loads(j.read_text())
        acc = "accuracy" if name == "reward" else "rewards/accuracies"
        mar = "margin" if name == "reward" else "rewards/margins"

        def ba(k):
            b, a = res.get("before_" + k), res.get("after_" + k)
            return "- (the trainer reports none)" if b is None else f"{b:.3f} -> {a:.3f}"

        rows = res["comparison"]
        alloc = next(r for r in rows if r["component"].startswith("allocated"))
        exact = [r["component"].split(" ")[0] for r in rows if r["meas_bytes"] is not None and r["error"] == 0.0]
        summary.append(f"| {name} | {res['config']['max_steps']} | {ba(acc)} | {ba(mar)} | "
                       f"{alloc['pred_bytes'] / MiB:.2f} / {alloc['meas_bytes'] / MiB:.2f} | "
                       f"{100 * alloc['error']:+.2f}% | {', '.join(exact)} |")
    (out / "README.md").write_text("\n".join(parts + ["\n".join(summary) + "\n"] + sections))


def model_spec(model: str) -> dict:
    """The ModelSpec dict of the run's model (a profile name, or the local folder's config.json)."""
    from quantlab.profiles import load_model

    return load_model("smollm2-135m" if model in ("embedded", "smollm2") else model).spec.to_dict()


def report_name(out: Path) -> str:
    """README.md in reports/dpo-cpu (the report's own folder), dpo.md in any other --out (e.g. lab finetune's
    shared reports/finetune, whose README is not this run's)."""
    return "README.md" if out.resolve() == Path(OUT).resolve() else "dpo.md"


def rewrite_report(out: Path, objective: str | None = None) -> None:
    """Re-plan stored runs (``<objective>.json``; default every one in ``out``) and write their reports again (the
    measured figures are kept as run)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    names = [objective] if objective else [n for n in ("dpo", "orpo", "simpo", "kto", "reward")
                                           if (out / f"{n}.json").is_file()]
    for n in names:
        res = json.loads((out / f"{n}.json").read_text())
        res["replanned_at"] = head
        _write_report(out, res)


_FLAG_FIELDS = {"method": "objective", "model": "model", "task": "task", "data": "data", "test_file": "test_file", "max_steps": "max_steps",
                "batch": "batch", "seq": "max_length", "lora_r": "lora_r", "lora_alpha": "lora_alpha",
                "lora_targets": "lora_targets", "lr": "lr", "beta": "beta", "seed": "seed"}


def config_from_args(args):
    """The DPORun of ``lab finetune``'s flags: those given, the rest DPORun's defaults (a default exists once)."""
    from quantlab.commands.flags import given_fields
    from quantlab.lab.preference import DPORun

    # lab finetune's own flags (not PlanConfig's) carry its defaults: a value equal to FinetuneConfig's default is
    # taken as not given (argparse cannot tell), so DPORun's default applies
    try:
        from quantlab.lab.finetune import FinetuneConfig

        ft = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    except ImportError:  # pragma: no cover
        ft = {}
    given = set(given_fields(args)) | {k for k in ("model", "task", "data", "test_file", "max_steps", "lr", "beta",
                                                   "seed") if getattr(args, k, None) is not None
                                       and not (k in ft and getattr(args, k) == ft[k])}
    if getattr(args, "method", None) is not None:
        given.add("method")
    defaults = {f.name: f.default for f in dataclasses.fields(DPORun)}
    kw = {}
    for flag, field in _FLAG_FIELDS.items():
        if flag in given and hasattr(args, flag):
            v = getattr(args, flag)
            if field == "lora_targets" and isinstance(v, str):
                v = tuple(t.strip() for t in v.split(",") if t.strip())
            if v != defaults[field]:
                kw[field] = tuple(v) if isinstance(v, list) else v
    if kw.get("data") and "task" not in kw:
        kw["task"] = None
    from quantlab.errors import QuantlabError

    if kw.get("objective") == "reward":
        if "beta" in given and getattr(args, "beta", None) is not None:
            raise QuantlabError("--beta does not apply to --method reward (RewardTrainer's pairwise loss has none)")
        kw["beta"] = None
    return DPORun(**kw)


def run_from_args(args) -> int:
    """``quantlab lab finetune --method dpo``: run, compare, write ``--out`` (default reports/dpo-cpu)."""
    cfg = config_from_args(args)
    out = Path(getattr(args, "out", None) or (OUT if cfg.objective == "dpo" else PREFERENCE_OUT))
    command = "quantlab " + " ".join(sys.argv[1:]) if sys.argv[1:] else \
        f"quantlab lab finetune --method {cfg.objective}"
    res = run_config(cfg, out, command, log=lambda s: print(s, file=sys.stderr))
    print((out / (report_name(out) if cfg.objective == "dpo" else f"{cfg.objective}.md")).read_text())
    return 0 if res else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m quantlab.commands.lab_preference [--max-steps N ...]``: the same run without the lab's parser."""
    from quantlab.errors import QuantlabError
    from quantlab.lab.preference import DPORun

    d = {f.name: f.default for f in dataclasses.fields(DPORun)}
    p = argparse.ArgumentParser(prog="python -m quantlab.commands.lab_preference")
    for name, default in d.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, tuple):
            p.add_argument(flag, default=",".join(default))
        elif isinstance(default, bool) or default is None:
            p.add_argument(flag, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    p.add_argument("--out", default=None, help=f"default {OUT} (dpo), {PREFERENCE_OUT} (the other objectives)")
    p.add_argument("--replan", action="store_true", help="rewrite the reports of the stored runs (no training)")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv)
    a.out = a.out or (OUT if a.objective == "dpo" else PREFERENCE_OUT)
    try:
        if a.replan:
            rewrite_report(Path(a.out))
            return 0
        kw = {k: getattr(a, k) for k in d}
        kw["lora_targets"] = tuple(t for t in kw["lora_targets"].split(",") if t)
        for k in ("train_pairs", "eval_pairs"):
            kw[k] = None if kw[k] in (None, "None") else int(kw[k])
        kw["beta"] = None if kw["beta"] in (None, "None") else float(kw["beta"])
        kw["grad_checkpointing"] = {None: None, "None": None, "true": True, "false": False, "True": True,
                                    "False": False}[kw["grad_checkpointing"]]
        cfg = DPORun(**kw)
        command = "PYTHONPATH=$PWD python -m quantlab.commands.lab_preference " + " ".join(argv)
        run_config(cfg, Path(a.out), command.strip(), log=lambda s: print(s, file=sys.stderr))
    except QuantlabError as e:
        print(f"quantlab: error: {e}", file=sys.stderr)
        return 2
    name = a.objective
    print((Path(a.out) / (report_name(Path(a.out)) if name == "dpo" else f"{name}.md")).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
