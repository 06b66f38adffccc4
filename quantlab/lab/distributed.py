"""The lab's fine-tune across several processes under ``accelerate launch``, measured per process.

Two halves:

- the **worker** (``python -m quantlab.lab.distributed worker ...``, started by ``accelerate launch``
  once per process): builds the model with the lab's loader (the embedded SmolLM2, a local model,
  or a tiny random one for tests), applies the method (full fine-tune or LoRA through peft),
  shards it, trains a few steps, then counts its own bytes from its tensors (weights and buffers,
  gradients, optimizer states, each storage once; for a sharded parameter its local shard), reads
  its peak RSS, and writes one JSON file per rank;
- the **launcher** (:func:`launch`): writes the accelerate config for the plan with
  ``quantlab.emit`` (the same file ``quantlab plan --emit accelerate`` writes), runs
  ``accelerate launch --config_file ... -m quantlab.lab.distributed worker ...`` and collects the rank
  files. The lab measures only: :func:`quantlab.validate_lab.distributed_rows` sets each component beside
  the planner's per-GPU prediction for the same plan (``scripts/launch_ddp_cpu.py`` calls it).

Sharding on a CPU, and why it is done this way:

1. ``ddp``: accelerate's own data parallel. On a machine without GPUs, ``accelerate launch`` with a
   MULTI_GPU config starts the processes with torchrun and ``Accelerator(cpu=True)`` joins them in a
   gloo process group (``DistributedType.MULTI_CPU``); ``prepare`` wraps the model in
   ``DistributedDataParallel`` with its defaults. DDP then keeps its communication buckets beside
   the gradients (``gradient_as_bucket_view=False``, the planner's assumption 9); their sizes are
   read from DDP's own logging data (``_get_ddp_logging_data()['bucket_sizes']``), the one figure
   here not counted from tensors (the reducer does not expose its buckets).
2. ``fsdp``: accelerate enables FSDP only on accelerators (a FSDP config on a CPU silently falls
   back to DDP, checked with accelerate 1.15), so the worker applies PyTorch's FSDP2
   ``fully_shard`` itself, per decoder block and then the root: what accelerate's FSDP2 plugin
   calls on GPUs (``fsdp_version: 2``, full_shard). Parameters, gradients and optimizer states
   are then DTensor shards, 1/world of each (up to padding).
3. Every rank checks at the end that the replicas agree (DDP: identical parameters; FSDP: the
   shards reassemble); the rank files record it.
4. Peak RSS (``peak_rss_bytes``): the largest current RSS sampled over the worker's run, from building the model
   to the bytes counted after the last step, with the lab's instrument (``quantlab.lab.measure.track_rss``,
   its assumption 2), not ``getrusage().ru_maxrss`` (the peak over the whole process life).

Token ids are random (memory and the sharding do not depend on the text); each rank repeats its own
batch, so the recorded loss falls when the steps train.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from quantlab.errors import QuantlabError
from quantlab.specs import PlanConfig

SHARDINGS = ("ddp", "fsdp")
LR = 1e-3
LORA_TARGETS = next(f.default for f in dataclasses.fields(PlanConfig) if f.name == "lora_targets")  # the plan's
METHODS = ("full", "lora")


@dataclass(frozen=True)
class DistConfig:
    model: str = "tiny"  # "tiny" (random, tests), "smollm2-135m" (embedded) or a local path
    method: str = "full"
    sharding: str = "ddp"
    processes: int = 2
    batch: int = 2  # per process
    seq: int = 64
    steps: int = 2
    threads_per_process: int = 1
    seed: int = 0
    task: str | None = None  # a lab task (json-extract): the lab's fine-tune pieces on real data (not with "tiny")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantlabError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.sharding not in SHARDINGS:
            raise QuantlabError(f"sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")
        for f in ("processes", "batch", "seq", "steps", "threads_per_process"):
            if getattr(self, f) < 1:
                raise QuantlabError(f"{f} must be positive")
        if self.task and self.model == "tiny":
            raise QuantlabError("a task needs a real model with a tokenizer (e.g. smollm2-135m), not 'tiny'")


# ---- counting -------------------------------------------------------------------------------------

def _local(t):
    """A DTensor's local shard (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def storage_bytes(tensors) -> int:
    """Bytes of the storages behind ``tensors``, each storage once (tied weights), a DTensor by its local shard:
    the lab's instrument (``quantlab.lab.measure.tensor_bytes``) on the local tensors (it does not unwrap
    DTensors itself)."""
    from quantlab.lab.measure import tensor_bytes

    return tensor_bytes([_local(t) for t in tensors if t is not None]).total


