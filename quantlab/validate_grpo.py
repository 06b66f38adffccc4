"""GRPO validation: TRL 1.16's ``GRPOTrainer`` measured by the lab (:mod:`quantlab.lab.grpo`) beside
:func:`quantlab.planner.preference.preference_plan` for the same step, one row in :mod:`quantlab.validate`'s row
schema (``pred_<component>_bytes``, ``meas_<component>_bytes``, ``err_<component>``, ``diff_<component>_bytes``,
``ok``), so ``quantlab validate`` can carry GRPO matrix rows (the integrator wires :func:`validate_grpo` in).

Assumptions (V1, V2, ...):

V1. The model is random weights of a shipped profile's architecture at a scale (config.json overrides: the case's
    ``hf_config``, saved to a folder by :func:`quantlab.validate.model_source`, so a reference copy loads from a
    path as TRL's ``create_model_from_path`` needs), tokenized by the embedded SmolLM2 tokenizer (so the scale
    keeps the 49152-token vocabulary). Prompts are synthetic (lab/grpo.py G1): every prompt has the same width, no
    padding; ``ignore_eos`` (G3): every completion runs ``max_completion_length`` steps. Two optimizer steps,
    the second measured (G5).
V2. The planned step is the measured one (as the DPO rows are, validate assumption 13): ``batch`` = the measured
    training sequences (GRPO's ``per_device_train_batch_size`` counts completions, preference P4), ``seq`` = the
    measured prompt width + completion width, ``max_completion_length`` = the completion width, padded when the
    training mask had padding, checkpointing as the trainer ran, LoRA on the same targets, fp32, AdamW,
    ``--device cpu``.
V3. Components, on the lab's boundaries: ``weights``, ``adapters``, ``gradients``, ``optimizer`` one to one;
    ``activations``: the plan's (backbone + fused head's saved rows, preference P2) against what the policy forward
    saved (StepProbe ``activations`` + ``logits_loss``); ``kv_cache``: the plan's ``generation_kv_cache`` against
    generate's cache at the end; ``prefill_transient`` / ``decode_transient``: the serving planner's generate phase
    components (:func:`quantlab.planner.serving.transformers_plan` on the configuration preference P4 builds)
    against the phases of generate's window; ``reference_weights`` with ``beta`` > 0 and a full policy;
    ``reference_forward`` / ``old_policy_forward``: the allocator's growth over TRL's no-grad scoring forward of
    that kind (lab/grpo.py G5) against the plan's ``reference_forward`` (preference P3) and
    ``old_policy_forward`` (P4: ``num_iterations`` > 1 or ``steps_per_generation`` not dividing the accumulation
    steps).
V4. Totals: ``allocated`` (the step's peak, the larger phase) against ``peak_allocated_bytes``; each phase apart:
    ``generation_allocated`` = the plan's static bytes (weights, adapters, optimizer states, a reference or reward
    model; gradients only where they are kept, P8) + the larger of ``generation_kv_cache`` +
    ``generation_transient`` and ``generation_scoring`` (the no-grad scoring forwards, P4), against the largest
    measured window of the generation phase (generate, then any scoring forward);
    ``training_allocated`` = the same static bytes + the larger of the policy's activations + fused head, the
    gradients + the optimizer step and the gradients + an embedding's gradient tail, against StepProbe's total.
    Targets: validate's (tensor components 2%, totals 3%).
V5. The lab runs TRL's default gradient accumulation (1): a case asks for ``grad_accum`` 1; its
    ``num_iterations`` and ``steps_per_generation`` go to the trainer, and the measured step is the first after
    the first that generates again (1 + num_iterations x steps_per_generation).
"""

from __future__ import annotations

import dataclasses

from quantlab.errors import QuantlabError

PHASE_TOTALS = ("generation_allocated", "training_allocated")
SCORING = ("reference_forward", "old_policy_forward")  # TRL's no-grad scoring forwards (lab/grpo.py G5)
STATIC = ("weights", "quant_constants", "adapters", "optimizer", "ddp_buckets", "reference_weights", "reward_model")


