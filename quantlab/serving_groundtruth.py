"""Published serving measurements (vLLM start-up logs, transformers generate peaks) against the serving planner.

The rows live in ``profiles/validation/serving-published.jsonl``, one JSON object per line, each one published
figure with the exact settings it was measured at:

- ``id``; ``source`` (who measured what, the command, the library versions), ``url`` (the issue, pull request or file
  at a commit), ``quote`` (the figure exactly as published), ``date``; ``engine`` (``vllm`` or ``transformers``) and
  ``engine_version``; ``settings_basis`` (which settings are stated, which are the stated defaults of that version
  and which are inferred, with the reason).
- ``model``: a profile name (``profiles/models``), with ``model_overrides`` (config.json keys) where the measured
  checkpoint differs from the profile; ``gpu``: a profile name, ``gpu_reported``: the GPU as the source names it.
- ``plan``: :class:`~quantlab.specs.PlanConfig` fields (precision, compute_dtype, attn, tp, num_gpus, ...);
  ``serve``: :func:`quantlab.planner.serving.serve_config` keywords (mode, prompt_tokens, new_tokens, concurrency,
  engine, do_sample, gpu_memory_utilization, max_model_len, max_num_batched_tokens, max_num_seqs, block_size, ...).
- ``metric`` (one of :data:`METRICS`), ``value`` (bytes for the ``*_bytes`` metrics and ``allocated``, a count for
  ``vllm_num_blocks``, a ratio for ``vllm_max_concurrency``), ``unit_published`` (the unit the source printed;
  GiB figures rounded to two decimals are converted with 2**30, optimum-benchmark's MB with 10**6).
- ``gpu_cuda_total_bytes`` (vLLM rows whose log prints it) and ``gpu_cuda_total_quote``: the GPU's total as CUDA
  reports it (``torch.cuda.mem_get_info()[1]``, which vLLM's budget multiplies); :func:`predict` with
  ``cuda_total=True`` plans on it instead of the profile's NVML total (G7), to show what that fix would change.
- ``tolerance``: the largest |error| the row is expected to show with today's planner, and ``tolerance_reason``: why
  (a known miss names the library behaviour the planner does not model; see reports/serving-groundtruth.md).

Assumptions (numbered; G1, G2, ...):

G1. A row becomes a configuration through the serving planner's own builders only: PlanConfig.from_dict for the
    plan fields (method inference, batch = concurrency, seq = prompt + new tokens) and serve_config() for the serving
    settings, as ``quantlab plan --method inference`` does (commands/serve_flags.py). Nothing is fitted to the rows.
G2. ``flash_attention`` follows the GPU profile (bf16-capable GPUs run FlashAttention), the rule groundtruth.py uses.
G3. The predicted figure is read from the plan the CLI prints: ``allocated`` is ServePlan.peak_allocated_bytes
    (torch.cuda.max_memory_allocated over the run, weights included); the ``vllm_*`` metrics are the VllmPool fields
    the vLLM log lines report (available KV cache memory, # GPU blocks, maximum concurrency at max_model_len, model
    weights, PyTorch activation peak, non-torch memory).
G4. The error is (predicted - published) / published; a negative error is an under-prediction, the dangerous
    direction (DESIGN.md, Ground truth).
G5. Two bars per row. The target (:data:`TARGETS`, per metric) is the accuracy the planner aims for, the
    training ground truth's 5% for allocated memory and the vLLM pool; 1% for the weights, which are exact
    arithmetic. The row's ``tolerance`` is the error today's planner is expected to show, derived from the
    mechanism its ``tolerance_reason`` names (not fitted to the figure): the tests assert it, so a planner change that
    moves a row shows up; a row outside its target is a known miss, kept and reported.
G6. A published GiB figure carries +-0.005 GiB of rounding, MB figures +-1 MB; for the smallest figures here
    (activation peak 1.26 GiB) that is 0.4%, below every tolerance.
G7. The what-if of the budget fix (reports/serving-groundtruth.md) is a plan on a copy of the GPU profile whose
    memory is the logged CUDA total (GPUSpec.with_memory): the published figure of the same
    log, nothing fitted.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from quantlab.errors import QuantlabError
from quantlab.groundtruth import load_rows, model_spec

REPO = Path(__file__).resolve().parent.parent
SERVING_PUBLISHED = REPO / "profiles" / "validation" / "serving-published.jsonl"

# metric -> (what the source reports, the ServePlan reading that predicts it: G3)
METRICS = {
    "allocated": ("peak torch.cuda.max_memory_allocated of the run, weights included",
                  lambda p: p.peak_allocated_bytes),
    "vllm_kv_pool_bytes": ("vLLM available KV cache memory", lambda p: p.vllm.kv_pool_bytes),
    "vllm_num_blocks": ("vLLM # GPU blocks", lambda p: p.vllm.num_blocks),
    "vllm_max_concurrency": ("vLLM maximum concurrency for max_model_len tokens per request",
                             lambda p: p.vllm.max_concurrency),
    "vllm_weights_bytes": ("vLLM model weights take / model loading took", lambda p: p.vllm.weights_bytes),
    "vllm_activation_peak_bytes": ("vLLM PyTorch activation peak memory (profile run)",
                                   lambda p: p.vllm.activation_peak_bytes),
    "vllm_non_torch_bytes": ("vLLM non_torch_memory", lambda p: p.vllm.non_torch_bytes),
}
TARGETS = {"allocated": 0.05, "vllm_kv_pool_bytes": 0.05, "vllm_num_blocks": 0.05, "vllm_max_concurrency": 0.05,
           "vllm_weights_bytes": 0.01, "vllm_activation_peak_bytes": 0.10, "vllm_non_torch_bytes": 0.25}  # G5
REQUIRED = ("id", "source", "url", "quote", "engine", "engine_version", "model", "gpu", "plan", "serve", "metric",
            "value", "unit_published", "tolerance", "tolerance_reason", "settings_basis")
_ENUMS = {"mode": "Mode", "engine": "Engine", "cache": "Cache"}


def _fail(row: dict, msg: str) -> QuantlabError:
    return QuantlabError(f"serving row {row.get('id', '?')}: {msg}")


def row_to_serve_config(row: dict):
    """The ServeConfig of a row's exact settings (G1, G2); a bad field is a one-line QuantlabError."""
    from quantlab.planner import serving as S
    from quantlab.profiles import load_gpu
    from quantlab.specs import PlanConfig

    missing = [k for k in REQUIRED if row.get(k) is None]
    if missing:
        raise _fail(row, f"missing {', '.join(missing)}")
    if row["metric"] not in METRICS:
        raise _fail(row, f"metric {row['metric']!r} is not one of {', '.join(METRICS)}")
    serve = dict(row["serve"])
    try:
        for k, enum in _ENUMS.items():
            if k in serve:
                serve[k] = getattr(S, enum)(serve[k])
        prompt, new, conc = serve.pop("prompt_tokens", None), serve.pop("new_tokens", None), serve.pop("concurrency", 1)
        mode = serve.get("mode", S.Mode.GENERATE)
        seq = (prompt or 0) + (new if new is not None else (S.DEFAULT_NEW_TOKENS if mode is S.Mode.GENERATE else 0))
        d = {"method": "inference", "batch": conc, "seq": seq, **row["plan"]}
        if "flash_attention" not in d:
            d["flash_attention"] = load_gpu(row["gpu"]).bf16_supported  # G2
        plan = PlanConfig.from_dict(d, model=model_spec(row["model"], row.get("model_overrides")))
        return S.serve_config(plan, prompt_tokens=prompt, new_tokens=new, concurrency=conc, **serve)
    except QuantlabError as e:
        raise _fail(row, str(e)) from e
    except (TypeError, ValueError) as e:  # an unknown serve_config keyword or enum value
        raise _fail(row, str(e)) from e