def count_process_bytes(model, optimizer) -> dict:
    """This process's bytes by component, from its tensors (not from a formula)."""
    import torch

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {
        "weights_bytes": storage_bytes(params + list(model.buffers())),
        "trainable_weights_bytes": storage_bytes(trainable),
        "gradients_bytes": storage_bytes([p.grad for p in trainable]),
        "optimizer_bytes": storage_bytes(states),
        "params_local": sum(_local(p).numel() for p in params),
        "trainable_params_local": sum(_local(p).numel() for p in trainable),
    }


def ddp_bucket_bytes(model) -> int:
    """Bytes of DDP's gradient buckets as DDP reports them (0 when the model is not DDP-wrapped)."""
    if not hasattr(model, "_get_ddp_logging_data"):
        return 0
    sizes = str(model._get_ddp_logging_data().get("bucket_sizes", ""))
    return sum(int(x) for x in sizes.split(",") if x.strip())


# ---- worker -------------------------------------------------------------------------------------

def _build(cfg: DistConfig):
    import torch

    from quantlab.lab import model as lab_model

    if cfg.model == "tiny":
        m = lab_model.tiny_model("llama", seed=cfg.seed)
    else:
        m = lab_model.load_model(lab_model.resolve(cfg.model), dtype=torch.float32, progress=False)
    m.config.use_cache = False
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        from quantlab.specs import ModelSpec, PlanConfig

        d = PlanConfig.from_dict({}, model=ModelSpec.from_hf_config(m.config.to_dict()))  # the plan's LoRA defaults
        m = get_peft_model(m, LoraConfig(r=d.lora_r, lora_alpha=d.lora_alpha, target_modules=list(LORA_TARGETS),
                                         lora_dropout=0.0))
    return m


def _lab_finetune(cfg: DistConfig, rank: int, world: int):
    """The lab's fine-tune pieces (``quantlab.lab.finetune``): the method's registered model builder, the task's
    prepared data, its seeded batch order and its token-weighted loss. Rank r of w takes batch ``step·w + r`` of
    that order, so the ranks see disjoint batches and together the sequence one process would see."""
    from quantlab.lab import finetune as F
    from quantlab.lab.data import collate, prepare
    from quantlab.lab.model import load_tokenizer, resolve

    from quantlab.lab.finetune_plan import finetune_config

    # the plan of one rank's process (fp32 on the CPU: plan_config's precision), as lab finetune builds it
    ft = finetune_config(method=cfg.method, model=cfg.model, task=cfg.task, batch=cfg.batch, seq=cfg.seq,
                         precision="fp32", compute_dtype="fp32", lora_targets=LORA_TARGETS, seed=cfg.seed,
                         max_steps=cfg.steps, warmup_steps=1, device="cpu")
    src = resolve(cfg.model)
    model = F.build_model(ft, src)
    model.config.use_cache = False
    tok = load_tokenizer(src, progress=False)
    data = prepare(ft.data_path, tok, max_len=ft.max_len, seed=ft.seed, near_threshold=ft.near_threshold,
                   semantic_threshold=ft.semantic_threshold, val_ratio=ft.val_split, test_ratio=ft.test_split,
                   val_file=ft.val_path, test_file=ft.test_path)

    def batch_of(step):
        return collate(F.batch_for(step * world + rank, 0, data.train, ft), tok.pad_token_id)

    def loss_of(m, batch):
        return F.weighted_loss(m, *batch)

    return model, batch_of, loss_of, ft.learning_rate


