"""Library noise, silenced at its source, and the allocator setting GPTQModel would change.

Each filter names the message, the library file that emits it, and why it carries nothing for a quantlab run:

1. torchao 0.18 ``torchao/__init__.py`` logs "Failed to load <ext>.so" for every prebuilt extension that does not
   match this Python/CUDA (the mxfp8 and CUTLASS sm90a kernels); torchao runs without them, and the lab's torchao
   paths (int8, intx weight-only) do not use them.
2. torch 2.13 ``torch/utils/_pytree.py`` warns that an Enum "is now natively supported by torch.compile" each time
   torchao registers one of its enums with ``register_constant`` (a deprecation inside torchao, not ours).
3. bitsandbytes 0.50 ``backends/cpu/ops.py`` logs that the optional ``kernels`` package is missing, so 4-bit CPU
   matmuls take bitsandbytes' torch fallback. That one matters for CPU speed figures: it is shown once, as a
   quantlab note on stderr.
4. GPTQModel 7.6 prints a banner and a GIL warning on *stdout* when imported (``models/auto.py``,
   ``utils/__init__.py``; peft imports it for its GPTQ dispatch whenever it is installed), and sets
   ``PYTORCH_ALLOC_CONF=expandable_segments:True,...`` and ``CUDA_DEVICE_ORDER`` unless they are set. The first
   changes the CUDA caching allocator the planner models (``expandable_segments`` changes reserved memory), so
   a ``sys.meta_path`` finder (:class:`_QuietFinder`, whoever imports it) runs its import with stdout captured
   (its warnings go to stderr) and puts both variables back as they were.
5. peft 0.21 ``peft_model.py`` (``PeftModel.__init__``) and ``mixed_model.py`` read
   ``model.is_gradient_checkpointing``, which transformers 5.2x deprecates (``modeling_utils.py``: "use
   is_activation_checkpointing") with a FutureWarning on every ``get_peft_model``. quantlab's own code uses
   neither name; the warning is ignored for that message only.
6. DeepSpeed 0.19.8 ``accelerator/real_accelerator.py`` warns "Setting accelerator to CPU. If you have GPU or other
   accelerator, we were unable to detect it." on its logger ``DeepSpeed`` when anything imports it (accelerate and
   TRL look for it whenever it is installed). Dropped only while torch sees no CUDA device: there it says what the
   machine is; with a CUDA device present the message means DeepSpeed missed it, and it is shown.
"""

from __future__ import annotations

import logging
import os
import sys

_INSTALLED = False
_NOTED: set[str] = set()

BNB_KERNELS_NOTE = ("bitsandbytes runs 4-bit CPU matmuls through its torch fallback (the optional 'kernels' "
                    "package is not installed): 4-bit CPU speed figures are the fallback's")


class _DropWithoutCuda(logging.Filter):
    """Drops a record holding every needle while torch sees no CUDA device (6)."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        if not all(n in str(record.msg) for n in self.needles):
            return True
        torch = sys.modules.get("torch")
        try:
            return bool(torch is not None and torch.cuda.is_available())
        except Exception:  # pragma: no cover - a torch without a usable cuda module: no CUDA device
            return False


class _Drop(logging.Filter):
    def __init__(self, *needles: str, note: str | None = None) -> None:
        super().__init__()
        self.needles, self.note = needles, note

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if not all(n in msg for n in self.needles):
            return True
        if self.note and self.note not in _NOTED:
            _NOTED.add(self.note)
            print(f"quantlab: note: {self.note}", file=sys.stderr)
        return False


def install() -> None:
    """Attach the filters (1-3, 6) to the libraries' loggers, before the libraries exist; idempotent and cheap."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    logging.getLogger("torchao").addFilter(_Drop("Failed to load", ".so"))
    logging.getLogger("torch.utils._pytree").addFilter(_Drop("is an Enum subclass", "natively supported"))
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        _Drop("kernels-community", note=BNB_KERNELS_NOTE))
    logging.getLogger("DeepSpeed").addFilter(_DropWithoutCuda("Setting accelerator to CPU"))
    os.environ.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if "gptqmodel" not in sys.modules:
        sys.meta_path.insert(0, _QuietFinder())


class _QuietLoader:
    """Runs GPTQModel's package import with stdout captured (its WARN/ERROR lines passed to stderr) and puts back
    the environment variables it sets (4); everything else is the real loader's."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self.inner, name)

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        import contextlib
        import io

        keep = {k: os.environ.get(k) for k in ("PYTORCH_ALLOC_CONF", "CUDA_DEVICE_ORDER")}
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                self.inner.exec_module(module)
        finally:
            for k, v in keep.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for line in buf.getvalue().splitlines():
                if line.lstrip().startswith(("WARN", "ERROR", "CRIT")):
                    print(line.rstrip(), file=sys.stderr)


class _QuietFinder:
    """A ``sys.meta_path`` finder for the one package ``gptqmodel``, whoever imports it (peft's GPTQ dispatch,
    transformers' GPTQ quantizer, the lab): the real spec, with :class:`_QuietLoader` around its loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "gptqmodel":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec
