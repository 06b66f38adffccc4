"""Serving flags and the ``--method inference`` plan: :func:`add_serving_arguments` and :func:`run`.

``quantlab plan`` dispatches ``--method inference`` here (see the report for the few lines in
``commands/plan.py``); until then ``python -m quantlab.commands.serve_flags`` takes the same flags
(``--model``, every PlanConfig flag, ``--gpu``, ``--format`` and the serving flags below).

The serving defaults are read from :class:`quantlab.planner.serving.ServeConfig` (a default exists once) and
every help text ends with its default. Bad input is one line on stderr and exit 2 (a SpecError).
"""

from __future__ import annotations

import argparse
import io
import json
import sys

from quantlab.errors import QuantlabError

FORMATS = ("table", "json", "csv")
SERVE_GIVEN = "_serve_flags_given"




# flag -> (dest, type or action, help without its default)
def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """The serving flags, in their own group; defaults from ServeConfig (``new_tokens``/``prompt_tokens`` resolve
    from ``--seq``: see :func:`quantlab.planner.serving.serve_config`)."""
    # (the defaults as plain data: importing quantlab.planner.serving would cost every 'quantlab plan' ~15 ms)
    from quantlab.planner.serve_defaults import CACHES, DEFAULT_NEW_TOKENS, DEFAULTS as d, ENGINES, MODES

    g = parser.add_argument_group("serving (--method inference)")
    g.add_argument("--mode", choices=MODES, default=None,
                   help="generate: prefill with logits_to_keep=1 then decode --new-tokens; score: one forward with "
                        "every token's logits (perplexity, reward); prefill: the prefill alone (default: "
                        f"{d['mode']})")
    g.add_argument("--prompt-tokens", type=int, default=None, metavar="N",
                   help="prompt length (default: --seq less --new-tokens; --seq is the whole context)")
    g.add_argument("--new-tokens", type=int, default=None, metavar="N",
                   help=f"tokens generated per sequence (default: {DEFAULT_NEW_TOKENS} in generate mode)")
    g.add_argument("--concurrency", type=int, default=None, metavar="C",
                   help="sequences served at once (default: --batch, 1)")
    g.add_argument("--engine", choices=ENGINES, default=None,
                   help="transformers (HF generate) or vllm (paged KV pool, continuous batching) (default: "
                        f"{d['engine']})")
    g.add_argument("--cache", choices=CACHES, default=None,
                   help="transformers cache: dynamic grows per step; static allocates prompt+new up front; "
                        "quantized stores int4/int2 with a full-precision residual window (default: "
                        f"{d['cache']})")
    g.add_argument("--kv-bits", type=int, choices=(2, 4), default=None,
                   help=f"--cache quantized: bits per cached value (default: {d['kv_bits']})")
    g.add_argument("--residual-length", type=int, default=None, metavar="N",
                   help=f"--cache quantized: recent positions kept in full precision (default: {d['residual_length']})")
    g.add_argument("--greedy", action="store_true", default=None,
                   help="greedy decoding: no softmax over the vocabulary per step (default: sampling)")
    g.add_argument("--block-size", type=int, default=None, metavar="N",
                   help=f"vllm: tokens per KV block (default: {d['block_size']})")
    g.add_argument("--gpu-memory-utilization", type=float, default=None, metavar="X",
                   help="vllm: fraction of GPU memory vLLM budgets; the KV pool takes what the weights and the "
                        f"profile run leave (default: {d['gpu_memory_utilization']})")
    g.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="vllm: longest request (default: the model's context, rope scaling applied)")
    g.add_argument("--max-num-batched-tokens", type=int, default=None, metavar="N",
                   help="vllm: tokens per scheduler step; sizes the profile run (default: vllm serve's: 8192 on "
                        ">= 70 GiB GPUs other than A100, else 2048)")
    g.add_argument("--max-num-seqs", type=int, default=None, metavar="N",
                   help="vllm: most sequences at once (default: 1024 on >= 70 GiB GPUs other than A100, else 256)")
    g.add_argument("--enforce-eager", action="store_true", default=None,
                   help="vllm: no CUDA graphs (saves their memory, slower decode) (default: off)")
    g.add_argument("--adapters", type=int, default=None, metavar="K",
                   help="LoRA adapters kept unmerged (PEFT: K adapters of --lora-r on --lora-targets, fp32; "
                        f"vllm: max_loras) (default: {d['adapters']})")
    g.add_argument("--merged", action="store_true", default=None,
                   help="the adapter is merged into the weights (no overhead) (default: off)")
    g.add_argument("--max-lora-rank", type=int, default=None, metavar="R",
                   help="vllm: LoRA rank slots (default: the smallest vLLM rank >= --lora-r)")
    g.add_argument("--max-cpu-loras", type=int, default=None, metavar="N",
                   help="vllm: adapters cached in CPU memory (default: --adapters)")
    g.add_argument("--replicas", type=int, default=None, metavar="R",
                   help="copies of the model over --num-gpus (each gets num-gpus/R GPUs) (default: 1: all GPUs "
                        "serve one copy, split by device_map=auto or --tp)")
    g.add_argument("--rope-scaling", default=None, metavar="TYPE:FACTOR",
                   help="plan beyond the trained context (linear, dynamic, yarn, llama3, longrope; e.g. yarn:4) "
                        "(default: the config's rope_scaling)")


