"""Validation: the lab runs exactly the configuration the planner planned and measures it per component.

One :class:`Case` is a :class:`~quantlab.specs.PlanConfig` plus how to build its model: the embedded pretrained
SmolLM2-135M, or random weights from a shipped architecture profile, optionally scaled down (fewer layers, a
smaller hidden size or vocabulary: HF config overrides). The planner is given the *same* scaled spec, so the
comparison is like with like; random weights are fine for memory (quality needs real ones).

What is measured on a CPU (numbered assumptions; the planner plans with ``device=cpu``: no CUDA context, no
allocator reserve):

1. ``weights``, ``quant_constants``, ``adapters``: distinct parameter and buffer storages of the built model, with
   bitsandbytes' quantization state (:func:`quantlab.lab.measure.model_bytes`); adapters are the trainable
   parameters of a PEFT method (:func:`quantlab.lab.finetune.component_bytes`).
2. Training runs two optimizer steps on one synthetic batch of exactly ``batch x seq`` random token ids (no
   padding, no attention mask; a ``padding_mask`` configuration makes the last position of the first row padding,
   so transformers builds the mask: activations A3c) and measures the second, when the optimizer states exist. Gradients are zeroed as
   the configuration says (memory assumption 3): ``zero_grad(set_to_none=True)`` (Trainer's zeroing, the default
   ``keep_grads=False``: the measured step starts without gradients) or ``set_to_none=False`` (``keep_grads``: they
   stay allocated through the next step). ``grad_accum`` > 1 runs that many micro-batches (forward and backward)
   before the step, the gradients accumulating. ``gradients``: distinct ``p.grad`` storages after backward;
   ``optimizer``: every tensor in ``optimizer.state`` after the step (:mod:`quantlab.lab.saved_tensors`).
3. ``activations``: the bytes the model's forward saves for backward (``saved_tensors_hooks``, storages
   deduplicated, parameters and buffers excluded). Under gradient checkpointing the block inputs are saved, and
   the keyword tensors each checkpointed block is called with (RoPE's cos/sin, eager attention masks) are held
   by the checkpoint's closure without being saved tensors: a forward pre-hook on every decoder block collects
   them, and their distinct storages not already counted are added (the planner counts both).
4. ``logits_loss``: the logits tensor plus what the loss saves for backward, measured around
   ``model.loss_function`` (transformers' ``ForCausalLMLoss``) run on the logits exactly as the model would under
   ``labels=`` (prompt tuning: the virtual tokens carry label -100). Compared with the planner's logits and
   saved-loss part (:func:`quantlab.planner.memory.loss_buffers`); the two fp32 T x vocab buffers the loss's
   backward allocates are not saved tensors: they are in the total (5), not in this component. The step keeps
   the logits referenced until backward has run, as a loop that holds the model's output does (``out =
   model(...); out.loss.backward()``), and as the planner assumes (memory assumption 6).
5. ``allocated`` (the total): the peak of live CPU tensor bytes over the measured step. The live bytes at the
   start (model storages, gradients, optimizer states, the input batch) are counted from the tensors; the growth
   over them is the running sum of the CPU allocator's allocation and free events that
   ``torch.profiler.profile(profile_memory=True)`` records (kineto ``[memory]`` events with signed ``nbytes``,
   checked in torch 2.13 against a tensor of known size), taken at its maximum. Compared with the planner's
   ``peak_allocated_bytes``. The CPU matmul kernels (oneDNN/MKL behind ``aten::mm``/``addmm``/``bmm``) take a
   transient workspace from the same allocator and free it before the op returns; the profiler shows it as an
   allocation and its free inside the op (the op's output is allocated there too, but freed later). Those pairs
   are taken out of the tensor total and reported apart: ``meas_allocated_with_workspace_bytes`` (every event)
   and ``meas_matmul_workspace_max_bytes``. Its size follows oneDNN's blocking heuristics for the shape, dtype
   and thread count, not a rule in library code we could model (measured here for a bf16 x @ W.T with 128
   tokens: 42,624 bytes for W 1024 x 256, 534,144 for W 256 x 1024; fp16 0.2-1.3 MB; fp32 none seen): it matters
   only for the tiny scaled-down models (up to 7% of a 5 MB bf16/fp16 inference total), and it has no CUDA
   counterpart in these terms (cuBLAS's workspace is the allocator's, read by the GPU path).
6. Inference: one prefill forward over ``batch x seq`` tokens with ``use_cache=True`` under ``no_grad``;
   ``kv_cache`` is the distinct storages of the returned cache's key and value tensors; the total is (5) around
   that forward. Compared with the planner's ``kv_cache`` and ``peak_allocated_bytes``.
7. On a GPU (:func:`cuda_readings`, used only when ``torch.cuda.is_available()``): ``max_memory_allocated`` and
   ``max_memory_reserved`` after ``reset_peak_memory_stats`` with the device synchronised, and the NVML figure
   of this process, against the planner's ``cuda`` totals (allocated, reserved, process). The readings function
   is a parameter, so the comparison is tested without a GPU.

8. What the CPU instrument sees that the planner does not model is only that matmul workspace (5): it is shown
   beside every total (``err_allocated_with_workspace``) and not held to the target.
9. Serving (a case with ``serve``, a :class:`quantlab.planner.serving.ServeConfig`; predicted by
   :func:`quantlab.planner.serving.serve_plan`, not :func:`quantlab.planner.plan`): the model as (6), with
   ``adapters`` K LoRA adapters in PEFT (``get_peft_model`` then ``add_adapter``, fp32 by
   ``autocast_adapter_dtype``, the first active; ``adapters`` is every ``lora_`` parameter, active or not) or one
   merged (``merge_and_unload``). Inputs: ``concurrency x prompt_tokens`` random ids and an all-ones attention
   mask (what a tokenizer returns), counted at the start. ``generate``: ``model.generate`` with transformers'
   own generation defaults (the checkpoint's generation_config.json replaced by ``GenerationConfig()``: sampling
   takes top_k 50), ``do_sample`` as planned, no EOS (every sequence runs ``new_tokens``), the cache generate
   makes (``cache_implementation="static"`` for the static cache); ``prefill``: the same with one new token (the
   prefill forward and the first token's sampling); ``score``: one forward with every token's logits and the
   cache kept. The peak (5) spans the whole call; a ``record_function`` range around every model forward splits
   it into the prefill phase (before the second forward) and the decode phase. ``kv_cache``: the cache's key and
   value storages at the end; ``prefill_transient``: the prefill phase's peak less the cache after the first
   forward; ``decode_transient``: the decode phase's peak less the cache at the end (the planner's phases, S1).

10. ``loss=chunked`` (torchtune's ``CEWithChunkedOutputLoss``, not installed here: :func:`chunked_ce` is its
    ``forward`` in plain torch): the backbone's last hidden state goes through lm_head in 8 ``tensor_split`` chunks
    along the sequence (torchtune's ``set_num_output_chunks``), the labels shifted once by the recipe (an ignore
    column appended); ``logits_loss`` is the chunks plus what the loss saves. ``loss=trl-fused`` is measured in
    TRL's own SFTTrainer by the integration (reports/integrations-cpu); ``liger`` needs Triton (no CPU run).
12. ``optimizer_in_backward``: torch's "fuse the optimizer step into the backward pass" loop: one optimizer per
    trainable parameter, stepped and zeroed (``set_to_none=True``) in ``register_post_accumulate_grad_hook``; no
    ``optimizer.step()`` after backward. ``optimizer`` is every per-parameter optimizer's state.
11. ``packed``: each row holds two documents, told apart by ``position_ids`` restarting at 0 half way, with no
    attention mask (what a packing collator with ``return_position_ids`` hands the model).

13. The issue #13 methods (a case with ``variant``) are measured by the lab code written for them, called here, not
    re-implemented. BitFit, DoRA, P-tuning: :func:`quantlab.lab.peft_measured.measure_step` on the model its
    builders make (``bitfit``, ``dora``, ``ptuning`` over ``tiny_from_profile``: the case's profile and scale,
    random weights): two AdamW steps on one random ``batch x seq`` batch, the second measured, gradients zeroed
    with ``set_to_none=False`` (so the case is planned with ``keep_grads``); activations are the saved tensors
    still alive after the forward (its ``LiveSaved``). Distillation: :func:`~quantlab.lab.peft_measured.
    measure_distill` (TRL 1.16 GKDTrainer's ``generalized_jsd_loss``; the teacher is a second random model of
    the ``teacher`` profile and scale, seed 1); ``loss_saved`` is what the loss keeps for backward, against
    :func:`quantlab.planner.peft_methods.jsd_saved`. Predicted by ``variant_flags.variant_plan`` (the
    peft_methods compositions). DPO, ORPO, SimPO, KTO, reward: TRL's trainer of the objective in
    :func:`quantlab.lab.preference.run_preference` on the shipped json-prefs pairs (``2 x batch`` training pairs,
    2 held-out, 2 steps, ``max_length`` = the case's ``seq``), tokenized by the embedded tokenizer (the scale must
    keep its 49152-token vocabulary); the step is measured by StepProbe. The data decide the step's shape: the
    case is planned (``preference_plan``) for the measured step (pairs, or KTO's completions, padded width,
    padding; ``reports/dpo-cpu``'s C1), which the row shows as ``batch`` / ``seq`` (``max_length`` beside them).
    ``activations`` is the policy's saved tensors, for DPO and KTO with the fused head's (preference P2), for a
    reward model with the score head's input (P5); ORPO and SimPO compare ``logits_loss``: the logits the model
    returns plus what their loss saves outside the model (the lab's loss counter) against
    ``preference.logits_loss_saved`` (trl_head H7-H8); a reference copy's weights are ``reference_weights`` and
    are added to the measured total. GRPO: :func:`quantlab.validate_grpo.validate_grpo` (TRL 1.16's
    GRPOTrainer through :mod:`quantlab.lab.grpo`, synthetic unpadded prompts of ``seq - max_completion_length``
    tokens, every completion ``max_completion_length`` tokens; both phases of the measured step against
    preference P4, its assumptions V1-V5): its row is in this schema with the generate phase's ``kv_cache``,
    ``prefill_transient``, ``decode_transient`` and the ``generation_allocated`` / ``training_allocated`` phase
    totals beside ``allocated``.
14. ``method: adapter`` (Houlsby bottleneck adapters, planned by ``memory.plan`` as ``Method.ADAPTER``) is measured
    by the same lab code as assumption 13's PEFT variants: :func:`quantlab.lab.peft_measured.measure_step` on
    :func:`~quantlab.lab.peft_measured.bottleneck_adapters` over ``tiny_from_profile`` (random weights, seed 0),
    the adapters wrapping each block's attention output and MLP down projections, named by the family's linear
    roles (``families.role_names``: o and down; GPT-2 ``attn.c_proj`` and ``mlp.c_proj``), ``adapter_size`` wide.
    The adapter is a plain torch module, not a library's (its docstring says why: AdapterHub ``adapters`` pins
    transformers 4.57, PEFT has none). Its refusals (:func:`adapter_refusal`) are what that loop cannot run as
    planned; the fine-tune lab (``quantlab lab finetune``) still has no adapter method.

Targets (issue #5): on a CPU every tensor component within 2% and every total within 3%; on a GPU allocated
within 3%, reserved and process within 6%. An error is ``(predicted - measured) / measured``: negative is an
under-prediction, the dangerous direction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from quantlab.errors import QuantlabError
from quantlab.specs import DeviceMode, Loss, Method, PlanConfig

TENSOR_COMPONENTS = ("weights", "quant_constants", "adapters", "gradients", "optimizer", "activations",
                     "logits_loss", "kv_cache", "prefill_transient", "decode_transient", "reference_weights",
                     "teacher_weights", "loss_saved")
CPU_TOTALS = ("allocated",)
GPU_TOTALS = ("allocated", "reserved", "process")
CPU_TARGETS = {"tensor": 0.02, "allocated": 0.03}
GPU_TARGETS = {"allocated": 0.03, "reserved": 0.06, "process": 0.06}


@dataclass(frozen=True)
class Case:
    """One configuration to validate: the plan config (on the possibly scaled spec) and how to build its model."""

    id: str
    config: PlanConfig
    model: str  # the profile name
    weights: str = "random"  # "random" (from the profile's architecture) or "pretrained" (the embedded model)
    overrides: tuple = ()  # ((hf config key, value), ...) applied to the profile's config (scale-down)
    hf_config: dict = field(default_factory=dict, hash=False, compare=False)  # the profile config, overrides applied
    serve: Any = None  # a quantlab.planner.serving.ServeConfig around ``config``: a serving case (assumption 9)
    # an issue #13 method over ``config`` (assumption 13): a quantlab.commands.variant_flags.Variant (bitfit, dora,
    # ptuning, distill) or a quantlab.planner.preference.PreferenceConfig (dpo)
    variant: Any = field(default=None, hash=False)
    teacher: tuple | None = None  # distill: (teacher profile, ((config.json key, value), ...)) the lab builds
    expect: tuple = ()  # ((component, error), ...): a known miss, as measured (profiles/validation/known-misses.yaml)

    def __post_init__(self):
        if self.serve is not None and self.serve.plan != self.config:
            raise QuantlabError(f"{self.id}: the serving configuration must hold the case's plan config")
        if self.weights not in ("random", "pretrained"):
            raise QuantlabError(f"{self.id}: weights must be random or pretrained, not {self.weights!r}")
        if self.weights == "pretrained" and self.model != "smollm2-135m":
            raise QuantlabError(f"{self.id}: pretrained weights exist here for the embedded smollm2-135m only; "
                                "use weights: random for other architectures")
        if self.weights == "pretrained" and self.overrides:
            raise QuantlabError(f"{self.id}: a pretrained model cannot be scaled down (drop the overrides)")


def lab_refusal(pc: PlanConfig, serve=None) -> str | None:
    """Why the one-process lab cannot run ``pc`` (or the serving configuration ``serve`` around it; one line), or
    None."""
    if serve is not None:
        why = serve_refusal(serve)
        if why:
            return why
    if pc.num_gpus > 1 or pc.zero or pc.fsdp or pc.tp > 1:
        return "the lab runs one process: sharded plans (num-gpus, ZeRO, FSDP, tensor parallel) cannot be validated here"
    if pc.method is Method.ADAPTER:
        return adapter_refusal(pc)  # assumption 14: not the fine-tune lab, which has no adapter method
    if pc.method.is_training:
        from quantlab.lab.finetune_plan import lab_refusal as finetune_refusal

        return finetune_refusal(pc)  # the fine-tune lab's one check of what it can run
    if pc.precision.value not in ("fp32", "bf16", "fp16", "int8", "nf4", "fp4"):
        return f"the lab's inference loads {pc.precision.value} weights only through bitsandbytes (int8, nf4, fp4)"
    if pc.precision.is_float and pc.precision.value != pc.compute_dtype.value:
        return f"inference computes in the weights' dtype: give compute-dtype {pc.precision.value}"
    if pc.kv_dtype is not None and pc.kv_dtype is not pc.compute_dtype:
        return "the lab's KV cache is in the compute dtype (kv-dtype is not measured)"
    return None


def _lab_objectives():
    from quantlab.planner.preference import Objective

    return (Objective.DPO, Objective.ORPO, Objective.SIMPO, Objective.KTO, Objective.REWARD, Objective.GRPO)


def is_grpo(case: Case) -> bool:
    """A GRPO case (assumption 13): measured and compared by :mod:`quantlab.validate_grpo`."""
    from quantlab.planner.preference import Objective, PreferenceConfig

    return isinstance(case.variant, PreferenceConfig) and case.variant.objective is Objective.GRPO


def method_refusal(pc: PlanConfig, variant) -> str | None:
    """Why the lab code of an issue #13 method (assumption 13) cannot run ``pc`` as planned, or None: its loops
    are AdamW steps in the weights' dtype on an unpadded random batch (bitfit, dora, ptuning, distill), or TRL's
    preference trainers (DPO, ORPO, SimPO, KTO, reward, GRPO) in fp32 on a LoRA or full policy."""
    from quantlab.planner.preference import Objective, PreferenceConfig
    from quantlab.specs import Optimizer, TrainingPrecision

    LAB_OBJECTIVES = _lab_objectives()
    name = variant.objective.value if isinstance(variant, PreferenceConfig) else variant.name
    if pc.optimizer is not Optimizer.ADAMW:
        return f"the {name} lab steps with AdamW only (give optimizer: adamw)"
    if pc.training_precision is not TrainingPrecision.PURE or pc.precision.value != pc.compute_dtype.value:
        return f"the {name} lab computes in the weights' dtype (give compute-dtype {pc.precision.value}, pure)"
    if pc.grad_accum != 1 or pc.loss is not Loss.HF or pc.packed or pc.optimizer_in_backward:
        return f"the {name} lab runs one micro-batch per step with transformers' loss (no grad-accum, loss, packed, " \
               "optimizer-in-backward)"
    if pc.attn.value != "sdpa":
        return f"the {name} lab builds the model with transformers' default attention (give attn: sdpa)"
    if getattr(pc, "lora_dropout", 0.0):
        return f"the {name} lab trains LoRA without dropout (give lora-dropout: 0)"
    if tuple(pc.lora_targets) == ("all-linear",) and pc.method in (Method.LORA, Method.QLORA):
        return f"the {name} lab takes explicit LoRA targets (list the modules instead of all-linear)"
    if isinstance(variant, PreferenceConfig):
        if variant.objective not in LAB_OBJECTIVES:
            return (f"the lab measures {', '.join(o.value for o in LAB_OBJECTIVES)} (TRL's trainers); {name} is "
                    "planned only")
        if pc.method not in (Method.LORA, Method.FULL):
            return f"the {name} lab trains a LoRA or a full policy (policy: lora or full)"
        if pc.precision.value != "fp32":
            return f"the {name} lab runs fp32 on a CPU (give precision: fp32, compute-dtype: fp32)"
        if pc.padding_mask or pc.keep_grads:
            return (f"the {name} lab's padding is the data's and Trainer zeroes with set_to_none (drop padded, "
                    "keep-grads)")
        if pc.model.vocab_size < 49152:
            return (f"the {name} lab tokenizes json-prefs with the embedded tokenizer (49152 tokens): give a scale "
                    f"with vocab_size 49152, not {pc.model.vocab_size}")
        if variant.objective is Objective.KTO and pc.batch < 2:
            return "the kto lab needs a batch of at least 2 completions (KTOTrainer's KL term)"
        if variant.objective is Objective.GRPO:
            from quantlab.planner.preference import Reference

            if variant.reward_model is not None:
                return "the grpo lab scores with reward functions (lab/grpo.py G2): reward-model is planned only"
            if variant.reference is not Reference.AUTO:
                return ("the grpo lab's reference is TRL's own choice (the disabled adapter, or a copy of a full "
                        "policy): leave reference at auto")
            if pc.seq <= variant.max_completion_length:
                return f"seq {pc.seq} leaves no prompt beside max-completion-length {variant.max_completion_length}"
        return None
    if pc.precision.value not in ("fp32", "bf16", "fp16"):
        return f"the {name} lab builds float weights (fp32, bf16, fp16): {pc.precision.value} is planned only"
    if pc.padding_mask or not pc.keep_grads:
        return (f"the {name} lab zeroes gradients with set_to_none=False on an unpadded batch: give keep-grads: "
                "true (and no padded)")
    if name == "distill":
        dc = variant.distill
        if pc.method is not Method.FULL:
            return "the distill lab trains the whole student (student-method: full)"
        if dc.teacher_precision is not None and dc.teacher_precision is not pc.precision:
            return "the distill lab builds the teacher in the student's dtype (drop teacher-precision)"
    return None


def adapter_refusal(pc: PlanConfig) -> str | None:
    """Why :func:`quantlab.lab.peft_measured.measure_step` over ``bottleneck_adapters`` (assumption 14) cannot run
    ``pc`` as planned, or None: AdamW steps in the weights' dtype on one unpadded random batch, no checkpointing,
    gradients zeroed with ``set_to_none=False``, transformers' loss, one process, the model's own dense linears."""
    from quantlab.specs import Offload, Optimizer, TrainingPrecision

    if pc.offload is not Offload.NONE:
        return "the adapter lab does not offload to CPU memory"
    if pc.stack != "transformers==5":
        return f"the adapter lab runs the installed transformers 5 (stack transformers==5), not {pc.stack}"
    if pc.optimizer is not Optimizer.ADAMW:
        return "the adapter lab steps with AdamW only (give optimizer: adamw)"
    if pc.precision.value not in ("fp32", "bf16", "fp16"):
        return f"the adapter lab builds float weights (fp32, bf16, fp16): {pc.precision.value} is planned only"
    if pc.training_precision is not TrainingPrecision.PURE or pc.precision.value != pc.compute_dtype.value:
        return f"the adapter lab computes in the weights' dtype (give compute-dtype {pc.precision.value}, pure)"
    if pc.grad_accum != 1 or pc.loss is not Loss.HF or pc.packed or pc.optimizer_in_backward:
        return ("the adapter lab runs one micro-batch per step with transformers' loss (no grad-accum, loss, "
                "packed, optimizer-in-backward)")
    if pc.grad_checkpointing:
        return "the adapter lab runs without gradient checkpointing (give grad-checkpointing: false)"
    if pc.attn.value != "sdpa":
        return "the adapter lab builds the model with transformers' default attention (give attn: sdpa)"
    if pc.padding_mask or not pc.keep_grads:
        return ("the adapter lab zeroes gradients with set_to_none=False on an unpadded batch: give keep-grads: "
                "true (and no padded)")
    if pc.model.is_moe:
        return "the adapter lab wraps a dense MLP's down projection: an MoE model's adapters are planned only"
    return None


def adapter_sublayers(m) -> tuple[str, str]:
    """The module names :func:`quantlab.lab.peft_measured.bottleneck_adapters` wraps (assumption 14): the block's
    attention output and MLP down projections, by the family's linear roles (families F6)."""
    from quantlab.families import role_names

    r = role_names(m)
    return r["o"], r["down"]


def method_plan(pc: PlanConfig, variant):
    """The planner composition of an issue #13 method (assumption 13)."""
    from quantlab.planner.preference import PreferenceConfig, preference_plan

    if isinstance(variant, PreferenceConfig):
        return preference_plan(pc, variant)
    from quantlab.commands.variant_flags import variant_plan

    return variant_plan(pc, variant)


def serve_refusal(s) -> str | None:
    """Why the lab cannot measure the serving configuration ``s`` (assumption 9), or None."""
    from quantlab.planner.serving import Cache, Engine

    if s.engine is not Engine.TRANSFORMERS:
        return "the lab measures transformers' generate; vLLM is not installed here (--engine vllm is planned only)"
    if s.replicas > 1:
        return "the lab runs one process: --replicas cannot be validated here"
    if s.cache is Cache.QUANTIZED:
        return "the quantized cache needs optimum-quanto, which is not installed here (--cache quantized is planned only)"
    if s.rope_scaling is not None and s.rope_scaling.source == "--rope-scaling":
        return "--rope-scaling changes no memory (S9); the lab builds the model's own config (drop it)"
    return None


# ---- building the model ------------------------------------------------------------------------------------

@contextlib.contextmanager
def model_source(case: Case):
    """A :class:`quantlab.lab.model.ModelSource` for the case: the embedded model, or random weights saved to a
    temporary folder (so every method loads through the same ``from_pretrained`` path, quantization included)."""
    from quantlab.lab.model import ModelSource, resolve

    if case.weights == "pretrained":
        yield resolve("smollm2-135m")
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = dict(case.hf_config)
    mt = d.pop("model_type")
    for k in ("architectures", "torch_dtype", "dtype"):
        d.pop(k, None)
    cfg = AutoConfig.for_model(mt, **d)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="quantlab-validate-") as tmp:
        m.save_pretrained(tmp)
        del m
        yield ModelSource(case.id, "folder", Path(tmp))


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _inference_model(pc: PlanConfig, src):
    from quantlab.lab.model import load_model

    q = None
    compute = _torch_dtype(pc.compute_dtype.value)
    if pc.precision.value == "int8":
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_8bit=True)
    elif pc.precision.value in ("nf4", "fp4"):
        import torch
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=pc.precision.value,
                               bnb_4bit_use_double_quant=pc.double_quant, bnb_4bit_compute_dtype=compute,
                               bnb_4bit_quant_storage=torch.uint8)
    m = load_model(src, dtype=compute, quantization_config=q, attn_implementation=pc.attn.value, progress=False,
                   device_map=_device() if q is not None else None)
    if q is not None:
        from quantlab.lab.finetune import keep_training_layout

        keep_training_layout(m)  # the same 4-bit layout as training (no CPU inference repacking)
    elif _device() == "cuda":
        m = m.to("cuda")
    return m.eval()