@dataclass(frozen=True)
class ServeCheck:
    """One row: the published figure, the planner's, the error (G4) and whether it is within the row's tolerance."""

    id: str
    engine: str
    metric: str
    published: float
    predicted: float
    error: float
    tolerance: float
    ok: bool  # within the row's tolerance (G5)
    target: float
    on_target: bool  # within the metric's target (G5); False: a known miss

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def predict(row: dict, *, cuda_total: bool = False):
    """(ServePlan, predicted figure) of a row (G3); ``cuda_total``: on the logged CUDA total memory (G7)."""
    from quantlab.planner.serving import serve_plan
    from quantlab.profiles import load_gpu

    s = row_to_serve_config(row)
    gpu = load_gpu(row["gpu"])
    if cuda_total:
        total = row.get("gpu_cuda_total_bytes")
        if not isinstance(total, int) or total <= 0:
            raise _fail(row, "no gpu_cuda_total_bytes for the CUDA-total what-if")
        gpu = gpu.with_memory(total)
    p = serve_plan(s, gpu)
    if row["metric"].startswith("vllm_") and p.vllm is None:
        raise _fail(row, f"metric {row['metric']} needs serve.engine vllm")
    return p, METRICS[row["metric"]][1](p)


def check_row(row: dict) -> ServeCheck:
    _, pred = predict(row)
    pub = row["value"]
    if not isinstance(pub, (int, float)) or isinstance(pub, bool) or pub <= 0:
        raise _fail(row, f"value must be a positive number, got {pub!r}")
    err = (pred - pub) / pub
    tol = float(row["tolerance"])
    target = TARGETS[row["metric"]]
    return ServeCheck(row["id"], row["engine"], row["metric"], pub, pred, err, tol, abs(err) <= tol, target,
                      abs(err) <= target)


def check_all(path: str | Path = SERVING_PUBLISHED) -> list[ServeCheck]:
    return [check_row(r) for r in load_rows(path)]


def summarize(checks: list[ServeCheck]) -> list[dict]:
    """Per (engine, metric): rows, rows within tolerance and on target, mean |error|, worst error, worst
    under-prediction."""
    groups: dict[tuple[str, str], list[ServeCheck]] = {}
    for c in checks:
        groups.setdefault((c.engine, c.metric), []).append(c)
    out = []
    for (engine, metric), cs in sorted(groups.items()):
        errs = [c.error for c in cs]
        out.append(dict(engine=engine, metric=metric, rows=len(cs), within_tolerance=sum(c.ok for c in cs),
                        on_target=sum(c.on_target for c in cs), target=TARGETS[metric],
                        mean_abs_error=statistics.fmean(abs(e) for e in errs), worst_error=max(errs, key=abs),
                        worst_under=min(0.0, min(errs))))
    return out


def display(metric: str, v: float) -> str:
    """A figure as the source prints it: GiB for bytes, a count for blocks, x for concurrency."""
    if metric == "vllm_num_blocks":
        return f"{v:,.0f}"
    if metric == "vllm_max_concurrency":
        return f"{v:.2f}x"
    return f"{v / (1 << 30):.2f} GiB"


__all__ = ["SERVING_PUBLISHED", "METRICS", "TARGETS", "row_to_serve_config", "predict", "check_row", "check_all",
           "summarize", "display", "ServeCheck"]
