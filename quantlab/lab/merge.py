"""Model merging, measured: LoRA adapters merged by PEFT, fine-tuned models merged by mergekit, each scored on
every task, beside a joint and a sequential multi-task fine-tune.

Two families of merge, run by the libraries people use for them:

- **Adapter merges**: PEFT ``LoraModel.add_weighted_adapter`` (peft 0.21.2, ``peft/tuners/lora/model.py``) builds
  one new adapter from K loaded ones: ``linear`` (the weighted sum of the A and of the B factors, each scaled by
  sqrt(weight)), ``cat`` (A and B stacked: rank = the sum of the ranks, exactly sum_i w_i B_i A_i), ``svd`` (the
  weighted sum of the K updates B_i A_i truncated back to rank r by an SVD), and ``ties`` / ``dare_linear`` /
  ``dare_ties`` / ``magnitude_prune`` (PEFT's ``peft.utils.merge_utils`` applied to the A and to the B factors
  separately, at ``density``). ``linear``, ``ties``, ``dare_*`` and ``magnitude_prune`` need equal ranks (PEFT's
  ``_check_add_weighted_adapter``); ``cat`` and ``svd`` do not.
- **Full-weight merges** of fine-tuned models: each adapter is first folded into a copy of the base
  (``merge_and_unload``, saved as safetensors), then mergekit 0.1.5 (``mergekit.merge.run_merge``, lazy tensor
  loading, ``lazy_unpickle``, safetensors output) merges those models: ``linear`` (model soups, Wortsman et al.
  2022: the weighted mean, ``normalize``), ``slerp`` (spherical interpolation of two models at t), ``task_arithmetic``
  (Ilharco et al. 2023: base + sum_i w_i (theta_i - base)), ``ties`` (Yadav et al. 2023: trim to ``density``, elect
  a sign, disjoint mean) and ``dare_ties`` / ``dare_linear`` (Yu et al. 2024: random drop at 1 - density with
  rescale, then TIES sign election or a plain sum).

Assumptions:

1. A merge's cost is measured around the library call only (loading the inputs and scoring are outside): wall
   seconds (``time.perf_counter``) and the process RSS (peak over the call and its growth,
   :func:`quantlab.lab.measure.measure_memory`, sampled every 5 ms). For mergekit the call reads the input models
   from disk and writes the output's safetensors, so its seconds include that I/O; its disk figure is the bytes of
   the safetensors written.
2. ``meas_delta_density`` is the share of non-zero entries of the merged update over the adapted linears: of
   sum B A of the merged adapter for a PEFT merge, of (merged - base) for a mergekit merge (over the tensors the
   adapters changed). It shows what TIES/DARE trimming left.
3. Weights: one per adapter, default 1.0 each (task arithmetic's lambda = 1, which keeps every task vector at full
   strength; PEFT's ``linear`` and mergekit's ``linear`` and ``ties`` with ``normalize`` divide by the sum).
   SLERP's t is the second weight's share, w_2 / (w_1 + w_2).
4. Scores: every merge, the base, each single adapter and each baseline on the test split of every task
   (:mod:`quantlab.lab.merge_tasks`). *Retention* on a task is a model's score over the single adapter's score on
   it; the merge that "kept all tasks best" has the highest worst-task retention (ties: the higher mean).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantlab.errors import QuantlabError

PEFT_METHODS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
MERGEKIT_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear")
EQUAL_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # PEFT's rule
DENSITY_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
MK = "mk:"  # the prefix that names a mergekit full-weight merge where PEFT has a method of the same name


@dataclass(frozen=True)
class MergeMethod:
    library: str  # peft | mergekit
    name: str

    @property
    def label(self) -> str:
        return self.name if self.library == "peft" else MK + self.name

    @property
    def uses_density(self) -> bool:
        return self.name in DENSITY_METHODS


def known_methods() -> list[str]:
    return list(PEFT_METHODS) + [MK + m for m in MERGEKIT_METHODS]


def parse_method(s: str) -> MergeMethod:
    """``linear`` ... ``magnitude_prune``: PEFT's; ``mk:NAME``: mergekit's; ``slerp`` and ``task_arithmetic``
    (no PEFT method has those names): mergekit's."""
    t = s.strip().lower().replace("-", "_")
    if t.startswith(MK) and t[len(MK):] in MERGEKIT_METHODS:
        return MergeMethod("mergekit", t[len(MK):])
    if t in PEFT_METHODS:
        return MergeMethod("peft", t)
    if t in MERGEKIT_METHODS:
        return MergeMethod("mergekit", t)
    raise QuantlabError(f"unknown merge method {s!r} (known: {', '.join(known_methods())}; slerp and "
                        "task_arithmetic also without mk:)")


