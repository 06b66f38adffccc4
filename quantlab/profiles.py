"""Profiles: the only code that reads ``profiles/`` (model and GPU profiles as data with sources).

A model is found by profile name, alias (``13b`` is Llama-2-13B, ``8b`` Llama-3.1-8B), Hugging Face id,
or a local ``config.json`` / model folder (offline: nothing is downloaded). A GPU by name, alias or
NVML device name.

Assumptions:

1. The profile folder is ``<repo>/profiles`` (a clone or an editable install), or, for a regular
   ``pip install``, ``<prefix>/share/quantlab/profiles`` (pyproject's ``data-files``); the environment
   variable ``QUANTLAB_PROFILES`` overrides both.
2. A profile's ``config`` block is copied from the model's ``config.json`` (HF field names), so the same
   code path reads a profile and a local config (:meth:`ModelSpec.from_hf_config`).
3. ``quantlab plan`` must start fast: YAML is parsed lazily and cached. A name that is a file name reads
   that one file; only an alias, HF id or a misspelling reads them all (about 45 small files).
4. The profiles are compiled once into a cache of plain data (JSON, :data:`CACHE_NAME`) beside the YAML;
   an entry is used only while its file's mtime and size are unchanged, so editing a profile recompiles
   it. When the profile folder is not writable the cache lives under ``$XDG_CACHE_HOME/quantlab``
   (``~/.cache/quantlab``). PyYAML is imported only when a file has to be parsed. A document the JSON cache
   cannot hold exactly (a YAML date, a non-string key) is simply parsed every time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections import namedtuple

from quantlab.errors import QuantlabError
from quantlab.specs import FAMILIES, GPUSpec, ModelSpec, SpecError, Sourced

CACHE_NAME = ".quantlab-profiles-cache.json"  # assumption 4 (gitignored)
_CACHE_FORMAT = 1
# the profile folders compiled into the cache (assumption 4): a plan of a decoder asks the encoder index whether
# --model names an encoder, so the encoders are compiled too (else every plan parses them with pyyaml)
COMPILED_KINDS = ("models", "gpus", "encoders")

# Optional architecture fields that must be positive integers when a config gives them
# (ModelSpec validates the required ones).
_OPTIONAL_POSITIVE = ("num_key_value_heads", "head_dim", "num_local_experts", "num_experts_per_tok", "sliding_window")


@functools.lru_cache(maxsize=1)
def _default_dir() -> str:
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "profiles")  # a clone or an
    # editable install; a regular install copies them to <prefix>/share (data-files)
    candidates = [here, os.path.join(sys.prefix, "share", "quantlab", "profiles")]
    for c in candidates:
        if os.path.isdir(os.path.join(c, "models")):
            return c
    raise QuantlabError(f"profile folder not found (looked in {', '.join(candidates)}); "
                        "set QUANTLAB_PROFILES to the folder holding models/ and gpus/")


def _root() -> str:
    """:func:`profiles_dir` as a string: the lookups of one profile use ``os.path`` (pathlib costs every CLI start
    a few milliseconds, and ``quantlab plan`` needs no other use of it)."""
    return os.environ.get("QUANTLAB_PROFILES") or _default_dir()


def profiles_dir() -> "Path":
    """The folder holding ``models/`` and ``gpus/`` (assumption 1)."""
    from pathlib import Path

    return Path(_root())


class ResolvedModel(namedtuple("ResolvedModel", "name spec resolved_from config source", defaults=(None,))):
    """A model spec with how the user's name was resolved (shown in the output): ``name``, ``spec``,
    ``resolved_from`` (e.g. "13b -> llama-2-13b (alias)"), ``config`` (the config.json mapping it was built from, HF
    field names) and ``source`` (where that config comes from, URL or local path; None). A named tuple: no
    dataclass class-creation cost at start-up."""

    __slots__ = ()


def hf_config_dict(resolved: ResolvedModel) -> dict:
    """A copy of the config as keyword arguments for ``transformers.AutoConfig.for_model(**d)``."""
    return dict(resolved.config)


def _parse_yaml(path: str) -> object:
    import yaml  # only when a file must be parsed (assumption 4)

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's C loader is several times faster
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=loader)
    except yaml.YAMLError as e:
        raise QuantlabError(f"profile {path} is not valid YAML ({str(e).splitlines()[0]})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise QuantlabError(f"cannot read profile {path}: {e}") from e


def _cache_path(root: str) -> str:
    """Beside the YAML when that folder is writable, else a per-folder file under the user's cache."""
    if os.access(root, os.W_OK):
        return os.path.join(root, CACHE_NAME)
    import hashlib

    base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "quantlab")
    return os.path.join(base, f"profiles-{hashlib.sha1(os.path.realpath(root).encode()).hexdigest()[:16]}.json")


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


