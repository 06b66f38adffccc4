#!/usr/bin/env python
"""Build real DeepSpeed ZeRO engines on CPU processes (gloo, DeepSpeed's CPU accelerator) from the JSON quantlab
emits, run two training steps of a tiny random Llama, and record each engine's own tensors, per rank, beside the
planner's figures for the same plan (memory assumption 9a-9h, :func:`quantlab.planner.memory.deepspeed_buffers`).

    python scripts/ds_engine_buffers.py --world-size 1 --out reports/deepspeed-cpu/ws1.json
    python scripts/ds_engine_buffers.py --world-size 2 --out reports/deepspeed-cpu/ws2.json

What is read from the engine (bytes are numel x element size of distinct storages; dtypes as torch names):
``weights16`` the module's parameter storages after the step (stage 1-2: the flat 16-bit buffer, padding included;
stage 3: ``lp_param_buffer`` plus the persistent parameters' gathered data) and its buffers; ``masters``
``single_partition_of_fp32_groups`` / ``fp32_partitioned_groups_flat`` (0 where it is the 16-bit storage);
``gradients16`` ``grads_in_partition`` at the end of backward (stage 1-2) / ``grad_partitions_flat_buffer`` (stage 3);
``buckets`` the ipg bucket buffers at the end of backward plus the largest gradient seen waiting outside them
(``extra_large_param_to_reduce``, stage 1-2); ``optimizer`` the inner optimizer's state tensors; ``master_grad`` the
gradient the inner optimizer steps on; ``gathered`` (stage 3) the most non-persistent parameter data available at
once, sampled at every module's forward and backward hooks; ``step_peak`` the growth of live CPU tensor bytes over
``engine.step()`` at its peak (the allocator events ``torch.profiler`` records, :func:`quantlab.validate.cpu_peak`).
The first start builds DeepSpeed's shm comm op (~90 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY = dict(name="tiny-llama", model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, vocab_size=256, max_position_embeddings=128)
# pure bf16 and AMP full fine-tunes, and an AMP freeze plan (the last block trains, the rest is frozen)
CASES = [(stage, prec) for stage in (1, 2, 3) for prec in ("pure", "amp", "amp-freeze")]


def plan_config(stage: int, prec: str, world: int):
    from quantlab.specs import DeviceMode, Method, ModelSpec, PlanConfig, Precision, TrainingPrecision

    amp = prec.startswith("amp")
    freeze = dict(method=Method.FREEZE, freeze_last_layers=1) if prec.endswith("freeze") else dict(method=Method.FULL)
    # a CPU plan is one process: several ranks are planned as GPUs, their buffers with a CPU optimizer step
    return PlanConfig(model=ModelSpec(**TINY), **freeze, num_gpus=world, zero=stage, batch=1, seq=16,
                      device=DeviceMode.CPU if world == 1 else DeviceMode.CUDA,
                      precision=Precision.FP32 if amp else Precision.BF16,
                      training_precision=TrainingPrecision.AMP if amp else TrainingPrecision.PURE)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def _storages(tensors) -> dict:
    """{storage pointer: (bytes, dtype)} of distinct storages (a view counts its whole storage once)."""
    out = {}
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        s = t.untyped_storage()
        out[s.data_ptr()] = (s.nbytes(), str(t.dtype).replace("torch.", ""))
    return out


def _sum(st: dict) -> int:
    return sum(b for b, _ in st.values())


def _dtypes(st: dict) -> list:
    return sorted({d for _, d in st.values()})


def run_case(stage: int, prec: str, world: int) -> dict:
    import torch
    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantlab.emit import deepspeed_config
    from quantlab.validate import cpu_peak

    cfg = plan_config(stage, prec, world)
    torch.manual_seed(0)
    t = dict(TINY)
    for k in ("name", "model_type"):
        t.pop(k)
    model = LlamaForCausalLM(LlamaConfig(**t, tie_word_embeddings=False))
    doc = deepspeed_config(cfg)
    doc["steps_per_print"] = 10**9
    if cfg.method.value == "freeze":  # the last freeze_last_layers blocks train
        for block in model.model.layers[:-cfg.freeze_last_layers]:
            block.requires_grad_(False)
        model.model.embed_tokens.requires_grad_(False)
        model.model.norm.requires_grad_(False)
        model.lm_head.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    engine, optim, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=doc)
    seen: dict = {"gradients16": {}, "buckets": {}, "oversized": 0, "master_grad": {}, "gathered": 0}

    def at_epilogue(orig):
        def wrapped(*a, **k):
            if stage < 3:
                seen["gradients16"] = _storages([optim.grads_in_partition])
                seen["buckets"] = _storages([b for bucket in optim.ipg_buckets.values() for b in bucket.buffer])
            return orig(*a, **k)
        return wrapped

    optim.independent_gradient_partition_epilogue = at_epilogue(optim.independent_gradient_partition_epilogue)
    if stage < 3:
        orig_reduce = optim.reduce_independent_p_g_buckets_and_remove_grads

        def reduce(param, i):
            orig_reduce(param, i)
            for p in optim.extra_large_param_to_reduce.values():
                g = optim.get_gradient_for_reduction(p)
                seen["oversized"] = max(seen["oversized"], _nbytes(g) if g is not None else 0)

        optim.reduce_independent_p_g_buckets_and_remove_grads = reduce
    else:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        def sample(*_):
            if not seen.get("second"):
                return  # (the first step records the trace DeepSpeed prefetches by; the second one prefetches)
            live = [p.data for p in engine.module.parameters()
                    if p.ds_status == ZeroParamStatus.AVAILABLE and not p.ds_persist]
            seen["gathered"] = max(seen["gathered"], sum(_nbytes(d) for d in live))

        for mod in engine.module.modules():
            mod.register_forward_pre_hook(sample)
            mod.register_forward_hook(sample)
            mod.register_full_backward_pre_hook(sample)
            mod.register_full_backward_hook(sample)
        add = optim._DeepSpeedZeroOptimizer_Stage3__add_grad_to_ipg_bucket

        def add_to_bucket(param):
            add(param)
            for b in optim.ipg_buckets.values():
                own = b.buffer.untyped_storage().data_ptr()
                for q in b.params:
                    if q.grad is not None and q.grad.untyped_storage().data_ptr() != own:
                        seen["oversized"] = max(seen["oversized"], _nbytes(q.grad))

        optim._DeepSpeedZeroOptimizer_Stage3__add_grad_to_ipg_bucket = add_to_bucket
    inner = optim.optimizer
    orig_step = inner.step

    def step(*a, **k):
        if seen["second"]:
            seen["master_grad"].update(_storages([p.grad for g in inner.param_groups for p in g["params"]]))
        return orig_step(*a, **k)

    inner.step = step
    x = torch.randint(0, TINY["vocab_size"], (1, 16))
    for second in (False, True):  # two steps: the buffers after the second, the gathered peak during it
        seen["second"] = second
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        if not second:
            engine.step()
            continue
        with cpu_peak() as peak:  # the CPU allocator's events over the step (quantlab.validate, assumption 5)
            engine.step()
        seen["step_peak"] = peak.peak

    if stage < 3:
        weights = _storages([p.data for p in engine.module.parameters()] + list(engine.module.buffers()))
        masters = _storages(optim.single_partition_of_fp32_groups)
        grads16 = seen["gradients16"]
    else:
        weights = _storages([optim.lp_param_buffer] + [p.data for p in engine.module.parameters() if p.ds_persist]
                            + [p.ds_tensor for p in engine.module.parameters()] + list(engine.module.buffers()))
        masters = {k: v for k, v in _storages(optim.fp32_partitioned_groups_flat).items() if k not in weights}
        grads16 = _storages([optim.grad_partitions_flat_buffer])
        seen["buckets"] = _storages([b.buffer for b in optim.ipg_buckets.values()])  # (kept for life)
    states = _storages([v for s in inner.state.values() for v in s.values() if torch.is_tensor(v)])
    rec = {"stage": stage, "precision": prec, "world_size": world, "rank": int(os.environ.get("RANK", 0)),
           "optimizer_class": type(optim).__name__,
           "weights16_bytes": _sum(weights), "weights16_dtypes": _dtypes(weights),
           "masters_bytes": _sum(masters), "masters_dtypes": _dtypes(masters),
           "gradients16_bytes": _sum(grads16), "gradients16_dtypes": _dtypes(grads16),
           "buckets_bytes": _sum(seen["buckets"]) + seen["oversized"], "buckets_dtypes": _dtypes(seen["buckets"]),
           "optimizer_bytes": _sum(states), "optimizer_dtypes": _dtypes(states),
           "master_grad_bytes": _sum(seen["master_grad"]), "master_grad_dtypes": _dtypes(seen["master_grad"]),
           "gathered_bytes": seen["gathered"] if stage == 3 else None,
           "step_peak_bytes": seen["step_peak"], "loss": float(loss)}
    engine.destroy()
    return rec


def planned(stage: int, prec: str, world: int) -> dict:
    from quantlab.planner import plan
    from quantlab.planner.memory import deepspeed_buffers

    cfg = plan_config(stage, prec, world)
    ds = deepspeed_buffers(cfg, cpu=True)  # the engines run on CPU processes
    p = plan(cfg)
    mdt = "bfloat16" if ds.master_bytes == 2 else "float32"
    return {"stage": stage, "precision": prec, "world_size": world,
            "weights16_bytes": ds.weights16 + ds.padding, "masters_bytes": ds.masters, "master_dtype": mdt,
            "gradients16_bytes": ds.gradients16, "buckets_bytes": ds.buckets,
            "optimizer_bytes": ds.optimizer,
            "gathered_bytes": ds.gathered if stage == 3 else None, "step_transient_bytes": ds.step_transient,
            "plan_components": dict(p.components), "plan_peak_allocated_bytes": p.peak_allocated_bytes}


FIELDS = ("weights16", "masters", "gradients16", "buckets", "optimizer", "gathered", "master_grad", "step")


def markdown(doc: dict) -> str:
    """One row per (stage, precision, rank): measured / planned bytes of each buffer."""
    plans = {(p["stage"], p["precision"]): p for p in doc["planned"]}
    plan_key = {"master_grad": "masters", "step": "step_transient", "gathered": "gathered"}
    meas_key = {"step": "step_peak"}
    lines = ["# DeepSpeed ZeRO engines on CPU processes vs the plan's DeepSpeed buffers", "",
             f"Command: `{doc['command']}` (DeepSpeed 0.19.8, torch 2.13 CPU build, gloo, DS_ACCELERATOR=cpu, "
             "measured on a 2-core CPU machine without a GPU; a tiny random "
             "Llama, h=64, 2 layers, vocab 256, 106,816 parameters; two steps of batch 1 x 16 tokens).", "",
             "Each cell: measured / planned bytes. Measured from the engine's own tensors (distinct storages; "
             "gradients16 at the end of backward, master_grad at the inner optimizer's step, step = the CPU "
             "allocator's peak over `engine.step()` above its start, gathered = the most non-persistent parameter "
             "data gathered at once during the second step). Planned: `deepspeed_buffers()` (memory assumption "
             "9a-9h); gradients16 is planned for the worst rank, gathered is the plan's bound (two blocks).", "",
             "| stage | precision | rank | " + " | ".join(FIELDS) + " |",
             "|" + "---|" * (3 + len(FIELDS))]
    for m in doc["measured"]:
        p = plans[(m["stage"], m["precision"])]
        cells = []
        for f in FIELDS:
            mv, pv = m.get(meas_key.get(f, f) + "_bytes"), p.get(plan_key.get(f, f) + "_bytes")
            cells.append("-" if mv is None else f"{mv:,} / {pv:,}")
        lines.append(f"| {m['stage']} | {m['precision']} | {m['rank']}/{m['world_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_SIZE=str(world))
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    recs = [run_case(s, p, world) for s, p in CASES]
    Path(out).write_text(json.dumps(recs))
    # Tear the gloo group down before the interpreter exits: left to process exit, its threads can be destroyed
    # while joinable ("terminate called without an active exception", a rank exiting -6 after its work was done,
    # seen once in a fresh-clone CI run).
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--port", type=int, default=29631)
    ap.add_argument("--out", default=None, help="write {command, measured, planned} here as JSON")
    ap.add_argument("--md", default=None, help="also write the comparison as a markdown table here")
    args = ap.parse_args(argv)
    os.environ["DS_ACCELERATOR"] = "cpu"
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        files = [str(Path(tmp) / f"rank{r}.json") for r in range(args.world_size)]
        if args.world_size == 1:
            _rank_main(0, 1, args.port, files[0])
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_rank_main, args=(r, args.world_size, args.port, files[r]))
                     for r in range(args.world_size)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            if any(p.exitcode for p in procs):
                print(f"a rank failed: exit codes {[p.exitcode for p in procs]}", file=sys.stderr)
                return 1
        measured = [r for f in files for r in json.loads(Path(f).read_text())]
    doc = {"command": "python scripts/ds_engine_buffers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "measured": measured, "planned": [planned(s, p, args.world_size) for s, p in CASES]}
    text = json.dumps(doc, indent=2) + "\n"
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(markdown(doc))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