@dataclass(frozen=True)
class AdapterInfo:
    """What a saved LoRA adapter's ``adapter_config.json`` says."""

    path: Path
    base: str
    r: int
    alpha: float
    targets: tuple
    peft_type: str

    @classmethod
    def read(cls, path) -> "AdapterInfo":
        p = Path(path)
        cfg = p / "adapter_config.json"
        if not cfg.is_file() or not (p / "adapter_model.safetensors").is_file():
            raise QuantlabError(f"{p} is not a saved PEFT adapter (needs adapter_config.json and "
                                "adapter_model.safetensors)")
        try:
            d = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise QuantlabError(f"cannot read {cfg}: {e}") from e
        if d.get("peft_type") != "LORA":
            raise QuantlabError(f"{p} is a {d.get('peft_type')} adapter; merging takes LoRA adapters")
        t = d.get("target_modules")
        targets = tuple(sorted(t)) if isinstance(t, (list, tuple)) else (str(t),)
        return cls(p, str(d.get("base_model_name_or_path") or ""), int(d["r"]), float(d.get("lora_alpha", d["r"])),
                   targets, d["peft_type"])


def check_inputs(adapters: list[AdapterInfo], methods: list[MergeMethod], weights: list[float],
                 density: float) -> None:
    """The bad inputs of a merge, each one line (raised before any model loads)."""
    if len(adapters) < 2:
        raise QuantlabError(f"a merge needs at least two adapters, got {len(adapters)}")
    if len({str(a.path.resolve()) for a in adapters}) != len(adapters):
        raise QuantlabError("the same adapter is given twice")
    bases = {a.base for a in adapters}
    if len(bases) > 1:
        raise QuantlabError("the adapters were trained on different base models ("
                            + "; ".join(f"{a.path.name}: {a.base or '?'}" for a in adapters) + ")")
    if len(weights) != len(adapters):
        raise QuantlabError(f"{len(weights)} weights for {len(adapters)} adapters: give one weight per adapter")
    if not all(math.isfinite(w) for w in weights):
        raise QuantlabError("weights must be finite numbers")
    if not 0.0 < density <= 1.0:
        raise QuantlabError(f"density must be in (0, 1], got {density}")
    ranks = {a.r for a in adapters}
    for m in methods:
        if m.library == "peft" and m.name in EQUAL_RANK and len(ranks) > 1:
            raise QuantlabError(f"{m.label} needs adapters of equal rank (got r = "
                                f"{', '.join(str(a.r) for a in adapters)}); cat and svd take mixed ranks")
        if m.library == "mergekit" and m.name == "slerp" and len(adapters) != 2:
            raise QuantlabError(f"slerp interpolates two models; got {len(adapters)} adapters")
        if m.name == "slerp" and sum(weights) == 0:
            raise QuantlabError("slerp's t is w2 / (w1 + w2): the weights must not sum to 0")


# ---- measurement ----------------------------------------------------------------------------------------

@dataclass
class MergeCost:
    seconds: float
    rss_peak_bytes: int
    rss_delta_bytes: int
    disk_bytes: int | None = None  # what the merge wrote (mergekit) / the merged adapter's tensors (PEFT)
    delta_density: float | None = None
    rank: int | None = None
    extra: dict = field(default_factory=dict)


def _timed(fn):
    from quantlab.lab import measure

    with measure.measure_memory() as mem:
        t = time.perf_counter()
        out = fn()
        s = time.perf_counter() - t
    return out, s, mem


