"""``quantlab lab merge``: merge LoRA adapters (PEFT) and the models fine-tuned with them (mergekit), score every
merge and the joint / sequential baselines on every task, and write the report table."""

from __future__ import annotations

import argparse
import shlex
import sys

DEFAULT_METHODS = "linear,cat,svd,ties,dare_linear,dare_ties,magnitude_prune,mk:linear,slerp,task_arithmetic," \
                  "mk:ties,mk:dare_ties"


def register(sub) -> None:
    from quantlab.lab.merge_run import MergeStudy

    d = {f.name: f.default for f in __import__("dataclasses").fields(MergeStudy)}
    p = sub.add_parser(
        "merge", help="merge LoRA adapters (PEFT) and fine-tuned models (mergekit), score each on every task",
        description="Merge K LoRA adapters trained on different tasks into one model, by PEFT's "
                    "add_weighted_adapter (linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune) and by "
                    "mergekit on the fine-tuned full models (mk:linear, slerp, task_arithmetic, mk:ties, "
                    "mk:dare_ties, mk:dare_linear), and score every merge, the base, each adapter alone, a joint "
                    "multi-task LoRA and a sequential one (forgetting of the first task) on every task's test "
                    "split. Each merge's seconds, process RSS and output size are measured around the library "
                    "call. Writes merge.json / merge.csv / merge.md to --out.",
        epilog="Example:\n  quantlab lab finetune --method lora --task json-extract --out adapters\n"
               "  quantlab lab finetune --method lora --task intent-label --out adapters\n"
               "  quantlab lab merge --adapters adapters/lora-json-extract-adapter,adapters/lora-intent-label-adapter"
               "\n      --methods linear,ties,dare_ties,svd,slerp --weights 1,1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", default=None, metavar="A,B",
                   help="saved LoRA adapter folders (from 'quantlab lab finetune --method lora'), one per task")
    p.add_argument("--tasks", default=None, metavar="T1,T2",
                   help="the task each adapter was trained on (default: read from folder names "
                        "lora-<task>-adapter)")
    p.add_argument("--methods", default=DEFAULT_METHODS, metavar="M,N",
                   help="merge methods; mk:NAME is mergekit's full-weight merge (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="W1,W2",
                   help="one weight per adapter (default: 1 each: task arithmetic's lambda = 1; slerp's t is "
                        "w2/(w1+w2))")
    p.add_argument("--density", type=float, default=d["density"],
                   help="share of each update kept by ties / dare / magnitude_prune: lower trims more "
                        "interference and more of each task (default: %(default)s)")
    p.add_argument("--model", default=d["model"], help="the base model the adapters were trained on "
                   "(default: %(default)s)")
    p.add_argument("--eval-items", type=int, default=d["eval_items"],
                   help="test items scored per task and model (more: tighter scores, longer run) "
                        "(default: %(default)s)")
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="skip the joint and sequential fine-tunes (they train for --baseline-steps each)")
    p.add_argument("--baseline-steps", type=int, default=d["baseline_steps"],
                   help="optimizer steps of each baseline fine-tune (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes: up to 3 run the PEFT merges, the mergekit merges and the baselines at once "
                        "(faster on free cores; the timings then share them) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="DARE's drop and the baselines (default: "
                   "%(default)s)")
    p.add_argument("--out", default="reports/merge", help="report folder (default: %(default)s)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="what is printed (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--render", default=None, metavar="FOLDER",
                   help="only rewrite FOLDER's merge.csv / merge.md (and the planner's columns) from its merge.json")
    p.set_defaults(func=run)


def _floats(s: str, flag: str) -> list[float]:
    from quantlab.errors import QuantlabError

    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise QuantlabError(f"{flag} takes comma-separated numbers, got {s!r}") from None


def study_from_args(args):
    from pathlib import Path

    from quantlab.errors import QuantlabError
    from quantlab.lab.merge import parse_method
    from quantlab.lab.merge_run import MergeStudy

    adapters = tuple(a.strip() for a in args.adapters.split(",") if a.strip())
    if args.tasks:
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    else:
        tasks = []
        for a in adapters:
            n = Path(a).name
            if not (n.startswith("lora-") and n.endswith("-adapter")):
                raise QuantlabError(f"cannot tell the task of {a} from its name: give --tasks")
            tasks.append(n[len("lora-"):-len("-adapter")])
        tasks = tuple(tasks)
    methods = tuple(parse_method(m) for m in args.methods.split(",") if m.strip())
    weights = tuple(_floats(args.weights, "--weights")) if args.weights else tuple(1.0 for _ in adapters)
    from quantlab.lab.merge_tasks import task_path

    for t in tasks:
        task_path(t)  # an unknown task fails here, before any model loads
    study = MergeStudy(adapters=adapters, tasks=tasks, methods=methods, weights=weights, density=args.density,
                       model=args.model, eval_items=args.eval_items, baselines=args.baselines,
                       baseline_steps=args.baseline_steps, seed=args.seed)
    study.infos()  # every bad input is refused before a model loads
    return study


def _mib(b):
    return "-" if b is None else f"{b / 2**20:,.0f}"


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def table(doc: dict) -> str:
    """The method x task table (80 columns for two tasks), then the merges' cost beside the planner's (MiB)."""
    tasks, rows = doc["tasks"], doc["rows"]
    head = f"{'method':<16}" + "".join(f"{t[:12]:>13}" for t in tasks) + f"{'worst ret':>10}{'mean ret':>9}" \
        f"{'dens':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{_f(r.get(f'score_{t}'), '.2f'):>13}" for t in tasks)
        lines.append(f"{r['method'][:16]:<16}{cells}{_f(r.get('min_retention'), '.2f'):>10}"
                     f"{_f(r.get('mean_retention'), '.2f'):>9}{_f(r.get('meas_delta_density'), '.2f'):>6}")
    metrics = ", ".join(f"{t} {next((r[f'metric_{t}'] for r in rows if r.get(f'metric_{t}')), '?')}" for t in tasks)
    items = ", ".join(str(n) for n in doc["eval_items"].values())
    import textwrap

    lines += textwrap.wrap(f"scores: {metrics}, on {items} test items; ret = score / the task's adapter alone; "
                           "dens = non-zero share of the merged update (weights the adapters touch)", 80) + [""]
    head = f"{'merge cost':<16}{'seconds':>9}{'RSS peak':>10}{'+RSS meas':>10}{'+RSS pred':>10}{'output':>9}"
    lines += [head, "-" * len(head)]
    for r in rows:
        if r.get("merge_s") is None:
            continue
        lines.append(f"{r['method'][:16]:<16}{r['merge_s']:>9.2f}{_mib(r.get('merge_rss_peak_bytes')):>10}"
                     f"{_mib(r.get('merge_rss_delta_bytes')):>10}{_mib(r.get('pred_merge_rss_delta_bytes')):>10}"
                     f"{_mib(r.get('merge_disk_bytes')):>9}")
    lines += textwrap.wrap("MiB = 2^20 bytes; +RSS = process RSS growth over the library call (pred: "
                           "quantlab.planner.merge); output: merged adapter tensors (PEFT) or safetensors written "
                           "(mergekit)", 80)
    if doc.get("best"):
        b = next(r for r in rows if r["method"] == doc["best"])
        lines.append(f"kept all tasks best: {b['method']} (worst-task retention {b['min_retention']:.2f}, mean "
                     f"{b['mean_retention']:.2f})")
    fg = doc.get("sequential_forgetting_first_task")
    if fg is not None:
        lines += textwrap.wrap(f"sequential fine-tune: {doc['tasks'][0]} score fell by {fg:.2f} (its adapter alone "
                               "minus the sequential model)", 80)
    return "\n".join(lines)