SERVE_DESTS = ("mode", "prompt_tokens", "new_tokens", "concurrency", "engine", "cache", "kv_bits", "residual_length",
               "greedy", "block_size", "gpu_memory_utilization", "max_model_len", "max_num_batched_tokens",
               "max_num_seqs", "enforce_eager", "adapters", "merged", "max_lora_rank", "max_cpu_loras", "replicas",
               "rope_scaling")


def serving_given(args: argparse.Namespace) -> list[str]:
    """The serving flags the user gave."""
    return [d for d in SERVE_DESTS if getattr(args, d, None) is not None]


def rope_from(args: argparse.Namespace):
    """--rope-scaling, else the model config's rope_scaling (S9), else None."""
    from quantlab.planner.serving import RopeScaling

    if getattr(args, "rope_scaling", None):
        return RopeScaling.parse(args.rope_scaling)
    resolved = getattr(args, "_resolved", None)
    if resolved is None:
        return None
    try:
        from quantlab.profiles import hf_config_dict

        rope = hf_config_dict(resolved).get("rope_scaling")
    except (QuantlabError, AttributeError, KeyError, TypeError):
        return None
    return RopeScaling.from_config(rope) if isinstance(rope, dict) else None


def serve_config_from_args(args: argparse.Namespace, cfg):
    """The ServeConfig the flags describe, around the PlanConfig ``cfg`` already built from them."""
    from quantlab.commands.flags import given_fields

    values = {d: getattr(args, d, None) for d in SERVE_DESTS}
    values["rope_scaling"] = rope_from(args)
    return serve_config_from_values(cfg, values, given_fields(args))


_BOOLS = ("greedy", "enforce_eager", "merged")
_CHOICES = {"mode": "MODES", "engine": "ENGINES", "cache": "CACHES"}