class _Compiled:
    """The compiled profiles of one folder: relative path -> [mtime_ns, size, document]."""

    def __init__(self, root: str):
        self.root = root
        self.path = _cache_path(root)
        self.entries: dict[str, list] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict) and data.get("format") == _CACHE_FORMAT and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except (OSError, ValueError):  # absent or damaged: recompiled on the first miss
            pass

    def get(self, path: str) -> object:
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:  # another drive (Windows)
            rel = None
        if rel is None or rel.startswith(".."):  # outside this folder: not cached
            return _parse_yaml(path)
        hit = self.entries.get(rel)
        stamp = _stamp(path)
        if hit is not None and stamp is not None and hit[:2] == stamp:
            return hit[2]
        self._compile()
        hit = self.entries.get(rel)
        if hit is not None and hit[:2] == _stamp(path):
            return hit[2]
        return _parse_yaml(path)  # not cacheable (or changed meanwhile): parse, and raise its error if any

    def _compile(self) -> None:
        """Recompile every stale profile of the folder at once, and write the cache once."""
        fresh: dict[str, list] = {}
        from pathlib import Path

        for kind in COMPILED_KINDS:
            for p in sorted((Path(self.root) / kind).glob("*.yaml")):
                rel = f"{kind}/{p.name}"
                stamp = _stamp(str(p))
                old = self.entries.get(rel)
                if old is not None and old[:2] == stamp:
                    fresh[rel] = old
                    continue
                try:
                    doc = _parse_yaml(str(p))
                except QuantlabError:  # a broken file is reported where it is read, never cached
                    continue
                try:  # only documents JSON holds exactly (no dates, no non-string keys)
                    if json.loads(json.dumps(doc)) != doc:
                        continue
                except (TypeError, ValueError):
                    continue
                fresh[rel] = [*stamp, doc]
        self.entries = fresh
        self._write()

    def _write(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"format": _CACHE_FORMAT, "entries": self.entries}, f, separators=(",", ":"))
            os.replace(tmp, self.path)  # atomic: a concurrent reader sees the old cache or the new one
        except OSError:  # a cache that cannot be written only costs speed
            try:
                os.unlink(tmp)
            except (OSError, UnboundLocalError):
                pass


@functools.lru_cache(maxsize=8)
def _compiled(root: str) -> _Compiled:
    return _Compiled(root)


@functools.lru_cache(maxsize=None)
def _read(path: str) -> dict:
    folder = os.path.dirname(path)
    doc = _compiled(os.path.dirname(folder)).get(path) if os.path.basename(folder) in COMPILED_KINDS \
        else _parse_yaml(path)
    if not isinstance(doc, dict) or "name" not in doc:
        raise QuantlabError(f"profile {path} is malformed (expected a mapping with a name)")
    return doc


def _files(kind: str) -> list["Path"]:
    return sorted((profiles_dir() / kind).glob("*.yaml"))


def _yaml_names(kind: str) -> list[str]:
    """The ``*.yaml`` file names of ``kind``, sorted, through ``os`` only: every plan asks the encoder index
    whether ``--model`` is an encoder, and pathlib's glob would cost that start its import (see :func:`_root`)."""
    try:
        return sorted(n for n in os.listdir(os.path.join(_root(), kind)) if n.endswith(".yaml")
                      and os.path.isfile(os.path.join(_root(), kind, n)))
    except OSError:
        return []


def list_models() -> list[str]:
    """Model profile names (file stems), sorted."""
    return [p.stem for p in _files("models")]


def list_gpus() -> list[str]:
    """GPU profile names (file stems), sorted."""
    return [p.stem for p in _files("gpus")]


def model_doc(name: str) -> dict:
    """The raw model profile document (name, aliases, hf_id, source, notes, config)."""
    return _read(os.path.join(_root(), "models", f"{name}.yaml"))


def gpu_doc(name: str) -> dict:
    """The raw GPU profile document (every number with value, basis and source)."""
    return _read(os.path.join(_root(), "gpus", f"{name}.yaml"))


def clear_caches() -> None:
    """Forget parsed profiles (after editing a profile or changing QUANTLAB_PROFILES in-process)."""
    for f in (_default_dir, _read, _compiled, _index, _load_profile, load_gpu):
        f.cache_clear()


def _norm(s: str) -> str:
    return s.strip().lower()


_broken: dict[str, list[str]] = {}  # profile files the last scan could not parse, per kind


