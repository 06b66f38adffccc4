"""Profiles: the only code that reads ``profiles/`` (model and GPU profiles as data with sources).

A model is found by profile name, alias (``13b`` is Llama-2-13B, ``8b`` Llama-3.1-8B), Hugging Face id,
or a local ``config.json`` / model folder (offline). A GPU by name, alias or NVML device name.
YAML is parsed lazily, one file at a time, so that ``quantlab plan`` starts fast.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quantlab.errors import QuantlabError
from quantlab.specs import GPUSpec, ModelSpec, SpecError, Sourced

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader


def profiles_dir() -> Path:
    env = os.environ.get("QUANTLAB_PROFILES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "profiles"


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec with how the user's name was resolved (shown in the output)."""

    name: str
    spec: ModelSpec
    resolved_from: str
    config: dict
    source: str | None = None


@functools.lru_cache(maxsize=None)
def _read(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=_Loader)
    if not isinstance(doc, dict) or "name" not in doc:
        raise QuantlabError(f"profile {path} is malformed (expected a mapping with a name)")
    return doc


def _files(kind: str) -> list[Path]:
    return sorted((profiles_dir() / kind).glob("*.yaml"))


def list_models() -> list[str]:
    return [p.stem for p in _files("models")]


def list_gpus() -> list[str]:
    return [p.stem for p in _files("gpus")]


def _norm(s: str) -> str:
    return s.strip().lower()


@functools.lru_cache(maxsize=None)
def _index(kind: str) -> dict[str, tuple[str, str]]:
    """name/alias/hf_id (lower case) -> (file stem, how it matched)."""
    idx: dict[str, tuple[str, str]] = {}
    for p in _files(kind):
        doc = _read(str(p))
        idx.setdefault(_norm(doc["name"]), (p.stem, "profile"))
        for a in doc.get("aliases") or []:
            idx.setdefault(_norm(str(a)), (p.stem, "alias"))
        if doc.get("hf_id"):
            idx.setdefault(_norm(doc["hf_id"]), (p.stem, "Hugging Face id"))
    return idx


