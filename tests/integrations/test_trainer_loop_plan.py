"""loop=trainer (memory.py assumption 19) against a real transformers Trainer step on a tiny random Llama (CPU).

PlanCheckCallback measures optimizer step 2 with StepProbe (the lab's instrument: tensor bytes on this CPU) and
derives the plan from the live job (derive assumption 7: a Trainer job is planned with loop=trainer). fp32 weights,
AdamW, batch 2 x 32 tokens, gradient accumulation 2; full fine-tune and LoRA (r 4 on q/v), with and without
gradient checkpointing. Every component the step measures must be the plan's to the byte, and the allocated peak
within 0.5%; the same plan with loop=manual (the logits live through backward) must fall outside that bound. Under
gradient checkpointing the peak is the last block's backward (memory assumption 5b, activations A14: the recomputed
block beside dY and down_proj's gradients, the head's saved tensors freed) plus the CPU RNG state each checkpointed
block stashes (5c); what stays unplanned is the labels and the num_items_in_batch tensor (input tensors, assumption
19) and the loss's 0-d scalars, 532 B on the full fine-tune.
"""

import dataclasses

import pytest

pytest.importorskip("torch")

from integ_fixtures import lora_model, token_dataset, trainer_args  # noqa: E402

BATCH, SEQ, VOCAB = 2, 32, 256


def _model(method):
    from quantlab.lab.model import tiny_model

    return lora_model() if method == "lora" else tiny_model("llama")


def _check(tmp_path, method, ckpt, accum=2):
    from transformers import Trainer

    from quantlab.integrations.transformers import PlanCheckCallback
    from quantlab.specs import Loop

    cb = PlanCheckCallback(print_fn=lambda s: None)
    args = trainer_args(tmp_path, per_device_train_batch_size=BATCH, gradient_accumulation_steps=accum,
                        gradient_checkpointing=ckpt)
    Trainer(model=_model(method), args=args, train_dataset=token_dataset(n=16, seq=SEQ, vocab=VOCAB),
            callbacks=[cb]).train()
    c = cb.check
    assert c is not None and c.derived.config is not None, c and c.text
    pc = c.derived.config
    assert (pc.method.value, pc.grad_checkpointing, pc.grad_accum, pc.batch, pc.seq) == (method, ckpt, accum, BATCH, SEQ)
    assert pc.loop is Loop.TRAINER and pc.precision.value == "fp32"
    rows = {r.component: r for r in c.rows}
    for k in ("weights", "gradients", "optimizer", "activations", "logits_loss") + (("adapters",) * (method == "lora")):
        assert rows[k].measured_bytes > 0 and rows[k].planned_bytes == rows[k].measured_bytes, (k, c.text)
    assert not any("logits were" in n for n in c.measurement.notes), c.text  # plan and step agree on the logits
    return c, rows["allocated"]


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_trainer_step_components_are_the_trainer_loop_plan(tmp_path, method, ckpt):
    _check(tmp_path, method, ckpt)


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-ckpt", "ckpt"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_trainer_step_allocated_is_the_trainer_loop_plan(tmp_path, method, ckpt):
    from quantlab.specs import Loop
    from quantlab.validate import predict

    c, a = _check(tmp_path, method, ckpt)
    assert abs(a.error) < 0.005, c.text
    manual = predict(dataclasses.replace(c.derived.config, loop=Loop.MANUAL))["pred_allocated_bytes"]
    assert manual > a.planned_bytes
    assert abs(manual - a.measured_bytes) / a.measured_bytes > 0.005, c.text  # the bound tells the loops apart


@pytest.mark.parametrize("method", ["full", "lora"])
def test_trainer_checkpointed_step_without_accumulation(tmp_path, method):
    """Grad accum 1: Trainer's zero_grad(set_to_none=True) leaves the step without gradients, so the checkpointed
    backward's peak moves to the first block, beside the later blocks' gradients (memory assumption 5b): planned
    1,900,372 B against 1,900,900 measured on the full fine-tune (this CPU, torch 2.13, transformers 5.24)."""
    c, a = _check(tmp_path, method, True, accum=1)
    assert abs(a.error) < 0.005, c.text


@pytest.mark.parametrize("ckpt", [True, False], ids=["ckpt", "no-ckpt"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_trainer_eager_attention_at_512_tokens(tmp_path, bf16, ckpt):
    """Eager attention at 512 tokens: the peak is the last block's softmax backward (activations A14d, memory 5b and
    5e; with checkpointing 40% (fp32) and 15% (bf16) above the plan without it, without checkpointing 24% (fp32), on
    this CPU)."""
    import torch
    from transformers import Trainer

    from quantlab.integrations.transformers import PlanCheckCallback
    from quantlab.lab.model import tiny_model

    cb = PlanCheckCallback(print_fn=lambda s: None)
    model = tiny_model("llama", attn_implementation="eager", dtype=torch.bfloat16 if bf16 else None)
    args = trainer_args(tmp_path, per_device_train_batch_size=BATCH, gradient_accumulation_steps=2,
                        gradient_checkpointing=ckpt)
    Trainer(model=model, args=args, train_dataset=token_dataset(n=8, seq=512, vocab=VOCAB), callbacks=[cb]).train()
    c = cb.check
    assert c.derived.config.attn.value == "eager" and c.derived.config.seq == 512, c.text
    a = {r.component: r for r in c.rows}["allocated"]
    assert abs(a.error) < 0.005, c.text


def test_trainer_loop_with_chunked_loss_is_one_line():
    from quantlab.lab.model import tiny_config
    from quantlab.specs import Loop, Loss, Method, ModelSpec, PlanConfig, SpecError

    m = ModelSpec.from_hf_config(tiny_config("llama").to_dict(), name="tiny")
    with pytest.raises(SpecError, match="torchtune"):
        PlanConfig(model=m, method=Method.LORA, loss=Loss.CHUNKED, loop=Loop.TRAINER)