def serving_values_from_mapping(entry: dict) -> tuple[dict, dict]:
    """Split a mapping keyed by flag names without the dashes (``new-tokens``) or by destinations (``new_tokens``),
    as a validation matrix entry is written, into (serving values by destination, the rest). A value of the wrong
    type is a one-line SpecError naming the key."""
    from quantlab.planner import serve_defaults as D
    from quantlab.specs import SpecError

    serve, rest = {}, {}
    for k, v in entry.items():
        d = str(k).replace("-", "_")
        if d not in SERVE_DESTS:
            rest[k] = v
            continue
        if d in _BOOLS:
            if not isinstance(v, bool):
                raise SpecError(f"{k} must be true or false, got {v!r}")
        elif d in _CHOICES:
            choices = getattr(D, _CHOICES[d])
            if v not in choices:
                raise SpecError(f"{k} must be one of {', '.join(choices)}, got {v!r}")
        elif d == "gpu_memory_utilization":
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise SpecError(f"{k} must be a number, got {v!r}")
        elif d == "rope_scaling":
            if not isinstance(v, str):
                raise SpecError(f"{k} takes TYPE:FACTOR (e.g. yarn:4), got {v!r}")
            from quantlab.planner.serving import RopeScaling

            v = RopeScaling.parse(v)
        elif not isinstance(v, int) or isinstance(v, bool):
            raise SpecError(f"{k} must be an integer, got {v!r}")
        serve[d] = v
    return serve, rest


def serve_config_from_values(cfg, values: dict, given: frozenset):
    """The ServeConfig of serving values by destination (:data:`SERVE_DESTS`; None or absent: not given; booleans:
    True when given; ``rope_scaling`` a RopeScaling or None) around the PlanConfig ``cfg``; ``given``: the
    PlanConfig fields given (``seq`` keeps its meaning as the whole context, ``batch`` is the concurrency)."""
    from quantlab.planner.serving import Cache, Engine, Mode, serve_config
    from quantlab.specs import SpecError

    v = {d: values.get(d) for d in SERVE_DESTS}
    if v["concurrency"] is not None and "batch" in given and v["concurrency"] != cfg.batch:
        raise SpecError(f"--concurrency {v['concurrency']} and --batch {cfg.batch} disagree (they are the same "
                        "thing here: give one)")
    kw = {}
    if v["mode"] is not None:
        kw["mode"] = Mode(v["mode"])
    if v["engine"] is not None:
        kw["engine"] = Engine(v["engine"])
    if v["cache"] is not None:
        kw["cache"] = Cache(v["cache"])
    if v["greedy"]:
        kw["do_sample"] = False
    if v["enforce_eager"]:
        kw["enforce_eager"] = True
    if v["merged"]:
        kw["merged"] = True
    for f in ("kv_bits", "residual_length", "block_size", "gpu_memory_utilization", "max_model_len",
              "max_num_batched_tokens", "max_num_seqs", "adapters", "max_lora_rank", "max_cpu_loras", "replicas"):
        if v[f] is not None:
            kw[f] = v[f]
    kw["rope_scaling"] = v["rope_scaling"]
    return serve_config(cfg, prompt_tokens=v["prompt_tokens"], new_tokens=v["new_tokens"], seq_given="seq" in given,
                        concurrency=v["concurrency"], **kw)


def run(args: argparse.Namespace) -> int:
    """``quantlab plan --method inference``: the serving plan, its fit on --gpu, the concurrency and context that
    fit, and the roofline beside them."""
    from quantlab.commands.plan import config_from_args, resolve_gpu
    from quantlab.fileio import write_stdout
    from quantlab.planner import serving as S

    if not args.model:
        raise QuantlabError("give --model NAME; see 'quantlab profiles'")
    if getattr(args, "emit", None):
        raise QuantlabError("--emit writes training launch configurations; this plan is for inference")
    gpu, gpu_msg = resolve_gpu(getattr(args, "gpu", None), args)
    cfg = config_from_args(args, gpu=gpu)
    s = serve_config_from_args(args, cfg)
    from quantlab.commands.plan import gpu_document

    return render(args, args._resolved.name, args._resolved.resolved_from, s, gpu, gpu_document(gpu, gpu_msg))