def _unknown(kind: str, name: str, known: list[str]) -> QuantlabError:
    candidates = sorted(_index(kind))
    close = difflib.get_close_matches(_norm(name), candidates, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    what = "model" if kind == "models" else "GPU"
    return QuantlabError(f"unknown {what} {name!r}{hint} (known: {', '.join(known)}; see 'quantlab profiles')")


def _model_from_doc(doc: dict, resolved_from: str) -> ResolvedModel:
    try:
        spec = ModelSpec.from_hf_config(doc["config"], name=doc["name"], hf_id=doc.get("hf_id"),
                                        source=doc.get("source"))
    except (SpecError, TypeError, KeyError) as e:
        raise QuantlabError(f"profile {doc.get('name')} is malformed: {e}") from e
    return ResolvedModel(doc["name"], spec, resolved_from, dict(doc["config"]), doc.get("source"))


def _model_from_config_file(path: Path, shown: str) -> ResolvedModel:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise QuantlabError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise QuantlabError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(config, dict):
        raise QuantlabError(f"{path} is not a JSON object")
    name = path.parent.name if path.name == "config.json" else path.stem
    try:
        spec = ModelSpec.from_hf_config(config, name=name, source=str(path))
    except SpecError as e:
        raise QuantlabError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise QuantlabError(f"{path}: malformed config ({e})") from e
    return ResolvedModel(name, spec, f"{shown} -> {path} (local config)", config, str(path))


@functools.lru_cache(maxsize=256)
def load_model(name_or_path: str) -> ResolvedModel:
    """Resolve a model name, alias, HF id, local config.json or model folder to a spec."""
    if not name_or_path or not str(name_or_path).strip():
        raise QuantlabError("no model given (try --model llama-3.1-8b; see 'quantlab profiles')")
    raw = str(name_or_path).strip()
    p = Path(raw).expanduser()
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise QuantlabError(f"{p} has no config.json")
        return _model_from_config_file(cfg, raw)
    if p.is_file():
        return _model_from_config_file(p, raw)
    direct = profiles_dir() / "models" / f"{_norm(raw)}.yaml"
    if direct.is_file():
        return _model_from_doc(_read(str(direct)), f"{raw} (profile)")
    hit = _index("models").get(_norm(raw))
    if hit is None:
        if raw.endswith(".json") or "/" in raw and not raw.count("/") == 1:
            raise QuantlabError(f"{raw} does not exist")
        raise _unknown("models", raw, list_models())
    stem, how = hit
    doc = _read(str(profiles_dir() / "models" / f"{stem}.yaml"))
    return _model_from_doc(doc, f"{raw} -> {doc['name']} ({how})")


def _sourced(x: Any) -> Sourced:
    return Sourced(x.get("value"), x.get("basis"), x.get("source"))


def _gpu_from_doc(doc: dict) -> GPUSpec:
    try:
        ic = doc["interconnect"]
        sources = {"memory_bytes": _sourced(doc["memory_bytes"]),
                   "memory_bandwidth_bytes_per_s": _sourced(doc["memory_bandwidth_bytes_per_s"]),
                   "interconnect_bandwidth_bytes_per_s": _sourced(ic["bandwidth_bytes_per_s"]),
                   "price_usd_per_hour": _sourced(doc["price_usd_per_hour"])}
        sources.update({f"flops.{k}": _sourced(v) for k, v in doc["flops"].items()})
        return GPUSpec(
            name=doc["name"], vendor=doc["vendor"], memory_bytes=int(doc["memory_bytes"]["value"]),
            memory_bandwidth_bytes_per_s=float(doc["memory_bandwidth_bytes_per_s"]["value"]),
            flops={k: (None if v["value"] is None else float(v["value"])) for k, v in doc["flops"].items()},
            bf16_supported=bool(doc["bf16_supported"]), fp8_supported=bool(doc["fp8_supported"]),
            interconnect=ic["name"], interconnect_bandwidth_bytes_per_s=float(ic["bandwidth_bytes_per_s"]["value"]),
            price_usd_per_hour=doc["price_usd_per_hour"]["value"],
            aliases=tuple(doc.get("aliases") or ()), nvml_names=tuple(doc.get("nvml_names") or ()),
            sources=sources)
    except (KeyError, TypeError, ValueError, SpecError) as e:
        raise QuantlabError(f"GPU profile {doc.get('name')} is malformed: {e}") from e


@functools.lru_cache(maxsize=64)
def load_gpu(name: str) -> GPUSpec:
    """A GPU by profile name, alias or NVML device name (case-insensitive)."""
    raw = str(name).strip()
    direct = profiles_dir() / "gpus" / f"{_norm(raw)}.yaml"
    if direct.is_file():
        return _gpu_from_doc(_read(str(direct)))
    hit = _index("gpus").get(_norm(raw))
    if hit is None:
        by_device = match_gpu_by_device_name(raw)
        if by_device is not None:
            return by_device
        raise _unknown("gpus", raw, list_gpus())
    return _gpu_from_doc(_read(str(profiles_dir() / "gpus" / f"{hit[0]}.yaml")))


def match_gpu_by_device_name(device_name: str) -> GPUSpec | None:
    """Map an NVML / torch device name (e.g. 'NVIDIA A100-SXM4-80GB') onto a profile.

    Entries match on word boundaries and the longest wins, so 'NVIDIA L40S' is an L40S, not an L4.
    """
    dn = _norm(device_name)
    best: tuple[int, str] | None = None
    for p in _files("gpus"):
        for n in _read(str(p)).get("nvml_names") or []:
            hit = re.search(r"(?<![a-z0-9])" + re.escape(_norm(n)) + r"(?![a-z0-9])", dn)
            if hit and (best is None or len(n) > best[0]):
                best = (len(n), p.stem)
    return None if best is None else _gpu_from_doc(_read(str(profiles_dir() / "gpus" / f"{best[1]}.yaml")))


def model_doc(name: str) -> dict:
    """The raw profile document (name, aliases, hf_id, source, config)."""
    return _read(str(profiles_dir() / "models" / f"{name}.yaml"))


def gpu_doc(name: str) -> dict:
    return _read(str(profiles_dir() / "gpus" / f"{name}.yaml"))
