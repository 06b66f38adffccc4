"""Fine-tuning data sets: read, check, deduplicate, measure and plan from them (``quantlab data inspect``).

- :mod:`quantlab.data.records`: JSONL in four kinds (prompt/response, chat messages, plain text, preference
  pairs), detected or forced, one normalised text per record.
- :mod:`quantlab.data.quality`: the quality filters (empty, too long, non-UTF-8, template-only, charset mix).
- :mod:`quantlab.data.dedup`: exact (normalised-text hash), near (datasketch MinHash LSH, verified by exact
  Jaccard) and semantic (all-MiniLM-L6-v2 embeddings, blocked nearest neighbours) duplicates.
- :mod:`quantlab.data.lengths`: token lengths with the model's tokenizer, the histogram (text and PNG) and the
  batches the dataloader draws (dynamic padding or packing).
- :mod:`quantlab.data.dataplan`: the planner at the p50 / p95 / max batch widths, the fit and the epoch time/cost.
- :mod:`quantlab.data.inspection`: the whole report, and the cleaned file with its removal record.

Nothing here is imported at ``quantlab`` start; torch, transformers and sentence-transformers load inside the
functions that need them.
"""