def run_from_document(args: argparse.Namespace, doc: dict, path: str) -> int:
    """``quantlab plan --from-json FILE`` for a serving document (``kind: serving``): the same configuration,
    model and GPU, planned again (the same document, byte for byte, from the same quantlab)."""
    from quantlab.commands.plan import gpu_from_document
    from quantlab.planner import serving as S

    if getattr(args, "emit", None):
        raise QuantlabError("--emit writes training launch configurations; this plan is for inference")
    try:
        s = S.ServeConfig.from_dict(doc.get("serve"))
    except QuantlabError as e:
        raise QuantlabError(f"--from-json {path}: {e}") from None
    name, resolution = doc.get("model"), doc.get("model_resolution")
    if not isinstance(name, str) or not isinstance(resolution, str):
        raise QuantlabError(f"--from-json {path}: model and model_resolution must be strings")
    gpu, gpu_doc = gpu_from_document(doc, path)
    return render(args, name, resolution, s, gpu, gpu_doc)


def render(args, name: str, resolution: str, s, gpu, gpu_doc: dict) -> int:
    from quantlab.commands.plan import gpu_notes
    from quantlab.fileio import write_stdout
    from quantlab.planner import serving as S

    p = S.serve_plan(s, gpu)
    doc = document(name, resolution, s, p, gpu, gpu_doc, gpu_notes(s.plan, gpu))
    fmt = getattr(args, "format", "table")
    if fmt == "json":
        text = json.dumps(doc, indent=2) + "\n"
    elif fmt == "csv":
        text = csv_text(doc)
    else:
        text = table_text(doc, s, p, gpu)
    write_stdout(text)
    return 0


def document(name: str, resolution: str, s, p, gpu, gpu_doc: dict, gpu_notes: list) -> dict:
    """The whole serving plan as one JSON document (integer bytes): what was asked (the serving configuration
    with its PlanConfig and model spec), the GPU as ``quantlab plan`` documents it (so --from-json re-creates it),
    the answer and the notes."""
    from quantlab import __version__
    from quantlab.planner import serving as S

    doc = {"schema": 1, "kind": "serving", "quantlab_version": __version__,
           "model": name, "model_resolution": resolution, **p.to_dict(), **gpu_doc,
           "fits": None, "margin_bytes": None, "max_concurrency": None,
           "max_prompt_tokens": None, "speed": None, "suggestions": []}
    doc["notes"] = list(gpu_notes) + doc["notes"]
    if gpu is not None:
        doc["fits"] = S.fits(p, gpu)
        doc["margin_bytes"] = gpu.memory_bytes - p.process_bytes
        doc["max_concurrency"] = S.max_concurrency(s, gpu)
        doc["max_prompt_tokens"] = S.max_prompt(s, gpu)
        if not doc["fits"]:
            doc["suggestions"] = [{"change": t, "process_bytes": b} for t, b in S.suggestions(s, gpu)]
        try:
            doc["speed"] = S.speed(s, gpu).to_dict()
        except ValueError as e:  # a GPU without a peak for this dtype
            doc["notes"].append(f"no roofline: {e}")
    return doc


def csv_text(doc: dict) -> str:
    row = {"model": doc["model"]}
    for k, v in doc["serve"].items():
        if k != "plan":
            row[k] = json.dumps(v) if isinstance(v, dict) else v
    row.update({k: doc[k] for k in ("gpu", "gpu_memory_bytes", "params")})
    row.update({f"{k}_bytes": v for k, v in doc["components"].items()})
    row.update({k: doc[k] for k in ("peak_allocated_bytes", "peak_reserved_bytes", "process_bytes", "fits",
                                    "margin_bytes", "max_concurrency", "max_prompt_tokens")})
    if doc["vllm"]:
        row.update({f"vllm_{k}": doc["vllm"][k] for k in ("num_blocks", "kv_tokens", "max_concurrency")})
    sp = doc["speed"] or {}
    for k in ("decode_tok_s_per_seq", "decode_tok_s", "prefill_tok_s", "prefill_s"):
        row[k] = sp.get(k)
    buf = io.StringIO()
    import csv

    w = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    w.writeheader()
    w.writerow(row)
    return buf.getvalue()


def _gib(b: int) -> str:
    from quantlab.units import fmt_bytes

    return fmt_bytes(b).split()[0]