def lora_delta_density(peft_model, adapter: str) -> float:
    """Assumption 2 for a PEFT adapter: non-zeros of the merged B A (scaled) over its entries."""
    import torch
    from peft.tuners.lora import LoraLayer

    nz = tot = 0
    with torch.no_grad():
        for mod in peft_model.modules():
            if isinstance(mod, LoraLayer) and adapter in getattr(mod, "lora_A", {}):
                d = mod.get_delta_weight(adapter)
                nz += int((d != 0).sum())
                tot += d.numel()
    return nz / tot if tot else 0.0


def _adapter_bytes(peft_model, adapter: str) -> int:
    return sum(p.numel() * p.element_size() for n, p in peft_model.named_parameters() if f".{adapter}." in n)


def load_adapters(base_model, adapters: list[AdapterInfo], names: list[str]):
    """A PeftModel holding every adapter under its name (safetensors only)."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base_model, str(adapters[0].path), adapter_name=names[0])
        for a, n in zip(adapters[1:], names[1:]):
            model.load_adapter(str(a.path), adapter_name=n)
    except Exception as e:  # PEFT raises many types for an adapter that does not fit the model
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise QuantlabError(f"the adapters do not load onto this base model: {msg}") from e
    model.eval()
    return model


def peft_merge(model, names: list[str], method: MergeMethod, weights: list[float], density: float,
               target: str = "merged") -> MergeCost:
    """``add_weighted_adapter`` into adapter ``target`` (made active), measured (assumption 1)."""
    if target in model.peft_config:
        model.delete_adapter(target)
    kw = {"density": density} if method.uses_density else {}

    def go():
        model.add_weighted_adapter(names, list(weights), target, combination_type=method.name, **kw)

    try:
        _, s, mem = _timed(go)
    except ValueError as e:  # PEFT's own refusals (ranks, targets)
        raise QuantlabError(f"PEFT refused the {method.label} merge: {str(e).splitlines()[0][:200]}") from e
    model.set_adapter(target)
    return MergeCost(s, mem.rss_peak_bytes, mem.rss_delta_bytes, _adapter_bytes(model, target),
                     lora_delta_density(model, target), model.peft_config[target].r)


def fold_adapter(base_src, adapter: AdapterInfo, out_dir: Path) -> Path:
    """The fine-tuned full model of one adapter: the fp32 base with ``W + (alpha/r) B A`` folded in
    (``merge_and_unload``), saved as safetensors; the input of a mergekit merge."""
    import torch
    from peft import PeftModel

    from quantlab.lab.model import load_model

    base = load_model(base_src, dtype=torch.float32, progress=False)
    merged = PeftModel.from_pretrained(base, str(adapter.path)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir, safe_serialization=True)
    from quantlab.lab.model import model_path

    copy_tokenizer(model_path(base_src, False), out_dir)
    return out_dir


def copy_tokenizer(src_dir: Path, out_dir: Path) -> None:
    """The base's tokenizer files (and chat template) beside a saved model, so it loads as a lab model folder that
    renders prompts as the base does."""
    for f in Path(src_dir).iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name.startswith("special_tokens")
                            or f.name in ("chat_template.jinja", "vocab.json", "merges.txt")):
            shutil.copy2(f, Path(out_dir) / f.name)


def mergekit_config(method: MergeMethod, base_dir: Path, model_dirs: list[Path], weights: list[float],
                    density: float) -> dict:
    """The mergekit configuration (as its YAML would say it) of one full-weight merge (assumption 3)."""
    d: dict = {"merge_method": method.name, "dtype": "float32"}
    if method.name == "slerp":
        d.update(base_model=str(model_dirs[0]), models=[{"model": str(m)} for m in model_dirs],
                 parameters={"t": weights[1] / (weights[0] + weights[1])})
        return d
    params = []
    for w in weights:
        p = {"weight": w}
        if method.name in ("ties", "dare_ties", "dare_linear"):
            p["density"] = density
        params.append(p)
    d["models"] = [{"model": str(m), "parameters": p} for m, p in zip(model_dirs, params)]
    if method.name != "linear":
        d["base_model"] = str(base_dir)
    if method.name in ("linear", "ties", "dare_ties"):
        d["parameters"] = {"normalize": True}
    return d


def mergekit_merge(config: dict, out_dir: Path, seed: int = 0) -> MergeCost:
    """mergekit's ``run_merge`` on ``config`` with lazy loading and safetensors output, measured (assumption 1)."""
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except ImportError as e:
        raise QuantlabError("mergekit is not installed (pip install 'quantlab[merge]', i.e. mergekit==0.1.5)") from e
    cfg = MergeConfiguration.model_validate(config)
    opts = MergeOptions(lazy_unpickle=True, safe_serialization=True, copy_tokenizer=False, write_model_card=False,
                        cuda=False, random_seed=seed, quiet=True)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    try:
        _, s, mem = _timed(lambda: run_merge(cfg, str(out_dir), options=opts))
    except Exception as e:  # mergekit raises plain exceptions for configs it cannot run
        raise QuantlabError(f"mergekit {config['merge_method']} failed: {str(e).splitlines()[0][:200]}") from e
    disk = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    return MergeCost(s, mem.rss_peak_bytes, mem.rss_delta_bytes, disk)