def _device() -> str:
    from quantlab.lab.measure import cuda_available

    return "cuda" if cuda_available() else "cpu"


# ---- instruments -------------------------------------------------------------------------------------------

@dataclass
class Peak:
    """Growth of live CPU bytes over a block (assumption 5): ``peak`` of tensor bytes (the matmul library's
    transient workspace excluded), ``end`` (the final running sum), ``raw_peak`` (every allocator event, workspace
    included), ``workspace_max`` (the largest workspace one matmul held) and the number of events."""

    peak: int = 0
    end: int = 0
    events: int = 0
    raw_peak: int = 0
    workspace_max: int = 0
    phase_peaks: tuple = ()  # (prefill, decode) peaks of tensor bytes when forwards were marked (assumption 9)


# The CPU matmul kernels (oneDNN / MKL behind these aten ops) take their workspace from the CPU allocator
# (assumption 5): an allocation inside the op that the same op frees again is workspace, not a tensor.
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_int_mm",
                        "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu"})


def split_workspace(ops, mems) -> tuple[list, int]:
    """``mems``: (time_ns, nbytes) allocator events in time order; ``ops``: (start_ns, end_ns) of matmul ops.
    Returns (the events that are not a matmul's transient workspace, the largest workspace one op held).
    Inside one op, an allocation of n bytes followed by a free of n bytes is that op's workspace (the op's
    output is allocated there too, but freed only later, outside it)."""
    import bisect

    ops = sorted(ops)
    starts = [a for a, _ in ops]
    inside: dict = {}
    for k, (t, n) in enumerate(mems):
        i = bisect.bisect_right(starts, t) - 1
        if i >= 0 and ops[i][0] <= t <= ops[i][1]:
            inside.setdefault(i, []).append(k)
    drop, ws_max = set(), 0
    for ks in inside.values():
        open_: dict = {}  # bytes -> indices of allocations of that size not yet freed inside this op
        for k in ks:
            n = mems[k][1]
            if n > 0:
                open_.setdefault(n, []).append(k)
            elif open_.get(-n):
                drop.update((open_[-n].pop(), k))
                ws_max = max(ws_max, -n)
    return [m for k, m in enumerate(mems) if k not in drop], ws_max


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null for the duration (native libraries write there, bypassing sys.stderr)."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def cpu_peak():
    """Track the CPU allocator's allocation and free events inside the block (``torch.profiler``, assumption 5)."""
    from torch.profiler import ProfilerActivity, profile

    import gc

    res = Peak()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # The cyclic garbage collector stays off inside the window (after a collection just before it). Tensors held
    # only by reference cycles created during the step are then freed when a loop's next collection runs, not at
    # a point that depends on how many Python objects earlier cases allocated. Seen before this: in the full
    # matrix, qwen-full-amp-ckpt (AMP + checkpointing) measured 101,733,288 bytes in two runs of four, and
    # 114,759,168 in the others and in six runs alone (planned 113,037,160); with the collector off, every run
    # measured the latter.
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    with _native_stderr_silenced():  # kineto prints "USDT ... profiler_start/stop" from C++ on every start/stop
        prof.__enter__()
    try:
        yield res
    finally:
        with _native_stderr_silenced():
            prof.__exit__(None, None, None)
        if was_enabled:
            gc.enable()
    events = list(prof.profiler.kineto_results.events())
    mems = sorted((e.start_ns(), e.nbytes()) for e in events
                  if e.name() == "[memory]" and "CPU" in str(e.device_type()).upper())
    ops = [(e.start_ns(), e.end_ns()) for e in events if e.name() in MATMUL_OPS]

    def running_peak(evs):
        cur = peak = 0
        for _, n in evs:
            cur += n
            peak = max(peak, cur)
        return peak, cur

    tensors, res.workspace_max = split_workspace(ops, mems)
    res.peak, res.end = running_peak(tensors)
    res.raw_peak = running_peak(mems)[0]
    res.events = len(mems)
    marks = sorted(e.start_ns() for e in events if e.name() == FORWARD_MARK)
    if marks:
        res.phase_peaks = phase_peaks(tensors, marks[1] if len(marks) > 1 else None)


