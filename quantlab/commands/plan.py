"""``quantlab plan``: memory per component for one configuration, and whether it fits a GPU.

The flags map onto :class:`quantlab.specs.PlanConfig` through :func:`add_plan_arguments` and
:func:`config_from_args`, which ``quantlab compare``, ``validate`` and ``recommend`` reuse.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from quantlab.errors import QuantlabError

FORMATS = ("table", "json", "csv")


def _choices(enum) -> list[str]:
    return [e.value for e in enum]


def add_plan_arguments(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    """The model, method, precision and workload flags (no output or GPU flags); ``quantlab validate`` takes
    ``--matrix FILE`` instead of ``--model``, so there the model is optional."""
    from quantlab.specs import Attention, DType, Method, Offload, Optimizer, Precision, TrainingPrecision

    g = p.add_argument_group("model and method")
    g.add_argument("--model", required=model_required,
                   help="profile name (llama-3.1-8b), alias (7b, 13b, 70b = Llama-2; 8b = Llama-3.1-8B), HF id, or a "
                        "local config.json / model folder (see 'quantlab profiles')")
    g.add_argument("--method", choices=_choices(Method), default="inference",
                   help="inference, or a fine-tune: full (all weights train: most memory), freeze (last k blocks), "
                        "lora, qlora (LoRA on 4-bit weights: least memory), adapter, prefix, prompt, ia3")
    g.add_argument("--precision", choices=_choices(Precision), default=None,
                   help="storage of the base weights (default: nf4 for qlora, bf16 otherwise); int8/nf4/fp4/int4 "
                        "shrink weights 2-4x at some quality cost")
    g.add_argument("--compute-dtype", choices=[d.value for d in DType if d is not DType.FP8], default=None,
                   help="dtype of activations and matmuls (default bf16; fp16 on GPUs without bf16, e.g. T4, V100)")
    g.add_argument("--training-precision", choices=_choices(TrainingPrecision), default="pure",
                   help="pure: weights, grads and states in the compute dtype (least memory); amp: fp32 master "
                        "weights and states with autocast (about twice the model-state memory, more stable)")
    g.add_argument("--double-quant", action="store_true",
                   help="nf4/fp4: quantize the absmax constants too (saves ~0.37 bit per weight)")
    g.add_argument("--group-size", type=int, default=128, help="int4 (GPTQ/AWQ) group size: smaller = more accurate, larger")
    g.add_argument("--no-kbit-upcast", dest="kbit_upcast", action="store_false",
                   help="k-bit training without PEFT's prepare_model_for_kbit_training (which upcasts embeddings, "
                        "norms and lm_head to fp32)")
    t = p.add_argument_group("training")
    t.add_argument("--optimizer", choices=_choices(Optimizer), default="adamw",
                   help="adamw: 2 states per trainable weight; adamw-8bit: 4x smaller states; paged-*: states in "
                        "unified memory that can spill to CPU; sgd: none (sgd-momentum: 1); adafactor: factored; lion: 1")
    t.add_argument("--lora-r", type=int, default=16, help="LoRA rank (adapter size grows linearly with it)")
    t.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (scaling only; no memory effect)")
    t.add_argument("--lora-targets", default="q_proj,v_proj",
                   help="comma-separated module names, or all-linear (more adapters, better quality, more memory)")
    t.add_argument("--lora-dropout", type=float, default=0.0,
                   help="LoRA dropout (PEFT default 0): > 0 regularizes but keeps a mask and a copy of the input "
                        "per adapter")
    t.add_argument("--freeze-last-layers", type=int, default=2, help="freeze: how many of the last blocks train")
    t.add_argument("--freeze-modules", default="", help="freeze: also train these modules (lm_head, embed_tokens, norm)")
    t.add_argument("--adapter-size", type=int, default=64, help="bottleneck adapter width")
    t.add_argument("--num-virtual-tokens", type=int, default=20, help="prefix/prompt tuning: virtual tokens")
    t.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward: far less activation memory for ~30%% more compute")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (no extra memory)")
    w = p.add_argument_group("workload")
    w.add_argument("--batch", type=int, default=1, help="sequences per micro-batch per GPU")
    w.add_argument("--seq", type=int, default=2048, help="tokens per sequence (inference: the whole context)")
    w.add_argument("--attn", choices=_choices(Attention), default="sdpa",
                   help="sdpa (fused, no seq^2 buffers) or eager (keeps heads x seq^2 scores: much more memory)")
    w.add_argument("--padded", dest="padding_mask", action="store_true",
                   help="training batches are padded to their longest sequence (dynamic padding) rather than packed: "
                        "the attention mask makes SDPA keep the mask and K/V repeated to every head (GQA models)")
    w.add_argument("--kv-dtype", choices=[d.value for d in DType], default=None, help="KV cache dtype (default: compute)")
    s = p.add_argument_group("sharding")
    s.add_argument("--num-gpus", type=int, default=1, help="GPUs; memory is reported per GPU")
    s.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0,
                   help="DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also weights")
    s.add_argument("--fsdp", nargs="?", const="full_shard", default=None, choices=("full_shard", "shard_grad_op"),
                   help="FSDP instead of ZeRO (full_shard ~ ZeRO-3, shard_grad_op ~ ZeRO-2)")
    s.add_argument("--offload", choices=_choices(Offload), default="none",
                   help="move optimizer states (or also parameters, with ZeRO-3) to CPU memory: slower steps")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    s.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (adds CUDA context and allocator reserve) or cpu (exact tensor bytes, as the lab counts)")
    s.add_argument("--stack", choices=("transformers", "litgpt"), default="transformers", help=argparse.SUPPRESS)


def config_dict(args: argparse.Namespace) -> dict:
    """The PlanConfig dict (``PlanConfig.from_dict`` form, without the model) the flags describe; flags left
    at None are absent, so the dataclass defaults (and the GPU rules of :func:`gpu_adjusted`) decide them."""
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if not targets:
        raise QuantlabError("--lora-targets is empty")
    if "all-linear" in targets:
        from quantlab.specs import ALL_LINEAR

        targets = [ALL_LINEAR]
    d = {"method": args.method, "precision": args.precision, "compute_dtype": args.compute_dtype,
         "training_precision": args.training_precision, "double_quant": args.double_quant,
         "group_size": args.group_size, "optimizer": args.optimizer, "batch": args.batch, "seq": args.seq,
         "kv_dtype": args.kv_dtype, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_targets": targets,
         "lora_dropout": args.lora_dropout, "freeze_last_layers": args.freeze_last_layers,
         "freeze_modules": [m.strip() for m in args.freeze_modules.split(",") if m.strip()],
         "adapter_size": args.adapter_size, "num_virtual_tokens": args.num_virtual_tokens,
         "grad_checkpointing": args.grad_checkpointing, "attn": args.attn, "grad_accum": args.grad_accum,
         "padding_mask": getattr(args, "padding_mask", False), "num_gpus": args.num_gpus, "zero": args.zero,
         "fsdp": args.fsdp, "offload": args.offload, "tp": args.tp, "device": args.device,
         "kbit_upcast": args.kbit_upcast, "stack": args.stack}
    return {k: v for k, v in d.items() if v is not None}


def gpu_adjusted(d: dict, gpu) -> dict:
    """The one place a GPU changes a configuration the user left open (``d`` is a from_dict dict).

    On a GPU without bf16 (pre-Ampere: T4, V100) the compute dtype defaults to fp16, and so do weights the
    user left at bf16; PyTorch's FlashAttention needs sm80+ as bf16 does, so SDPA there takes the math kernel
    (activations A3b). Values the user gave win. :func:`gpu_notes` says what this chose.
    """
    if gpu is None or gpu.bf16_supported:
        return d
    d = dict(d)
    if d.get("compute_dtype") is None:
        d["compute_dtype"] = "fp16"
        if d.get("precision") == "bf16" or (d.get("precision") is None and d.get("method") != "qlora"):
            d["precision"] = "fp16"
    if d.get("flash_attention") is None:
        d["flash_attention"] = False
    return d


def gpu_notes(cfg, gpu) -> list[str]:
    """What :func:`gpu_adjusted` chose, derived from the configuration and the GPU (so a plan read back with
    --from-json says the same)."""
    if gpu is None or gpu.bf16_supported:
        return []
    out = []
    if cfg.compute_dtype.value == "fp16":
        out.append(f"{gpu.name} has no bf16: compute dtype fp16")
    if not cfg.flash_attention:
        out.append(f"{gpu.name} has no FlashAttention (pre-Ampere): SDPA on a grouped-query model takes the math "
                   "kernel (activations A3b)")
    return out


def config_from_args(args: argparse.Namespace, *, gpu=None):
    """Build the PlanConfig the flags describe (bad values raise QuantlabError with one line); the resolved
    model is left on ``args._resolved`` and the GPU's choices on ``args._auto_notes``."""
    from quantlab.profiles import load_model
    from quantlab.specs import PlanConfig

    resolved = load_model(args.model)
    args._resolved = resolved
    cfg = PlanConfig.from_dict(gpu_adjusted(config_dict(args), gpu), model=resolved.spec)
    args._auto_notes = gpu_notes(cfg, gpu)
    return cfg