def _decoder_layers(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def worker(cfg: DistConfig, out_dir: Path) -> dict:
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    from quantlab.lab.measure import track_rss

    torch.set_num_threads(cfg.threads_per_process)
    acc = Accelerator(cpu=True)
    torch.manual_seed(cfg.seed)  # same initial weights (LoRA init) on every rank
    with track_rss() as rss:  # note 4: build, train and count, the span peak_rss_bytes covers
        model, opt, losses, times = _train(cfg, acc)
        inner = model.module if hasattr(model, "module") else model
        counts = count_process_bytes(inner, opt)
        counts["ddp_buckets_bytes"] = ddp_bucket_bytes(model)
    in_sync = _replicas_agree(inner, acc.num_processes, cfg.sharding) if dist.is_initialized() else True
    rec = {"rank": acc.process_index, "world_size": acc.num_processes, "distributed_type": str(acc.distributed_type),
           "backend": dist.get_backend() if dist.is_initialized() else None, "config": asdict(cfg),
           **counts, "peak_rss_bytes": rss.peak, "losses": losses, "step_s": times,
           "replicas_agree": in_sync, "model_class": type(inner).__name__}
    from quantlab.fileio import atomic_write_text

    atomic_write_text(out_dir / f"rank{acc.process_index}.json", json.dumps(rec, indent=2) + "\n")
    acc.wait_for_everyone()
    acc.end_training()
    return rec


def _train(cfg: DistConfig, acc):
    """Build the model, shard it, train ``cfg.steps`` steps; (model, optimizer, losses, seconds per step)."""
    import torch

    if cfg.task:
        model, batch_of, loss_of, lr = _lab_finetune(cfg, acc.process_index, acc.num_processes)
    else:
        model = _build(cfg)
        lr = LR
        vocab = model.config.vocab_size
        gen = torch.Generator().manual_seed(cfg.seed + 1000 * (acc.process_index + 1))  # each rank its own data
        ids = torch.randint(0, vocab, (cfg.batch, cfg.seq), generator=gen)  # repeated each step: the loss falls

        def batch_of(step):
            return ids

        def loss_of(m, ids):
            return m(input_ids=ids, labels=ids).loss
    model.train()
    if cfg.sharding == "fsdp" and acc.num_processes > 1:  # FSDP2 by hand: accelerate has no CPU FSDP (note 2)
        from torch.distributed.fsdp import fully_shard

        for layer in _decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    if cfg.sharding == "ddp":
        model, opt = acc.prepare(model, opt)
    losses, times = [], []
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        loss = loss_of(model, batch_of(step))
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradient buffers: they are what is counted
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return model, opt, losses, times


def _replicas_agree(model, world: int, sharding: str) -> bool:
    """DDP: every rank holds the same parameters. FSDP: the shards of a parameter differ (each rank its slice)
    and gather into the full tensor (``full_tensor`` all-gathers them)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        if sharding == "fsdp":
            ok = all(tuple(p.full_tensor().shape) == tuple(p.shape) for p in model.parameters()
                     if hasattr(p, "full_tensor"))
            return bool(ok)
        vec = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        lo, hi = vec.clone(), vec.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(torch.equal(lo, hi))


# ---- launcher -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan_config(cfg: DistConfig, spec):
    """The PlanConfig whose per-GPU components the run is compared with (FP32, AdamW, one process per 'GPU')."""
    from quantlab.specs import PlanConfig

    return PlanConfig.from_dict(dict(method=cfg.method, precision="fp32", compute_dtype="fp32", batch=cfg.batch,
                                     seq=cfg.seq, num_gpus=cfg.processes, lora_targets=list(LORA_TARGETS),
                                     fsdp="full_shard" if cfg.sharding == "fsdp" else None), model=spec)


def model_spec(cfg: DistConfig):
    """The architecture the run uses, from its HF config (no weights loaded)."""
    from quantlab.lab import model as lab_model
    from quantlab.specs import ModelSpec

    if cfg.model == "tiny":
        hf = lab_model.tiny_config("llama")
        return ModelSpec.from_hf_config(hf.to_dict(), name="tiny-llama")
    src = lab_model.resolve(cfg.model)
    return ModelSpec.from_hf_config(lab_model.load_config(src, progress=False).to_dict(), name=src.name)


def launch(cfg: DistConfig, out_dir: str | Path, timeout_s: float = 900) -> list[dict]:
    """Run the worker under ``accelerate launch`` with ``cfg.processes`` CPU processes; return the rank records."""
    from quantlab.emit import ACCELERATE_YAML, emit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    spec = model_spec(cfg)
    pc = plan_config(cfg, spec)
    # The launch config is the one `quantlab plan --emit accelerate` writes for plain data parallel;
    # FSDP is applied inside the worker (see the module docstring), so both runs launch the same way.
    import dataclasses

    emit(dataclasses.replace(pc, fsdp=None), "accelerate", out / "launch")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(out / "launch" / ACCELERATE_YAML),
           "--main_process_port", str(_free_port()), "--num_cpu_threads_per_process", str(cfg.threads_per_process),
           "-m", "quantlab.lab.distributed", "worker", "--out", str(out)]
    for k, v in asdict(cfg).items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads_per_process), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    if cfg.processes == 1:  # accelerate's MULTI_GPU config needs > 1 process; one process runs plainly
        cmd = [sys.executable, "-m", "quantlab.lab.distributed", "worker", "--out", str(out)] + cmd[cmd.index("--model"):]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-12:]
        raise RuntimeError(f"accelerate launch failed (exit {r.returncode}): " + " | ".join(tail))
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    if len(recs) != cfg.processes:
        raise RuntimeError(f"expected {cfg.processes} rank files in {out}, found {len(recs)}")
    for rec in recs:
        rec["launch_wall_s"] = time.perf_counter() - t0
        rec["launch_command"] = " ".join(cmd[2:]).replace("accelerate.commands.launch", "accelerate launch", 1)
    return recs


COMPONENTS = ("weights", "gradients", "optimizer", "ddp_buckets")  # what each rank record counts (``<c>_bytes``)


def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantlab.lab.distributed")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="one process of the run (started by accelerate launch)")
    w.add_argument("--out", required=True)
    for f, default in asdict(DistConfig()).items():
        w.add_argument(f"--{f.replace('_', '-')}", type=str if default is None else type(default), default=default)
    args = ap.parse_args(argv)
    kw = {f: getattr(args, f) for f in asdict(DistConfig())}
    worker(DistConfig(**kw), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
