#!/usr/bin/env python
"""The fine-tune comparison on the embedded SmolLM2-135M and the shipped json-extract task: QLoRA, LoRA, freeze and
QAT (which also runs the plain full fine-tune and PTQ of it at int4), the same steps, batch and data for all, each
through `quantlab lab finetune`, then one comparison table (reports/finetune-cpu/README.md by default).

    python scripts/finetune_compare.py [--max-steps 40] [--methods qlora,lora,freeze,qat] [--redo]

Each run is a row (or three, for QAT) in the results store; the README holds the table `quantlab report --kind
finetune` / `--kind qat` renders, with the wall time of each command and the machine's load while it ran.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


READING = """
Reading it:
- QAT against PTQ at int4 (torchao, group 32), same data, steps and seed: the QAT model keeps the task (exact match
  1.00 after conversion to int4, perplexity 38.75) where post-training quantization of the plain fine-tune loses
  much of it (0.62, perplexity 39.89; the plain fine-tune before quantization: 1.00, 28.61). QAT recovered the task
  score; on perplexity (a text the task never saw) both int4 models are far above fp32 and close to each other.
- Memory beside the planner: weights, quantization constants, adapters, gradients, optimizer states and the
  activations saved for backward equal the planner's bytes for the measured step (batch 8 x 96 tokens, padded:
  the attention mask makes SDPA keep the mask and repeat the grouped K/V per layer, planner activations A3c).
  The exception is QAT, which the planner sizes as the plain full fine-tune it is: fake quantization saves its
  own copies of the weights and inputs (+0.8 GiB here), which the planner does not model. logits + loss: the
  planner's figure adds the two fp32 T x vocab buffers the loss's backward allocates (not saved tensors).
- Freeze (the last 2 blocks) learns the format only partly in 40 steps (0.62): 7.1 M trainable parameters at a
  1e-4 learning rate against LoRA's 1.8 M at 1e-3.
- Timings are CPU figures from a 2-core machine and include evaluation; no GPU was lent to this project.
"""


def replan(store, rec):
    """The row with its pred_* columns recomputed by the current planner (a pure function of the configuration
    and the measured step's shape), stored back under the same key; measurements are left as they were."""
    import dataclasses

    from quantlab.lab.finetune_plan import from_dict, model_spec, predicted
    from quantlab.lab.model import load_config, resolve

    m = rec.metrics
    if not m.get("meas_step_batch"):
        return rec
    cfg = from_dict(rec.config, device="cpu")  # reads runs stored before FinetuneConfig held a PlanConfig too
    spec = model_spec(load_config(resolve(cfg.model), progress=False), cfg.model)
    pred = predicted(cfg, spec, batch=m["meas_step_batch"], seq=m["meas_step_seq"], device="cpu",
                     padded=m.get("meas_step_pad_tokens", 0) > 0)
    rec = dataclasses.replace(rec, metrics={**m, **pred})
    store.put(rec)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="qlora,lora,freeze,qat")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-items", type=int, default=40)
    ap.add_argument("--out", default="reports/finetune-cpu")
    ap.add_argument("--store", default="reports/quantlab.sqlite")
    ap.add_argument("--redo", action="store_true", help="run again configurations the store already holds")
    ap.add_argument("--render-only", action="store_true",
                    help="only rewrite README.md from the stored rows (keeps the timings recorded in timings.json)")
    ap.add_argument("--replan", action="store_true",
                    help="recompute the stored rows' planner columns (pred_*) with this checkout's planner, for each "
                         "row's own configuration and measured step shape (the measurements are not touched)")
    a = ap.parse_args()

    from quantlab.cli import main as cli
    from quantlab.fileio import atomic_write_text
    from quantlab.lab.finetune_report import NOTES, finetune_table
    from quantlab.report.env import environment
    from quantlab.report.store import ResultStore

    import json

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = []
    if a.render_only:
        timings = json.loads((out / "timings.json").read_text())
    for method in ([] if a.render_only else a.methods.split(",")):
        argv = ["lab", "finetune", "--method", method, "--task", "json-extract", "--max-steps", str(a.max_steps),
                "--eval-every", str(a.eval_every), "--eval-items", str(a.eval_items), "--out", str(out),
                "--store", a.store, "--no-progress"] + (["--redo"] if a.redo else [])
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        rc = cli(argv)
        wall = time.perf_counter() - t
        timings.append((method, "quantlab " + " ".join(argv), wall, load0, os.getloadavg()[0], rc))
        print(f"== {method}: rc {rc}, {wall:.0f} s wall", file=sys.stderr)
        if rc != 0:
            return rc
    if not a.render_only:
        atomic_write_text(out / "timings.json", json.dumps(timings, indent=1) + "\n")
    store = ResultStore(a.store)
    wanted = set(a.methods.split(","))
    recs = [r for r in store.records("finetune", "smollm2-135m") if r.method in wanted
            and r.config.get("max_steps") == a.max_steps and r.config.get("task") == "json-extract"]
    recs += [r for r in store.records("qat", "smollm2-135m") if "qat" in wanted
             and r.config.get("max_steps") == a.max_steps]
    if a.replan:
        recs = [replan(store, r) for r in recs]
    env = recs[0].env if recs else environment()  # the runs' own snapshot (commit, versions, machine)
    lines = [
        "# Fine-tune comparison on the embedded SmolLM2-135M-Instruct, json-extract task, 2 CPU cores",
        "",
        f"Made by `python scripts/finetune_compare.py --max-steps {a.max_steps} --methods {a.methods}` "
        f"(git {env.get('git_commit')}{' + uncommitted changes' if env.get('git_dirty') else ''}"
        + (f"; planner columns recomputed at git {environment().get('git_commit')} by --replan" if a.replan else "")
        + "; torch "
        f"{env.get('torch')}, transformers {env.get('transformers')}, peft {env.get('peft')}, bitsandbytes "
        f"{env.get('bitsandbytes')}, torchao {env.get('torchao')}; {env.get('device_name')}, "
        f"{env.get('cpu_count')} cores, no GPU). Every method: batch 8, {a.max_steps} optimizer steps, fp32 compute "
        f"(the lab's CPU default: bf16/fp16 training is emulated and slow on CPUs without AMX), AdamW, the method's "
        f"default learning rate, validation loss "
        f"every {a.eval_every} steps (early stopping after 3 without improvement), {a.eval_items} test items scored "
        "before and after.",
        "",
        "Commands, wall time (loading, both evaluations and, for QAT, three models included) and the 1-minute load "
        "average before/after (above 2, other jobs shared the cores):",
        "",
    ]
    for method, cmd, wall, l0, l1, _ in timings:
        lines.append(f"- `{cmd}`: {wall:.0f} s (load {l0:.1f} / {l1:.1f})")
    lines += ["", finetune_table(recs, "markdown"), "".join(f"- {n}\n" for n in NOTES), READING]
    atomic_write_text(out / "README.md", "\n".join(lines))
    print(f"wrote {out / 'README.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