def measure_grpo(case, *, log=lambda s: None) -> dict:
    """Run TRL's GRPOTrainer on the case's model (V1) and return the ``meas_`` keys, the step's shape and the
    phases' readings. The case's ``num_iterations`` > 1 (or ``steps_per_generation`` > 1) adds the old policy's
    scoring forward; the step measured is the first after the first that generates again (V5; 2 by default)."""
    from transformers import AutoTokenizer

    from quantlab.lab.grpo import GRPORun, run_grpo
    from quantlab.lab.model import ensure_embedded
    from quantlab.specs import Method
    from quantlab.validate import model_source

    pc, pref = case.config, case.variant
    C = pref.max_completion_length
    if pc.seq <= C:
        raise QuantlabError(f"{case.id}: seq {pc.seq} leaves no prompt beside max-completion-length {C}")
    if pc.grad_accum != 1:
        raise QuantlabError(f"{case.id}: the GRPO lab runs gradient accumulation 1 (TRL's default), got "
                            f"grad-accum {pc.grad_accum} (V5)")
    spg = pref.steps_per_generation or 1
    step = 1 + pref.num_iterations * spg  # AdamW's states exist, and TRL generates at this step (lab/grpo.py G5)
    max_steps = step
    with model_source(case) as src:
        tok = AutoTokenizer.from_pretrained(ensure_embedded(progress=False))
        tok.save_pretrained(src.path)
        run = GRPORun(model=str(src.path), task=None, synthetic_prompt_tokens=pc.seq - C,
                      train_prompts=max_steps * pc.batch, eval_prompts=0, evaluate=False, max_steps=max_steps,
                      batch=pc.batch, num_generations=pref.num_generations, max_completion_length=C,
                      beta=float(pref.beta or 0.0), lora_r=pc.lora_r, lora_alpha=pc.lora_alpha,
                      lora_targets=tuple(pc.lora_targets), policy="full" if pc.method is Method.FULL else "lora",
                      grad_checkpointing=pc.grad_checkpointing, ignore_eos=True, measure_step=step,
                      num_iterations=pref.num_iterations, steps_per_generation=pref.steps_per_generation)
        res = run_grpo(run, None, log=log, tokenizer=tok)
    return measured_keys(res)


def measured_keys(res: dict) -> dict:
    """The ``meas_`` keys of a :func:`quantlab.lab.grpo.run_grpo` result (V3, V4), with the step's shape."""
    m, g = res["training"], res["generation"]
    out = {f"meas_{k}_bytes": m.get(f"meas_{k}_bytes") for k in ("weights", "adapters", "gradients", "optimizer")}
    out["meas_activations_bytes"] = (m.get("meas_activations_bytes") or 0) + (m.get("meas_logits_loss_bytes") or 0)
    for k in ("kv_cache", "prefill_transient", "decode_transient"):
        out[f"meas_{k}_bytes"] = g.get(f"meas_{k}_bytes")
    if res.get("reference") == "copy":
        out["meas_reference_weights_bytes"] = res["reference_bytes"]
    for k in ("generation_allocated", "training_allocated", "allocated"):
        out[f"meas_{k}_bytes"] = res[f"meas_{k}_bytes"]
    for what in ("reference", "old_policy"):  # the largest allocator growth of such a scoring window (V3)
        grow = [s["meas_transient_bytes"] for s in res["scoring"] if s["what"] == what]
        if grow:
            out[f"meas_{what}_forward_bytes"] = max(grow)
    out.update(meas_trainable_params=m.get("meas_trainable_params"), meas_train_sequences=res["train_sequences"],
               meas_train_tokens=res["train_tokens"], meas_train_padded=res["train_padded"],
               meas_generation_rows=g["rows"], meas_prompt_tokens=g["prompt_tokens"],
               meas_prompt_padded=g["prompt_padded"], meas_completion_tokens=g["new_tokens"],
               meas_generation_forwards=g["forwards"], meas_scoring=[
                   {k: v for k, v in s.items() if not k.startswith("_")} for s in res["scoring"]],
               meas_reference=res["reference"], meas_grad_checkpointing=res["grad_checkpointing"],
               meas_num_iterations=res["config"]["num_iterations"],
               meas_steps_per_generation=res["config"]["steps_per_generation"],
               meas_notes=list(res.get("training_notes", ())))
    return out


def planned_step(pc, pref, meas: dict):
    """(PlanConfig, PreferenceConfig) of the measured step (V2)."""
    from quantlab.specs import DeviceMode

    C = meas["meas_completion_tokens"]
    cfg = dataclasses.replace(pc, batch=meas["meas_train_sequences"], seq=meas["meas_prompt_tokens"] + C,
                              padding_mask=bool(meas["meas_train_padded"]),
                              grad_checkpointing=bool(meas["meas_grad_checkpointing"]), device=DeviceMode.CPU)
    return cfg, dataclasses.replace(pref, max_completion_length=C)