FORWARD_MARK = "quantlab::forward"  # the record_function range around each model forward of a serving case


def phase_peaks(mems, decode_start: int | None) -> tuple[int, int]:
    """(peak of the running sum before ``decode_start``, peak from it on): the prefill phase (the first forward and
    the sampling of the first token) and the decode phase (every later forward) of generate (assumption 9)."""
    cur, pre, dec = 0, 0, 0
    for t, n in mems:
        cur += n
        if decode_start is None or t < decode_start:
            pre = max(pre, cur)
        else:
            dec = max(dec, cur)
    return pre, dec


@dataclass(frozen=True)
class CudaReadings:
    allocated: int
    reserved: int
    process: int | None  # NVML's figure for this process (CUDA context included); None where NVML has none


def cuda_readings() -> CudaReadings:
    """Peak allocator figures since the last reset, and the NVML process figure (assumption 7)."""
    import torch

    from quantlab.lab.measure import nvml_process_bytes

    torch.cuda.synchronize()
    return CudaReadings(int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved()),
                        nvml_process_bytes())


def reset_cuda_peaks() -> None:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


def _storages(tensors) -> dict:
    from quantlab.lab.measure import _nbytes, _storage_key

    return {_storage_key(t): _nbytes(t) for t in tensors}


def _cache_tensors(cache) -> list:
    import torch

    out = []
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
    if not out and isinstance(cache, (tuple, list)):  # legacy tuple-of-tuples cache
        for kv in cache:
            out += [t for t in kv if isinstance(t, torch.Tensor)]
    return out


# ---- one measurement ---------------------------------------------------------------------------------------

def measure_case(case: Case, *, readings: Callable[[], CudaReadings] | None = None) -> dict:
    """Build the case's model and measure it (assumptions 1-7): ``meas_<component>_bytes`` and totals."""
    import torch

    torch.manual_seed(0)
    pc = case.config
    why = lab_refusal(pc, case.serve)
    if why:
        raise QuantlabError(f"{case.id}: {why}")
    gpu = _device() == "cuda"
    t0 = time.perf_counter()
    if case.variant is not None:
        if gpu:
            raise QuantlabError(f"{case.id}: the issue #13 methods' lab code measures on a CPU (assumption 13)")
        if is_grpo(case):
            from quantlab.validate_grpo import measure_grpo

            out = measure_grpo(case)
        else:
            out = _measure_method(case)
    elif pc.method is Method.ADAPTER:
        if gpu:
            raise QuantlabError(f"{case.id}: the bottleneck-adapter lab code measures on a CPU (assumption 14)")
        out = _measure_adapter(case)
    else:
        with model_source(case) as src:
            if case.serve is not None:
                out = _measure_serving(case.serve, src, gpu)
            elif pc.method.is_training:
                out = _measure_training(pc, src, gpu)
            else:
                out = _measure_inference(pc, src, gpu)
    if gpu:
        r = (readings or cuda_readings)()
        out.update(meas_allocated_bytes=r.allocated, meas_reserved_bytes=r.reserved, meas_process_bytes=r.process)
    out["meas_s"] = time.perf_counter() - t0
    out["device"] = "cuda" if gpu else "cpu"
    return out


