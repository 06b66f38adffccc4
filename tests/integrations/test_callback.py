"""PlanCheckCallback on transformers' Trainer with tiny random models (CPU), and the CUDA path with injected readings."""

import pytest

pytest.importorskip("torch")

from integ_fixtures import FakeCuda, lora_model, token_dataset, trainer_args  # noqa: E402


def _train(tmp_path, model, cb, callbacks=(), **kw):
    from transformers import Trainer

    Trainer(model=model, args=trainer_args(tmp_path, **kw), train_dataset=token_dataset(),
            callbacks=list(callbacks) + [cb]).train()
    return cb.check


def test_trainer_lora_components_and_the_total_match_the_plan(tmp_path):
    """Every component exact (the tiny model's step, as validate measures it) and the total within 0.5%: the job
    is planned with loop=trainer (Trainer.compute_loss frees the logits before backward, memory assumption 19).
    The same plan with loop=manual is high by the logits (4 x 32 tokens x 256 vocab x 4 B = 131,072 B), which
    the bound must see."""
    import dataclasses

    from quantlab.integrations.transformers import PlanCheckCallback
    from quantlab.specs import Loop
    from quantlab.validate import predict

    out = []
    cb = PlanCheckCallback(print_fn=out.append)
    c = _train(tmp_path, lora_model(), cb)
    rows = {r.component: r for r in c.rows}
    for k in ("weights", "adapters", "gradients", "optimizer", "activations", "logits_loss"):
        assert rows[k].planned_bytes == rows[k].measured_bytes, rows[k]
    assert rows["adapters"].measured_bytes > 0 and rows["activations"].measured_bytes > 0
    pc = c.derived.config
    assert pc.method.value == "lora" and (pc.batch, pc.seq) == (4, 32) and pc.loop is Loop.TRAINER
    a = rows["allocated"]
    assert abs(a.planned_bytes - a.measured_bytes) / a.measured_bytes < 0.005, c.text
    manual = predict(dataclasses.replace(pc, loop=Loop.MANUAL))["pred_allocated_bytes"]
    assert manual - a.planned_bytes == 4 * 32 * 256 * 4 - 4  # (less Trainer's 0-d fp32 loss divisor, assumption 19)
    assert abs(manual - a.measured_bytes) / a.measured_bytes > 0.005  # the bound tells the two loops apart
    assert c.measurement is not None and not any("freed before backward" in n for n in c.measurement.notes)
    assert "planned vs measured" in out[0] and "activations" in out[0]
    assert max(len(line) for line in out[0].splitlines()) <= 80


def test_a_manual_plan_of_a_trainer_job_says_the_logits_were_freed(tmp_path, monkeypatch):
    """The note appears only where the plan and the measurement disagree: a plan forced to loop=manual."""
    import quantlab.integrations.derive as dv
    from quantlab.integrations.transformers import PlanCheckCallback

    real = dv.trainer_args_fields

    def manual(d):
        f, amp, und = real(d)
        f["loop"] = "manual"
        return f, amp, und

    monkeypatch.setattr(dv, "trainer_args_fields", manual)
    c = _train(tmp_path, lora_model(), PlanCheckCallback(print_fn=lambda s: None))
    assert c.derived.config.loop.value == "manual"
    assert any("freed before backward" in n for n in c.measurement.notes)
    rows = {r.component: r for r in c.rows}
    assert rows["allocated"].planned_bytes - rows["allocated"].measured_bytes > 4 * 32 * 256 * 4 * 0.9


def test_grad_accumulation_and_checkpointing_are_derived(tmp_path):
    from quantlab.integrations.transformers import PlanCheckCallback

    cb = PlanCheckCallback(print_fn=lambda s: None)
    c = _train(tmp_path, lora_model(), cb, gradient_accumulation_steps=2, gradient_checkpointing=True,
               per_device_train_batch_size=2)
    pc = c.derived.config
    assert pc.grad_accum == 2 and pc.grad_checkpointing and pc.batch == 2
    rows = {r.component: r for r in c.rows}
    assert rows["activations"].ok and rows["gradients"].ok and rows["optimizer"].ok, c.text


