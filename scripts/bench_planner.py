#!/usr/bin/env python
"""Planner speed, side by side with the peers: vramcalc 0.1.2 and fitcheck-llm 0.3.1, in one run.

    python scripts/bench_planner.py [--rounds 15] [--peers-venv DIR]

The script makes a throwaway venv for the peers (``--peers-venv``, default ``$QUANTLAB_BENCH_PEERS`` or
``~/.cache/quantlab/bench-peers``; reused when it already holds the pinned versions) and pip-installs them
there (pure-Python wheels). quantlab itself runs from this checkout with the current interpreter.

Method. One configuration for everyone: Llama-3.1-8B, LoRA r16 on q,k,v,o, bf16 weights, batch 1, seq 2048,
RTX A6000 (vramcalc: ``--train --lora 16 --dtype bf16 --precision pure``, its LoRA targets are q,k,v,o;
fitcheck: ``TrainingConfig(precision="bf16", lora_rank=16, lora_targets=q,k,v,o)``). The peers' in-process
figures come from one long-lived worker in their venv that times its own calls; rounds alternate between
quantlab and the peer (interleaved, so a burst of machine load hits both), and each row is the median over
the rounds. Rows and targets (a ratio is quantlab / peer, lower is faster):

1. cold start: ``quantlab plan ... --format json`` against ``vramcalc CONFIG --train ... --json``, each a
   fresh process of the same interpreter (the peers' clean venv: quantlab comes from this checkout through
   PYTHONPATH, and its ``--format json`` path needs only the standard library), so interpreter start-up and
   site-packages processing cost both sides the same; ratio <= 1.0. The same command under the current
   interpreter (whatever its venv's .pth files cost, e.g. an editable install's finder) is printed for
   information, with the bare start-up of both interpreters. quantlab's bytecode is compiled first
   (``compileall``, into the gitignored ``__pycache__``) as ``pip install`` does for the peers: with
   PYTHONDONTWRITEBYTECODE set, a checkout would otherwise recompile every module on every start.
2. 1,000 plans: ``plan()`` against vramcalc's ``estimate()`` on the same 1,000 distinct configurations
   (batch b+1 .. b+1000, with b different in every round, so no result cache can answer); ratio <= 1.0.
3. fit: ``fit()`` (verdict, largest batch, longest sequence, fewest GPUs) against fitcheck's ``estimate()``
   with its max-batch search; ratio <= 1.0.
4. sweep: 10,000 distinct configurations (5 models x 4 methods x batches x sequences x switches), every
   planner cache cleared before each pass; < 0.2 s.

Exit status 1 when a target is missed, 2 when the peers cannot be installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEERS = {"vramcalc": "0.1.2", "fitcheck-llm": "0.3.1"}
N_PLANS = 1000
N_SWEEP = 10_000
SWEEP_TARGET_S = 0.2

QL_ARGS = ["plan", "--model", "llama-3.1-8b", "--method", "lora", "--lora-r", "16",
           "--lora-targets", "q_proj,k_proj,v_proj,o_proj", "--precision", "bf16", "--batch", "1", "--seq", "2048",
           "--gpu", "rtx-a6000", "--format", "json"]

# The worker that runs inside the peers' venv: reads one command per line, answers one JSON line.
PEER_WORKER = r'''
import json, sys, time
from dataclasses import replace
import vramcalc
from vramcalc.arch import Arch
import fitcheck
from fitcheck.config_parser import ModelConfig, _count_params, _parse_fields

raw = json.loads(sys.argv[1])
arch = Arch.from_config(raw)
fields = _parse_fields(raw)
mc = ModelConfig(name="llama-3.1-8b", num_params=_count_params(fields), **vars(fields))
tc = fitcheck.TrainingConfig(precision="bf16", lora_rank=16, lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"],
                             batch_size=1, seq_len=2048)
gpu = fitcheck.get_gpu("a6000")
kw = dict(mode="train", dtype="bf16", lora_rank=16, seq_len=2048, precision="pure")
print(json.dumps({"ready": True, "vramcalc": vramcalc.__version__, "fitcheck": fitcheck.__version__,
                  "fitcheck_max_batch": fitcheck.estimate(mc, tc, gpu).max_batch_size}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "plans":
        b0 = cmd["offset"]
        t = time.perf_counter()
        for b in range(b0 + 1, b0 + cmd["n"] + 1):
            vramcalc.estimate(arch, batch=b, **kw)
        dt = time.perf_counter() - t
    elif cmd["op"] == "fit":
        t = time.perf_counter()
        for _ in range(cmd["n"]):
            fitcheck.estimate(mc, tc, gpu)
        dt = (time.perf_counter() - t) / cmd["n"]
    else:
        break
    print(json.dumps({"s": dt}), flush=True)
'''


def peer_python(venv: Path) -> Path:
    """The venv's interpreter, with the pinned peers installed (created on first use)."""
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    check = "import importlib.metadata as m, sys; sys.exit(0 if " + " and ".join(
        f"m.version({n!r}) == {v!r}" for n, v in PEERS.items()) + " else 1)"
    if py.exists() and subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0:
        return py
    print(f"installing {', '.join(f'{n}=={v}' for n, v in PEERS.items())} into {venv} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *(f"{n}=={v}" for n, v in PEERS.items())], check=True)
    return py


def median_ms(xs) -> float:
    return statistics.median(xs) * 1e3


def clear_planner_caches() -> None:
    """Every functools cache in quantlab.planner, whatever the module calls it."""
    import quantlab.planner as pl

    for name, mod in list(sys.modules.items()):
        if name == pl.__name__ or name.startswith(pl.__name__ + "."):
            for obj in list(vars(mod).values()):
                if callable(getattr(obj, "cache_clear", None)):
                    obj.cache_clear()


def sweep_configs(load_model):
    from quantlab.specs import Attention, Method, Optimizer, PlanConfig, Precision

    models = [load_model(n).spec for n in ("7b", "8b", "70b", "qwen2.5-7b", "mixtral-8x7b")]
    grid = itertools.product(models, (Method.INFERENCE, Method.FULL, Method.LORA, Method.QLORA), range(1, 40),
                             (512, 1024, 2048, 4096, 8192), (False, True), (Attention.SDPA, Attention.EAGER),
                             (Optimizer.ADAMW, Optimizer.ADAMW_8BIT))
    cfgs = []
    for m, meth, b, s, gc, at, opt in grid:
        if meth is Method.INFERENCE and (gc or opt is not Optimizer.ADAMW):
            continue  # training-only switches are contradictions on an inference plan (one-line errors)
        cfgs.append(PlanConfig(model=m, method=meth, precision=Precision.NF4 if meth is Method.QLORA else Precision.BF16,
                               batch=b, seq=s, grad_checkpointing=gc, attn=at, optimizer=opt))
    cfgs = [cfgs[i * len(cfgs) // N_SWEEP] for i in range(N_SWEEP)]  # evenly over the grid
    assert len(set(cfgs)) == N_SWEEP
    return cfgs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per row (medians over them)")
    ap.add_argument("--peers-venv", type=Path,
                    default=Path(os.environ.get("QUANTLAB_BENCH_PEERS") or Path.home() / ".cache/quantlab/bench-peers"))
    a = ap.parse_args(argv)
    try:
        ppy = peer_python(a.peers_venv)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"bench_planner: cannot install the peers into {a.peers_venv}: {e}", file=sys.stderr)
        return 2
    vramcalc_cli = ppy.parent / ("vramcalc.exe" if os.name == "nt" else "vramcalc")

    from quantlab.planner import fit, plan
    from quantlab.profiles import load_gpu, load_model, model_doc
    from quantlab.specs import Method, PlanConfig, Precision

    raw = dict(model_doc("llama-3.1-8b")["config"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-planner-"))
    (tmp / "config.json").write_text(json.dumps(raw))
    vc_args = [str(vramcalc_cli), str(tmp / "config.json"), "--train", "--lora", "16", "--dtype", "bf16",
               "--precision", "pure", "--batch", "1", "--seq", "2048", "--gpu", "RTX A6000", "--json"]
    ql_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    peer_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(cmd, env):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    import compileall

    compileall.compile_dir(str(ROOT / "quantlab"), quiet=1)  # what pip install does for the peers' modules
    # `quantlab` as its console script runs it (pyproject's [project.scripts]: quantlab.cli:entry), the way
    # pip's `vramcalc` script runs vramcalc.cli:main; `python -m` would add runpy's imports to one side only
    script = "import sys; from quantlab.cli import entry; sys.exit(entry())"
    ql_cold = [str(ppy), "-c", script, *QL_ARGS]
    ql_here = [sys.executable, "-c", script, *QL_ARGS]
    # warm the file cache, the profile cache and the bytecode of both sides once (not timed)
    run(ql_cold, ql_env)
    run(ql_here, ql_env)
    run(vc_args, peer_env)
    worker = subprocess.Popen([str(ppy), "-c", PEER_WORKER, json.dumps(raw)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=peer_env)
    hello = json.loads(worker.stdout.readline())

    def ask(**cmd) -> float:
        worker.stdin.write(json.dumps(cmd) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())["s"]

    spec = load_model("llama-3.1-8b").spec
    gpu = load_gpu("rtx-a6000")
    cfg = PlanConfig(model=spec, method=Method.LORA, precision=Precision.BF16, lora_r=16,
                     lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), batch=1, seq=2048)
    f0 = fit(cfg, gpu)
    fit_reps = 20
    rows = {k: ([], []) for k in ("cold", "plans", "fit", "here", "bare")}
    for r in range(a.rounds):
        first_ql = r % 2 == 0  # alternate who goes first
        for side in ((0, 1) if first_ql else (1, 0)):
            if side == 0:
                rows["cold"][0].append(run(ql_cold, ql_env))
                rows["here"][0].append(run(ql_here, ql_env))
                rows["bare"][0].append(run([sys.executable, "-c", "pass"], ql_env))
                off = (r + 1) * N_PLANS
                cfgs = [dataclasses.replace(cfg, batch=b) for b in range(off + 1, off + N_PLANS + 1)]
                t = time.perf_counter()
                for c in cfgs:
                    plan(c)
                rows["plans"][0].append(time.perf_counter() - t)
                t = time.perf_counter()
                for _ in range(fit_reps):
                    fit(cfg, gpu)
                rows["fit"][0].append((time.perf_counter() - t) / fit_reps)
            else:
                rows["cold"][1].append(run(vc_args, peer_env))
                rows["bare"][1].append(run([str(ppy), "-c", "pass"], peer_env))
                rows["plans"][1].append(ask(op="plans", n=N_PLANS, offset=(r + 1) * N_PLANS))
                rows["fit"][1].append(ask(op="fit", n=fit_reps))
    ask_stop = json.dumps({"op": "stop"}) + "\n"
    worker.stdin.write(ask_stop)
    worker.stdin.close()
    worker.wait()

    cfgs = sweep_configs(load_model)
    sweeps = []
    for _ in range(max(3, a.rounds // 3)):
        clear_planner_caches()
        t = time.perf_counter()
        for c in cfgs:
            plan(c)
        sweeps.append(time.perf_counter() - t)

    print(f"config: Llama-3.1-8B, LoRA r16 q,k,v,o, bf16, batch 1, seq 2048, RTX A6000; {a.rounds} interleaved "
          f"rounds, medians; vramcalc {hello['vramcalc']}, fitcheck-llm {hello['fitcheck']}")
    print(f"quantlab fit: fits={f0.fits} max_batch={f0.max_batch} max_seq={f0.max_seq} min_gpus={f0.min_gpus}; "
          f"fitcheck max_batch={hello['fitcheck_max_batch']}")
    print()
    hdr = f"{'row':<44} {'quantlab':>11} {'peer':>11} {'ratio':>7}  target"
    print(hdr)
    print("-" * len(hdr))
    ok = True
    for key, label, peer, unit in (("cold", "cold start, plan --format json (vramcalc CLI)", "vramcalc", "ms"),
                                   ("plans", f"{N_PLANS:,} plan() (vramcalc estimate())", "vramcalc", "ms"),
                                   ("fit", "fit(): batch, seq, GPUs (fitcheck estimate())", "fitcheck", "ms")):
        q, p = median_ms(rows[key][0]), median_ms(rows[key][1])
        ratio = q / p
        ok &= ratio <= 1.0
        print(f"{label:<44} {q:>8.3f} {unit} {p:>8.3f} {unit} {ratio:>6.2f}x  <= 1.00x "
              f"{'ok' if ratio <= 1.0 else 'MISSED'}")
    print(f"{'  info: quantlab on this interpreter':<44} {median_ms(rows['here'][0]):>8.3f} ms {'-':>11} {'-':>7}  -")
    print(f"{'  info: bare start, this / peers interpreter':<44} {median_ms(rows['bare'][0]):>8.3f} ms "
          f"{median_ms(rows['bare'][1]):>8.3f} ms {'-':>7}  -")
    sw = statistics.median(sweeps)
    ok &= sw < SWEEP_TARGET_S
    print(f"{f'sweep of {N_SWEEP:,} distinct configurations':<44} {sw * 1e3:>8.1f} ms {'-':>11} {'-':>7}  "
          f"< {SWEEP_TARGET_S * 1e3:.0f} ms {'ok' if sw < SWEEP_TARGET_S else 'MISSED'}")
    print()
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
