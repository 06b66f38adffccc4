"""The validation side of the lab's runs: the planner's figure set beside the lab's measurements.

The lab (``quantlab.lab``) measures and returns measurements only; it does not import the planner. This module
takes those measurements and puts the planner's prediction for the same configuration beside them, in the
rows the reports keep (field names and values as before the split, so the reports and their readers are
unchanged). The command layer calls it: ``quantlab lab ptq`` (:func:`ptq_predictions`),
``scripts/launch_ddp_cpu.py`` (:func:`distributed_rows`), ``python -m quantlab.lab.throughput_check`` and
``scripts/bench_throughput_check.py`` (:func:`throughput_run`).

:mod:`quantlab.validate` (the plan-vs-measurement comparison of the fine-tune) may take this module in later.
"""

from __future__ import annotations

import dataclasses
import statistics

# ---- PTQ: the planner's weight bytes for each method --------------------------------------------------------


def ptq_weight_bytes(m, src) -> int | None:
    """The planner's weights + quantization constants for the same configuration (CPU mode), or None: no
    profile for the model, or a format the planner does not model (torchao's, intx4)."""
    if src.profile_name is None or m.precision == "intx4" or m.backend == "torchao":
        return None
    from quantlab.planner import plan
    from quantlab.profiles import load_model as load_profile
    from quantlab.specs import PlanConfig

    cfg = PlanConfig.from_dict(m.plan_dict(), model=load_profile(src.profile_name).spec)
    p = plan(cfg)
    return p.components["weights"] + p.components.get("quant_constants", 0)


def ptq_predictions(m, src) -> dict:
    """The ``pred_`` fields of one PTQ method's row (``quantlab.lab.ptq.run_ptq(..., predict=...)``)."""
    return {"pred_weight_bytes": ptq_weight_bytes(m, src)}


# ---- distributed: per-process bytes beside the planner's per-GPU components ----------------------------------

DIST_COMPONENTS = ("weights", "gradients", "optimizer", "ddp_buckets")


def distributed_rows(cfg, recs: list[dict]) -> list[dict]:
    """One tidy row per rank and component: the planner's per-GPU bytes beside this process's bytes
    (``cfg``: a ``quantlab.lab.distributed.DistConfig``; ``recs``: the rank records ``launch`` returns).

    Weights include adapters and quantization constants (grouped as ``quantlab.planner.recommend``
    groups them). Under FSDP full_shard the planner's weights also hold two gathered blocks, live only
    while a block runs; the process is counted at rest after the step, so the row compares the
    sharded share (``pred_at_rest_bytes``: the one-process plan's weights / processes) and keeps the
    planner's peak figure beside it. Activations, logits and the CUDA context are not compared: they
    are freed by the end of the step, and a CPU process has no context or allocator pool.
    """
    from quantlab import planner
    from quantlab.lab.distributed import model_spec, plan_config
    from quantlab.planner.recommend import GRAD_KEYS, OPT_KEYS, WEIGHT_KEYS, _sum

    spec = model_spec(cfg)
    pc = plan_config(cfg, spec)
    p = planner.plan(pc)
    one = planner.plan(dataclasses.replace(pc, num_gpus=1, fsdp=None))
    pred = {"weights": _sum(p.components, WEIGHT_KEYS), "gradients": _sum(p.components, GRAD_KEYS),
            "optimizer": _sum(p.components, OPT_KEYS), "ddp_buckets": p.components.get("ddp_buckets", 0)}
    at_rest = dict(pred)
    if cfg.sharding == "fsdp":
        at_rest["weights"] = _sum(one.components, WEIGHT_KEYS) // cfg.processes
    rows = []
    for rec in recs:
        for comp in DIST_COMPONENTS:
            meas = rec[f"{comp}_bytes"]
            rows.append({"model": spec.name, "method": cfg.method, "sharding": cfg.sharding,
                         "processes": rec["world_size"], "rank": rec["rank"], "component": comp,
                         "pred_bytes": pred[comp], "pred_at_rest_bytes": at_rest[comp], "meas_bytes": meas,
                         "meas_over_pred": meas / at_rest[comp] if at_rest[comp] else None,
                         "meas_peak_rss_bytes": rec["peak_rss_bytes"], "replicas_agree": rec["replicas_agree"],
                         "how_measured": "DDP logging data (bucket_sizes)" if comp == "ddp_buckets"
                         else "storages of the process's tensors after the last step"})
    return rows


# ---- throughput: measured tokens/s beside the roofline ------------------------------------------------------


def _ideal():
    from quantlab.planner import throughput as tp

    return tp.Utilisation(train_mfu=1.0, kbit_train_mfu=1.0, prefill_mfu=1.0, mbu=1.0, network=1.0,
                          basis="ideal", source="every roof at its measured peak (utilisation 1.0)")


