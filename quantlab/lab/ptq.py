"""Post-training quantization, measured: every method is a frozen config plus a registered loader, and all of
them go through :func:`run_ptq`, so each is loaded, measured and evaluated the same way.

Formats are named in the plan's vocabulary (``quantlab lab ptq --precisions fp32,bf16,int8,nf4,int4`` with
``--double-quant`` and ``--group-size``, as ``quantlab plan --precision`` / ``quantlab compare --precisions`` name
them: :func:`methods_for_precisions`), or by a method name (``--methods``, the registry below: each name is a
backend plus the PlanConfig fields of :meth:`PTQMethod.plan_dict`).

Methods (``quantlab lab ptq --methods ...``):

- casts: ``fp32``, ``fp16``, ``bf16`` (``torch_dtype`` at load);
- bitsandbytes: ``int8`` (LLM.int8), ``nf4``, ``nf4-dq`` (double quantization), ``fp4``; compute in fp32 on a
  CPU (``bnb_4bit_compute_dtype``), in bf16 on a GPU;
- ``gptq-int4``: transformers ``GPTQConfig`` on GPTQModel (4 bits, group size 64 by default), calibrated on
  ``texts/calibration.txt`` (a different text from the held-out one);
- torchao weight-only: ``torchao-int8`` (``Int8WeightOnlyConfig``), ``torchao-intx4``
  (``IntxWeightOnlyConfig``, int4 values in 32-weight groups; on a CPU torchao stores them unpacked in int8),
  ``torchao-int4`` (``Int4WeightOnlyConfig``: CUDA kernels only).

A method that cannot run on this device raises :class:`UnsupportedOnDevice`; the comparison prints that one
line and goes on with the others.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from dataclasses import dataclass
from typing import Callable

from quantlab.errors import QuantlabError, UnsupportedOnDevice
from quantlab.lab import measure, quality
from quantlab.lab.model import ModelSource, load_config, load_model, load_tokenizer, resolve

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(min(2, os.cpu_count() or 2)))


@dataclass(frozen=True)
class PTQMethod:
    name: str
    backend: str  # cast | bitsandbytes | gptq | torchao
    precision: str  # the planner's weight precision (fp32, fp16, bf16, int8, nf4, fp4, int4) or "intx4"
    double_quant: bool = False
    group_size: int = 64
    needs_cuda: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        from quantlab.specs import Precision

        if self.precision != "intx4" and self.precision not in {p.value for p in Precision}:
            raise QuantlabError(f"PTQ method {self.name}: precision {self.precision!r} is not a planner precision "
                                f"({', '.join(p.value for p in Precision)}) or intx4")

    def plan_dict(self) -> dict:
        """The :meth:`PlanConfig.from_dict` dict of this method: inference on one token of context, on the CPU,
        with these weights; casts compute in their own dtype, quantized weights compute in fp32 (as the lab
        loads them); ``group_size`` where the format has groups (int4). Only for a ``precision`` the planner
        names (not ``intx4``)."""
        d = dict(method="inference", precision=self.precision,
                 compute_dtype=self.precision if self.precision in ("fp16", "bf16") else "fp32",
                 double_quant=self.double_quant, seq=1, device="cpu")
        if self.precision == "int4":
            d["group_size"] = self.group_size
        return d


REGISTRY: dict[str, PTQMethod] = {m.name: m for m in (
    PTQMethod("fp32", "cast", "fp32", description="reference: fp32 weights and compute"),
    PTQMethod("fp16", "cast", "fp16", description="fp16 weights and compute"),
    PTQMethod("bf16", "cast", "bf16", description="bf16 weights and compute"),
    PTQMethod("int8", "bitsandbytes", "int8", description="LLM.int8: int8 weights, fp32 row scales, outliers in fp16"),
    PTQMethod("nf4", "bitsandbytes", "nf4", description="4-bit NormalFloat, fp32 absmax per 64 weights"),
    PTQMethod("nf4-dq", "bitsandbytes", "nf4", double_quant=True, description="NF4 with double quantization"),
    PTQMethod("fp4", "bitsandbytes", "fp4", description="4-bit float, fp32 absmax per 64 weights"),
    PTQMethod("fp4-dq", "bitsandbytes", "fp4", double_quant=True, description="FP4 with double quantization"),
    PTQMethod("gptq-int4", "gptq", "int4", group_size=64, description="GPTQ 4-bit, group 64, via GPTQModel"),
    PTQMethod("torchao-int8", "torchao", "int8", description="torchao int8 weight-only, per-row scales"),
    PTQMethod("torchao-intx4", "torchao", "intx4", group_size=32,
              description="torchao int4 weight-only (IntxWeightOnlyConfig, group 32; unpacked int8 storage on CPU)"),
    PTQMethod("torchao-int4", "torchao", "int4", group_size=64, needs_cuda=True,
              description="torchao Int4WeightOnlyConfig (tinygemm: CUDA only)"),
)}


def methods_for_precisions(names, *, double_quant: bool = False, group_size: int | None = None) -> list[PTQMethod]:
    """The PTQ method of each weight precision (PlanConfig ``Precision`` values, as ``quantlab plan --precision``
    and ``quantlab compare --precisions`` take them), on the backend that stores that format the way the planner
    models it: fp32/fp16/bf16 a cast; int8 bitsandbytes LLM.int8; nf4/fp4 bitsandbytes (``double_quant``: the
    absmax constants quantized too); int4 GPTQ with ``group_size`` (None: PlanConfig's default, 128). fp8 has no
    loader here (a one-line error). ``double_quant`` / ``group_size`` applying to none of ``names`` is an error, as
    a flag the plan ignores is (``quantlab.commands.flags.check_given``)."""
    from quantlab.specs import PlanConfig

    names = list(names)
    if group_size is not None and "int4" not in names:
        raise QuantlabError("--group-size applies to int4 weights; --precisions names none")
    if group_size is None:
        group_size = next(f.default for f in dataclasses.fields(PlanConfig) if f.name == "group_size")
    if double_quant and not {"nf4", "fp4"} & set(names):
        raise QuantlabError("--double-quant applies to nf4/fp4 weights; --precisions names neither")
    out = []
    for n in names:
        if n == "fp8":
            raise QuantlabError("the lab has no fp8 weight loader (torchao's float8 needs an sm89+ GPU); drop fp8")
        if n in ("nf4", "fp4"):
            out.append(REGISTRY[n + ("-dq" if double_quant else "")])
        elif n == "int4":
            out.append(REGISTRY["gptq-int4"] if group_size == REGISTRY["gptq-int4"].group_size else
                       PTQMethod(f"gptq-int4-g{group_size}", "gptq", "int4", group_size=group_size,
                                 description=f"GPTQ 4-bit, group {group_size}, via GPTQModel"))
        elif n in REGISTRY:
            out.append(REGISTRY[n])
        else:
            raise QuantlabError(f"unknown precision {n!r}")
    return out


def parse_methods(spec: str) -> list[PTQMethod]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise QuantlabError("--methods is empty")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise QuantlabError(f"unknown method {unknown[0]!r} (known: {', '.join(REGISTRY)})")
    return [REGISTRY[n] for n in names]


@dataclass(frozen=True)
class EvalSizes:
    """How much each figure measures. FP16/BF16 matmuls are emulated (slow) on many CPUs: a method whose compute
    dtype is measured to be slow here (:func:`slow_dtype`) gets ``half_tokens`` and a quarter of the cloze items;
    the report says how many tokens every figure used."""

    window: int = 512
    eval_tokens: int = 2048
    half_tokens: int = 512  # fp16/bf16 where measured slow on this CPU
    kl_windows: int = 2
    cloze_items: int = 40
    prompt_lengths: tuple = (64, 256)
    decode_tokens: int = 8
    repeat: int = 3
    calib_samples: int = 16
    calib_len: int = 128

    @classmethod
    def quick(cls) -> "EvalSizes":
        return cls(window=256, eval_tokens=1024, half_tokens=512, kl_windows=1, cloze_items=40, prompt_lengths=(64,),
                   decode_tokens=4, repeat=1, calib_samples=8, calib_len=128)


# ---- loaders ------------------------------------------------------------------------------------------

Loader = Callable[[PTQMethod, ModelSource, object, EvalSizes], object]
LOADERS: dict[str, Loader] = {}


def register(backend: str):
    def deco(fn: Loader) -> Loader:
        LOADERS[backend] = fn
        return fn
    return deco


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


@register("cast")
def _load_cast(m: PTQMethod, src: ModelSource, tok, sizes: EvalSizes):
    model = load_model(src, dtype=_torch_dtype(m.precision), progress=False)
    return model.to("cuda") if measure.cuda_available() else model


@register("bitsandbytes")
def _load_bnb(m: PTQMethod, src: ModelSource, tok, sizes: EvalSizes):
    import warnings

    import torch

    # LLM.int8 on a CPU casts fp32 inputs to fp16 on every call and logs it each time: once is enough
    warnings.filterwarnings("once", message="MatMul8bitLt: inputs will be cast")
    import logging

    class _Once(logging.Filter):
        seen: set = set()

        def filter(self, record):
            key = record.getMessage()
            if key in self.seen:
                return False
            self.seen.add(key)
            return True

    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_Once())
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UnsupportedOnDevice(f"{m.name} needs bitsandbytes (pip install bitsandbytes): {e}") from e

    gpu = measure.cuda_available()
    compute = torch.bfloat16 if gpu else torch.float32
    if m.precision == "int8":
        q = BitsAndBytesConfig(load_in_8bit=True)
    else:
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=m.precision,
                               bnb_4bit_use_double_quant=m.double_quant, bnb_4bit_compute_dtype=compute)
    try:
        return load_model(src, dtype=compute, quantization_config=q, device_map="cuda" if gpu else "cpu",
                          progress=False)
    except ImportError as e:  # transformers' bitsandbytes quantizer checks accelerate/bitsandbytes versions
        raise UnsupportedOnDevice(f"{m.name}: {str(e).splitlines()[0][:200]}") from e
    except QuantlabError as e:  # validate_bnb_backend_availability: no bitsandbytes backend for this device
        if "backend" in str(e).lower() or "bitsandbytes" in str(e).lower():
            raise UnsupportedOnDevice(f"{m.name}: bitsandbytes cannot run here ({e})") from e
        raise


_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
# Part of every stored row's configuration key: bump it when what a row measures changes, so a rerun does not
# reuse rows that lack (or measured differently) today's figures.
HARNESS_VERSION = 2


@register("gptq")
def _load_gptq(m: PTQMethod, src: ModelSource, tok, sizes: EvalSizes):
    import torch
    from transformers import GPTQConfig

    ids = tok(quality.read_text("calibration.txt"), add_special_tokens=False)["input_ids"]
    n = min(sizes.calib_samples, len(ids) // sizes.calib_len)
    samples = [tok.decode(ids[i * sizes.calib_len:(i + 1) * sizes.calib_len]) for i in range(n)]
    gpu = measure.cuda_available()
    extra = {}
    if load_config(src, progress=False).model_type in _LLAMA_LIKE:
        # GPTQ's usual sequential groups (as AutoGPTQ's llama definition): linears that read the same input share
        # one pass of the calibration samples through the block, 4 passes per block instead of 7 (+1 for the
        # outputs) with the same result order; the column-by-column quantization itself is unchanged
        extra["modules_in_block_to_quantize"] = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                                 ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"],
                                                 ["mlp.down_proj"]]
    q = GPTQConfig(bits=4, group_size=m.group_size, dataset=samples, tokenizer=tok, desc_act=False, **extra)
    import logging

    # optimum's GPTQ quantizer logs a line per linear (210 here) at INFO: our progress bar says enough
    logging.getLogger("optimum.gptq.quantizer").setLevel(logging.WARNING)
    try:
        return load_model(src, dtype=torch.float16 if gpu else torch.float32, quantization_config=q,
                          device_map="cuda" if gpu else "cpu", progress=False)
    except ImportError as e:
        raise UnsupportedOnDevice(f"gptq-int4 needs gptqmodel==7.6.0 ({e})") from e


@register("torchao")
def _load_torchao(m: PTQMethod, src: ModelSource, tok, sizes: EvalSizes):
    import torch

    gpu = measure.cuda_available()
    if m.needs_cuda and not gpu:
        raise UnsupportedOnDevice(f"{m.name} needs a CUDA GPU (torchao Int4WeightOnlyConfig has no CPU kernel); "
                                  "on a CPU use torchao-intx4")
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
    except ImportError as e:  # torchao absent, or a release that renamed these configs (pinned: torchao==0.18.0)
        raise UnsupportedOnDevice(f"{m.name} needs torchao==0.18.0 ({str(e).splitlines()[0][:160]})") from e

    model = load_model(src, dtype=torch.bfloat16 if gpu else torch.float32, progress=False)
    if gpu:
        model = model.to("cuda")
    cfg = {"int8": lambda: Int8WeightOnlyConfig(),
           "intx4": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(m.group_size)),
           "int4": lambda: Int4WeightOnlyConfig(group_size=m.group_size)}[m.precision]()
    try:
        # lm_head is tied to the embedding in small models: quantizing it would untie and duplicate it
        quantize_(model, cfg, filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "lm_head" not in fqn)
    except ImportError as e:
        raise UnsupportedOnDevice(f"{m.name}: torchao kernel unavailable here ({str(e).splitlines()[0]})") from e
    return model


def load_quantized(m: PTQMethod, src: ModelSource, tok, sizes: EvalSizes):
    if m.needs_cuda and not measure.cuda_available():
        raise UnsupportedOnDevice(f"{m.name} needs a CUDA GPU; skipped on this CPU")
    return LOADERS[m.backend](m, src, tok, sizes)


# ---- budgets ------------------------------------------------------------------------------------------

_SLOW: dict = {}


def slow_dtype(precision: str, threshold: float = 4.0) -> float:
    """How many times slower than fp32 a (256x576)@(576x1536) matmul runs in ``precision`` on this CPU, or 0.0
    when it is not ``threshold`` times slower (or on a GPU). Measured once per process (about 0.1 s): CPUs with
    AVX512-BF16/AMX run bf16 at fp32 speed or better, others emulate it, and fp16 is emulated on most."""
    if measure.cuda_available():
        return 0.0
    if precision not in _SLOW:
        import torch

        def t(dtype):
            a, b = torch.randn(256, 576).to(dtype), torch.randn(576, 1536).to(dtype)
            return measure.median_time(lambda: a @ b, warmup=1, repeat=3)

        ratio = t(_torch_dtype(precision)) / t(torch.float32)
        _SLOW[precision] = ratio if ratio >= threshold else 0.0
    return _SLOW[precision]


# ---- speed --------------------------------------------------------------------------------------------

def measure_speed(model, tok, sizes: EvalSizes) -> dict:
    import torch

    from quantlab.lab.model import cache_kwarg, output_cache

    dev = next(model.parameters()).device
    ids = tok(quality.read_text("heldout.txt")[-20000:], add_special_tokens=False)["input_ids"]
    out = {}
    with torch.inference_mode():
        for n in sizes.prompt_lengths:
            x = torch.tensor([ids[:n]], device=dev)
            t = measure.median_time(lambda: model(x, use_cache=True), warmup=1, repeat=sizes.repeat)
            out[f"meas_prefill_{n}_tok_per_s"] = n / t
            if n == sizes.prompt_lengths[0]:
                out["meas_ttft_s"] = t  # time to first token = one prefill of the prompt
        x = torch.tensor([ids[:sizes.prompt_lengths[0]]], device=dev)

        def decode():
            o = model(x, use_cache=True)
            past, nxt = output_cache(o), o.logits[:, -1:].argmax(-1)
            measure._sync()  # the prefill's queued GPU work is not decode time
            t0 = time.perf_counter()
            kw = cache_kwarg(model)
            for _ in range(sizes.decode_tokens):
                o = model(nxt, use_cache=True, **{kw: past})
                past, nxt = output_cache(o), o.logits[:, -1:].argmax(-1)
            measure._sync()
            return time.perf_counter() - t0

        decode()
        times = sorted(decode() for _ in range(sizes.repeat))
        out["meas_decode_tok_per_s"] = sizes.decode_tokens / times[len(times) // 2]
    return out


# ---- the comparison -----------------------------------------------------------------------------------

@dataclass
class Reference:
    logprobs: list
    weights: dict
    windows: list
    window_nll: tuple = ()  # the reference's summed NLL per window: its perplexity on any method's tokens


def _free(model) -> None:
    del model
    gc.collect()
    if measure.cuda_available():
        import torch

        torch.cuda.empty_cache()


def build_reference(src: ModelSource, tok, sizes: EvalSizes, log=print) -> Reference:
    import torch

    log("reference: fp32 logits and weights")
    model = load_model(src, dtype=torch.float32, progress=False)
    if measure.cuda_available():
        model = model.to("cuda")
    windows = quality.token_windows(tok, quality.read_text("heldout.txt"), sizes.window, sizes.eval_tokens)
    if not windows:
        raise QuantlabError("the held-out text is shorter than one evaluation window")
    score, kept = quality.score_text(model, windows, keep=sizes.kl_windows)
    ref = Reference(kept, quality.reference_linear_weights(model), windows, score.window_nll)
    _free(model)
    return ref


def run_method(m: PTQMethod, src: ModelSource, tok, ref: Reference, sizes: EvalSizes, log=print,
               predict=None) -> dict:
    """Load, measure and evaluate one method; the metrics of its stored row.

    The lab measures only. ``predict(m, src)``, when given, returns the ``pred_`` fields set beside the
    measurements in the same row (the command layer passes :func:`quantlab.validate_lab.ptq_predictions`, the
    planner's weights for the same configuration); without it the row has no ``pred_`` fields.

    Phases (each timed, ``meas_time_<phase>_s``): load/quantize; weight bytes and per-layer SQNR (before any
    forward pass: bitsandbytes' dequantize reads the stored layout, which bitsandbytes 0.50 repacks for
    inference at the first eval forward on AVX512-BF16 CPUs); perplexity/KL on the held-out windows; bytes held
    after evaluation; cloze accuracy; speed.
    """
    import torch

    gc.collect()
    t_method = time.perf_counter()
    with measure.measure_memory() as load_mem:
        t0 = time.perf_counter()
        model = load_quantized(m, src, tok, sizes)
        load_s = time.perf_counter() - t0
    model.eval()
    tb = measure.model_bytes(model)
    t0 = time.perf_counter()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if m.backend in ("bitsandbytes", "gptq") or m.precision == "intx4":
        dtype = torch.float32 if not measure.cuda_available() else dtype
    sq = quality.layer_sqnr(model, ref.weights, dtype)
    finite = [v for v in sq.values() if v != float("inf")]
    sq_route = ",".join(sorted({quality.weight_source(mod) for n, mod in model.named_modules() if n in sq})) or None
    sqnr_s = time.perf_counter() - t0
    half = m.precision in ("fp16", "bf16") and slow_dtype(m.precision)
    n_windows = max(1, (sizes.half_tokens if half else sizes.eval_tokens) // sizes.window)
    t0 = time.perf_counter()
    with measure.measure_memory() as eval_mem:
        score, _ = quality.score_text(model, ref.windows[:n_windows], reference=ref.logprobs)
    ppl_s = time.perf_counter() - t0
    ref_ppl = quality.TextScore.perplexity_of(ref.window_nll[:n_windows], sizes.window - 1) \
        if len(ref.window_nll) >= n_windows else None
    # the bytes held while serving can differ from those at rest (bitsandbytes' CPU inference packing keeps
    # 4-bit absmax in bf16 and undoes double quantization)
    tb_eval = measure.model_bytes(model)
    t0 = time.perf_counter()
    items = quality.load_cloze()[:max(1, sizes.cloze_items // 4) if half else sizes.cloze_items]
    acc = quality.cloze_accuracy(model, tok, items)
    cloze_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    speed = measure_speed(model, tok, sizes)
    speed_s = time.perf_counter() - t0
    from quantlab.report.env import loadavg_1m

    load_avg = loadavg_1m()  # right after the timings: was the machine shared?
    metrics = {
        "meas_load_s": load_s,
        "meas_weight_bytes": tb.total,
        "meas_quant_constant_bytes": tb.quant_constants,
        "meas_weight_after_eval_bytes": tb_eval.total,
        "meas_quant_constant_after_eval_bytes": tb_eval.quant_constants,
        "meas_footprint_bytes": int(model.get_memory_footprint()),
        "meas_load_rss_delta_bytes": load_mem.rss_delta_bytes,
        "meas_eval_rss_delta_bytes": eval_mem.rss_delta_bytes,
        "meas_peak_rss_bytes": max(load_mem.rss_peak_bytes, eval_mem.rss_peak_bytes),
        "meas_cuda_allocated_bytes": eval_mem.cuda_allocated_bytes,
        "meas_cuda_reserved_bytes": eval_mem.cuda_reserved_bytes,
        "meas_nvml_process_bytes": eval_mem.nvml_process_bytes,
        "meas_load_cuda_allocated_bytes": load_mem.cuda_allocated_bytes,
        "meas_perplexity": score.perplexity,
        "meas_ref_perplexity": ref_ppl,
        "meas_ppl_ratio": score.perplexity / ref_ppl if ref_ppl else None,
        "meas_ppl_tokens": score.tokens,
        "meas_kl_nats": score.kl,
        "meas_top1_agreement": score.top1_agreement,
        "meas_kl_tokens": score.kl_tokens,
        "meas_sqnr_mean_db": (sum(finite) / len(finite)) if finite else None,
        "meas_sqnr_min_db": min(finite) if finite else None,
        "meas_sqnr_layers": len(sq),
        "meas_cloze_accuracy": acc,
        "meas_cloze_items": len(items),
        "budget_note": (f"{m.precision} matmuls measured {slow_dtype(m.precision):.0f}x slower than fp32 on this CPU: "
                        f"{sizes.half_tokens} perplexity tokens, a quarter of the cloze items") if half else None,
        "weight_dtypes": ",".join(f"{k}:{v}" for k, v in sorted(tb.by_dtype.items())),
        "sqnr_route": sq_route,
        "meas_time_sqnr_s": sqnr_s,
        "meas_time_perplexity_s": ppl_s,
        "meas_time_cloze_s": cloze_s,
        "meas_time_speed_s": speed_s,
        "meas_loadavg_1m": load_avg,
    }
    metrics.update(speed)
    if predict is not None:
        metrics.update(predict(m, src))
    _free(model)
    metrics["meas_time_method_s"] = time.perf_counter() - t_method
    return metrics


def run_ptq(methods: list[PTQMethod], model: str | None = None, *, store=None, redo: bool = False,
            sizes: EvalSizes = EvalSizes(), log=print, progress: bool = True,
            predict=None) -> tuple[list, list[str]]:
    """Run (or reuse) each method; returns (records, skipped lines). ``predict``: see :func:`run_method`."""
    import torch

    from quantlab.report.env import environment
    from quantlab.report.store import ResultStore, RunRecord, config_key

    torch.manual_seed(0)
    src = resolve(model)
    tok = load_tokenizer(src, progress=progress)
    store = store or ResultStore()
    env = environment()
    records, skipped, todo = [], [], []
    for m in methods:
        cfg = {**dataclasses.asdict(m), "sizes": dataclasses.asdict(sizes), "device": env["device"],
               "harness": HARNESS_VERSION,
               "model_path": "embedded" if src.kind == "embedded" else str(src.path / (src.gguf_file or ""))}
        key = config_key("ptq", src.name, m.name, cfg)
        old = None if redo else store.get(key)
        if old is not None:
            log(f"{m.name}: reusing the stored run {key} from {old.created_at} (--redo to run again)")
            records.append(old)
        else:
            todo.append((m, cfg, key))
    if not todo:
        return records, skipped
    ref = build_reference(src, tok, sizes, log)
    from quantlab.lab.progress import track

    for m, cfg, key in track(todo, "PTQ methods", enabled=progress):
        log(f"{m.name}: {m.description}")
        try:
            metrics = run_method(m, src, tok, ref, sizes, log, predict=predict)
        except UnsupportedOnDevice as e:
            skipped.append(f"{m.name}: {e}")
            log(f"{m.name}: skipped: {e}")
            continue
        rec = RunRecord(key=key, kind="ptq", model=src.name, method=m.name, config=cfg, env=env, metrics=metrics)
        store.put(rec)
        records.append(rec)
    return records, skipped
