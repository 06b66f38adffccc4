#!/usr/bin/env bash
# quantlab: smollm2-135m, lora, 2 process(es), kind=accelerate
# Usage: bash launch.sh your_train.py [script args...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec accelerate launch --config_file "$here/accelerate_config.yaml" "$@"
