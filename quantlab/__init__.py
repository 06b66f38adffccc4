"""quantlab: hardware planner and quantization lab for LLMs."""
__version__ = "0.1.0"
