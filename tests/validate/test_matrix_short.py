"""The short CI version of ``scripts/validate-matrix``: a dozen configurations of the shipped matrix, measured by
the lab on this CPU and compared with the planner (``device=cpu``). Targets (issue #5): every tensor component
within 2%, every total within 3%.

The dozen span the methods (inference, full, freeze, LoRA, QLoRA, prefix, prompt), the precisions (fp32, bf16,
nf4 with double quantization), AdamW / 8-bit AdamW / SGD / Adafactor, AMP, eager and SDPA, checkpointing, and the
architectures (Llama-3.2 GQA + tied, Qwen2.5 biases, Mixtral MoE, GPT-2 GeLU/LayerNorm, the pretrained SmolLM2);
two serving rows (generate at concurrency 4, score) are planned by the serving planner (validate.py assumption 9).
"""

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

MATRIX = Path(__file__).resolve().parents[2] / "profiles" / "validation" / "matrix.yaml"
SHORT = ("llama-inf-bf16-s128", "llama-full-amp-adamw", "llama-full-bf16-adafactor", "llama-full-bf16-ckpt-b4",
         "llama-lora-fp32-dropout-adamw8bit", "llama-qlora-nf4-dq-bf16", "llama-prefix-bf16", "qwen-prompt-fp32",
         "mixtral-full-bf16-adamw", "mixtral-freeze-bf16-sgd", "gpt2-lora-amp-eager", "smollm2-full-fp32-sgd",
         "llama-gen-bf16-c4", "llama-score-bf16-c4")


@pytest.fixture(scope="module")
def rows():
    from quantlab.commands.validate import load_matrix, run_cases

    cases = load_matrix(MATRIX, SHORT)
    assert len(cases) == len(SHORT)
    return run_cases(cases)


def test_every_component_and_total_meets_its_target(rows):
    from quantlab.validate import CPU_TARGETS, TENSOR_COMPONENTS

    misses = []
    for r in rows:
        for k in TENSOR_COMPONENTS + ("allocated",):
            e = r.get(f"err_{k}")
            if e is None:
                continue
            tol = CPU_TARGETS["allocated"] if k == "allocated" else CPU_TARGETS["tensor"]
            if abs(e) > tol:
                misses.append(f"{r['id']} {k}: predicted {r[f'pred_{k}_bytes']:,} measured {r[f'meas_{k}_bytes']:,} "
                              f"({100 * e:+.2f}%)")
    assert not misses, "\n".join(misses)


def test_summary_is_within_targets(rows, capsys):
    from quantlab.validate import summarize

    s = summarize(rows)
    for x in s:
        print(x)
    assert {x["component"] for x in s} >= {"weights", "gradients", "optimizer", "activations", "logits_loss",
                                          "kv_cache", "allocated", "quant_constants", "adapters"}
    assert all(x["ok"] for x in s if x["target"] is not None)  # targets met; the workspace row has none
