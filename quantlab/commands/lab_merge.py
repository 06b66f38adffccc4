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
    p.add_argument("--adapters", required=True, metavar="A,B",
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
    p.add_argument("--seed", type=int, default=d["seed"], help="DARE's drop and the baselines (default: "
                   "%(default)s)")
    p.add_argument("--out", default="reports/merge", help="report folder (default: %(default)s)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="what is printed (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
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


def table(result: dict, tasks) -> str:
    """The method x task table (80 columns for two tasks; RSS and disk in MiB)."""
    short = {t: t[:12] for t in tasks}
    head = f"{'method':<18}" + "".join(f"{short[t]:>13}" for t in tasks) + f"{'worst ret':>10}{'dens':>6}" \
        f"{'merge s':>8}{'RSS MiB':>8}{'out MiB':>8}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        cells = "".join(f"{'-' if r.get(f'score_{t}') is None else format(r[f'score_{t}'], '.2f'):>13}" for t in tasks)
        ret = r.get("min_retention")
        lines.append(f"{r['method'][:18]:<18}{cells}{'-' if ret is None else format(ret, '.2f'):>10}"
                     f"{'-' if r.get('meas_delta_density') is None else format(r['meas_delta_density'], '.2f'):>6}"
                     f"{'-' if r.get('merge_s') is None else format(r['merge_s'], '.1f'):>8}"
                     f"{_mib(r.get('merge_rss_peak_bytes')):>8}{_mib(r.get('merge_disk_bytes')):>8}")
    metrics = ", ".join(f"{t}: {next((r[f'metric_{t}'] for r in result['rows'] if r.get(f'metric_{t}')), '?')}"
                        for t in tasks)
    lines.append(f"scores: {metrics} on {', '.join(f'{n}' for n in result['items'].values())} test items; worst ret "
                 "= worst-task score / that task's adapter alone; dens = non-zero share of the merged update")
    b = result.get("best")
    if b:
        lines.append(f"kept all tasks best: {b['method']} (worst-task retention {b['min_retention']:.2f}, mean "
                     f"{b['mean_retention']:.2f})")
    return "\n".join(lines)


def run(args) -> int:
    from pathlib import Path

    from quantlab.fileio import atomic_write_text, check_writable_dir, write_stdout
    from quantlab.lab.merge_run import forgetting, run_study
    from quantlab.report.env import environment

    study = study_from_args(args)
    out = check_writable_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731 (progress to stderr; the table or json to stdout)
    result = run_study(study, log=log, progress=args.progress)
    fg = forgetting(result["rows"], study.tasks[0])
    command = "quantlab lab merge " + " ".join(shlex.quote(a) for a in sys.argv[3:]) if sys.argv[1:3] == [
        "lab", "merge"] else "quantlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    env = environment()
    for r in result["rows"]:
        r["env"] = env
    doc = {"command": command, "adapters": list(study.adapters), "tasks": list(study.tasks),
           "weights": list(study.weights), "density": study.density, "eval_items": result["items"],
           "baseline_steps": study.baseline_steps if study.baselines else None,
           "sequential_forgetting_first_task": fg, "best": result["best"]["method"] if result["best"] else None,
           "rows": result["rows"], "env": env}
    import json

    atomic_write_text(Path(out) / "merge.json", json.dumps(doc, indent=1, default=str) + "\n")
    cols = sorted({k for r in result["rows"] for k in r if k not in ("env", "mergekit_config")})
    front = [c for c in ("kind", "method") if c in cols]
    cols = front + [c for c in cols if c not in front]
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_text(Path(out) / "merge.csv", buf.getvalue())
    txt = table(result, study.tasks)
    if fg is not None:
        txt += f"\nsequential fine-tune forgot {fg:+.2f} of {study.tasks[0]}'s score (adapter alone - sequential)"
    md = (f"Made by `{command}` (git {env.get('git_commit')}{' + uncommitted changes' if env.get('git_dirty') else ''}"
          f"; torch {env.get('torch')}, transformers {env.get('transformers')}, peft {env.get('peft')}, mergekit "
          f"{_version('mergekit')}; {env.get('device_name')}, {env.get('cpu_count')} cores, no GPU; load average "
          f"{env.get('loadavg_1m')} at the end).\n\n```\n{txt}\n```\n")
    atomic_write_text(Path(out) / "merge.md", md)
    if args.format == "json":
        write_stdout(json.dumps(doc, indent=1, default=str) + "\n")
    elif args.format == "csv":
        write_stdout(buf.getvalue())
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
