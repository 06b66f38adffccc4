"""The roofline checked against measurement: predicted vs measured tokens/s on this machine.

The recommender's speeds come from ``quantlab.planner.throughput`` (FLOPs and bytes per step,
divided by a device's peaks at stated utilisations). Here the same functions run with *this*
machine as the device (peaks measured by ``quantlab.lab.cpu_probe``) and with every utilisation at
1.0, so the prediction is the ideal; the lab then times the embedded model (SmolLM2-135M, FP32,
loaded with the lab's loader) for

1. decode: one token per sequence per step with a KV cache (``past_key_values``), after a prompt;
   median seconds per step; the roofline's context is the mean context over the steps;
2. prefill: one forward over ``batch × seq`` prompt tokens (all logits computed, as the roofline's
   2N per token assumes);
3. training steps: forward + backward + AdamW step at ``batch × seq`` tokens, full fine-tune and
   LoRA (r=16 on q_proj, v_proj: the planner's defaults), LoRA again with gradient checkpointing
   (the roofline adds one recomputed forward), median seconds per step after a warm-up.

Each row's peaks are probed again right before it is timed (``reprobe``), so the ratio compares the
run with a baseline taken in the same process at the same moment: on a machine shared with other
jobs both drop together. ``meas/pred`` (measured over ideal tokens/s) is the utilisation this
machine reaches on the roof that binds; the medians per phase become this CPU's :class:`~quantlab.planner.throughput.Utilisation`
("derived"), and the rows are re-predicted with it (``pred_derived_tok_per_s``) so the report shows
how well one constant per phase fits across batch sizes and methods.

Token ids are drawn at random from the vocabulary: speed does not depend on which tokens they are.
Run: ``python -m quantlab.lab.throughput_check --out reports/throughput-cpu`` (about 2 minutes on
2 cores; ``--quick`` for a smoke run on a tiny model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from quantlab.planner import throughput as tp
from quantlab.specs import DeviceMode, DType, Method, ModelSpec, PlanConfig, Precision


@dataclass(frozen=True)
class CheckConfig:
    model: str | None = None  # None: the embedded SmolLM2-135M
    decode_batches: tuple[int, ...] = (1, 8)
    prompt: int = 128
    new_tokens: int = 24
    prefill_batch: int = 1
    prefill_seqs: tuple[int, ...] = (256, 1024)
    train_batch: int = 4
    train_seq: int = 256
    train_methods: tuple[str, ...] = ("full", "lora", "lora+ckpt")
    train_steps: int = 3  # timed steps, after one warm-up step
    threads: int = 2
    tiny: bool = False  # a tiny random model (tests / smoke runs), not the embedded one
    seed: int = 0
    reprobe: bool = True  # probe the peaks again right before each row (see _roof_source)
    probe_matmul_n: int = 2048


IDEAL = tp.Utilisation(train_mfu=1.0, kbit_train_mfu=1.0, prefill_mfu=1.0, mbu=1.0, network=1.0,
                       basis="ideal", source="every roof at its measured peak (utilisation 1.0)")


def _load(cc: CheckConfig):
    import torch

    from quantlab.lab import model as lab_model

    if cc.tiny:
        m = lab_model.tiny_model("llama", seed=cc.seed, hidden_size=128, num_hidden_layers=2, intermediate_size=256,
                                 vocab_size=512)
        name = "tiny-llama"
    else:
        src = lab_model.resolve(cc.model)
        m = lab_model.load_model(src, dtype=torch.float32, progress=False)
        name = src.name
    m.config.use_cache = True
    spec = ModelSpec.from_hf_config(m.config.to_dict(), name=name)
    return m, spec


def _cfg(spec: ModelSpec, method: Method, batch: int, seq: int, **kw) -> PlanConfig:
    return PlanConfig(model=spec, method=method, precision=Precision.FP32, compute_dtype=DType.FP32, batch=batch,
                      seq=seq, device=DeviceMode.CPU, **kw)


def _row(phase: str, method: str, cfg: PlanConfig, step: tp.StepTime, meas_s: float, **extra) -> dict:
    pred_tps = step.tokens_per_s
    meas_tps = step.tokens / meas_s
    return {"phase": phase, "method": method, "batch": cfg.batch, "seq": cfg.seq, **extra,
            "tokens_per_step": step.tokens, "pred_flops_per_step": step.flops, "pred_bytes_per_step": step.bytes,
            "pred_bound": step.bound, "pred_ideal_s": step.seconds, "meas_s": meas_s,
            "pred_ideal_tok_per_s": pred_tps, "meas_tok_per_s": meas_tps, "meas_over_pred": meas_tps / pred_tps,
            "meas_loadavg_1m": os.getloadavg()[0]}  # right after this row's timing: was the machine shared?


def measure_rows(cc: CheckConfig, device) -> list[dict]:
    """Time decode, prefill and training steps of the model and set each beside the ideal roofline."""
    import torch

    from quantlab.lab.measure import median_time, model_bytes
    from quantlab.lab.model import cache_kwarg, output_cache

    torch.set_num_threads(cc.threads)
    torch.manual_seed(cc.seed)
    roof_now = _roof_source(cc, device)
    model, spec = _load(cc)
    model.eval()
    kw = cache_kwarg(model)
    vocab = spec.vocab_size
    wbytes = model_bytes(model).total
    rows: list[dict] = []

    with torch.inference_mode():
        # ---- prefill -------------------------------------------------------------------------------
        for seq in cc.prefill_seqs:
            ids = torch.randint(0, vocab, (cc.prefill_batch, seq))
            r, peaks = roof_now()
            meas = median_time(lambda: model(input_ids=ids, use_cache=False), warmup=1, repeat=3)
            cfg = _cfg(spec, Method.INFERENCE, cc.prefill_batch, seq)
            rows.append(_row("prefill", "inference", cfg, tp.prefill_step(cfg, tp.ModelBytes(wbytes), r, IDEAL), meas,
                             **peaks))
        # ---- decode --------------------------------------------------------------------------------
        for b in cc.decode_batches:
            ids = torch.randint(0, vocab, (b, cc.prompt))
            r, peaks = roof_now()
            out = model(input_ids=ids, use_cache=True)
            cache, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
            times = []
            for _ in range(cc.new_tokens):
                t0 = time.perf_counter()
                out = model(input_ids=nxt, use_cache=True, **{kw: cache})
                times.append(time.perf_counter() - t0)
                cache, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
            meas = statistics.median(times[2:])  # first steps warm the allocator
            ctx = cc.prompt + cc.new_tokens // 2
            cfg = _cfg(spec, Method.INFERENCE, b, ctx)
            rows.append(_row("decode", "inference", cfg, tp.decode_step(cfg, tp.ModelBytes(wbytes), r, IDEAL), meas,
                             context=ctx, **peaks))
    # ---- training ------------------------------------------------------------------------------
    for method in cc.train_methods:
        rows.append(_train_row(cc, method, spec, roof_now))
    return rows


def _roof_source(cc: CheckConfig, device):
    """What each row is compared with: with ``reprobe``, peaks probed again right before the row is timed (a
    baseline in the same process at the same moment, so a machine shared with other jobs lowers both the peak
    and the measurement); otherwise the one device given."""
    fixed = tp.roof(device, DType.FP32)

    def roof_now():
        if not cc.reprobe:
            return fixed, {}
        from quantlab.lab import cpu_probe

        res = cpu_probe.probe(threads=cc.threads, repeats=3, matmul_n=cc.probe_matmul_n, bf16=False)
        return tp.roof(cpu_probe.as_device(res), DType.FP32), {"probe_read_bytes_per_s": res.read_bytes_per_s,
                                                               "probe_fp32_flops_per_s": res.flops["fp32"]}
    return roof_now


def _train_row(cc: CheckConfig, variant: str, spec: ModelSpec, roof_now) -> dict:
    """One training variant: ``full``, ``lora``, optionally with ``+ckpt`` (gradient checkpointing)."""
    import torch

    from quantlab.lab.measure import median_time, model_bytes

    method, _, extra = variant.partition("+")
    ckpt = extra == "ckpt"
    model, _ = _load(cc)
    model.train()
    model.config.use_cache = False
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kw = {"grad_checkpointing": ckpt}
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        defaults = PlanConfig(model=spec)
        model = get_peft_model(model, LoraConfig(r=defaults.lora_r, lora_alpha=defaults.lora_alpha,
                                                 target_modules=list(defaults.lora_targets), lora_dropout=0.0))
        kw.update(lora_r=defaults.lora_r, lora_targets=defaults.lora_targets)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    ids = torch.randint(0, spec.vocab_size, (cc.train_batch, cc.train_seq))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (optimizer states appear), then the peaks at this moment, then the timed steps
    r, peaks = roof_now()
    meas = median_time(step, warmup=0, repeat=cc.train_steps)
    nbytes = tp.ModelBytes(weights=model_bytes(model).total, gradients=4 * n_train, optimizer=8 * n_train)
    cfg = _cfg(spec, Method(method), cc.train_batch, cc.train_seq, **kw)
    row = _row("train", variant, cfg, tp.train_step(cfg, n_train, nbytes, r, IDEAL), meas, trainable_params=n_train,
               **peaks)
    del model, opt
    return row


def derive_utilisation(rows: list[dict], device_name: str) -> tp.Utilisation:
    """This machine's utilisation constants: the median meas/pred per phase (on the roof that binds)."""
    def med(phase):
        vals = [r["meas_over_pred"] for r in rows if r["phase"] == phase]
        return min(1.0, statistics.median(vals)) if vals else 1.0

    return tp.Utilisation(train_mfu=med("train"), kbit_train_mfu=med("train"), prefill_mfu=med("prefill"),
                          mbu=med("decode"), basis="measured",
                          source=f"quantlab.lab.throughput_check on {device_name}: median measured/ideal tokens/s "
                                 "per phase")


