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
   :func:`import_gptqmodel` imports it with stdout captured (its warnings go to stderr) and puts both variables
   back as they were.
"""

from __future__ import annotations

import logging
import os
import sys

_INSTALLED = False
_NOTED: set[str] = set()

BNB_KERNELS_NOTE = ("bitsandbytes runs 4-bit CPU matmuls through its torch fallback (the optional 'kernels' "
                    "package is not installed): 4-bit CPU speed figures are the fallback's")


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
    """Attach the filters (1-3) to the libraries' loggers, before the libraries exist; idempotent and cheap."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    logging.getLogger("torchao").addFilter(_Drop("Failed to load", ".so"))
    logging.getLogger("torch.utils._pytree").addFilter(_Drop("is an Enum subclass", "natively supported"))
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        _Drop("kernels-community", note=BNB_KERNELS_NOTE))
    os.environ.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")


def import_gptqmodel() -> bool:
    """Import GPTQModel once, quietly (4): True when it is installed. Its stdout is captured and the lines it
    marks as warnings or errors are passed to stderr; the environment variables it sets are restored."""
    import contextlib
    import importlib.util
    import io

    install()
    if "gptqmodel" in sys.modules:
        return True
    if importlib.util.find_spec("gptqmodel") is None:
        return False
    keep = {k: os.environ.get(k) for k in ("PYTORCH_ALLOC_CONF", "CUDA_DEVICE_ORDER")}
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            import gptqmodel  # noqa: F401
    finally:
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for line in buf.getvalue().splitlines():
            if line.lstrip().startswith(("WARN", "ERROR", "CRIT")):
                print(line.rstrip(), file=sys.stderr)
    return True