def test_scalars_reach_a_report_to_integration_registered_before_the_callback(tmp_path, monkeypatch):
    """Trainer puts report_to integrations before user callbacks; the callback moves itself in front of them, so
    the integration's on_log sees the quantlab/ scalars (callback assumption 2)."""
    import transformers.integrations as ti
    from transformers import TrainerCallback

    from quantlab.integrations.transformers import PlanCheckCallback

    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs))

    monkeypatch.setitem(ti.INTEGRATION_TO_CALLBACK, "recorder", Recorder)
    cb = PlanCheckCallback(print_fn=lambda s: None)
    _train(tmp_path, lora_model(), cb, callbacks=[Recorder()])
    logged = [d for d in seen if "quantlab/activations_measured_mib" in d]
    assert len(logged) == 1
    assert logged[0]["quantlab/weights_error"] == pytest.approx(0.0, abs=1e-9)


def test_no_integration_no_scalars_in_the_logs(tmp_path):
    from transformers import TrainerCallback

    from quantlab.integrations.transformers import PlanCheckCallback

    seen = []

    class After(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs))

    cb = PlanCheckCallback(print_fn=lambda s: None)
    _train(tmp_path, lora_model(), cb)
    _train(tmp_path, lora_model(), PlanCheckCallback(print_fn=lambda s: None), callbacks=[After()])
    assert seen and not any(k.startswith("quantlab/") for d in seen for k in d)


def test_cuda_readings_are_compared_as_gpu_totals(tmp_path):
    """On CUDA the totals are the allocator's and NVML's readings (injected here), against the plan's cuda totals."""
    from quantlab.integrations.transformers import PlanCheckCallback

    fake = FakeCuda()
    c = _train(tmp_path, lora_model(), PlanCheckCallback(print_fn=lambda s: None, cuda=fake))
    rows = {r.component: r for r in c.rows}
    assert c.measurement.device == "cuda" and fake.resets == 1
    assert rows["allocated"].measured_bytes == fake.a and rows["reserved"].measured_bytes == fake.r
    assert rows["process"].measured_bytes == fake.p and rows["reserved"].target == 0.06
    assert rows["weights"].ok  # tensor components are the same bytes on either device


def test_training_shorter_than_the_measured_step_says_so(tmp_path):
    from quantlab.integrations.transformers import PlanCheckCallback

    out = []
    cb = PlanCheckCallback(step=5, print_fn=out.append)
    assert _train(tmp_path, lora_model(), cb) is None
    assert "before optimizer step 5" in out[-1]


def test_bad_step_is_one_line():
    from quantlab.errors import QuantlabError
    from quantlab.integrations.transformers import PlanCheckCallback

    with pytest.raises(QuantlabError, match="positive integer"):
        PlanCheckCallback(step=0)


def test_embedded_model_trainer_lora_within_2_percent(tmp_path):
    """The embedded SmolLM2-135M (fp32), LoRA r 8 on q/v, batch 2 x 32 tokens, plain Trainer: every component
    within 2% of the plan."""
    from transformers import AutoModelForCausalLM, Trainer

    from quantlab.errors import QuantlabError
    from quantlab.integrations.transformers import PlanCheckCallback
    from quantlab.lab.model import ensure_embedded

    try:
        path = ensure_embedded(progress=False)
    except QuantlabError as e:
        pytest.skip(str(e))
    from peft import LoraConfig, get_peft_model

    import torch

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    cb = PlanCheckCallback(print_fn=lambda s: None)
    Trainer(model=model, args=trainer_args(tmp_path, per_device_train_batch_size=2),
            train_dataset=token_dataset(n=4, seq=32, vocab=49152), callbacks=[cb]).train()
    for r in cb.check.rows:
        if r.component != "allocated":
            assert r.ok, cb.check.text


def test_an_evaluating_job_sets_its_step_beside_the_training_steps_plan(tmp_path):
    """With evaluation during training (memory assumption 20) the plan's peak may be the evaluation's; the callback
    measures a training step, so it sets it beside the plan without the evaluation phase, and says so."""
    import dataclasses

    from quantlab.integrations.transformers import PlanCheckCallback
    from quantlab.validate import predict

    from transformers import Trainer

    cb = PlanCheckCallback(print_fn=lambda s: None)
    args = trainer_args(tmp_path, eval_strategy="steps", eval_steps=100, per_device_eval_batch_size=64)
    Trainer(model=lora_model(), args=args, train_dataset=token_dataset(), eval_dataset=token_dataset(),
            callbacks=[cb]).train()
    c = cb.check
    assert c.derived.config.eval_batch == 64
    step = predict(dataclasses.replace(c.derived.config, eval_batch=None))["pred_allocated_bytes"]
    assert {r.component: r for r in c.rows}["allocated"].planned_bytes == step
    assert predict(c.derived.config)["pred_allocated_bytes"] > step  # the evaluation is the larger phase here
    assert "evaluation during training (eval_batch 64)" in c.text