def resolve_gpu(name: str | None):
    """(GPUSpec or None, message) for --gpu NAME|auto."""
    if not name:
        return None, None
    if name == "auto":
        from quantlab.hardware import resolve_auto

        spec, _, msg = resolve_auto()
        return spec, msg
    from quantlab.profiles import load_gpu

    return load_gpu(name), None


def register(sub) -> None:
    p = sub.add_parser(
        "plan", help="memory per component for inference or fine-tuning, and whether it fits a GPU",
        description="Plan the GPU memory of one configuration, per component (weights with their quantization "
                    "constants, KV cache, activations, logits and loss buffers, gradients, optimizer states, CUDA "
                    "context, allocator reserve), as peak allocated, peak reserved and process totals; with --gpu, "
                    "the fit verdict, the largest batch and sequence that fit, and what would make it fit.",
        epilog="Examples:\n  quantlab plan --model 13b --method qlora --gpu rtx-4090\n"
               "  quantlab plan --model 8b --method lora --batch 4 --seq 4096 --grad-checkpointing --gpu a100-80gb\n"
               "  quantlab plan --model 70b --method full --num-gpus 8 --zero 3 --gpu h100 --emit deepspeed\n"
               "Memory is shown in GiB (2^30 bytes); --format json gives integer bytes.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--gpu", default=None, metavar="NAME|auto",
                   help="check the fit on this GPU (profile name or alias), or 'auto' to detect the local one")
    o.add_argument("--format", choices=FORMATS, default="table", help="table (rich), json (one document), csv (one row)")
    try:
        from quantlab.emit import add_emit_argument

        add_emit_argument(p)
    except ImportError:  # pragma: no cover
        pass
    p.set_defaults(func=run)