def add_predictions(doc: dict) -> None:
    """The planner's RSS growth for each merge row (quantlab.planner.merge): mergekit's writer shard, inputs and
    kernel; PEFT's new adapter and its transient (the base and the loaded adapters were resident before)."""
    from quantlab.lab.merge import AdapterInfo
    from quantlab.planner import merge as pm
    from quantlab.profiles import load_model as load_profile

    try:
        spec = load_profile(doc.get("model") or "smollm2-135m").spec
    except Exception:  # a local model folder the planner cannot read: no prediction
        return
    infos = [AdapterInfo.read(a) for a in doc["adapters"]]
    ranks, targets = [a.r for a in infos], infos[0].targets
    for r in doc["rows"]:
        m = r["method"]
        if r["kind"] == "mergekit":
            p = pm.mergekit_memory(spec, m[len("mk:"):] if m.startswith("mk:") else m, k=len(infos), dtype_bytes=4)
            r["pred_merge_rss_delta_bytes"] = p.ram_peak_bytes
            r["pred_merge_disk_bytes"] = p.disk_bytes
        elif r["kind"] == "peft":
            p = pm.peft_merge_memory(spec, m, ranks, targets)
            c = dict(p.components)
            r["pred_merge_rss_delta_bytes"] = c["merged_adapter"] + c["transient"]
            r["pred_merge_disk_bytes"] = p.disk_bytes