def _measure_method(case: Case) -> dict:
    """An issue #13 method measured by its own lab code (assumption 13)."""
    from quantlab.lab import peft_measured as L
    from quantlab.planner.preference import PreferenceConfig

    pc, v = case.config, case.variant
    if isinstance(v, PreferenceConfig):
        return _measure_preference(case)
    dt = pc.precision.value

    def build():
        return L.tiny_from_profile(case.model, dict(case.overrides), dtype=dt)

    if v.name == "bitfit":
        return L.measure_step(L.bitfit(build()), pc.batch, pc.seq, peft=False)
    if v.name == "dora":
        return L.measure_step(L.dora(build(), pc.lora_r, pc.lora_alpha, tuple(pc.lora_targets)), pc.batch, pc.seq)
    if v.name == "ptuning":
        pt = v.ptuning
        model = L.ptuning(build(), pc.num_virtual_tokens, pt.encoder_hidden_size, pt.encoder_type.value,
                          pt.encoder_num_layers)
        return L.measure_step(model, pc.batch, pc.seq, virtual_tokens=pc.num_virtual_tokens)
    name, overrides = case.teacher
    teacher = L.tiny_from_profile(name, dict(overrides), dtype=dt, seed=1)
    return L.measure_distill(build(), teacher, pc.batch, pc.seq, beta=v.distill.beta)


def _measure_adapter(case: Case) -> dict:
    """Bottleneck adapters measured by the lab's own code (assumption 14)."""
    from quantlab.lab import peft_measured as L

    pc = case.config
    model = L.tiny_from_profile(case.model, dict(case.overrides), dtype=pc.precision.value)
    model = L.bottleneck_adapters(model, pc.adapter_size, sublayers=adapter_sublayers(pc.model))
    n, want = L.count_bottlenecks(model), 2 * pc.model.num_hidden_layers
    if n != want:  # the plan's layout (memory.py _adapter_params): two per block
        raise QuantlabError(f"{case.id}: the lab wrapped {n} linears with adapters, the plan has {want}")
    return L.measure_step(model, pc.batch, pc.seq)


def _measure_preference(case: Case) -> dict:
    """The objective's TRL trainer on the case's model (assumption 13): the measured step, its shape and the
    reference; ORPO/SimPO's loss buffers outside the model (the logits and what the loss saves) as
    ``logits_loss``."""
    from transformers import AutoTokenizer

    from quantlab.lab.model import ensure_embedded
    from quantlab.lab.preference import PreferenceRun, run_preference
    from quantlab.planner.preference import PAIRED, Objective

    pc, pref = case.config, case.variant
    obj = pref.objective
    paired = obj in PAIRED
    with model_source(case) as src:
        AutoTokenizer.from_pretrained(ensure_embedded(progress=False)).save_pretrained(src.path)
        run = PreferenceRun(model=str(src.path), objective=obj.value, max_steps=2, batch=pc.batch, eval_batch=2,
                            train_pairs=2 * pc.batch, eval_pairs=2, max_length=pc.seq, lora_r=pc.lora_r,
                            lora_alpha=pc.lora_alpha, lora_targets=tuple(pc.lora_targets),
                            policy="full" if pc.method is Method.FULL else "lora",
                            grad_checkpointing=pc.grad_checkpointing, beta=None if pref.beta is None
                            else float(pref.beta))
        res = run_preference(run, None, log=lambda s: None)
    m = res["measurement"]
    ref = res["reference_bytes"]
    out = {f"meas_{k}_bytes": m.get(f"meas_{k}_bytes") for k in ("weights", "adapters", "gradients", "optimizer")}
    if obj in (Objective.DPO, Objective.KTO):  # the policy's saved tensors with TRL's fused head's (preference P2)
        out["meas_activations_bytes"] = (m.get("meas_activations_bytes") or 0) + (m.get("meas_logits_loss_bytes")
                                                                                 or 0)
    else:  # the backbone's (and a reward model's score head input); ORPO/SimPO: logits + loss saved (trl_head H7-H8)
        out["meas_activations_bytes"] = m.get("meas_activations_bytes")
        if obj in (Objective.ORPO, Objective.SIMPO):
            out["meas_logits_loss_bytes"] = (m.get("meas_logits_loss_bytes") or 0) + (res["loss_saved_bytes"] or 0)
    if pref.resolved_reference(pc) is not None or ref:
        out["meas_reference_weights_bytes"] = ref
    out["meas_allocated_bytes"] = m["meas_allocated_bytes"] + ref  # the reference model is live too (C3)
    if m.get("meas_allocated_with_workspace_bytes") is not None:
        out["meas_allocated_with_workspace_bytes"] = m["meas_allocated_with_workspace_bytes"] + ref
    seqs = res["step_sequences"]
    out.update(meas_trainable_params=m.get("meas_trainable_params"), meas_step_pairs=seqs // 2 if paired else seqs,
               meas_step_seq=res["step_seq"], meas_step_padded=res["step_padded"], meas_reference=res["reference"],
               meas_grad_checkpointing=res["grad_checkpointing"], meas_notes=list(res["measurement_notes"]))
    return out


_measure_dpo = _measure_preference  # the DPO lab's name


def _static(model, method: str) -> dict:
    from quantlab.lab.finetune import component_bytes

    cb = component_bytes(model, method)
    return {"meas_weights_bytes": cb["meas_weights_bytes"], "meas_quant_constants_bytes": cb["meas_quant_constants_bytes"],
            "meas_adapters_bytes": cb["meas_adapters_bytes"], "meas_trainable_params": cb["meas_trainable_params"]}


def _cpu_totals(base: int, pk: Peak) -> dict:
    """The CPU totals (assumption 5): the bytes live at the start plus the peak growth of tensor bytes, the same
    with the matmul workspace included, and the largest workspace."""
    return {"meas_allocated_bytes": base + pk.peak, "meas_allocated_with_workspace_bytes": base + pk.raw_peak,
            "meas_matmul_workspace_max_bytes": pk.workspace_max}


def _measure_inference(pc: PlanConfig, src, gpu: bool) -> dict:
    import torch

    from quantlab.lab.measure import model_bytes, tensor_bytes
    from quantlab.lab.model import output_cache

    model = _inference_model(pc, src)
    dev = next(model.parameters()).device
    V = model.config.vocab_size
    ids = torch.randint(0, V, (pc.batch, pc.seq), device=dev)
    out = _static(model, "inference")
    base = model_bytes(model).total + tensor_bytes([ids]).total
    if gpu:
        reset_cuda_peaks()
    with torch.no_grad(), (contextlib.nullcontext(Peak()) if gpu else cpu_peak()) as pk:
        res = model(input_ids=ids, use_cache=True)
        kv = tensor_bytes(_cache_tensors(output_cache(res))).total
        del res
    out["meas_kv_cache_bytes"] = kv
    if not gpu:
        out.update(_cpu_totals(base, pk))
    return out


def _serving_model(s, src):
    """The inference model with the case's adapters (assumption 9): PEFT's LoraModel with ``s.adapters`` LoRA
    adapters added (``get_peft_model`` then ``add_adapter``, fp32 by PEFT's ``autocast_adapter_dtype``), the first
    one active; or one adapter merged into the weights (``merge_and_unload``)."""
    pc = s.plan
    model = _inference_model(pc, src)
    if not (s.adapters or s.merged):
        return model
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if tuple(pc.lora_targets) == ("all-linear",) else list(pc.lora_targets)
    lc = LoraConfig(r=pc.lora_r, lora_alpha=pc.lora_alpha, lora_dropout=0.0, target_modules=targets,
                    task_type="CAUSAL_LM", inference_mode=True)
    model = get_peft_model(model, lc, adapter_name="adapter0")
    if s.merged:
        return model.merge_and_unload().eval()
    for k in range(1, s.adapters):
        model.add_adapter(f"adapter{k}", lc)
    model.set_adapter("adapter0")
    return model.eval()


def _serving_static(model) -> dict:
    """weights / quant_constants / adapters (assumption 1): the adapters are every LoRA parameter, active or not."""
    from quantlab.lab.measure import model_bytes, tensor_bytes

    tb = model_bytes(model)
    lora = tensor_bytes([p for n, p in model.named_parameters() if "lora_" in n]).total
    return {"meas_weights_bytes": tb.total - tb.quant_constants - lora, "meas_quant_constants_bytes": tb.quant_constants,
            "meas_adapters_bytes": lora}