@functools.lru_cache(maxsize=None)
def _index(kind: str) -> dict[str, tuple[str, str]]:
    """name/alias/hf_id (lower case) -> (file stem, how it matched). Reads every profile of ``kind``."""
    idx: dict[str, tuple[str, str]] = {}
    _broken[kind] = []
    for name in _yaml_names(kind):
        stem = name[:-len(".yaml")]
        try:
            doc = _read(os.path.join(_root(), kind, name))
        except QuantlabError:  # one broken file must not hide the others; _unknown names it
            _broken[kind].append(name)
            continue
        idx.setdefault(_norm(doc["name"]), (stem, "profile"))
        for a in doc.get("aliases") or []:
            idx.setdefault(_norm(str(a)), (stem, "alias"))
        if doc.get("hf_id"):
            idx.setdefault(_norm(doc["hf_id"]), (stem, "Hugging Face id"))
    return idx


def _unknown(kind: str, name: str) -> QuantlabError:
    import difflib

    idx = _index(kind)
    close = difflib.get_close_matches(_norm(name), list(idx), n=6, cutoff=0.5)
    suggestions = list(dict.fromkeys(idx[c][0] for c in close))[:4]  # canonical names, not lower-cased ids
    hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
    broken = f"unreadable profiles skipped: {', '.join(_broken[kind])}; " if _broken.get(kind) else ""
    if kind == "models":
        known = "" if suggestions else f"known: {', '.join(list_models())}; "
        local = "a model not in the catalog can be given as a local config.json or model folder; " if "/" in name else ""
        return QuantlabError(f"unknown model {name!r}: {hint}{known}{local}{broken}see 'quantlab profiles'")
    return QuantlabError(f"unknown GPU {name!r}: {hint}known: {', '.join(list_gpus())}; {broken}see 'quantlab profiles'")


def _spec_from_config(config: object, *, name: str, where: str, hf_id: str | None = None,
                      source: str | None = None) -> ModelSpec:
    if not isinstance(config, dict):
        raise QuantlabError(f"{where} is not a JSON object")
    mt = config.get("model_type")
    if isinstance(mt, str) and mt not in FAMILIES:
        raise QuantlabError(f"{where}: model_type {mt!r} is not supported (supported: {', '.join(FAMILIES)})")
    for k in _OPTIONAL_POSITIVE:
        v = config.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise QuantlabError(f"{where}: {k} must be a positive integer, got {v!r}")
    try:
        return ModelSpec.from_hf_config(config, name=name, hf_id=hf_id, source=source)
    except SpecError as e:
        raise QuantlabError(f"{where}: {e}") from e
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:
        raise QuantlabError(f"{where}: malformed config ({type(e).__name__}: {e})") from e


def _model_from_doc(doc: dict, resolved_from: str) -> ResolvedModel:
    where = f"model profile {doc.get('name')}"
    config = doc.get("config")
    spec = _spec_from_config(config, name=doc["name"], where=where, hf_id=doc.get("hf_id"), source=doc.get("source"))
    return ResolvedModel(doc["name"], spec, resolved_from, dict(config), doc.get("source"))


