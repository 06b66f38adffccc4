#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the main job: the planner on a few questions people ask
# before they rent a GPU, then a short lab run on the embedded real model (SmolLM2-135M, CPU),
# rendered as a report under reports/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
set -x
quantlab plan --model 13b --method qlora --gpu rtx-4090
quantlab compare --model 8b --method lora --seq 2048
quantlab lab ptq --model smollm2-135m --methods fp32,int8,nf4 --quick --store reports/demo/quantlab.sqlite
quantlab report --store reports/demo/quantlab.sqlite --format markdown --out reports/demo/report.md
quantlab report --store reports/demo/quantlab.sqlite --format html --out reports/demo/report.html