def repredict(rows: list[dict], util: tp.Utilisation) -> list[dict]:
    """Add ``pred_derived_tok_per_s``: the ideal scaled by the derived constant of the row's roof."""
    out = []
    for r in rows:
        u = {"train": util.train_mfu, "prefill": util.prefill_mfu,
             "decode": util.mbu if r["pred_bound"] == "memory" else util.prefill_mfu}[r["phase"]]
        pred = r["pred_ideal_tok_per_s"] * u
        out.append({**r, "pred_derived_tok_per_s": pred, "meas_over_pred_derived": r["meas_tok_per_s"] / pred})
    return out


def environment() -> dict:
    """The lab's environment snapshot (``quantlab.report.env``) plus the machine's load: other jobs sharing the
    cores slow a run down, and the load average says how busy the machine was."""
    from quantlab.report.env import environment as env

    return dict(env(), cpu_count=os.cpu_count(), loadavg_1m=os.getloadavg()[0])


def run(cc: CheckConfig = CheckConfig(), device=None, probe_kwargs: dict | None = None) -> dict:
    """Probe the machine (unless ``device`` is given), measure, derive, re-predict; a JSON-ready document."""
    from quantlab.lab import cpu_probe

    probe = None
    if device is None:
        probe = cpu_probe.probe(threads=cc.threads, **(probe_kwargs or {}))
        device = cpu_probe.as_device(probe)
    env_before = environment()
    rows = measure_rows(cc, device)
    env = dict(environment(), loadavg_1m_before=env_before["loadavg_1m"])
    rows = [dict(r, **{f"env_{k}": v for k, v in env.items()}) for r in rows]
    util = derive_utilisation(rows, device.name)
    return {"device": {"name": device.name, "memory_bandwidth_bytes_per_s": device.memory_bandwidth_bytes_per_s,
                       "flops": dict(device.flops)},
            "probe": probe.to_dict() if probe else None,
            "environment": env,
            "config": dataclasses.asdict(cc),
            "utilisation_derived": util.to_dict(),
            "utilisation_gpu_defaults": tp.Utilisation().to_dict(),
            "rows": repredict(rows, util)}