def throughput_row(t) -> dict:
    """One report row of ``quantlab.lab.throughput_check``: a :class:`~quantlab.lab.throughput_check.Timed`
    measurement beside the roofline at utilisation 1.0 on the peaks probed for that row."""
    from quantlab.planner import throughput as tp
    from quantlab.specs import DType

    r, ideal = tp.roof(t.device, DType.FP32), _ideal()
    if t.phase == "prefill":
        step = tp.prefill_step(t.cfg, tp.ModelBytes(t.weight_bytes), r, ideal)
    elif t.phase == "decode":
        step = tp.decode_step(t.cfg, tp.ModelBytes(t.weight_bytes), r, ideal)
    else:  # fp32 gradients and AdamW's two fp32 moments per trainable parameter
        nbytes = tp.ModelBytes(weights=t.weight_bytes, gradients=4 * t.trainable_params,
                               optimizer=8 * t.trainable_params)
        step = tp.train_step(t.cfg, t.trainable_params, nbytes, r, ideal)
    pred_tps = step.tokens_per_s
    meas_tps = step.tokens / t.meas_s
    return {"phase": t.phase, "method": t.method, "batch": t.cfg.batch, "seq": t.cfg.seq, **t.extra,
            "tokens_per_step": step.tokens, "pred_flops_per_step": step.flops, "pred_bytes_per_step": step.bytes,
            "pred_bound": step.bound, "pred_ideal_s": step.seconds, "meas_s": t.meas_s,
            "pred_ideal_tok_per_s": pred_tps, "meas_tok_per_s": meas_tps, "meas_over_pred": meas_tps / pred_tps,
            "meas_loadavg_1m": t.meas_loadavg_1m}


def derive_utilisation(rows: list[dict], device_name: str):
    """This machine's utilisation constants: the median meas/pred per phase (on the roof that binds)."""
    from quantlab.planner import throughput as tp

    def med(phase):
        vals = [r["meas_over_pred"] for r in rows if r["phase"] == phase]
        return min(1.0, statistics.median(vals)) if vals else 1.0

    return tp.Utilisation(train_mfu=med("train"), kbit_train_mfu=med("train"), prefill_mfu=med("prefill"),
                          mbu=med("decode"), basis="measured",
                          source=f"quantlab.lab.throughput_check on {device_name}: median measured/ideal tokens/s "
                                 "per phase")


def repredict(rows: list[dict], util) -> list[dict]:
    """Add ``pred_derived_tok_per_s``: the ideal scaled by the derived constant of the row's roof."""
    out = []
    for r in rows:
        u = {"train": util.train_mfu, "prefill": util.prefill_mfu,
             "decode": util.mbu if r["pred_bound"] == "memory" else util.prefill_mfu}[r["phase"]]
        pred = r["pred_ideal_tok_per_s"] * u
        out.append({**r, "pred_derived_tok_per_s": pred, "meas_over_pred_derived": r["meas_tok_per_s"] / pred})
    return out


def throughput_run(cc=None, device=None, probe_kwargs: dict | None = None) -> dict:
    """Probe the machine (unless ``device`` is given), measure (the lab), set the roofline beside each row,
    derive this machine's utilisation, re-predict with it; a JSON-ready document."""
    from quantlab.lab import cpu_probe
    from quantlab.lab import throughput_check as tc
    from quantlab.planner import throughput as tp

    cc = cc or tc.CheckConfig()
    probe = None
    if device is None:
        probe = cpu_probe.probe(threads=cc.threads, **(probe_kwargs or {}))
        device = cpu_probe.as_device(probe)
    env_before = tc.environment()
    rows = [throughput_row(t) for t in tc.measure_rows(cc, device)]
    env = dict(tc.environment(), loadavg_1m_before=env_before["loadavg_1m"])
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


def throughput_main(argv: list[str] | None = None, doc: str | None = None) -> int:
    """``python -m quantlab.lab.throughput_check``: run the check, write throughput.json/.csv/.md."""
    import argparse
    import json
    import sys
    from pathlib import Path

    from quantlab.fileio import atomic_write_text
    from quantlab.lab import throughput_check as tc

    ap = argparse.ArgumentParser(prog="python -m quantlab.lab.throughput_check",
                                 description=(doc or tc.__doc__).split("\n")[0])
    ap.add_argument("--out", default="reports/throughput-cpu", help="folder for throughput.json/.csv/.md")
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--quick", action="store_true", help="a tiny random model and short runs (smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    cc = tc.CheckConfig(model=args.model, threads=args.threads)
    if args.quick:
        cc = dataclasses.replace(cc, tiny=True, decode_batches=(1, 4), prompt=32, new_tokens=8, prefill_seqs=(64,),
                                 train_batch=2, train_seq=64, train_steps=2, probe_matmul_n=512)
    out_doc = throughput_run(cc, probe_kwargs={"repeats": 3, "matmul_n": 1024} if args.quick else None)
    out = Path(args.out)
    command = "python -m quantlab.lab.throughput_check " + " ".join(argv if argv is not None else sys.argv[1:])
    out_doc["command"] = command.strip()
    atomic_write_text(out / "throughput.json", json.dumps(out_doc, indent=2) + "\n")
    import pandas as pd

    atomic_write_text(out / "throughput.csv", pd.DataFrame(out_doc["rows"]).to_csv(index=False))
    atomic_write_text(out / "throughput.md", tc.to_markdown(out_doc, out_doc["command"]))
    print(tc.to_markdown(out_doc, out_doc["command"]))
    return 0


# ---- BitFit / DoRA / P-tuning steps (quantlab.lab.peft_measured) ---------------------------------------------

def peft_predicted(plan, loss_cfg) -> dict:
    """``pred_<component>_bytes`` of a plan on the boundaries :func:`quantlab.lab.peft_measured.measure_step` measures; ``logits_loss`` is the
    logits and what the loss saves at ``loss_cfg``'s rows (``quantlab.validate.predict``)."""
    from quantlab.planner.memory import loss_buffers

    c = plan.components
    out = {f"pred_{k}_bytes": c.get(k, 0) for k in ("weights", "adapters", "gradients", "optimizer", "activations")}
    logits, saved, _ = loss_buffers(loss_cfg)
    out["pred_logits_loss_bytes"] = logits + saved
    out["pred_allocated_bytes"] = plan.peak_allocated_bytes
    out["pred_trainable_params"] = plan.trainable_params
    return out
