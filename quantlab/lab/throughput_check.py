"""The roofline checked against measurement: predicted vs measured tokens/s on this machine.

The recommender's speeds come from ``quantlab.planner.throughput`` (FLOPs and bytes per step,
divided by a device's peaks at stated utilisations). Here the same functions run with *this*
machine as the device (peaks measured by ``quantlab.lab.cpu_probe``) and with every utilisation at
1.0, so the prediction is the ideal. This module measures only: it times the embedded model
(SmolLM2-135M, FP32, loaded with the lab's loader) and returns :class:`Timed` records;
:mod:`quantlab.validate_lab` sets the roofline beside each (``throughput_row``) for

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
machine reaches on the roof that binds; the medians per phase become this CPU's
:class:`~quantlab.planner.throughput.Utilisation` ("derived", :func:`quantlab.validate_lab.derive_utilisation`),
and the rows are re-predicted with it (``pred_derived_tok_per_s``) so the report shows how well one
constant per phase fits across batch sizes and methods.

Token ids are drawn at random from the vocabulary: speed does not depend on which tokens they are.
Run: ``python -m quantlab.lab.throughput_check --out reports/throughput-cpu`` (about 2 minutes on
2 cores; ``--quick`` for a smoke run on a tiny model).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass

from quantlab.specs import DeviceMode, DType, GPUSpec, Method, ModelSpec, PlanConfig, Precision


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
    reprobe: bool = True  # probe the peaks again right before each row (see _peaks_source)
    probe_matmul_n: int = 2048


@dataclass(frozen=True)
class Timed:
    """One timed row, measurements only: what ran (``cfg``, the plan of the same step), the seconds per step,
    the bytes the run held, and the device whose peaks were probed right before it (the roof it is set beside
    by :func:`quantlab.validate_lab.throughput_row`)."""

    phase: str  # prefill, decode, train
    method: str  # inference, full, lora, lora+ckpt
    cfg: PlanConfig
    meas_s: float
    device: GPUSpec
    weight_bytes: int  # the model's tensors (measure.model_bytes), adapters included
    trainable_params: int = 0
    extra: dict = dataclasses.field(default_factory=dict)  # context / trainable_params, then the row's probe peaks
    meas_loadavg_1m: float = 0.0  # right after this row's timing: was the machine shared?


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


def measure_rows(cc: CheckConfig, device: GPUSpec) -> list[Timed]:
    """Time decode, prefill and training steps of the model (measurements only)."""
    import torch

    from quantlab.lab.measure import median_time, model_bytes
    from quantlab.lab.model import cache_kwarg, output_cache

    torch.set_num_threads(cc.threads)
    torch.manual_seed(cc.seed)
    peaks_now = _peaks_source(cc, device)
    model, spec = _load(cc)
    model.eval()
    kw = cache_kwarg(model)
    vocab = spec.vocab_size
    wbytes = model_bytes(model).total
    rows: list[Timed] = []

    with torch.inference_mode():
        # ---- prefill -------------------------------------------------------------------------------
        for seq in cc.prefill_seqs:
            ids = torch.randint(0, vocab, (cc.prefill_batch, seq))
            dev, peaks = peaks_now()
            meas = median_time(lambda: model(input_ids=ids, use_cache=False), warmup=1, repeat=3)
            rows.append(Timed("prefill", "inference", _cfg(spec, Method.INFERENCE, cc.prefill_batch, seq), meas, dev,
                              wbytes, extra=dict(peaks), meas_loadavg_1m=os.getloadavg()[0]))
        # ---- decode --------------------------------------------------------------------------------
        for b in cc.decode_batches:
            ids = torch.randint(0, vocab, (b, cc.prompt))
            dev, peaks = peaks_now()
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
            rows.append(Timed("decode", "inference", _cfg(spec, Method.INFERENCE, b, ctx), meas, dev, wbytes,
                              extra={"context": ctx, **peaks}, meas_loadavg_1m=os.getloadavg()[0]))
    # ---- training ------------------------------------------------------------------------------
    for method in cc.train_methods:
        rows.append(_train_row(cc, method, spec, peaks_now))
    return rows


def _peaks_source(cc: CheckConfig, device: GPUSpec):
    """What each row is compared with: with ``reprobe``, peaks probed again right before the row is timed (a
    baseline in the same process at the same moment, so a machine shared with other jobs lowers both the peak
    and the measurement); otherwise the one device given. Returns (device, the row's probe fields)."""

    def peaks_now():
        if not cc.reprobe:
            return device, {}
        from quantlab.lab import cpu_probe

        res = cpu_probe.probe(threads=cc.threads, repeats=3, matmul_n=cc.probe_matmul_n, bf16=False)
        return cpu_probe.as_device(res), {"probe_read_bytes_per_s": res.read_bytes_per_s,
                                          "probe_fp32_flops_per_s": res.flops["fp32"]}
    return peaks_now


def _train_row(cc: CheckConfig, variant: str, spec: ModelSpec, peaks_now) -> Timed:
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
    dev, peaks = peaks_now()
    meas = median_time(step, warmup=0, repeat=cc.train_steps)
    row = Timed("train", variant, _cfg(spec, Method(method), cc.train_batch, cc.train_seq, **kw), meas, dev,
                model_bytes(model).total, trainable_params=n_train, extra={"trainable_params": n_train, **peaks},
                meas_loadavg_1m=os.getloadavg()[0])
    del model, opt
    return row


def environment() -> dict:
    """The lab's environment snapshot (``quantlab.report.env``) plus the machine's load: other jobs sharing the
    cores slow a run down, and the load average says how busy the machine was."""
    from quantlab.report.env import environment as env

    return dict(env(), cpu_count=os.cpu_count(), loadavg_1m=os.getloadavg()[0])


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
    """``python -m quantlab.lab.throughput_check``: the command, kept at this path (the committed report names it).
    It is the command layer's, not the lab's: the rows get the roofline beside them in
    :func:`quantlab.validate_lab.throughput_main`."""
    from quantlab.validate_lab import throughput_main

    return throughput_main(argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