def _model_from_config_file(path: "Path", shown: str) -> ResolvedModel:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise QuantlabError(f"cannot read {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise QuantlabError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from e
    name = path.parent.name if path.name == "config.json" else path.stem
    spec = _spec_from_config(config, name=name, where=str(path), source=str(path))
    return ResolvedModel(name, spec, f"{shown} -> {path} (local config)", config, str(path))


def _looks_like_path(raw: str) -> bool:
    # (a drive letter, C:\ or C:/, is tested without a regular expression: compiling one costs every CLI start)
    return (raw.startswith(("/", "./", "../", "~", "\\")) or raw.endswith(".json") or raw.count("/") > 1
            or (len(raw) > 2 and raw[0].isascii() and raw[0].isalpha() and raw[1] == ":" and raw[2] in "\\/"))


def load_model(name_or_path: str) -> ResolvedModel:
    """Resolve a profile name, alias, HF id, local config.json or local model folder to a spec.

    Raises :class:`QuantlabError` (one line) for an unknown name or a malformed config.
    """
    raw = str(name_or_path or "").strip()
    if not raw:
        raise QuantlabError("no model given (e.g. --model llama-3.1-8b; see 'quantlab profiles')")
    local = os.path.expanduser(raw)
    if not (os.path.isdir(local) or os.path.isfile(local)):
        if _looks_like_path(raw):
            raise QuantlabError(f"{raw} does not exist (give a config.json, a model folder, or a profile name)")
        return _load_profile(_norm(raw), raw)
    from pathlib import Path

    p = Path(local)
    if p.is_dir():  # local files are read every time (not cached): they may change between calls
        cfg = p / "config.json"
        if not cfg.is_file():
            raise QuantlabError(f"{p} is a folder without a config.json")
        return _model_from_config_file(cfg, raw)
    if p.suffix.lower() in (".yaml", ".yml"):
        return _model_from_merge_config(p, raw)
    return _model_from_config_file(p, raw)


def _model_from_merge_config(path: "Path", shown: str) -> ResolvedModel:
    """A mergekit YAML (depth up-scaling, stacking, merges): :mod:`quantlab.merge_config`."""
    from quantlab.merge_config import load_merge_config

    return load_merge_config(path, shown, load_model)


@functools.lru_cache(maxsize=256)
def _load_profile(key: str, shown: str) -> ResolvedModel:
    direct = os.path.join(_root(), "models", f"{key}.yaml")
    if os.path.isfile(direct):  # the common case reads one file (assumption 3)
        doc = _read(direct)
        return _model_from_doc(doc, f"{shown} (profile)" if shown == doc["name"] else f"{shown} -> {doc['name']} (profile)")
    hit = _index("models").get(key)
    if hit is None:
        raise _unknown("models", shown)
    stem, how = hit
    doc = model_doc(stem)
    return _model_from_doc(doc, f"{shown} -> {doc['name']} ({how})")


def _sourced(x: object) -> Sourced:
    return Sourced(x.get("value"), x.get("basis"), x.get("source"))


def _gpu_from_doc(doc: dict) -> GPUSpec:
    try:
        ic = doc["interconnect"]
        sources = {"memory_bytes": _sourced(doc["memory_bytes"]),
                   "memory_bandwidth_bytes_per_s": _sourced(doc["memory_bandwidth_bytes_per_s"]),
                   "interconnect_bandwidth_bytes_per_s": _sourced(ic["bandwidth_bytes_per_s"]),
                   "price_usd_per_hour": _sourced(doc["price_usd_per_hour"])}
        sources.update({f"flops.{k}": _sourced(v) for k, v in doc["flops"].items()})
        cuda_total = doc.get("cuda_total_bytes")
        if cuda_total is not None:
            sources["cuda_total_bytes"] = _sourced(cuda_total)
            cuda_total = int(cuda_total["value"])
        context = doc.get("cuda_context_bytes")  # allocator.py 10i: measured per GPU generation and CUDA version
        if context is not None:
            sources["cuda_context_bytes"] = _sourced(context)
            context = int(context["value"])
            if not 16 << 20 <= context <= 4 << 30:
                raise SpecError(f"cuda_context_bytes {context} is outside 16 MiB .. 4 GiB")
        ic_bw = ic["bandwidth_bytes_per_s"]["value"]
        return GPUSpec(
            name=doc["name"], vendor=doc["vendor"], memory_bytes=int(doc["memory_bytes"]["value"]),
            memory_bandwidth_bytes_per_s=float(doc["memory_bandwidth_bytes_per_s"]["value"]),
            flops={k: (None if v["value"] is None else float(v["value"])) for k, v in doc["flops"].items()},
            bf16_supported=bool(doc["bf16_supported"]), fp8_supported=bool(doc["fp8_supported"]),
            interconnect=ic["name"], interconnect_bandwidth_bytes_per_s=None if ic_bw is None else float(ic_bw),
            price_usd_per_hour=doc["price_usd_per_hour"]["value"],
            aliases=tuple(doc.get("aliases") or ()), nvml_names=tuple(doc.get("nvml_names") or ()),
            sources=sources, cuda_total_bytes=cuda_total, cuda_context_bytes=context)
    except (KeyError, TypeError, ValueError, AttributeError, SpecError) as e:
        raise QuantlabError(f"GPU profile {doc.get('name')} is malformed ({type(e).__name__}: {e})") from e


@functools.lru_cache(maxsize=64)
def load_gpu(name: str) -> GPUSpec:
    """A GPU by profile name, alias or NVML device name (case-insensitive)."""
    raw = str(name or "").strip()
    if not raw:
        raise QuantlabError(f"no GPU given (known: {', '.join(list_gpus())})")
    direct = os.path.join(_root(), "gpus", f"{_norm(raw)}.yaml")
    if os.path.isfile(direct):
        return _gpu_from_doc(_read(direct))
    hit = _index("gpus").get(_norm(raw))
    if hit is not None:
        return _gpu_from_doc(gpu_doc(hit[0]))
    by_device = match_gpu_by_device_name(raw)
    if by_device is not None:
        return by_device
    raise _unknown("gpus", raw)


def match_gpu_by_device_name(device_name: str) -> GPUSpec | None:
    """Map an NVML / torch device name (e.g. 'NVIDIA A100-SXM4-80GB') onto a profile, or None.

    Entries match on word boundaries and the longest wins, so 'NVIDIA L40S' is an L40S, not an L4.
    """
    dn = _norm(device_name)
    best: tuple[int, str] | None = None
    for p in _files("gpus"):
        for n in _read(str(p)).get("nvml_names") or []:
            hit = re.search(r"(?<![a-z0-9])" + re.escape(_norm(n)) + r"(?![a-z0-9])", dn)
            if hit and (best is None or len(n) > best[0]):
                best = (len(n), p.stem)
    return None if best is None else _gpu_from_doc(gpu_doc(best[1]))
