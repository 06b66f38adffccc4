"""quantlab: hardware planner and quantization lab for LLMs.

``quantlab.track(model, optimizer)`` (:mod:`quantlab.integrations.track`) is loaded on first use, so ``import
quantlab`` stays free of torch and transformers.
"""
__version__ = "0.1.0"
__all__ = ["__version__", "track"]


def __getattr__(name):
    if name == "track":
        from quantlab.integrations.track import track

        return track
    raise AttributeError(f"module 'quantlab' has no attribute {name!r}")
