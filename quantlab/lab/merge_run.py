"""One merge study: load the adapters, score the base and each adapter, run every merge, train the joint and the
sequential baselines with the lab's fine-tune (:func:`quantlab.lab.finetune.run_finetune`), score all of them on
every task, and return one flat row each (:mod:`quantlab.lab.merge` has the methods and the assumptions).

Baselines (assumption 5 of this study):

- **joint**: one LoRA fine-tune on the union of the tasks' *training* splits (each task's test split stays out),
  the same recipe (rank, alpha, targets, steps) as ``baseline_steps`` and the adapters' config;
- **sequential**: the first task's adapter folded into the base, then a LoRA fine-tune of that model on the second
  task (then the third ...), with the same recipe. *Forgetting* is the first task's single-adapter score minus the
  sequential model's score on it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError
from quantlab.lab.merge import (AdapterInfo, MergeMethod, best_merge, changed_tensors, check_inputs, copy_tokenizer,
                                fold_adapter,
                                full_delta_density, load_adapters, mergekit_config, mergekit_merge, peft_merge,
                                retention)


@dataclass(frozen=True)
class MergeStudy:
    """What ``quantlab lab merge`` runs: adapters (folders) with the task each was trained on, the methods."""

    adapters: tuple  # of str paths
    tasks: tuple  # one per adapter
    methods: tuple  # of MergeMethod
    weights: tuple  # one per adapter
    density: float = 0.5
    model: str = "smollm2-135m"
    eval_items: int = 20
    baselines: bool = True
    baseline_steps: int = 30
    seed: int = 0

    def __post_init__(self):
        if len(self.tasks) != len(self.adapters):
            raise QuantlabError(f"{len(self.tasks)} tasks for {len(self.adapters)} adapters: give one task per "
                                "adapter (--tasks)")
        for f in ("eval_items", "baseline_steps"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise QuantlabError(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")
        if not all(isinstance(m, MergeMethod) for m in self.methods) or not self.methods:
            raise QuantlabError("give at least one merge method")
        if len({m.label for m in self.methods}) != len(self.methods):
            raise QuantlabError("a merge method is given twice")

    def infos(self) -> list[AdapterInfo]:
        infos = [AdapterInfo.read(a) for a in self.adapters]
        check_inputs(infos, list(self.methods), list(self.weights), self.density)
        return infos


def _row(kind: str, method: str, scores: dict, tasks, **extra) -> dict:
    r = {"kind": kind, "method": method}
    for t in tasks:
        s = scores.get(t)
        r[f"score_{t}"] = s["score"] if s else None
        r[f"metric_{t}"] = s["metric"] if s else None
        for k, v in (s or {}).items():
            if k not in ("score", "metric", "items", "sample"):
                r[f"{k}_{t}"] = v
    r.update(extra)
    return r


def _cost_cols(cost) -> dict:
    return {"merge_s": cost.seconds, "merge_rss_peak_bytes": cost.rss_peak_bytes,
            "merge_rss_delta_bytes": cost.rss_delta_bytes, "merge_disk_bytes": cost.disk_bytes,
            "meas_delta_density": cost.delta_density, "merged_rank": cost.rank}


def run_study(study: MergeStudy, *, log=print, progress: bool = True, workdir: str | None = None,
              jobs: int = 1) -> dict:
    """Run ``study``; ``{"rows": [...], "best": row, "items": {task: n}}``. ``jobs`` > 1 runs its three parts
    (the base, adapters and PEFT merges; the mergekit merges; the baselines) in that many processes at once
    (spawned; each part's rows are the same as in one process, its timings share the cores)."""
    study.infos()  # refused before any work
    parts = ["peft"] + (["full"] if any(m.library == "mergekit" for m in study.methods) else []) + \
        (["baselines"] if study.baselines else [])
    if jobs > 1 and len(parts) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(parts)),
                                 mp_context=multiprocessing.get_context("spawn")) as ex:
            futs = [ex.submit(run_part, study, p, False, workdir, True) for p in parts]
            results = [f.result() for f in futs]
    else:
        results = [run_part(study, p, progress, workdir, log=log) for p in parts]
    rows = [r for part in results for r in part["rows"]]
    tasks = list(study.tasks)
    retention(rows, tasks)
    return {"rows": rows, "best": best_merge(rows), "items": results[0]["items"]}


