#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the whole test suite on this machine's CPU.
# GPU tests are marked `gpu` and skip with a reason where no CUDA device exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
set +e
python -m pytest -ra --durations=15 "$@"
rc=$?
set -e
# pytest exits 5 when no test ran: that is a failure here, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests ran"; exit 1; fi
exit "$rc"