def _fmt(x, div: float) -> str:
    return "-" if x is None else f"{x / div:.1f}"


def to_markdown(doc: dict, command: str) -> str:
    from quantlab.units import GB

    d = doc["device"]
    p = doc.get("probe") or {}
    u = doc["utilisation_derived"]
    lines = [
        "# Roofline vs measured throughput on this CPU", "",
        f"Command: `{command}`", "",
        f"Device (measured by `quantlab.lab.cpu_probe` at the start; each row is re-probed just before it runs): "
        f"{p.get('cpu_name', d['name'])}, {p.get('threads', '?')} "
        f"threads; read bandwidth {d['memory_bandwidth_bytes_per_s'] / GB:.1f} GB/s"
        + (f" (copy {p['copy_bytes_per_s'] / GB:.1f} GB/s, matrix-vector {p['gemv_bytes_per_s'] / GB:.1f} GB/s)"
           if p else "")
        + f"; FP32 matmul {d['flops']['fp32'] / 1e9:.0f} GFLOP/s.", "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in (doc.get("environment") or {}).items())
        + " (a load average above the core count means other jobs shared the machine).", "",
        "`pred_ideal` is the roofline at utilisation 1.0 on the measured peaks; `meas/pred` is the utilisation "
        "reached; `pred_derived` uses the derived per-phase constants below.", "",
        "| phase | method | batch | seq/context | bound | pred ideal tok/s | measured tok/s | meas/pred | "
        "pred derived tok/s | meas/pred derived | row's probe GB/s | row's probe GFLOP/s | load avg |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(f"| {r['phase']} | {r['method']} | {r['batch']} | {r.get('context', r['seq'])} | {r['pred_bound']} "
                     f"| {r['pred_ideal_tok_per_s']:.1f} | {r['meas_tok_per_s']:.1f} | {r['meas_over_pred']:.3f} "
                     f"| {r['pred_derived_tok_per_s']:.1f} | {r['meas_over_pred_derived']:.2f} "
                     f"| {_fmt(r.get('probe_read_bytes_per_s'), 1e9)} | {_fmt(r.get('probe_fp32_flops_per_s'), 1e9)} "
                     f"| {r['meas_loadavg_1m']:.1f} |")
    lines += ["", "Derived utilisation constants for this CPU (median meas/pred per phase):", "",
              f"- training MFU: {u['train_mfu']:.3f}", f"- prefill MFU: {u['prefill_mfu']:.3f}",
              f"- decode memory-bandwidth utilisation (MBU): {u['mbu']:.3f}", "",
              "GPU defaults the recommender uses (not derived here): "
              + ", ".join(f"{k} {v}" for k, v in doc["utilisation_gpu_defaults"].items()
                          if k in ("train_mfu", "kbit_train_mfu", "prefill_mfu", "mbu")) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantlab.lab.throughput_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="reports/throughput-cpu", help="folder for throughput.json/.csv/.md")
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--quick", action="store_true", help="a tiny random model and short runs (smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    cc = CheckConfig(model=args.model, threads=args.threads)
    if args.quick:
        cc = dataclasses.replace(cc, tiny=True, decode_batches=(1, 4), prompt=32, new_tokens=8, prefill_seqs=(64,),
                                 train_batch=2, train_seq=64, train_steps=2, probe_matmul_n=512)
    doc = run(cc, probe_kwargs={"repeats": 3, "matmul_n": 1024} if args.quick else None)
    from quantlab.fileio import atomic_write_text

    out = Path(args.out)
    command = "python -m quantlab.lab.throughput_check " + " ".join(argv if argv is not None else sys.argv[1:])
    doc["command"] = command.strip()
    atomic_write_text(out / "throughput.json", json.dumps(doc, indent=2) + "\n")
    import pandas as pd

    atomic_write_text(out / "throughput.csv", pd.DataFrame(doc["rows"]).to_csv(index=False))
    atomic_write_text(out / "throughput.md", to_markdown(doc, doc["command"]))
    print(to_markdown(doc, doc["command"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