def run_part(study: MergeStudy, part: str, progress: bool = False, workdir: str | None = None,
             stderr_log: bool = False, log=None) -> dict:
    """One part of a study (``peft``: base, each adapter, PEFT merges; ``full``: mergekit merges; ``baselines``)."""
    import sys

    import torch

    from quantlab.lab.merge_tasks import TaskSet
    from quantlab.lab.model import load_model, load_tokenizer, model_path, resolve

    if log is None:
        log = (lambda s: print(f"[{part}] {s}", file=sys.stderr, flush=True)) if stderr_log else print
    infos = study.infos()
    tasks = list(study.tasks)
    src = resolve(study.model)
    tok = load_tokenizer(src, progress=progress)
    ts = TaskSet.load(tasks, study.eval_items, study.seed)
    names = [f"a{i}" for i in range(len(infos))]
    items = {t: len(r) for t, r in ts.tests.items()}
    rows: list[dict] = []
    torch.manual_seed(study.seed)
    if part == "peft":
        base = load_model(src, dtype=torch.float32, progress=False)
        model = load_adapters(base, infos, names)
        with model.disable_adapter():
            sc = ts.score(model, tok)
        rows.append(_row("base", "base", sc, tasks))
        log("base: " + _fmt(sc))
        for n, t in zip(names, tasks):
            model.set_adapter(n)
            sc = ts.score(model, tok)
            rows.append(_row("adapter", f"adapter:{t}", sc, tasks, adapter_task=t))
            log(f"adapter {t}: " + _fmt(sc))
        for m in [m for m in study.methods if m.library == "peft"]:
            torch.manual_seed(study.seed)  # DARE's random drop
            cost = peft_merge(model, names, m, list(study.weights), study.density)
            sc = ts.score(model, tok)
            rows.append(_row("peft", m.label, sc, tasks, density=study.density if m.uses_density else None,
                             **_cost_cols(cost)))
            log(f"{m.label}: {cost.seconds:.2f} s; " + _fmt(sc))

        return {"rows": rows, "items": items}
    tmp = Path(tempfile.mkdtemp(prefix="quantlab-merge-", dir=workdir))
    try:
        full = [m for m in study.methods if m.library == "mergekit"]
        tuned: list[Path] = []
        if part == "full" or part == "baselines":
            base_dir = model_path(src, progress)
            tuned = [fold_adapter(src, a, tmp / f"tuned-{i}") for i, a in enumerate(infos)]
        if part == "full":
            changed = set().union(*(changed_tensors(base_dir, d) for d in tuned))
            for m in full:
                conf = mergekit_config(m, base_dir, tuned, list(study.weights), study.density)
                out = tmp / f"merged-{m.name}"
                cost = mergekit_merge(conf, out, study.seed)
                cost.delta_density = full_delta_density(base_dir, out, changed)
                mm = load_model(resolve(out), dtype=torch.float32, progress=False)
                sc = ts.score(mm, tok)
                del mm
                rows.append(_row("mergekit", m.label, sc, tasks,
                                 density=study.density if m.name in ("ties", "dare_ties", "dare_linear") else None,
                                 mergekit_config=_display_config(conf, base_dir, tuned, tasks), **_cost_cols(cost)))
                log(f"{m.label}: {cost.seconds:.2f} s; " + _fmt(sc))
                shutil.rmtree(out, ignore_errors=True)
        if part == "baselines":
            rows += _baselines(study, infos, tuned, ts, tok, tmp, log, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "items": items}


def _display_config(conf: dict, base_dir, tuned, tasks) -> dict:
    """The mergekit config with the temporary folders named by what they hold (for the report)."""
    names = {str(base_dir): "base"} | {str(d): f"base+{t}" for d, t in zip(tuned, tasks)}
    s = json.dumps(conf)
    for k, v in names.items():
        s = s.replace(json.dumps(k)[1:-1], v)
    return json.loads(s)


def _fmt(sc: dict) -> str:
    return ", ".join(f"{t} {v['metric']} {v['score']:.2f}" for t, v in sc.items())


def _baselines(study, infos, tuned, ts, tok, tmp: Path, log, progress) -> list[dict]:
    """Assumption 5: the joint and the sequential LoRA fine-tunes, through the lab's run_finetune."""
    from quantlab.lab.finetune import FinetuneConfig, run_finetune
    from quantlab.lab.merge_tasks import splits

    a0 = infos[0]
    targets = list(a0.targets)
    recipe = dict(method="lora", lora_r=a0.r, lora_alpha=int(a0.alpha), lora_targets=targets,
                  max_steps=study.baseline_steps, eval_every=max(1, study.baseline_steps // 3),
                  eval_items=min(study.eval_items, 10), seed=study.seed)
    rows = []
    joint = tmp / "joint.jsonl"
    with joint.open("w") as f:
        for t in study.tasks:
            for r in splits(t, study.seed)[0]:
                f.write(json.dumps({"prompt": r.prompt, "response": r.response}) + "\n")
    log(f"joint baseline: LoRA on the training splits of {', '.join(study.tasks)} ({study.baseline_steps} steps)")
    res = run_finetune(FinetuneConfig.create(model=study.model, data=str(joint), **recipe), log=log,
                       progress=progress, keep_model=True, evaluate_before=False, evaluate_after=False)
    sc = ts.score(res.model, tok)
    rows.append(_row("baseline", "joint", sc, list(study.tasks), train_s=res.metrics.get("meas_train_s"),
                     train_steps=res.metrics.get("meas_steps")))
    log("joint: " + _fmt(sc))
    del res
    # sequential: task 1's adapter folded in (tuned[0]), then LoRA on each next task, folded in turn
    prev = tuned[0]
    seq_s = 0.0
    for i, t in enumerate(study.tasks[1:], start=1):
        log(f"sequential baseline: LoRA on {t} over base+{' +'.join(study.tasks[:i])} ({study.baseline_steps} steps)")
        res = run_finetune(FinetuneConfig.create(model=str(prev), task=t, **recipe), log=log, progress=progress,
                           keep_model=True, evaluate_before=False, evaluate_after=False)
        seq_s += res.metrics.get("meas_train_s") or 0.0
        if i < len(study.tasks) - 1:
            nxt = tmp / f"seq-{i}"
            res.model.merge_and_unload().save_pretrained(nxt, safe_serialization=True)
            copy_tokenizer(tuned[0], nxt)
            prev = nxt
        else:
            sc = ts.score(res.model, tok)
        last = res
    rows.append(_row("baseline", "sequential", sc, list(study.tasks), train_s=seq_s,
                     train_steps=last.metrics.get("meas_steps")))
    log("sequential: " + _fmt(sc))
    return rows


def forgetting(rows: list[dict], first: str) -> float | None:
    """Assumption 5: the first task's single-adapter score minus the sequential model's."""
    a = next((r for r in rows if r["kind"] == "adapter" and r.get("adapter_task") == first), None)
    s = next((r for r in rows if r["method"] == "sequential"), None)
    if a is None or s is None or a.get(f"score_{first}") is None or s.get(f"score_{first}") is None:
        return None
    return a[f"score_{first}"] - s[f"score_{first}"]
