"""The serving settings' defaults and choices, as plain data: what ``quantlab plan``'s parser needs to show them.

:mod:`quantlab.planner.serving` (its dataclasses, enums and the throughput roofline) takes ~15 ms to import, and
every ``quantlab plan`` builds the serving flags, so their defaults and choices live here, once:
``ServeConfig``'s fields take their defaults from :data:`DEFAULTS`, and ``tests/planner/test_serving.py`` checks
that :data:`MODES`, :data:`ENGINES` and :data:`CACHES` are the values of its enums.
"""

DEFAULT_NEW_TOKENS = 256  # tokens generated per sequence in generate mode when neither --new-tokens nor a split is given

MODES = ("generate", "score", "prefill")
ENGINES = ("transformers", "vllm")
CACHES = ("dynamic", "static", "quantized")

DEFAULTS = {
    "mode": "generate",
    "engine": "transformers",
    "cache": "dynamic",
    "kv_bits": 4,  # quantized cache: 4 or 2 (quanto)
    "residual_length": 128,  # transformers QuantizedCache default
    "q_group_size": 64,  # transformers QuantizedCache default
    "block_size": 16,  # vLLM
    "gpu_memory_utilization": 0.9,  # vLLM
    "adapters": 0,
    "replicas": 1,
}
