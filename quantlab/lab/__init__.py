"""The lab: real runs on a real model (torch, transformers, peft, bitsandbytes, torchao).

Importing ``quantlab.lab`` is light; each submodule imports torch and friends itself. The filters for the
libraries' known noise (:mod:`quantlab.lab.quiet`) are attached here, before any of them is imported.
"""

from quantlab.lab import quiet as _quiet

_quiet.install()
