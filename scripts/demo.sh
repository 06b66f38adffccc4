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
# preference tuning and the other fine-tuning methods, side by side; an encoder classifier
quantlab plan --model 8b --method dpo --lora-r 16 --batch 2 --seq 2048 --gpu a100-80gb
quantlab compare --model qwen2.5-0.5b --methods lora,dora,bitfit,ptuning,dpo,orpo --encoder-hidden-size 128 --batch 2
quantlab plan --model bert-base-uncased --num-labels 8 --train-last-k 3 --batch 16 --seq 128
# serving: how many concurrent 8k requests vLLM fits on an L40S, and Llama-2-70B split over four A100s
quantlab plan --model 8b --method inference --engine vllm --max-model-len 8192 --gpu l40s
quantlab plan --model 70b --method inference --num-gpus 4 --gpu a100-80gb
# the shipped fine-tuning set: duplicates, token lengths, and the QLoRA job it implies on a 4090
quantlab data inspect tasks/json-extract/data.jsonl --plan --method qlora --batch 8 --gpu rtx-4090
quantlab lab ptq --model smollm2-135m --methods fp32,int8,nf4 --quick --store reports/demo/quantlab.sqlite
quantlab report --store reports/demo/quantlab.sqlite --format markdown --out reports/demo/report.md
quantlab report --store reports/demo/quantlab.sqlite --format html --out reports/demo/report.html
# the planner checked against the lab on a scaled-down Llama-3.2 (random weights: fine for memory), per component
quantlab validate --model llama-3.2-1b --scale num_hidden_layers=2,hidden_size=256,intermediate_size=1024,vocab_size=4096 --method qlora --compute-dtype fp32 --batch 2 --seq 64 --no-progress
