"""A mergekit configuration as a model to plan: ``quantlab plan --model merge.yaml``.

mergekit 0.1.5 (``mergekit/config.py``: ``MergeConfiguration``, ``OutputSliceDefinition``,
``InputSliceDefinition``) describes a merge as YAML:

1. ``merge_method: passthrough`` with ``slices``: each slice has exactly one source ``{model, layer_range: [a, b]}``
   (half-open, as Python's range: layers a .. b-1) and the output stacks the slices in order, so the merged model
   has sum(b - a) decoder layers and otherwise the sources' architecture: depth up-scaling (SOLAR, Kim et al.
   2023: two copies of a 32-layer model, layers 0-24 and 8-32, give 48 layers) and "frankenmerges" of models of
   one architecture. Embeddings, the final norm and the head are taken once (mergekit's passthrough writes the
   non-layer tensors of the first source), so the parameter count is the source's with the new layer count.
   Per-layer fields of the config (``layer_types``) are sliced the same way.
2. Any other method with ``models`` (or ``slices`` whose sources span the same layers) keeps the architecture of
   its models, which must agree; the merged model plans as they do.
3. A model named in the YAML is resolved as ``--model`` is (a profile name, an HF id in the profiles, a local
   config.json or model folder), so the sources need no download. The sources must share every architecture field
   but the layer count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from quantlab.errors import QuantlabError

# ModelSpec fields that may differ between the sources of a stack (assumption 3)
_FREE = {"name", "num_hidden_layers", "hf_id", "source"}


def _read(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise QuantlabError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise QuantlabError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict) or not ("slices" in doc or "models" in doc):
        raise QuantlabError(f"{path} is not a mergekit configuration (needs 'slices' or 'models', and "
                            "'merge_method')")
    if not isinstance(doc.get("merge_method"), str):
        raise QuantlabError(f"{path}: 'merge_method' must name a mergekit method (e.g. passthrough)")
    return doc


def _model_name(src, where: str) -> str:
    m = src.get("model") if isinstance(src, dict) else None
    if isinstance(m, dict):  # mergekit's long form {model: {path: ...}}
        m = m.get("path") or m.get("model")
    if not isinstance(m, str) or not m.strip():
        raise QuantlabError(f"{where}: each source needs 'model'")
    return m.strip()


def _layer_range(src, layers: int, where: str) -> tuple[int, int]:
    r = src.get("layer_range")
    if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in r)):
        raise QuantlabError(f"{where}: layer_range must be two integers [first, end), got {r!r}")
    a, b = r
    if not 0 <= a < b <= layers:
        raise QuantlabError(f"{where}: layer_range {list(r)} is outside the model's 0..{layers} layers (or empty)")
    return a, b


def _same_arch(specs: dict, path: Path) -> None:
    items = list(specs.items())
    first_name, first = items[0]
    for name, s in items[1:]:
        for f in dataclasses.fields(first):
            if f.name in _FREE:
                continue
            if getattr(first, f.name) != getattr(s, f.name):
                raise QuantlabError(f"{path}: {first_name} and {name} differ in {f.name} ({getattr(first, f.name)} vs "
                                    f"{getattr(s, f.name)}): mergekit merges models of one architecture")


def load_merge_config(path, shown: str, resolve):
    """The :class:`~quantlab.profiles.ResolvedModel` of a mergekit YAML; ``resolve`` is
    :func:`quantlab.profiles.load_model` (for the sources, assumption 3)."""
    from quantlab.profiles import ResolvedModel
    from quantlab.specs import ModelSpec, SpecError

    path = Path(path)
    doc = _read(path)
    method = doc["merge_method"]
    cache: dict = {}

    def get(name):
        if name not in cache:
            if Path(name).suffix in (".yaml", ".yml"):
                raise QuantlabError(f"{path}: a source ({name}) is itself a merge configuration; merge it first")
            cache[name] = resolve(name)
        return cache[name]

    if "slices" in doc:
        slices = doc["slices"]
        if not isinstance(slices, list) or not slices:
            raise QuantlabError(f"{path}: 'slices' must be a non-empty list")
        parts = []
        for i, sl in enumerate(slices, start=1):
            where = f"{path}: slice {i}"
            srcs = sl.get("sources") if isinstance(sl, dict) else None
            if not isinstance(srcs, list) or not srcs:
                raise QuantlabError(f"{where} needs 'sources'")
            if method == "passthrough" and len(srcs) != 1:
                raise QuantlabError(f"{where}: passthrough takes one source per slice, got {len(srcs)}")
            ranges = set()
            for s in srcs:
                rm = get(_model_name(s, where))
                ranges.add(_layer_range(s, rm.spec.num_hidden_layers, where))
            if len(ranges) != 1:
                raise QuantlabError(f"{where}: the sources of one slice must span the same number of layers")
            a, b = ranges.pop()
            parts.append((_model_name(srcs[0], where), a, b))
        names = [p[0] for p in parts]
    else:
        models = doc["models"]
        if not isinstance(models, list) or not models:
            raise QuantlabError(f"{path}: 'models' must be a non-empty list")
        if method == "passthrough":
            raise QuantlabError(f"{path}: passthrough takes 'slices' (layer ranges), not 'models'")
        names = [_model_name(m, f"{path}: models") for m in models]
        if doc.get("base_model"):
            names.append(_model_name({"model": doc["base_model"]}, f"{path}: base_model"))
        parts = [(names[0], 0, get(names[0]).spec.num_hidden_layers)]
    resolved = {n: get(n) for n in dict.fromkeys(names)}
    _same_arch({n: r.spec for n, r in resolved.items()}, path)
    first = resolved[parts[0][0]]
    config = dict(first.config or {})
    layers = sum(b - a for _, a, b in parts)
    if not parts or layers <= 0:
        raise QuantlabError(f"{path}: the merge has no layers")
    config["num_hidden_layers"] = layers
    lt = config.get("layer_types")
    if isinstance(lt, list):
        sliced = []
        for name, a, b in parts:
            src_lt = (resolved[name].config or {}).get("layer_types", lt)
            sliced += list(src_lt)[a:b]
        config["layer_types"] = sliced
    if len(parts) == 1 and method != "passthrough":
        how = f"mergekit {method} of {len(resolved)} models of one architecture"
    else:
        how = f"mergekit {method}: {len(parts)} slices of {', '.join(resolved)}, {layers} layers"
    try:
        spec = dataclasses.replace(first.spec, name=path.stem, num_hidden_layers=layers, source=str(path))
        spec = ModelSpec.from_hf_config(config, name=path.stem, source=str(path)) if first.config else spec
    except SpecError as e:
        raise QuantlabError(f"{path}: {e}") from e
    return ResolvedModel(path.stem, spec, f"{shown} -> {how}", config, str(path))
