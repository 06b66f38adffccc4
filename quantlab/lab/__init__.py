"""The lab: real runs on a real model (torch, transformers, peft, bitsandbytes, torchao).

Importing ``quantlab.lab`` is light; each submodule imports torch and friends itself.
"""