def plan_document(args, cfg, p, f, gpu_msg) -> dict:
    doc = p.to_dict()
    doc["model"] = args._resolved.name
    doc["model_resolution"] = args._resolved.resolved_from
    doc["notes"] = list(getattr(args, "_auto_notes", [])) + doc["notes"]
    if gpu_msg:
        doc["gpu_detection"] = gpu_msg
    if f is not None:
        doc.update(f.to_dict())
    return doc


def run(args) -> int:
    from quantlab.planner import fit, plan

    gpu, gpu_msg = resolve_gpu(args.gpu)
    cfg = config_from_args(args, gpu=gpu)
    p = plan(cfg)
    f = fit(cfg, gpu) if gpu is not None else None
    doc = plan_document(args, cfg, p, f, gpu_msg)
    if args.format == "json":
        json.dump(doc, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        row = {k: v for k, v in doc.items() if not isinstance(v, (dict, list))}
        row.update({f"{k}_bytes": v for k, v in doc["components"].items()})
        w = csv.DictWriter(sys.stdout, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    else:
        render_table(doc, p, f)
    if getattr(args, "emit", None):
        from quantlab.emit import emit

        for path in emit(cfg, args.emit, args.emit_dir):
            print(f"wrote {path}", file=sys.stderr)
        from quantlab.emit import ACCELERATE_YAML, launch_command

        print(f"launch with: {launch_command(Path(args.emit_dir) / ACCELERATE_YAML, 'your_train.py')}", file=sys.stderr)
    return 0


def render_table(doc: dict, p, f) -> None:
    from rich.table import Table

    from quantlab.units import console, fmt_bytes, fmt_count

    con = console()
    c = p.config
    what = c.method.value + ("" if not c.method.is_training else f" ({c.training_precision.value}, {c.optimizer.value})")
    con.print(f"[bold]{doc['model_resolution']}[/]: {fmt_count(p.params)} parameters"
              + (f", {fmt_count(p.trainable_params)} trainable" if c.method.is_training else "")
              + (f", {fmt_count(p.active_params)} active per token" if p.active_params != p.params else ""))
    con.print(f"{what}; weights {c.precision.value}{' + double quant' if c.double_quant else ''}, compute "
              f"{c.compute_dtype.value}; batch {c.batch} x seq {c.seq}; {c.attn.value}"
              + ("; gradient checkpointing" if c.grad_checkpointing else "")
              + (f"; {c.num_gpus} GPUs" + (f", ZeRO-{c.zero}" if c.zero else "") + (f", FSDP {c.fsdp}" if c.fsdp else "")
                 + (f", TP {c.tp}" if c.tp > 1 else "") if c.num_gpus > 1 else "")
              + ("" if c.device.value == "cuda" else "; CPU (no CUDA context or reserve)"))
    t = Table(title="Memory per GPU (GiB = 2^30 bytes)")
    t.add_column("component")
    t.add_column("GiB", justify="right")
    t.add_column("bytes", justify="right")
    t.add_column("share", justify="right")
    total = max(p.process_bytes, 1)
    for name, v in doc["components"].items():
        if v:
            t.add_row(name, fmt_bytes(v).split()[0], f"{v:,}", f"{100 * v / total:.1f}%")
    t.add_section()
    for label, v in (("peak allocated", p.peak_allocated_bytes), ("peak reserved", p.peak_reserved_bytes),
                     ("process (what nvidia-smi shows)", p.process_bytes)):
        t.add_row(f"[bold]{label}[/]", f"[bold]{fmt_bytes(v).split()[0]}[/]", f"{v:,}", "")
    con.print(t)
    if doc.get("gpu_detection"):
        con.print(doc["gpu_detection"])
    if f is not None:
        g = f.gpu
        if f.fits:
            con.print(f"[green bold]FITS[/] on {g.name} ({fmt_bytes(g.memory_bytes)}): margin {fmt_bytes(f.margin_bytes)}")
        else:
            con.print(f"[red bold]DOES NOT FIT[/] on {g.name} ({fmt_bytes(g.memory_bytes)}): short by "
                      f"{fmt_bytes(-f.margin_bytes)}")
        con.print(f"largest batch that fits: {f.max_batch or 'none'} (at seq {c.seq}); longest sequence: "
                  f"{f.max_seq or 'none'} (at batch {c.batch}); fewest {g.name}: "
                  + (f"{f.min_gpus} ({f.min_gpus_sharding})" if f.min_gpus else
                     "no count up to 512 helps (sharding does not shrink per-GPU activations)"))
        if f.suggestions:
            con.print("single changes that make it fit:")
            for text, b in f.suggestions:
                con.print(f"  - {text}: {fmt_bytes(b)}")
    for n in doc["notes"]:
        con.print(f"[dim]note: {n}[/]")