def table_text(doc: dict, s, p, gpu) -> str:
    from rich.table import Table

    from quantlab.fileio import render_text
    from quantlab.planner import serving as S
    from quantlab.units import fmt_bytes, fmt_count

    c = s.plan
    out: list = [f"[bold]{doc['model_resolution']}[/]: {fmt_count(p.params)} parameters"]
    eng = s.engine.value + (f" ({s.cache.value} cache)" if s.engine is S.Engine.TRANSFORMERS else "")
    work = (f"prompt {s.prompt_tokens} + new {s.new_tokens}" if s.mode is S.Mode.GENERATE
            else f"{s.prompt_tokens} tokens")
    kv = (f"int{s.kv_bits} (residual {s.residual_length})" if s.cache is S.Cache.QUANTIZED
          else (c.kv_dtype or c.compute_dtype).value)
    out.append(f"{s.mode.value} on {eng}: {work} x {s.concurrency} sequence{'s' if s.concurrency > 1 else ''}; "
               f"weights {c.precision.value}, compute {c.compute_dtype.value}, KV {kv}"
               + (f"; TP {c.tp}" if c.tp > 1 else "")
               + (f"; split over {s.per_replica_gpus} GPUs" if s.split else "")
               + (f"; {s.replicas} replicas" if s.replicas > 1 else "")
               + (f"; {s.adapters} LoRA adapters (r {c.lora_r})" if s.adapters else "")
               + ("; CPU" if c.device.value == "cpu" else ""))
    if doc.get("gpu_detection"):
        out.append(f"[dim]{doc['gpu_detection']}[/]")
    t = Table(title="Memory per GPU (GiB = 2^30 bytes)", title_justify="left")
    t.add_column("component", overflow="fold")
    t.add_column("GiB", justify="right", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    total = max(p.process_bytes, 1)
    t.add_column("share", justify="right", no_wrap=True)
    for name, v in p.components.items():
        if v:
            t.add_row(name, _gib(v), f"{v:,}", f"{100 * v / total:.1f}%")
    t.add_section()
    if p.vllm is None:
        for label, v in (("peak allocated", p.peak_allocated_bytes), ("peak reserved", p.peak_reserved_bytes)):
            t.add_row(f"[bold]{label}[/]", f"[bold]{_gib(v)}[/]", f"{v:,}", "")
    t.add_row("[bold]process (nvidia-smi)[/]", f"[bold]{_gib(p.process_bytes)}[/]", f"{p.process_bytes:,}", "")
    out.append(t)
    if p.gpus:
        g = Table(title=f"Placement (device_map=\"auto\", S4), per GPU in GiB", title_justify="left")
        for h in ("GPU", "modules", "weights", "KV", "transient", "process"):
            g.add_column(h, justify="left" if h == "modules" else "right", overflow="fold")
        for r in p.gpus:
            g.add_row(str(r.index), r.modules, _gib(r.weights), _gib(r.kv_cache), _gib(r.transient),
                      _gib(r.process_bytes))
        out.append(g)
    if p.vllm is not None:
        v = p.vllm
        out.append(f"vLLM budget {_gib(v.budget_bytes)} GiB ({s.gpu_memory_utilization:g} x "
                   f"{fmt_bytes((gpu.cuda_total_bytes or gpu.memory_bytes) if gpu else 80 * S.GiB)}"
                   + (" CUDA total" if gpu is not None and gpu.cuda_total_bytes else "") + f"): weights {_gib(v.weights_bytes)}"
                   + (f" + LoRA {_gib(v.lora_bytes)}" if v.lora_bytes else "")
                   + f" + profile peak {_gib(v.activation_peak_bytes)} (at {v.max_num_batched_tokens} tokens) + "
                   f"non-torch {_gib(v.non_torch_bytes)} + KV pool {_gib(v.kv_pool_bytes)} GiB")
        out.append(f"  # GPU blocks: {v.num_blocks:,} (block size {s.block_size}, "
                   f"{fmt_bytes(v.page_bytes, 'MiB')} per block over all layers)")
        out.append(f"  GPU KV cache size: {v.kv_tokens:,} tokens")
        out.append(f"  Maximum concurrency for {v.max_model_len:,} tokens per request: {v.max_concurrency:.2f}x "
                   f"(max_num_seqs {v.max_num_seqs})")
    if gpu is not None:
        fits = doc["fits"]
        margin = doc["margin_bytes"]
        if fits:
            out.append(f"[green bold]FITS[/] on {gpu.name} ({fmt_bytes(gpu.memory_bytes)}): margin "
                       f"{fmt_bytes(margin)}")
        else:
            why = (f"short by {fmt_bytes(-margin)}" if margin < 0 else
                   "accelerate would offload blocks to the CPU" if p.offloaded_blocks else
                   "the KV pool cannot hold the requested sequences")
            out.append(f"[red bold]DOES NOT FIT[/] on {gpu.name} ({fmt_bytes(gpu.memory_bytes)}): {why}")
        if doc["suggestions"]:
            out.append("single changes that make it fit:")
            for x in doc["suggestions"]:
                out.append(f"  - {x['change']}: {fmt_bytes(x['process_bytes'])} per GPU")
        mc, mp = doc["max_concurrency"], doc["max_prompt_tokens"]
        conc = (f"up to {mc:,} concurrent sequence{'s' if mc > 1 else ''} fit" if mc else
                "not one sequence fits")
        at_limit = mp and mp == S.prompt_limit(s) and s.engine is S.Engine.TRANSFORMERS
        prompt = (f"a prompt of up to {mp:,} tokens" + (f" (+ {s.new_tokens} new)" if s.new_tokens else "")
                  if mp else "no prompt fits")
        out.append(f"at a context of {s.context:,} tokens, {conc}; at concurrency {s.concurrency}, {prompt}"
                   + (", the model's whole context (S9, S10)" if at_limit else " (S10)"))
        sp = doc["speed"]
        if sp:
            u = s.plan
            util = sp["util"]
            out.append(f"Throughput (roofline at assumed {util['mbu']:.0%} of memory bandwidth, "
                       f"{util['prefill_mfu']:.0%} of peak FLOPs; not measured):")
            if s.mode is S.Mode.GENERATE:
                out.append(f"  decode: {sp['decode_tok_s_per_seq']:,.1f} tok/s per sequence, "
                           f"{sp['decode_tok_s']:,.0f} tok/s at concurrency {s.concurrency}"
                           + (f" ({sp['total_decode_tok_s']:,.0f} over {s.replicas} replicas)" if s.replicas > 1
                              else "") + f" ({sp['decode_bound']}-bound)")
            out.append(f"  prefill: {sp['prefill_tok_s']:,.0f} tok/s; time to first token "
                       f"{sp['prefill_s']:.2f} s" + (f"; one request {sp['request_s']:.1f} s"
                                                     if s.mode is S.Mode.GENERATE else ""))
            del u
    for n in doc["notes"]:
        out.append(f"[dim]note: {n}[/]")
    return render_text(*out)


# ---- a standalone entry point (the same flags as 'quantlab plan --method inference') ---------------------------

def build_parser() -> argparse.ArgumentParser:
    from quantlab.commands.flags import add_config_arguments

    p = argparse.ArgumentParser(prog="python -m quantlab.commands.serve_flags",
                                description="Serving plan (quantlab plan --method inference).")
    add_config_arguments(p, model_required=False)
    p.add_argument("--gpu", default=None, metavar="NAME|auto",
                   help="check the fit on this GPU (default: none, no fit)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    add_serving_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.method != "inference":
            raise QuantlabError(f"serving plans are for --method inference, not {args.method}")
        return run(args)
    except QuantlabError as e:
        print(f"quantlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
