"""Fine-tunes, measured: every method is a frozen config plus a registered model builder, and all go through
:func:`run_finetune` (one training loop, one evaluation, one measurement).

Methods: ``full``; ``freeze`` (the last k blocks, or named modules, train); ``lora``; ``qlora`` (bitsandbytes NF4
base, optional double quantization, PEFT ``prepare_model_for_kbit_training``, LoRA adapters); ``prefix`` and
``prompt`` (PEFT prefix / prompt tuning); ``qat`` (full fine-tune with torchao fake quantization of the linears,
then converted, compared with PTQ of a plain fine-tune at the same bit width: see :mod:`quantlab.lab.qat`).

Training precision: ``fp32``; ``bf16`` (pure: weights, grads and states in bf16); ``amp-bf16`` / ``amp-fp16``
(fp32 master weights, autocast; fp16 with gradient scaling). BF16/FP16 matmuls are emulated on many CPUs: the
embedded model trains in fp32 here, and the other paths are exercised on tiny models in the tests.

Assumptions:

1. The loss is the token-weighted mean cross-entropy of next-token prediction; prompt tokens carry
   ``prompt_loss_weight`` (see :mod:`quantlab.lab.data`).
2. Batches are drawn in a seeded order that depends only on the step number, so a run resumed from a checkpoint
   sees the same batches and reaches the same losses as an uninterrupted one.
3. Memory per component is measured on one training step (the second, after the optimizer states exist):
   parameter bytes (base and trainable), gradient bytes, optimizer-state bytes, bytes saved for backward
   (:mod:`quantlab.lab.saved_tensors`), and the process RSS peak over the run; on a GPU also the CUDA allocator.
4. Task quality: greedy decoding of the test prompts (left-padded batches); exact match compares the parsed JSON
   object with the reference (text that does not parse is wrong; plain string equality for non-JSON tasks); token
   F1 over alphanumeric tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantlab.errors import QuantlabError
from quantlab.lab import measure
from quantlab.lab.model import load_model, load_tokenizer, resolve

TASKS = Path(__file__).resolve().parent.parent.parent / "tasks"
METHODS = ("full", "freeze", "lora", "qlora", "prefix", "prompt", "qat")
PRECISIONS = ("fp32", "bf16", "amp-bf16", "amp-fp16")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = "qlora"
    model: str = "smollm2-135m"
    task: str | None = "json-extract"
    data: str | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")
    double_quant: bool = False
    freeze_last_layers: int = 2
    freeze_modules: tuple = ()
    num_virtual_tokens: int = 16
    qat_group_size: int = 32
    optimizer: str = "adamw"
    precision: str = "fp32"
    lr: float | None = None  # default per method
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 5
    batch: int = 8
    grad_accum: int = 1
    max_steps: int = 60
    max_len: int = 128
    grad_checkpointing: bool = False
    attn: str = "sdpa"
    eval_every: int = 20
    patience: int = 3
    prompt_loss_weight: float = 0.0
    seed: int = 0
    eval_items: int = 40
    max_new_tokens: int = 32
    checkpoint_dir: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise QuantlabError(f"unknown method {self.method!r} (known: {', '.join(METHODS)})")
        if self.precision not in PRECISIONS:
            raise QuantlabError(f"unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")
        if self.optimizer not in OPTIMIZERS:
            raise QuantlabError(f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise QuantlabError("schedule must be cosine, linear or constant")
        for f in ("batch", "grad_accum", "max_steps", "max_len", "eval_every", "lora_r", "eval_items"):
            if getattr(self, f) <= 0:
                raise QuantlabError(f"{f.replace('_', '-')} must be positive")
        if (self.task is None) == (self.data is None):
            raise QuantlabError("give either --task or --data")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"full": 5e-5, "freeze": 1e-4, "qat": 5e-5, "prefix": 3e-3, "prompt": 3e-3}.get(self.method, 1e-3)

    @property
    def data_path(self) -> Path:
        if self.data:
            return Path(self.data)
        p = TASKS / str(self.task) / "data.jsonl"
        if not p.is_file():
            known = sorted(d.name for d in TASKS.iterdir() if (d / "data.jsonl").is_file()) if TASKS.is_dir() else []
            raise QuantlabError(f"unknown task {self.task!r} (known: {', '.join(known)})")
        return p


# ---- model builders --------------------------------------------------------------------------------------

Builder = Callable[[FinetuneConfig, object], object]
BUILDERS: dict[str, Builder] = {}


def register(name: str):
    def deco(fn):
        BUILDERS[name] = fn
        return fn
    return deco


def _dtype(cfg: FinetuneConfig):
    import torch

    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def _load_base(cfg: FinetuneConfig, src, **kw):
    return load_model(src, dtype=_dtype(cfg), attn_implementation=cfg.attn, progress=False, **kw)


@register("full")
def _full(cfg, src):
    m = _load_base(cfg, src)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


@register("qat")
def _qat(cfg, src):
    from quantlab.lab.qat import prepare_qat

    return prepare_qat(_full(cfg, src), cfg.qat_group_size)


@register("freeze")
def _freeze(cfg, src):
    m = _load_base(cfg, src)
    for p in m.parameters():
        p.requires_grad_(False)
    layers = m.model.layers
    if not 0 <= cfg.freeze_last_layers <= len(layers):
        raise QuantlabError(f"--freeze-last-layers must be in 0..{len(layers)}")
    for layer in list(layers)[len(layers) - cfg.freeze_last_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    mods = dict(m.named_modules())
    for name in cfg.freeze_modules:
        if name not in mods:
            raise QuantlabError(f"--freeze-modules: no module named {name!r}")
        for p in mods[name].parameters():
            p.requires_grad_(True)
    return m


def _lora_config(cfg):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")


@register("lora")
def _lora(cfg, src):
    from peft import get_peft_model

    return get_peft_model(_load_base(cfg, src), _lora_config(cfg))


@register("qlora")
def _qlora(cfg, src):
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    gpu = measure.cuda_available()
    compute = torch.bfloat16 if gpu else torch.float32  # fp32 compute on a CPU (bf16 is emulated there)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=cfg.double_quant,
                           bnb_4bit_compute_dtype=compute)
    m = load_model(src, dtype=compute, quantization_config=q, device_map="cuda" if gpu else "cpu",
                   attn_implementation=cfg.attn, progress=False)
    keep_training_layout(m)
    m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=cfg.grad_checkpointing)
    return get_peft_model(m, _lora_config(cfg))


@register("prefix")
def _prefix(cfg, src):
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(_load_base(cfg, src), PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                   num_virtual_tokens=cfg.num_virtual_tokens))


@register("prompt")
def _prompt(cfg, src):
    from peft import PromptTuningConfig, get_peft_model

    return get_peft_model(_load_base(cfg, src), PromptTuningConfig(task_type="CAUSAL_LM",
                                                                   num_virtual_tokens=cfg.num_virtual_tokens))


def build_model(cfg: FinetuneConfig, src):
    m = BUILDERS[cfg.method](cfg, src)
    if cfg.grad_checkpointing and cfg.method != "qlora":
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(m, "enable_input_require_grads"):
            m.enable_input_require_grads()
    return m


def make_optimizer(cfg: FinetuneConfig, params):
    import torch

    lr = cfg.learning_rate
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if cfg.optimizer in ("adamw-8bit", "paged-adamw"):
        try:
            import bitsandbytes as bnb

            cls = bnb.optim.AdamW8bit if cfg.optimizer == "adamw-8bit" else bnb.optim.PagedAdamW
            return cls(params, lr=lr)
        except Exception as e:  # bitsandbytes' optimizers need kernels this device may lack
            raise QuantlabError(f"{cfg.optimizer} is not available here ({str(e).splitlines()[0][:120]})") from e
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def make_schedule(cfg: FinetuneConfig, opt):
    import torch

    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return max(0.0, 1 - frac) if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


# ---- loss, batches, evaluation ---------------------------------------------------------------------------

def weighted_loss(model, ids, mask, w, amp=None):
    import torch
    import torch.nn.functional as F

    ctx = torch.autocast(device_type=ids.device.type, dtype=amp) if amp is not None else _null()
    with ctx:
        logits = model(input_ids=ids, attention_mask=mask).logits
    logits = logits[:, -ids.shape[1]:]  # prompt tuning prepends virtual tokens
    tgt, tw = ids[:, 1:], w[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    return (ce * tw.reshape(-1)).sum() / tw.sum().clamp(min=1e-6)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def batch_for(step: int, micro: int, train, cfg: FinetuneConfig):
    """Assumption 2: the batch of (step, micro) depends only on them and the seed."""
    per_epoch = max(1, len(train) // cfg.batch)
    k = step * cfg.grad_accum + micro
    epoch, pos = divmod(k, per_epoch)
    order = list(range(len(train)))
    random.Random(cfg.seed * 100003 + epoch).shuffle(order)
    return [train[i] for i in order[pos * cfg.batch:(pos + 1) * cfg.batch]]


def keep_training_layout(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns the layers changed.

    bitsandbytes 0.50 (``Linear4bit.forward``) repacks a 4-bit weight into an AVX512-BF16 inference layout the
    first time it runs in eval mode without gradients on such a CPU, and keeps that layout: training forwards
    after an evaluation then produced garbage here (a QLoRA run's loss jumped from 0.97 to 17 right after its
    first validation pass, with or without the library's inverse repacking). Turning the repacking off for a
    model that will train keeps the one training layout (evaluation is a little slower).
    """
    try:
        from bitsandbytes.nn.modules import Linear4bit
    except ImportError:
        return 0
    n = 0
    for mod in model.modules():
        if isinstance(mod, Linear4bit) and getattr(mod, "support_avx512bf16_for_cpu", False):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n