def full_delta_density(base_dir: Path, merged_dir: Path, names: set | None = None) -> float:
    """Assumption 2 for a full-weight merge: non-zeros of (merged - base) over the tensors in ``names`` (the
    ones the adapters changed), read tensor by tensor from the safetensors."""
    from safetensors import safe_open

    def tensors(d):
        out = {}
        for f in sorted(Path(d).glob("*.safetensors")):
            h = safe_open(str(f), framework="pt")
            out.update({k: (h, k) for k in h.keys()})
        return out

    a, b = tensors(base_dir), tensors(merged_dir)
    nz = tot = 0
    for k in sorted(set(a) & set(b)):
        if names is not None and k not in names:
            continue
        x, y = a[k][0].get_tensor(k), b[k][0].get_tensor(k)
        if x.shape != y.shape:
            continue
        diff = (y.float() - x.float())
        nz += int((diff != 0).sum())
        tot += diff.numel()
    return nz / tot if tot else 0.0


def changed_tensors(base_dir: Path, tuned_dir: Path) -> set:
    """Names of the tensors a folded adapter changed (the adapted linears' weights)."""
    from safetensors import safe_open

    out = set()
    for f in sorted(Path(base_dir).glob("*.safetensors")):
        h = safe_open(str(f), framework="pt")
        g = {}
        for tf in Path(tuned_dir).glob("*.safetensors"):
            t = safe_open(str(tf), framework="pt")
            g.update({k: t for k in t.keys()})
        for k in h.keys():
            if k in g and not h.get_tensor(k).equal(g[k].get_tensor(k)):
                out.add(k)
    return out


# ---- summaries -----------------------------------------------------------------------------------------

def retention(rows: list[dict], tasks: list[str]) -> None:
    """Adds ``retention_<task>``, ``min_retention`` and ``mean_retention`` to each row (assumption 4), against the
    rows whose ``kind`` is ``adapter`` for that task."""
    ref = {r["adapter_task"]: r[f"score_{r['adapter_task']}"] for r in rows if r["kind"] == "adapter"}
    for r in rows:
        vals = []
        for t in tasks:
            s, s0 = r.get(f"score_{t}"), ref.get(t)
            v = None if s is None or not s0 else s / s0
            r[f"retention_{t}"] = v
            if v is not None:
                vals.append(v)
        r["min_retention"] = min(vals) if len(vals) == len(tasks) else None
        r["mean_retention"] = sum(vals) / len(vals) if len(vals) == len(tasks) else None


def best_merge(rows: list[dict]) -> dict | None:
    """The merge (kind ``peft`` or ``mergekit``) with the highest worst-task retention, then mean (assumption 4)."""
    cands = [r for r in rows if r["kind"] in ("peft", "mergekit") and r.get("min_retention") is not None]
    return max(cands, key=lambda r: (r["min_retention"], r["mean_retention"]), default=None)