@contextlib.contextmanager
def _forward_marks(model):
    """A ``record_function`` range (:data:`FORWARD_MARK`) around every forward of ``model`` and, per forward, the
    bytes of the cache it returned (assumption 9); yields (kv bytes per forward, the last cache object)."""
    from torch.autograd.profiler import record_function

    from quantlab.lab.measure import tensor_bytes
    from quantlab.lab.model import output_cache

    kv: list = []
    last: list = [None]
    open_: list = []

    def pre(mod, args, kwargs):
        r = record_function(FORWARD_MARK)
        r.__enter__()
        open_.append(r)

    def post(mod, args, kwargs, out):
        cache = output_cache(out)
        last[0] = cache
        kv.append(tensor_bytes(_cache_tensors(cache)).total if cache is not None else 0)
        open_.pop().__exit__(None, None, None)

    h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.register_forward_hook(post, with_kwargs=True)
    try:
        yield kv, last
    finally:
        h1.remove()
        h2.remove()


def _measure_serving(s, src, gpu: bool) -> dict:
    """generate / score / prefill of assumption 9, measured with the CPU instrument (5) over the whole call."""
    import torch
    from transformers import GenerationConfig

    from quantlab.lab.measure import tensor_bytes
    from quantlab.planner.serving import Cache, Mode

    pc = s.plan
    model = _serving_model(s, src)
    dev = next(model.parameters()).device
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = torch.randint(0, base_model.config.vocab_size, (s.concurrency, s.prompt_tokens), device=dev)
    mask = torch.ones_like(ids)  # what a tokenizer returns beside the ids (no padding)
    out = _serving_static(model)
    base = sum(out[k] for k in ("meas_weights_bytes", "meas_quant_constants_bytes", "meas_adapters_bytes")) \
        + tensor_bytes([ids, mask]).total
    if s.mode is not Mode.SCORE:
        # transformers' own generation defaults (configuration_utils.py _get_default_generation_params: top_k 50,
        # top_p 1.0, temperature 1.0), not a checkpoint's generation_config.json; no EOS, so every sequence runs
        # its new tokens
        base_model.generation_config = GenerationConfig()
        gen = dict(do_sample=s.do_sample, max_new_tokens=max(s.new_tokens, 1), eos_token_id=None)
        if s.cache is Cache.STATIC:
            gen["cache_implementation"] = "static"
    if gpu:
        reset_cuda_peaks()
    with torch.no_grad(), _forward_marks(base_model) as (kv, last), \
            (contextlib.nullcontext(Peak()) if gpu else cpu_peak()) as pk:
        if s.mode is Mode.SCORE:  # one forward with every token's logits, the cache kept (S2)
            res = model(input_ids=ids, attention_mask=mask, use_cache=True)
            del res
        else:  # prefill: generate of one new token (the prefill forward and the first token's sampling, S2)
            seqs = model.generate(input_ids=ids, attention_mask=mask, **gen)
            del seqs
    out["meas_kv_cache_bytes"] = tensor_bytes(_cache_tensors(last[0])).total if last[0] is not None else 0
    out["meas_forwards"] = len(kv)
    if not gpu:
        out.update(_cpu_totals(base, pk))
        pre, dec = pk.phase_peaks or (pk.peak, 0)
        out["meas_prefill_transient_bytes"] = pre - kv[0]
        if s.mode is Mode.GENERATE:
            out["meas_decode_transient_bytes"] = dec - out["meas_kv_cache_bytes"]
    return out