def val_loss(model, val, pad_id, cfg, amp=None) -> float:
    import torch

    from quantlab.lab.data import collate

    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val), cfg.batch):
            ids, mask, w = collate(val[i:i + cfg.batch], pad_id)
            dev = next(model.parameters()).device
            tot += float(weighted_loss(model, ids.to(dev), mask.to(dev), w.to(dev), amp)) * len(val[i:i + cfg.batch])
            n += len(val[i:i + cfg.batch])
    model.train()
    return tot / max(n, 1)


def _tokens(s: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", s.lower())


def token_f1(pred: str, ref: str) -> float:
    p, r = _tokens(pred), _tokens(ref)
    if not p or not r:
        return float(p == r)
    common = sum(min(p.count(t), r.count(t)) for t in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def exact_match(pred: str, ref: str) -> bool:
    try:
        want = json.loads(ref)
    except json.JSONDecodeError:
        return pred.strip() == ref.strip()
    m = re.search(r"\{.*?\}", pred, re.S)
    if not m:
        return False
    try:
        return json.loads(m.group(0)) == want
    except json.JSONDecodeError:
        return False


def generate_answers(model, tok, prompts: list[str], max_new_tokens: int, batch: int = 20) -> list[str]:
    import torch

    from quantlab.lab.data import render_prompt

    dev = next(model.parameters()).device
    side = tok.padding_side
    tok.padding_side = "left"
    out = []
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch):
                texts = [render_prompt(tok, p) for p in prompts[i:i + batch]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
        model.train()
    return out


def task_scores(model, tok, records, cfg: FinetuneConfig) -> dict:
    recs = records[:cfg.eval_items]
    answers = generate_answers(model, tok, [r.prompt for r in recs], cfg.max_new_tokens)
    em = sum(exact_match(a, r.response) for a, r in zip(answers, recs)) / len(recs)
    f1 = sum(token_f1(a, r.response) for a, r in zip(answers, recs)) / len(recs)
    return {"exact_match": em, "token_f1": f1, "items": len(recs), "sample": answers[0] if answers else ""}


# ---- checkpoints -----------------------------------------------------------------------------------------

def save_checkpoint(dirpath: Path, model, opt, sched, state: dict) -> None:
    """Trainable tensors as safetensors, optimizer/scheduler with torch.save, the rest as JSON (atomically)."""
    import os
    import tempfile

    import torch
    from safetensors.torch import save_file

    from quantlab.fileio import atomic_write_text

    dirpath.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    fd, tmp = tempfile.mkstemp(dir=dirpath, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, dirpath / "trainable.safetensors")
    fd, tmp = tempfile.mkstemp(dir=dirpath, suffix=".tmp")
    os.close(fd)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp)
    os.replace(tmp, dirpath / "optimizer.pt")
    atomic_write_text(dirpath / "state.json", json.dumps(state, indent=2))


def load_checkpoint(dirpath: Path, model, opt, sched) -> dict:
    import torch
    from safetensors.torch import load_file

    try:
        state = json.loads((dirpath / "state.json").read_text())
        tensors = load_file(dirpath / "trainable.safetensors")
        extra = torch.load(dirpath / "optimizer.pt", weights_only=True)
    except Exception as e:
        raise QuantlabError(f"cannot resume from {dirpath}: corrupt or incomplete checkpoint ({str(e)[:120]})") from e
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise QuantlabError(f"checkpoint {dirpath} does not match this model/method (e.g. {missing[0]})")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    return state


# ---- the run ---------------------------------------------------------------------------------------------

@dataclass
class Result:
    config: FinetuneConfig
    metrics: dict
    history: list  # (step, train_loss, val_loss or None)
    stopped_early: bool
    model: object = None
    tokenizer: object = None
    data: object = None


def run_finetune(cfg: FinetuneConfig, *, log=print, progress: bool = True, keep_model: bool = False,
                 interrupt_after: int | None = None, evaluate_before: bool = True) -> Result:
    """Train and evaluate one configuration. ``interrupt_after`` stops after that many steps (tests of resume)."""
    import torch

    from quantlab.lab.data import collate, prepare
    from quantlab.lab.progress import track
    from quantlab.lab.saved_tensors import count_saved, grad_bytes, optimizer_bytes

    torch.manual_seed(cfg.seed)
    src = resolve(cfg.model)
    tok = load_tokenizer(src, progress=progress)
    data = prepare(cfg.data_path, tok, cfg.max_len, cfg.prompt_loss_weight, cfg.seed)
    if len(data.train) < cfg.batch:
        raise QuantlabError(f"{len(data.train)} training records are fewer than one batch of {cfg.batch}")
    metrics: dict = {f"data_{k}": v for k, v in data.stats["train"].items()}
    metrics["data_exact_duplicates"], metrics["data_near_duplicates"] = data.dedupe.exact, data.dedupe.near
    with measure.track_rss() as rss:
        t0 = time.perf_counter()
        model = build_model(cfg, src)
        metrics["meas_load_s"] = time.perf_counter() - t0
        gpu = measure.cuda_available()
        if gpu and cfg.method != "qlora":
            model = model.to("cuda")
        dev = next(model.parameters()).device
        amp = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}.get(cfg.precision)
        scaler = torch.amp.GradScaler(dev.type) if cfg.precision == "amp-fp16" else None
        if evaluate_before:
            before = task_scores(model, tok, data.test_records, cfg)
            metrics["meas_exact_match_before"], metrics["meas_token_f1_before"] = before["exact_match"], before["token_f1"]
            log(f"before: exact match {before['exact_match']:.2f}, token F1 {before['token_f1']:.2f}; e.g. "
                f"{before['sample'][:80]!r}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise QuantlabError(f"method {cfg.method} left nothing to train")
        opt = make_optimizer(cfg, params)
        sched = make_schedule(cfg, opt)
        pad = tok.pad_token_id or 0
        start, best, bad_evals, history, stopped = 0, float("inf"), 0, [], False
        ckpt = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        if ckpt and (ckpt / "state.json").exists():
            st = load_checkpoint(ckpt, model, opt, sched)
            start, best, bad_evals, history = st["step"], st["best"], st["bad_evals"], [tuple(h) for h in st["history"]]
            log(f"resumed from {ckpt} at step {start}")
        model.train()
        step_times, tokens = [], 0
        steps = range(start, cfg.max_steps)
        for step in track(steps, f"{cfg.method} fine-tune", total=len(steps), enabled=progress):
            t = time.perf_counter()
            total = 0.0
            measure_this = step == start + 1 or (step == start and cfg.max_steps - start == 1)
            for micro in range(cfg.grad_accum):
                ids, mask, w = collate(batch_for(step, micro, data.train, cfg), pad)
                ids, mask, w = ids.to(dev), mask.to(dev), w.to(dev)
                tokens += int(mask.sum())
                if measure_this and micro == 0:
                    with count_saved(model) as saved:
                        loss = weighted_loss(model, ids, mask, w, amp)
                    metrics["meas_activation_bytes"] = saved.bytes
                else:
                    loss = weighted_loss(model, ids, mask, w, amp)
                loss = loss / cfg.grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                total += float(loss.detach())
            if measure_this:
                metrics["meas_gradient_bytes"] = grad_bytes(model)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            if measure_this:
                metrics["meas_optimizer_bytes"] = optimizer_bytes(opt)
            opt.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t)
            vl = None
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps:
                vl = val_loss(model, data.val, pad, cfg, amp)
                if vl < best - 1e-4:
                    best, bad_evals = vl, 0
                else:
                    bad_evals += 1
            history.append((step + 1, total, vl))
            if ckpt and vl is not None:
                save_checkpoint(ckpt, model, opt, sched, {"step": step + 1, "best": best, "bad_evals": bad_evals,
                                                          "history": history, "config": dataclasses.asdict(cfg)})
            if vl is not None and bad_evals >= cfg.patience:
                log(f"early stop at step {step + 1}: validation loss has not improved for {bad_evals} evaluations")
                stopped = True
                break
            if interrupt_after is not None and step + 1 - start >= interrupt_after:
                break
        metrics["meas_s_per_step"] = sorted(step_times)[len(step_times) // 2] if step_times else None
        metrics["meas_train_tok_per_s"] = tokens / sum(step_times) if step_times else None
        metrics["meas_steps"] = history[-1][0] if history else start
        tb = measure.model_bytes(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        from quantlab.lab.measure import tensor_bytes

        metrics["meas_trainable_params"] = sum(p.numel() for p in trainable)
        metrics["meas_params"] = tb.params
        metrics["meas_weight_bytes"] = tb.total
        metrics["meas_trainable_bytes"] = tensor_bytes(trainable).total
        metrics["weight_dtypes"] = ",".join(f"{k}:{v}" for k, v in sorted(tb.by_dtype.items()))
        if history:
            metrics["meas_final_train_loss"] = history[-1][1]
            vals = [h[2] for h in history if h[2] is not None]
            metrics["meas_final_val_loss"] = vals[-1] if vals else None
        if interrupt_after is None:
            after = task_scores(model, tok, data.test_records, cfg)
            metrics["meas_exact_match"], metrics["meas_token_f1"] = after["exact_match"], after["token_f1"]
            log(f"after: exact match {after['exact_match']:.2f}, token F1 {after['token_f1']:.2f}; e.g. "
                f"{after['sample'][:80]!r}")
    metrics["meas_peak_rss_bytes"] = rss.peak
    metrics["meas_rss_delta_bytes"] = rss.delta
    return Result(cfg, metrics, history, stopped, model if keep_model else None, tok if keep_model else None,
                  data if keep_model else None)


def loss_curve_png(history, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h[0] for h in history], [h[1] for h in history], label="train")
    v = [(h[0], h[2]) for h in history if h[2] is not None]
    if v:
        ax.plot([a for a, _ in v], [b for _, b in v], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