def predict_grpo(cfg, pref) -> dict:
    """``pred_`` keys of the GRPO plan on the lab's boundaries (V3, V4)."""
    from quantlab.planner import memory as M
    from quantlab.planner.preference import grpo_generate_config, preference_plan
    from quantlab.planner.serving import transformers_plan
    from quantlab.validate import TENSOR_COMPONENTS

    p = preference_plan(cfg, pref)
    c = p.components
    out = {f"pred_{k}_bytes": c.get(k, 0) for k in TENSOR_COMPONENTS}
    out["pred_kv_cache_bytes"] = c["generation_kv_cache"]
    # the generate phase as preference P4 plans it (the same configuration preference_plan builds)
    sp = transformers_plan(grpo_generate_config(cfg, pref))
    out["pred_prefill_transient_bytes"] = sp.components["prefill_transient"]
    out["pred_decode_transient_bytes"] = sp.components.get("decode_transient", 0)
    out["pred_reference_forward_bytes"] = c.get("reference_forward", 0)
    out["pred_old_policy_forward_bytes"] = c.get("old_policy_forward", 0)
    G = c.get("gradients", 0)
    kept_grads = M.keeps_grads(cfg) or cfg.optimizer_in_backward
    static = sum(c.get(k, 0) for k in STATIC) + (G if kept_grads else 0)
    # the generation phase as the plan places it: generate, or a no-grad scoring forward (preference P4)
    out["pred_generation_allocated_bytes"] = static + max(c["generation_kv_cache"] + c["generation_transient"],
                                                          c.get("generation_scoring", 0))
    G_ = 0 if kept_grads else G
    train = max(c["activations"] + c.get("logits", 0), G_ + c.get("optimizer_step", 0),
                G_ + c.get("embedding_grad_tail", 0))
    out["pred_training_allocated_bytes"] = static + train
    out["pred_allocated_bytes"] = p.peak_allocated_bytes
    out["pred_trainable_params"] = p.trainable_params
    out["pred_components"] = dict(c)
    out["plan_notes"] = list(p.notes)
    return out


def compare_grpo(case, meas: dict) -> dict:
    """One row in validate's schema (V2-V4): the case's conditions, the plan of the measured step beside the
    measurement, ``err_`` / ``diff_`` per component and total, ``ok`` against validate's targets."""
    from quantlab.validate import CPU_TOTALS, TENSOR_COMPONENTS, score, target

    pc, pref = case.config, case.variant
    cfg, pr = planned_step(pc, pref, meas)
    row = dict(id=case.id, model=case.model, weights_init=case.weights, overrides=dict(case.overrides) or None,
               method="grpo", policy=pc.method.value, plans_over=pc.method.value, precision=pc.precision.value,
               double_quant=pc.double_quant, keep_grads=cfg.keep_grads, grad_accum=cfg.grad_accum,
               compute_dtype=pc.compute_dtype.value, training_precision=pc.training_precision.value,
               optimizer=pc.optimizer.value, batch=cfg.batch, seq=cfg.seq, attn=pc.attn.value,
               grad_checkpointing=cfg.grad_checkpointing, device=meas.get("device", "cpu"),
               padding_mask=cfg.padding_mask, num_generations=pr.num_generations,
               max_completion_length=pr.max_completion_length, beta=pr.beta, reference=meas.get("meas_reference"),
               num_iterations=meas.get("meas_num_iterations", 1),
               steps_per_generation=meas.get("meas_steps_per_generation"))
    if pc.method.value in ("lora", "qlora"):
        row.update(lora_r=pc.lora_r, lora_alpha=pc.lora_alpha, lora_targets=list(pc.lora_targets),
                   lora_dropout=pc.lora_dropout)
    row.update(predict_grpo(cfg, pr))
    row.update(meas)
    row["ok"] = score(row, TENSOR_COMPONENTS + SCORING + CPU_TOTALS + PHASE_TOTALS,
                      lambda k: target("allocated" if k in PHASE_TOTALS else k, "cpu"))
    if case.expect:
        row["expected_errors"] = dict(case.expect)
    return row


def grpo_case(id: str, model: str, scale: dict, pref, **config):
    """A :class:`quantlab.validate.Case` of a GRPO configuration on profile ``model`` at ``scale`` (random
    weights, V1): ``config`` is PlanConfig fields (``method`` the policy: lora or full)."""
    from quantlab.groundtruth import model_spec
    from quantlab.profiles import load_model
    from quantlab.specs import DeviceMode, PlanConfig
    from quantlab.validate import Case

    resolved = load_model(model)
    spec = model_spec(resolved.name, scale)
    pc = PlanConfig.from_dict({**config, "device": DeviceMode.CPU.value}, model=spec)
    hf = dict(resolved.config)
    hf.update(scale)
    return Case(id, pc, resolved.name, "random", tuple(sorted(scale.items())), hf, variant=pref)


def validate_grpo(case, **kw) -> dict:
    """Measure and compare one GRPO case (a :class:`quantlab.validate.Case` whose ``variant`` is a GRPO
    :class:`~quantlab.planner.preference.PreferenceConfig`)."""
    from quantlab.planner.preference import Objective, PreferenceConfig

    if not isinstance(case.variant, PreferenceConfig) or case.variant.objective is not Objective.GRPO:
        raise QuantlabError(f"{case.id}: validate_grpo takes a GRPO case (variant: PreferenceConfig(grpo))")
    return compare_grpo(case, measure_grpo(case, **kw))