def _measure_training(pc: PlanConfig, src, gpu: bool) -> dict:
    import torch

    from quantlab.lab.finetune import block_kwargs, build_model, make_optimizer
    from quantlab.lab.finetune_plan import from_plan_config
    from quantlab.lab.measure import _nbytes, _storage_key, model_bytes, tensor_bytes
    from quantlab.lab.saved_tensors import count_saved, grad_bytes, optimizer_bytes

    fcfg = from_plan_config(pc, model=src.name)
    model = build_model(fcfg, src)
    model.train()
    dev = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise QuantlabError(f"method {pc.method.value} left nothing to train")
    opt = make_optimizer(fcfg, params)
    opts = [opt]
    if pc.optimizer_in_backward:  # assumption 12: torch's tutorial loop, one optimizer per parameter in its hook
        per = {p: make_optimizer(fcfg, [p]) for p in params}
        opts = list(per.values())

        def hook(p):
            per[p].step()
            per[p].zero_grad(set_to_none=True)

        for p in params:
            p.register_post_accumulate_grad_hook(hook)
    base_cfg = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    V = base_cfg.vocab_size
    ids = torch.randint(0, V, (pc.batch, pc.seq), device=dev)
    labels = ids
    # padded batches (activations A3c): the last position of the first row is padding, so transformers builds a mask
    mask = position_ids = None
    if pc.padding_mask:
        mask = torch.ones_like(ids)
        mask[0, -1] = 0
    if pc.packed:  # assumption 11: two documents per row, told apart by position_ids alone (no mask)
        half = pc.seq // 2
        position_ids = torch.cat([torch.arange(half), torch.arange(pc.seq - half)]).expand(pc.batch, -1).to(dev)
    if pc.method is Method.PROMPT:  # PEFT gives the virtual tokens label -100
        labels = torch.cat([torch.full((pc.batch, pc.num_virtual_tokens), -100, device=dev), ids], dim=1)
    amp = fcfg.amp_dtype
    autocast = (lambda: torch.autocast(dev.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    loss_fn = model.loss_function if hasattr(model, "loss_function") else model.get_base_model().loss_function
    out = {}

    chunked = pc.loss is Loss.CHUNKED
    if chunked:  # assumption 10: torchtune's recipe shifts the labels once, an ignore_index column at the end
        if pc.method in (Method.PROMPT, Method.PREFIX):
            raise QuantlabError("the chunked loss is validated without virtual tokens (prompt/prefix tuning)")
        labels = torch.hstack((ids[:, 1:], torch.full((pc.batch, 1), -100, device=dev)))
        hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    kw_fwd = {"attention_mask": mask} if position_ids is None else {"position_ids": position_ids}

    def forward():
        if not chunked:
            return model(input_ids=ids, **kw_fwd).logits
        hidden = hf_model.model(input_ids=ids, **kw_fwd).last_hidden_state
        return [hf_model.lm_head(h) for h in hidden.tensor_split(CHUNKS, dim=1)]  # torchtune's output chunks

    def loss_of(logits):
        return chunked_ce(logits, labels) if chunked else loss_fn(logits=logits, labels=labels, vocab_size=V)

    def micro(measure: bool):
        with autocast():
            if measure:
                with block_kwargs(model, pc.grad_checkpointing) as kw, count_saved(model) as act:
                    logits = forward()
                closure = {k: n for k, n in _storages(kw).items() if k not in act.seen}
                outs = logits if chunked else [logits]
                with count_saved(model, exclude=outs) as ls:
                    loss = loss_of(logits)
                held = sum(0 if _storage_key(t) in act.seen else _nbytes(t) for t in outs)
                out["meas_activations_bytes"] = act.bytes + sum(closure.values())
                out["meas_logits_loss_bytes"] = held + ls.bytes
                del kw, outs
            else:
                logits = forward()
                loss = loss_of(logits)
        loss.backward()  # the logits stay referenced through backward, as by a loop's model output (assumption 4)
        del loss, logits

    def step(measure: bool):
        for i in range(pc.grad_accum):  # assumption 2: micro-batches accumulate into .grad before the step
            micro(measure and i == pc.grad_accum - 1)
        if measure:
            out["meas_gradients_bytes"] = grad_bytes(model)
        if not pc.optimizer_in_backward:
            opt.step()
        if measure:
            out["meas_optimizer_bytes"] = sum(optimizer_bytes(o) for o in opts)
        opt.zero_grad(set_to_none=not pc.keep_grads)  # assumption 2: as the planned loop zeroes (memory 3)

    step(False)
    out.update(_static(model, pc.method.value))
    base = model_bytes(model).total + grad_bytes(model) + sum(optimizer_bytes(o) for o in opts) \
        + tensor_bytes([t for t in (ids, labels, mask, position_ids) if t is not None]).total
    if gpu:
        reset_cuda_peaks()
    with contextlib.nullcontext(Peak()) if gpu else cpu_peak() as pk:
        step(True)
    if not gpu:
        out.update(_cpu_totals(base, pk))
    return out


CHUNKS = 8  # torchtune CEWithChunkedOutputLoss(num_output_chunks=8), the default (assumption 10)


def chunked_ce(logits: list, labels, ignore_index: int = -100):
    """torchtune's ``CEWithChunkedOutputLoss.forward`` (torchtune/modules/loss/ce_chunked_output_loss.py), in plain
    torch: torchtune is not installed here, and its loss is these few lines over a list of logits chunks, each
    upcast to fp32 on its own (``compute_cross_entropy``), summed, divided by the tokens not ignored."""
    import torch.nn.functional as F

    total = (labels != ignore_index).sum()
    label_chunks = [c.reshape(-1) for c in labels.tensor_split(len(logits), dim=1)]
    loss = 0.0
    for lg, lb in zip((c.reshape(-1, c.size(-1)) for c in logits), label_chunks):
        loss += F.cross_entropy(lg.float(), lb, ignore_index=ignore_index, reduction="sum")
    return loss / total


# ---- prediction and comparison -----------------------------------------------------------------------------

def predict(pc: PlanConfig, p=None) -> dict:
    """``pred_<component>_bytes`` and totals, on the component boundaries the lab measures (assumption 4), of
    ``p`` (default: ``plan(pc)``; an issue #13 method's composition, assumption 13)."""
    from quantlab.planner import plan
    from quantlab.planner.memory import loss_buffers

    p = p if p is not None else plan(pc)
    c = p.components
    out = {f"pred_{k}_bytes": c.get(k, 0) for k in TENSOR_COMPONENTS}
    if pc.method.is_training:
        kept, saved, _ = loss_buffers(pc)  # the fused heads' per-token outputs are not the logits the lab counts
        out["pred_logits_loss_bytes"] = saved + (kept if pc.loss in (Loss.HF, Loss.CHUNKED) else 0)
        out["pred_logits_loss_with_backward_bytes"] = c.get("logits_loss", 0)
    out["pred_allocated_bytes"] = p.peak_allocated_bytes
    out["pred_reserved_bytes"] = p.peak_reserved_bytes
    out["pred_process_bytes"] = p.process_bytes
    out["pred_trainable_params"] = p.trainable_params
    return out


def predict_serving(s) -> dict:
    """``pred_<component>_bytes`` of the serving planner (:func:`quantlab.planner.serving.serve_plan`) for the
    serving configuration ``s``, on the boundaries the lab measures (assumption 9): score's 'logits' component is
    its prefill transient."""
    from quantlab.planner.serving import serve_plan

    p = serve_plan(s)
    c = dict(p.components)
    if "logits" in c:
        c["prefill_transient"] = c.pop("logits")
    out = {f"pred_{k}_bytes": c.get(k, 0) for k in TENSOR_COMPONENTS}
    out["pred_allocated_bytes"] = p.peak_allocated_bytes
    out["pred_reserved_bytes"] = p.peak_reserved_bytes
    out["pred_process_bytes"] = p.process_bytes
    return out


def error(pred: int | None, meas: int | None) -> float | None:
    """(pred - meas) / meas; 0 when both are 0; None when there is no measurement."""
    if meas is None or pred is None:
        return None
    if meas == 0:
        return 0.0 if pred == 0 else float("inf")
    return (pred - meas) / meas


def compare(case: Case, meas: dict) -> dict:
    """One tidy row: the case's conditions, ``pred_``/``meas_`` bytes side by side, ``err_`` and ``diff_``."""
    if is_grpo(case):  # both phases of a GRPO step (quantlab.validate_grpo, assumption 13)
        from quantlab.validate_grpo import compare_grpo

        return compare_grpo(case, meas)
    pc = case.config
    device = meas.get("device", "cpu")
    pcd = dataclasses.replace(pc, device=DeviceMode(device))
    row: dict[str, Any] = dict(id=case.id, model=case.model, weights_init=case.weights,
                               overrides=dict(case.overrides) or None, method=pc.method.value,
                               precision=pc.precision.value, double_quant=pc.double_quant,
                               compute_dtype=pc.compute_dtype.value, training_precision=pc.training_precision.value,
                               optimizer=pc.optimizer.value if pc.method.is_training else None, batch=pc.batch,
                               seq=pc.seq, attn=pc.attn.value, grad_checkpointing=pc.grad_checkpointing, device=device,
                               padding_mask=pc.padding_mask)
    if pc.method.is_training:
        row.update(keep_grads=pc.keep_grads, grad_accum=pc.grad_accum, loss=pc.loss.value, packed=pc.packed,
                   optimizer_in_backward=pc.optimizer_in_backward)
    if pc.method in (Method.LORA, Method.QLORA):
        row.update(lora_r=pc.lora_r, lora_alpha=pc.lora_alpha, lora_targets=list(pc.lora_targets),
                   lora_dropout=pc.lora_dropout)
    if pc.method in (Method.PREFIX, Method.PROMPT):
        row["num_virtual_tokens"] = pc.num_virtual_tokens
    if pc.method is Method.ADAPTER:
        row["adapter_size"] = pc.adapter_size
    if pc.method is Method.FREEZE:
        row["freeze_last_layers"] = pc.freeze_last_layers
        row["freeze_modules"] = list(pc.freeze_modules) or None
    if pc.precision.is_kbit and pc.method.is_training:
        row["kbit_upcast"] = pc.kbit_upcast
    if case.variant is not None:
        pcd, v = _method_row(case, row, pcd, meas)
        mp = method_plan(pcd, v)
        row.update(predict(pcd, mp))
        from quantlab.planner.preference import PreferenceConfig, logits_loss_saved

        if isinstance(v, PreferenceConfig):  # ORPO/SimPO: the logits and the loss's saved tensors (preference P2)
            row["pred_logits_loss_bytes"] = logits_loss_saved(pcd, v)
        if row["method"] == "distill":
            from quantlab.planner.peft_methods import jsd_saved

            row["pred_loss_saved_bytes"] = jsd_saved(pcd, v.distill.beta)
    elif case.serve is not None:
        sv = case.serve
        for k in SERVE_ROW_KEYS:  # ServeConfig fields, enums by their values
            v = getattr(sv, k)
            row[k] = getattr(v, "value", v)
        if sv.adapters or sv.merged:
            row.update(lora_r=pc.lora_r, lora_alpha=pc.lora_alpha, lora_targets=list(pc.lora_targets))
        row.update(predict_serving(dataclasses.replace(sv, plan=pcd)))
    else:
        row.update(predict(pcd))
    row.update(meas)
    totals = GPU_TOTALS if device == "cuda" else CPU_TOTALS
    ok = score(row, TENSOR_COMPONENTS + totals, lambda k: target(k, device))
    if meas.get("meas_allocated_with_workspace_bytes") is not None:  # assumption 5: shown, not a target
        row["err_allocated_with_workspace"] = error(row.get("pred_allocated_bytes"),
                                                    meas["meas_allocated_with_workspace_bytes"])
    row["ok"] = ok
    if case.expect:  # a known miss: shown with the error it was measured at; the targets are not relaxed
        row["expected_errors"] = dict(case.expect)
    return row


def _method_row(case: Case, row: dict, pc: PlanConfig, meas: dict) -> tuple:
    """The row fields of an issue #13 method (assumption 13), and the config to plan: a DPO case is planned for
    the step the lab measured (its pairs, padded width and padding). Returns (config, method) to plan."""
    from quantlab.planner.preference import PreferenceConfig, Reference

    v = case.variant
    row["plans_over"] = pc.method.value
    if isinstance(v, PreferenceConfig):
        row.update(method=v.objective.value, policy=pc.method.value, beta=v.beta, max_length=pc.seq)
        if meas.get("meas_step_pairs") is not None:
            pc = dataclasses.replace(pc, batch=meas["meas_step_pairs"], seq=meas["meas_step_seq"],
                                     padding_mask=bool(meas["meas_step_padded"]))
            if v.reference is Reference.AUTO and meas["meas_reference"] in ("adapter", "copy"):
                # what auto resolved to, as the lab ran it (lab_preference C1)
                v = dataclasses.replace(v, reference=Reference(meas["meas_reference"]))
            row.update(batch=pc.batch, seq=pc.seq, padding_mask=pc.padding_mask, reference=meas["meas_reference"])
        return pc, v
    row["method"] = v.name
    row["variant"] = v.to_dict()  # what measurement_row keeps, for quantlab.groundtruth to re-plan
    if v.ptuning is not None:
        row.update(encoder_hidden_size=v.ptuning.encoder_hidden_size, encoder_type=v.ptuning.encoder_type.value,
                   encoder_num_layers=v.ptuning.encoder_num_layers)
    if v.distill is not None:
        row.update(teacher=case.teacher[0], teacher_overrides=dict(case.teacher[1]) or None,
                   distill_beta=v.distill.beta, student_method=pc.method.value)
    return pc, v


def validate(case: Case, *, readings=None) -> dict:
    return compare(case, measure_case(case, readings=readings))


def summarize(rows: list[dict]) -> list[dict]:
    """Per component and total: configurations measured, mean |error|, worst error, worst under-prediction, target."""
    out = []
    devices = {r.get("device", "cpu") for r in rows}
    totals = GPU_TOTALS if devices == {"cuda"} else CPU_TOTALS
    for k in TENSOR_COMPONENTS + totals:
        errs = [(r[f"err_{k}"], r["id"]) for r in rows if r.get(f"err_{k}") is not None
                and (r.get(f"meas_{k}_bytes") or r.get(f"pred_{k}_bytes"))]
        if not errs:
            continue
        tol = (GPU_TARGETS if devices == {"cuda"} else CPU_TARGETS).get(k, CPU_TARGETS["tensor"]) \
            if k in totals else CPU_TARGETS["tensor"]
        worst = max(errs, key=lambda x: abs(x[0]))
        under = min(errs)
        out.append(dict(component=k, configurations=len(errs), mean_abs_error=statistics.fmean(abs(e) for e, _ in errs),
                        worst_error=worst[0], worst_id=worst[1], worst_under=min(under[0], 0.0),
                        worst_under_id=under[1] if under[0] < 0 else None, target=tol,
                        ok=all(abs(e) <= tol for e, _ in errs)))
    ws = [(r["err_allocated_with_workspace"], r["id"]) for r in rows if r.get("err_allocated_with_workspace") is not None]
    if ws:  # assumption 5: the CPU matmul workspace, shown beside the total, no target (ok: not a criterion)
        worst, under = max(ws, key=lambda x: abs(x[0])), min(ws)
        out.append(dict(component="allocated_with_workspace", configurations=len(ws),
                        mean_abs_error=statistics.fmean(abs(e) for e, _ in ws), worst_error=worst[0],
                        worst_id=worst[1], worst_under=min(under[0], 0.0),
                        worst_under_id=under[1] if under[0] < 0 else None, target=None, ok=None))
    return out


def score(row: dict, keys, target_of, *, missing_fails: bool = False) -> bool:
    """Set ``err_<k>`` and ``diff_<k>_bytes`` of each of ``keys`` from the row's ``pred_``/``meas_`` bytes, and
    say whether every measured one is within ``target_of(k)``; an unmeasured key has None for both and counts as a
    miss only with ``missing_fails`` (one rule for every row maker: validate, validate_grpo, validate_encoder)."""
    oks = []
    for k in keys:
        m, p = row.get(f"meas_{k}_bytes"), row.get(f"pred_{k}_bytes")
        if m is None:
            row[f"err_{k}"] = row[f"diff_{k}_bytes"] = None
            if missing_fails:
                oks.append(False)
            continue
        e = error(p, m)
        row[f"err_{k}"] = e
        row[f"diff_{k}_bytes"] = p - m
        oks.append(e is not None and abs(e) <= target_of(k))
    return all(oks)


def target(component: str, device: str) -> float:
    """The validation target of one component or total (relative error) on ``device``."""
    if component in (GPU_TOTALS if device == "cuda" else CPU_TOTALS):
        return (GPU_TARGETS if device == "cuda" else CPU_TARGETS).get(component, CPU_TARGETS["tensor"])
    return CPU_TARGETS["tensor"]


def missed_targets(row: dict) -> list[str]:
    """The components and totals of a compared row whose error is beyond its target."""
    device = row.get("device", "cpu")
    comps = TENSOR_COMPONENTS + (GPU_TOTALS if device == "cuda" else CPU_TOTALS)
    return [k for k in comps if row.get(f"err_{k}") is not None and abs(row[f"err_{k}"]) > target(k, device)]


# ---- measurements.jsonl rows (the published format, shared/ground-truth/README.md) ---------------------------

def measurement_row(row: dict, *, source: str) -> dict | None:
    """The row for ``reports/measurements.jsonl``: the run's conditions, metric ``allocated``, ``device``."""
    total = row.get("meas_allocated_bytes")
    if total is None:
        return None
    preference = variant = None
    if row.get("plans_over") is not None:  # an issue #13 method (assumption 13)
        from quantlab.planner.preference import Objective

        if row["method"] not in {o.value for o in Objective}:  # bitfit, dora, ptuning, distill: the variant's
            variant = row.get("variant")  # settings (variant_flags.Variant.to_dict), re-planned by groundtruth
            if variant is None:
                return None
    if row.get("plans_over") is not None and variant is None:
        # a preference objective: the PreferenceConfig the row was planned with (the reference as the lab ran
        # it), which quantlab.groundtruth re-plans through method_plan
        ref = row.get("reference")
        preference = {"objective": row["method"], "reference": ref if ref in ("adapter", "copy") else "auto",
                      "beta": row.get("beta")}
        if row["method"] == "grpo":  # the generation settings it was planned with (preference P4)
            preference.update({k: row.get(k) for k in ("num_generations", "max_completion_length")},
                              num_iterations=row.get("num_iterations") or 1,
                              steps_per_generation=row.get("steps_per_generation"))
    r: dict[str, Any] = {"id": f"quantlab-validate-{row['id']}", "source": source, "model": row["model"],
                         "method": row["plans_over"] if preference or variant else row["method"],
                         "weights": row["precision"], "double_quant": row["double_quant"],
                         "compute_dtype": row["compute_dtype"], "batch": row["batch"], "seq": row["seq"],
                         "attn": row["attn"], "device": row.get("device", "cpu"), "metric": "allocated",
                         "value_bytes": int(total), "unit_published": "bytes", "flash_attention": False}
    if row.get("overrides"):
        r["model_overrides"] = row["overrides"]
    if row["method"] != "inference":
        r.update(training_precision=row["training_precision"], optimizer=row["optimizer"],
                 grad_checkpointing=row["grad_checkpointing"])
        if row.get("padding_mask"):
            r["padding_mask"] = True
        r["keep_grads"] = bool(row.get("keep_grads"))  # how the measured loop zeroed (memory assumption 3)
        for k in ("packed", "optimizer_in_backward"):
            if row.get(k):
                r[k] = True
        if row.get("loss", "hf") != "hf":
            r["loss"] = row["loss"]
        if (row.get("grad_accum") or 1) > 1:
            r["grad_accum"] = row["grad_accum"]
    for k in ("lora_r", "lora_alpha", "lora_targets", "lora_dropout", "num_virtual_tokens", "adapter_size",
              "freeze_last_layers", "freeze_modules", "kbit_upcast"):
        if row.get(k) is not None:
            r[k] = row[k]
    if row.get("mode") is not None:  # a serving case: what generate / score / prefill ran (planned by serving.py)
        r["serve"] = {k: row[k] for k in SERVE_ROW_KEYS}
    if preference is not None:
        r["preference"] = preference
    if variant is not None:
        r["variant"] = variant
    return r


# the serving settings a measurement row keeps (quantlab.groundtruth plans such a row with the serving planner)
SERVE_ROW_KEYS = ("mode", "prompt_tokens", "new_tokens", "concurrency", "engine", "cache", "do_sample", "adapters",
                  "merged")
