#!/usr/bin/env python
"""Serving LoRA adapters merged vs unmerged, on the embedded SmolLM2-135M with PEFT (fp32, CPU): decode latency as
ratios measured in the same run, and the adapters' resident bytes against the planner's adapter-serving plan
(quantlab.planner.serving S6: adapter_bytes).

Configurations, all on the same prompt (a json-extract test prompt, batch 1, greedy, exactly N new tokens):
- merged: adapter 1 folded into a copy of the base (``merge_and_unload``): a plain transformers model;
- unmerged K=1: the base wrapped by PeftModel with adapter 1;
- unmerged K=2: both adapters loaded, adapter 1 active (the other resident, unused).
Decode seconds per token = (t(N new tokens) - t(1 new token)) / (N - 1), each the median of ``--repeat`` runs,
the configurations interleaved in each round, in an order rotated every round, so a load change on the shared
machine hits them alike.

    python scripts/merge_serving.py --adapters A,B --out reports/merge-cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", required=True, help="two saved LoRA adapter folders, comma-separated")
    ap.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per run (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds; medians are reported (default: %(default)s)")
    ap.add_argument("--out", default="reports/merge-cpu", help="folder for serving.json / serving.md")
    a = ap.parse_args(argv)
    import torch
    from peft import PeftModel

    from quantlab.fileio import atomic_write_text
    from quantlab.lab.measure import model_bytes
    from quantlab.lab.merge import AdapterInfo
    from quantlab.lab.merge_tasks import splits
    from quantlab.lab.model import load_model, load_tokenizer, resolve
    from quantlab.lab.data import render_prompt
    from quantlab.report.env import environment

    paths = [p.strip() for p in a.adapters.split(",")]
    infos = [AdapterInfo.read(p) for p in paths]
    src = resolve("smollm2-135m")
    tok = load_tokenizer(src, progress=False)
    rec = splits("json-extract")[2][0]
    enc = tok([render_prompt(tok, rec)], return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    base_bytes = model_bytes(load_model(src, dtype=torch.float32, progress=False)).total
    merged = PeftModel.from_pretrained(load_model(src, dtype=torch.float32, progress=False), paths[0]).merge_and_unload()
    one = PeftModel.from_pretrained(load_model(src, dtype=torch.float32, progress=False), paths[0], adapter_name="a")
    two = PeftModel.from_pretrained(load_model(src, dtype=torch.float32, progress=False), paths[0], adapter_name="a")
    two.load_adapter(paths[1], adapter_name="b")
    two.set_adapter("a")
    models = {"merged": merged, "unmerged K=1": one, "unmerged K=2": two}
    for m in models.values():
        m.eval()

    def gen(m, n):
        t = time.perf_counter()
        with torch.no_grad():
            out = m.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        s = time.perf_counter() - t
        return s, out[0, enc["input_ids"].shape[1]:].tolist()

    times = {k: {"n": [], "1": []} for k in models}
    answers = {}
    for k, m in models.items():  # warm-up
        answers[k] = gen(m, a.new_tokens)[1]
    order = list(models)
    for i in range(a.repeat):
        for k in order[i % len(order):] + order[:i % len(order)]:  # rotated each round: no config always first
            times[k]["n"].append(gen(models[k], a.new_tokens)[0])
            times[k]["1"].append(gen(models[k], 1)[0])
    from quantlab.planner.serving import adapter_bytes, serve_config
    from quantlab.profiles import load_model as load_profile
    from quantlab.specs import PlanConfig

    spec = load_profile("smollm2-135m").spec
    rows = []
    ref = None
    for k, m in models.items():
        n_med, one_med = statistics.median(times[k]["n"]), statistics.median(times[k]["1"])
        per_tok = (n_med - one_med) / (a.new_tokens - 1)
        ref = per_tok if k == "merged" else ref
        meas_extra = model_bytes(m).total - base_bytes
        K = 0 if k == "merged" else int(k[-1])
        plan = PlanConfig.from_dict({"method": "inference", "precision": "fp32", "compute_dtype": "fp32",
                                     "device": "cpu", "lora_r": infos[0].r, "lora_targets": list(infos[0].targets),
                                     "batch": 1, "seq": 512}, model=spec)
        sc = serve_config(plan, prompt_tokens=int(enc["input_ids"].shape[1]), new_tokens=a.new_tokens,
                          **({"adapters": K} if K else {"merged": True}))
        rows.append({"config": k, "adapters_loaded": K, "meas_decode_s_per_token": per_tok,
                     "meas_prefill_plus_first_s": one_med, "decode_ratio_to_merged": per_tok / ref,
                     "meas_adapter_bytes": meas_extra, "pred_adapter_bytes": adapter_bytes(sc),
                     "same_tokens_as_merged": answers[k] == answers["merged"]})
    env = environment()
    doc = {"command": "python scripts/merge_serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "new_tokens": a.new_tokens, "repeat": a.repeat, "prompt_tokens": int(enc["input_ids"].shape[1]),
           "rows": rows, "env": env}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "serving.json", json.dumps(doc, indent=1) + "\n")
    lines = [f"{'config':<14}{'decode ms/tok':>14}{'x merged':>9}{'adapter MiB meas':>17}{'pred':>7}{'same':>6}"]
    for r in rows:
        lines.append(f"{r['config']:<14}{1000 * r['meas_decode_s_per_token']:>14.1f}{r['decode_ratio_to_merged']:>9.2f}"
                     f"{r['meas_adapter_bytes'] / 2**20:>17.2f}{r['pred_adapter_bytes'] / 2**20:>7.2f}"
                     f"{'yes' if r['same_tokens_as_merged'] else 'no':>6}")
    txt = "\n".join(lines)
    atomic_write_text(out / "serving.md", f"Made by `{doc['command']}` (git {env.get('git_commit')}; torch "
                      f"{env.get('torch')}, peft {env.get('peft')}; {env.get('device_name')}, {env.get('cpu_count')} "
                      f"cores, no GPU; load average {env.get('loadavg_1m')}). Batch 1, {doc['prompt_tokens']}-token "
                      f"prompt, {a.new_tokens} greedy tokens, median of {a.repeat} interleaved rounds; MiB = 2^20 "
                      f"bytes; pred = quantlab.planner.serving.adapter_bytes (S6).\n\n```\n{txt}\n```\n")
    print(txt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