def write_reports(doc: dict, out) -> str:
    """merge.json, merge.csv and merge.md of ``doc`` in ``out`` (atomic); the table text is returned."""
    import csv
    import io
    import json
    from pathlib import Path

    from quantlab.fileio import atomic_write_text

    add_predictions(doc)
    atomic_write_text(Path(out) / "merge.json", json.dumps(doc, indent=1, default=str) + "\n")
    rows = doc["rows"]
    cols = sorted({k for r in rows for k in r if k not in ("env", "mergekit_config")})
    front = [c for c in ("kind", "method") if c in cols]
    cols = front + [c for c in cols if c not in front]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_text(Path(out) / "merge.csv", buf.getvalue())
    txt = table(doc)
    env = doc["env"]
    md = (f"Made by `{doc['command']}` (git {env.get('git_commit')}"
          f"{' + uncommitted changes' if env.get('git_dirty') else ''}; torch {env.get('torch')}, transformers "
          f"{env.get('transformers')}, peft {env.get('peft')}, mergekit {doc.get('mergekit') or _version('mergekit')}; "
          f"{env.get('device_name')}, {env.get('cpu_count')} cores, no GPU; load average {env.get('loadavg_1m')} at "
          f"the end).\n\n```\n{txt}\n```\n")
    atomic_write_text(Path(out) / "merge.md", md)
    return txt


def render(folder) -> int:
    """--render: rewrite merge.csv / merge.md (and the planner's columns) from a folder's merge.json."""
    import json
    from pathlib import Path

    from quantlab.errors import QuantlabError
    from quantlab.fileio import write_stdout

    p = Path(folder) / "merge.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QuantlabError(f"cannot read {p}: {e}") from e
    write_stdout(write_reports(doc, folder) + "\n")
    return 0


def run(args) -> int:
    from quantlab.fileio import check_writable_dir, write_stdout
    from quantlab.lab.merge_run import forgetting, run_study
    from quantlab.report.env import environment

    if args.render:
        return render(args.render)
    if not args.adapters:
        from quantlab.errors import QuantlabError

        raise QuantlabError("give --adapters A,B (or --render FOLDER)")
    study = study_from_args(args)
    out = check_writable_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731 (progress to stderr; the table or json to stdout)
    if args.jobs < 1:
        from quantlab.errors import QuantlabError

        raise QuantlabError(f"--jobs must be a positive integer, got {args.jobs}")
    result = run_study(study, log=log, progress=args.progress, jobs=args.jobs)
    fg = forgetting(result["rows"], study.tasks[0])
    command = "quantlab lab merge " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if sys.argv[1:3] == [
        "lab", "merge"] else "quantlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    env = environment()
    for r in result["rows"]:
        r["env"] = env
    doc = {"command": command, "model": study.model, "adapters": list(study.adapters), "tasks": list(study.tasks),
           "weights": list(study.weights), "density": study.density, "eval_items": result["items"],
           "baseline_steps": study.baseline_steps if study.baselines else None, "mergekit": _version("mergekit"),
           "jobs": args.jobs,
           "sequential_forgetting_first_task": fg, "best": result["best"]["method"] if result["best"] else None,
           "rows": result["rows"], "env": env}
    txt = write_reports(doc, out)
    if args.format == "json":
        import json

        write_stdout(json.dumps(doc, indent=1, default=str) + "\n")
    elif args.format == "csv":
        write_stdout((out / "merge.csv").read_text())
    else:
        write_stdout(txt + "\n")
    print(f"wrote {out}/merge.json, merge.csv, merge.md", file=sys.stderr)
    return 0


def _version(dist):
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
