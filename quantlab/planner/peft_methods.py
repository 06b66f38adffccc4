"""BitFit, DoRA and P-tuning as compositions over the one memory model (issue #13).

Each plan is :func:`quantlab.planner.memory.plan` of a derived configuration of an existing method (the pattern of
:mod:`quantlab.planner.preference`), with the method's own parameters, gradients, optimizer states and saved tensors
added where the library code differs. Pure: standard library only. Files read (this project's ``.venv``): PEFT 0.21
``tuners/lora/{layer,dora,variants}.py``, ``tuners/p_tuning/{config,model}.py``, ``peft_model.py``
(``get_prompt``, ``PeftModelForCausalLM.forward``); torch 2.13 ``aten/src/ATen/native/RNN.cpp`` (the CPU LSTM,
by its recorded autograd graph); the BitFit paper (Ben Zaken et al. 2022, arXiv 2106.10199).

Scope: one process (no ZeRO, FSDP or tensor parallelism) and no gradient checkpointing; those configurations are
refused with one line, not planned by a rule nobody measured.

Assumptions (D1, D2, ...):

D1. BitFit trains every bias parameter and nothing else (``requires_grad`` on parameters named ``*.bias``): the
    bias of every block linear that has one (families F6: Qwen2 q/k/v; GPT-2 every Conv1D), each LayerNorm's bias
    (GPT-2 ``ln_1``, ``ln_2``, ``ln_f``). RMSNorm has no bias. A model with none (Llama, Mistral, Gemma-2, Phi-3
    with ``attention_bias``/``mlp_bias`` off) is refused: nothing would train. Biases stay in the weights' dtype
    (no PEFT: no fp32 adapter copy), so do their gradients and optimizer states (memory assumptions 3, 8).
D2. BitFit's saved tensors are prompt tuning's (every block's input needs a gradient; the frozen weights keep only
    what the input gradient needs, activations A1) at the same token count: :func:`memory.plan` of
    ``Method.PROMPT`` over ``seq - 1`` tokens with one virtual token (s_eff = seq, the logits over seq rows), less
    what only prompt tuning saves: the virtual token's int64 id (8 bytes) and, where the embedding applies dropout
    (GPT-2 ``embd_pdrop``), its mask (the embedding output needs no gradient under BitFit). In the first block the
    input needs no gradient either: with LayerNorm the first norm's bias trains (the norm saves what it saves for
    an input gradient, A2); with RMSNorm the first norm saves nothing, so its fp32 input copy and rsqrt (A2:
    4·T·h + 4·T) come off. Biases that first appear after the attention inputs are not modelled apart (noted).
    Measured in pure fp32/bf16; under AMP prompt tuning's autocast weight copies of the first block's attention
    inputs are kept (they are not saved when only the bias needs a gradient): a small over-estimate, not measured.
D3. DoRA (PEFT ``use_dora=True``, ``DoraLinearLayer``; on a float base or, QDoRA, an NF4 one: both measured):
    one trainable fp32 magnitude vector (out_features) per
    adapted linear (``lora_magnitude_vector``), beside LoRA's A and B: adapters, gradients and optimizer states
    grow by it (fp32, memory assumption 2).
D4. DoRA's forward (``dora.py`` ``forward``, dropout 0: ``base_result`` is the base layer's output) saves, per
    adapted linear, beyond vanilla LoRA: the detached weight norm (4·out, saved by ``magnitude / weight_norm``);
    ``base_result`` (a·T·out, the base output's dtype; with a bias ``base_result - bias``, a new tensor of that
    size) and ``mag_norm_scale - 1`` (4·out, only where ``base_result`` needs a gradient: not in the first block's
    attention-input linears, A10) for ``(mag_norm_scale - 1) * base_result``; ``lora_result`` (4·T·out, fp32) and
    ``mag_norm_scale`` (4·out) for ``mag_norm_scale * lora_result``. The weight norm is detached (DoRA paper 4.3;
    ``weight_norm.detach()`` and ``lora_weight.detach()`` in ``dora.py``): no gradient flows through it.
D4b. GPT-2's ``Conv1D`` (PEFT ``fan_in_fan_out=True``): ``get_weight_norm`` calls ``transpose(weight, True)``
    (``peft/utils/other.py``), which wraps ``weight.T`` in a *new* ``nn.Parameter`` when it is given one, and a new
    Parameter requires a gradient: ``weight + scaling * lora_weight`` then has a graph and ``linalg.norm`` saves it
    (out x in, fp32), held after the forward (measured; the reference that keeps that node is not traced). It is
    given a Parameter when ``weight.to(x.dtype)`` is the weight itself: fp32 base weights (x is cast to the fp32
    adapter dtype). With bf16/fp16 weights the cast is a plain tensor and nothing is saved. +4·in·out per adapted
    linear then.
D5. ``get_lora_weight`` builds ``lora_B(lora_A(eye(in)))`` with autograd on (4·in² and 4·in·r saved), but only its
    detached value is used: the output is dropped when ``forward`` returns, and with it that graph and what it
    saved. It is a forward transient, not a saved activation (:func:`dora_transient_saved` gives its bytes: the
    lab's saved-tensor hook sees them pass, but they are not alive when the forward returns). At the sum in
    ``get_weight_norm`` (the measured peak op, ``aten::add``, of a tiny all-linear step, in the last block's
    ``down_proj``) the live transients are the eye graph, ``lora_weight`` (4·in·out), ``weight.to(x.dtype)`` (a
    fp32 copy, 4·out·in, when the base weight is not fp32: bf16/fp16, or dequantized NF4), ``scaling *
    lora_weight`` and the sum (4·out·in each); ``linalg.norm`` adds nothing. Beside them the block's live locals
    that are not saved tensors (the residual stream, the MLP input in the model dtype), less what is saved after
    that linear: not itemised. ``dora_forward_transient`` is the eye graph plus *five* out x in fp32 tensors (the
    four above and one as a margin for those locals) of the largest adapted linear, planned above every saved
    activation: an upper bound (the four alone planned 0.7% under on the tiny Qwen2 bf16 model; with the margin
    2.6% over, GPT-2 6.3%, matrix-scale Qwen2 4.4%). It decides the peak only where the loss's T x vocab buffers are
    smaller (small batch x seq, or tiny vocabularies).
D6. P-tuning (``PromptEncoderConfig``) is prompt tuning's layout (memory.py ``Method.PROMPT``: the virtual tokens
    are input rows of every block, label -100) with a reparameterisation: PEFT's ``PromptEncoder`` keeps an
    embedding (nvt x h, the virtual tokens memory.py already counts) and a head, trainable, fp32
    (``encoder_hidden_size`` E is required: PEFT has no default and ``nn.Linear`` fails on None):
    MLP (the default): Linear(h, E), ReLU, Linear(E, E), ReLU, Linear(E, h), with biases;
    LSTM: ``nn.LSTM(h, E, num_layers=encoder_num_layers (2), bidirectional=True)`` (per layer and direction
    ``weight_ih`` 4E x in, ``weight_hh`` 4E x E and two 4E biases; in = h for the first layer, 2E after), then
    Linear(2E, 2E), ReLU, Linear(2E, h).
D7. ``get_prompt`` runs the encoder on one sample (``prompt_tokens[:1]``, PEFT issue 2043) and ``repeat``s its
    output over the batch (nothing saved by the repeat). The MLP saves each linear's input (fp32): 4·nvt·(h + 2E)
    (a ReLU's output is its next linear's input: one storage). The LSTM on a CPU (torch's decomposed cell,
    ``RNN.cpp``: the input projection of all steps at once, then per step ``linear_hh`` and the gates) saves per
    layer and direction the layer input (4·nvt·in, shared by both directions), and per step the gate storage (4E),
    tanh(c) (E), the previous h and c (E each; the first step's are views of one zeros tensor per layer stack): then
    the head's 2E-wide input and ReLU output (4·nvt·2E each). On CUDA (cuDNN's reserve space) it is assumed equal,
    not measured.
D8. Distillation is TRL 1.16's ``GKDTrainer`` (``trl/experimental/gkd/gkd_trainer.py``; ``lmbda=0``: off-policy,
    no generation; on-policy generation is not planned): ``compute_loss`` runs the student (its saved tensors are
    memory.plan's ``activations`` of ``cfg``, any training method), then the teacher under ``no_grad`` in eval mode
    without ``use_cache=False``: the teacher builds and keeps its KV cache (memory.py's ``kv_cache`` of the teacher)
    until ``compute_loss`` returns, beside one block's transient (serving S1, ``block_transient``). The teacher is a
    second model kept for the run (an inference plan's weights, in ``teacher_precision``, default the student's).
    memory.py's HF loss (assumption 6) is replaced by ``generalized_jsd_loss`` on the logits shifted by one
    (T' = b·(s - 1) rows, no fp32 upcast: the logits' own dtype d): both models' logits (T·V·d each) stay referenced
    by their outputs through the loss; ``compute_loss`` returns the loss alone, so both are dropped before backward.
    The teacher's logits are planned in the student's logits dtype d (the loss stacks the two log-probabilities).
D9. ``generalized_jsd_loss``, op by op (each name is a T'·V·d tensor; torch ``kl_div(log_target=True)`` is
    ``exp(target) * (target - input)``): ``/ temperature`` twice, both ``log_softmax``es; for 0 < beta < 1 the two
    shifted log-probabilities, ``stack`` (2), ``logsumexp`` (the mixture), both ``kl_div``s (their ``exp`` and
    difference, the product), ``beta * kl_teacher``, ``(1 - beta) * kl_student`` and their sum: 15 live at that sum
    (the measured peak op); saved for backward: the student's log-softmax output, the stack (2), the mixture, both
    ``exp``s and the student's difference: 7. beta = 0 (forward KL): 7 live, 2 saved; beta = 1 (reverse KL): 8
    live, 3 saved. Plus the bool mask (T' bytes) and 0-dim scalars (16 bytes; 8 when beta is 0 or 1). Backward
    of the loss is below its forward peak (checked: the peak of the measured step is the sum's ``aten::add``).
    Not modelled: a few bytes per row more that the boolean-mask indexing holds at the peak (measured 7·T' + 16
    bytes for 0 < beta < 1, 24·T' + 16 for beta 0 or 1: under 0.05% of the tiny models' totals).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from quantlab.families import block_linears, family
from quantlab.planner import memory as M
from quantlab.planner.activations import Act, _norm
from quantlab.planner.allocator import allocator
from quantlab.specs import DeviceMode, Method, ModelSpec, PlanConfig, Precision, SpecError, TrainingPrecision

STATIC = ("weights", "quant_constants", "adapters", "gradients", "optimizer", "ddp_buckets")
ATTENTION_INPUTS = frozenset(("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_key_value", "Wqkv"))


def _check_scope(cfg: PlanConfig, name: str) -> None:
    if cfg.num_gpus > 1 or cfg.zero or cfg.fsdp or cfg.tp > 1:
        raise SpecError(f"{name} is planned for one GPU here (no ZeRO, FSDP or tensor parallelism): not modelled")
    if cfg.grad_checkpointing:
        raise SpecError(f"{name} with gradient checkpointing is not modelled (its per-block terms were measured "
                        "without it); drop --grad-checkpointing")


def _compose(cfg: PlanConfig, base: M.Plan, comps: dict, trainable: int, notes: list) -> M.Plan:
    """A plan from components: static (kept through the step) + the larger of forward/backward and the optimizer
    step (memory.py's composition, without checkpointing), then the allocator (memory assumption 10)."""
    static = sum(comps.get(k, 0) for k in STATIC)
    act = comps["activations"]
    dynamic = max(act + comps["logits_loss"], act + comps.get("dora_forward_transient", 0),
                  comps.get("optimizer_step", 0))
    allocated = static + dynamic
    comps.pop("cuda_context", None)
    comps.pop("allocator_reserve", None)
    reserve, context = allocator(cfg, dynamic, comps)
    comps["cuda_context"] = context
    comps["allocator_reserve"] = reserve
    return M.Plan(cfg, base.params, base.active_params, trainable, comps, allocated, allocated + reserve,
                  allocated + reserve + context, tuple(notes))


def _act(cfg: PlanConfig) -> Act:
    _, r, a, amp, _ = M._dtypes(cfg)
    return Act(b=cfg.batch, s=cfg.seq, kv_s=cfg.seq, r=r, a=a, c=cfg.compute_dtype.nbytes, amp=amp,
               eager=cfg.attn.value == "eager", cuda=cfg.device is DeviceMode.CUDA)


# ---------------------------------------------------------------------------------------------------------
# BitFit (D1, D2)

def bias_tensors(cfg: PlanConfig) -> tuple:
    """The bias tensors BitFit trains ((shape, how many), ...) (D1)."""
    m = cfg.model
    L = m.num_hidden_layers
    t = tuple(((l.out_features,), l.count * L) for l in block_linears(m) if l.bias and l.module)
    if family(m).norm == "layernorm":  # each LayerNorm's (h,) bias: the block's norms, then the final one
        t += (((m.hidden_size,), family(m).norms_per_block * L), ((m.hidden_size,), 1))
    return tuple(x for x in t if x[1])


def bitfit_plan(cfg: PlanConfig) -> M.Plan:
    """BitFit: biases only (D1, D2). ``cfg.method`` is not read (the plan derives its own configurations)."""
    _check_scope(cfg, "bitfit")
    m = cfg.model
    if cfg.precision.is_kbit:
        raise SpecError(f"bitfit updates biases in place: the base cannot be {cfg.precision.value} (k-bit weights "
                        "have no trainable biases in bitsandbytes' training path); use a float precision")
    tensors = bias_tensors(cfg)
    n = M._numel(tensors)
    if n == 0:
        raise SpecError(f"bitfit: {m.name} has no bias parameters ({m.model_type}: linears without bias, RMSNorm "
                        "without one); nothing would train. Plan lora or ia3 instead")
    if cfg.seq < 2:
        raise SpecError("bitfit is planned from prompt tuning's layout over seq - 1 tokens: seq must be at least 2")
    pcfg = M.replace(cfg, method=Method.PROMPT, seq=cfg.seq - 1, num_virtual_tokens=1)
    p = M.plan(pcfg)
    comps = dict(p.components)
    load, r, _, _, _ = M._dtypes(cfg)
    comps.pop("adapters", None)  # (the one virtual token)
    cpu = cfg.device is DeviceMode.CPU
    opt, step = M._optimizer_bytes(cfg.optimizer, tensors, load, cpu)
    comps["gradients"] = n * load
    comps["optimizer"] = opt
    comps["optimizer_step"] = step
    x = _act(cfg)
    act = comps["activations"] - 8  # the virtual token's int64 id (D2)
    fam = family(m)
    if fam.residual_dropout and m.embd_dropout > 0:
        act -= (1 if x.cuda else x.r) * x.T * m.hidden_size  # no embedding-dropout mask: its input needs no grad
    notes = [f"bitfit: {n:,} bias parameters train in the weights' dtype (D1)"]
    if fam.norm != "layernorm":
        act -= _norm(m, x, True, False)  # the first block's input norm saves nothing (D2)
        if not any(l.bias for l in block_linears(m) if l.name in ATTENTION_INPUTS):
            notes.append("bitfit: this model's first biases come after the attention inputs; the first block is "
                         "planned as if its input needed a gradient (an over-estimate, D2)")
    comps["activations"] = act
    return _compose(cfg, p, comps, n, notes)


# ---------------------------------------------------------------------------------------------------------
# DoRA (D3, D4, D5)

def _dora_linears(cfg: PlanConfig) -> tuple:
    return M._targets(cfg.model, tuple(cfg.lora_targets))


def dora_saved(cfg: PlanConfig) -> int:
    """Bytes DoRA saves for backward beyond vanilla LoRA, over every adapted linear (D4)."""
    m = cfg.model
    load, _, a, amp, _ = M._dtypes(cfg)
    T = cfg.batch * cfg.seq
    conv_norm = family(m).conv1d and load == 4 and not cfg.precision.is_kbit  # D4b
    lora_bytes = cfg.compute_dtype.nbytes if amp else 4
    order = [l.name for l in block_linears(m)]
    targets = _dora_linears(cfg)
    tnames = {l.name for l in targets}
    total = 0
    L = m.num_hidden_layers
    for l in targets:
        out = l.out_features * l.count
        per = 4 * out + a * T * out + lora_bytes * T * out + 4 * out + (4 * l.in_features * out if conv_norm else 0)
        ig = 4 * out
        # block 0: the attention inputs read a norm of the embedding (no gradient, A10); a later linear's input
        # needs one when an adapted linear precedes it in the block
        first_ig = l.name not in ATTENTION_INPUTS and any(n in tnames for n in order[:order.index(l.name)])
        total += L * per + (L - 1) * ig + (ig if first_ig else 0)
    return total


def dora_transient_saved(cfg: PlanConfig) -> int:
    """What ``get_lora_weight`` saves and frees within the forward, over every adapted linear (D5)."""
    L = cfg.model.num_hidden_layers
    return sum(L * l.count * (4 * l.in_features * l.in_features + 4 * l.in_features * cfg.lora_r)
               for l in _dora_linears(cfg))


def dora_forward_transient(cfg: PlanConfig) -> int:
    """The largest weight-norm transient of one adapted linear (D5): the eye graph and the out x in buffers."""
    load, _, _, _, _ = M._dtypes(cfg)
    cast = 0 if load == 4 and not cfg.precision.is_kbit else 1
    return max((l.count * (4 * l.in_features * l.in_features + 4 * l.in_features * cfg.lora_r
                           + 4 * l.in_features * l.out_features * (4 + cast)) for l in _dora_linears(cfg)),
               default=0)


def dora_plan(cfg: PlanConfig) -> M.Plan:
    """DoRA: LoRA (``cfg.method`` lora or qlora) with PEFT's ``use_dora=True`` (D3-D5)."""
    if cfg.method not in (Method.LORA, Method.QLORA):
        raise SpecError(f"dora is LoRA with use_dora=True: plan it from --method lora or qlora, not "
                        f"{cfg.method.value}")
    _check_scope(cfg, "dora")
    if cfg.lora_dropout > 0:
        raise SpecError("dora with lora-dropout > 0 recomputes the base output on the dropped input (dora.py); "
                        "not modelled: plan it with --lora-dropout 0")
    p = M.plan(cfg)
    comps = dict(p.components)
    m = cfg.model
    L = m.num_hidden_layers
    mags = tuple(((l.out_features,), l.count * L) for l in _dora_linears(cfg))
    n_mag = M._numel(mags)
    _, lora_tensors = M._adapter_params(m, cfg.method, cfg.lora_r, tuple(cfg.lora_targets), cfg.adapter_size,
                                        cfg.num_virtual_tokens)
    tensors = lora_tensors + mags
    comps["adapters"] += 4 * n_mag
    comps["gradients"] += 4 * n_mag
    comps["optimizer"], comps["optimizer_step"] = M._optimizer_bytes(cfg.optimizer, tensors, 4,
                                                                     cfg.device is DeviceMode.CPU)
    comps["activations"] += dora_saved(cfg)
    comps["dora_forward_transient"] = dora_forward_transient(cfg)
    notes = list(p.notes) + [f"dora: {n_mag:,} fp32 magnitude parameters beside LoRA's A and B (D3); the weight "
                             "norm is detached (DoRA 4.3), each adapted linear keeps its base and LoRA outputs (D4)"]
    return _compose(cfg, p, comps, p.trainable_params + n_mag, notes)


# ---------------------------------------------------------------------------------------------------------
# P-tuning (D6, D7)

class EncoderType(str, Enum):
    MLP = "mlp"
    LSTM = "lstm"


@dataclass(frozen=True)
class PTuningConfig:
    encoder_hidden_size: int  # PEFT requires it (no default, D6)
    encoder_type: EncoderType = EncoderType.MLP  # PromptEncoderConfig default: MLP
    encoder_num_layers: int = 2  # LSTM layers (PEFT default 2; the MLP ignores it)

    def __post_init__(self) -> None:
        if not isinstance(self.encoder_type, EncoderType):
            raise SpecError(f"encoder-type must be one of {', '.join(e.value for e in EncoderType)}")
        for f in ("encoder_hidden_size", "encoder_num_layers"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SpecError(f"{f.replace('_', '-')} must be a positive integer, got {v!r}")


def encoder_tensors(h: int, pt: PTuningConfig) -> tuple:
    """The prompt encoder's head, without its embedding ((shape, how many), ...) (D6)."""
    E = pt.encoder_hidden_size
    if pt.encoder_type is EncoderType.MLP:
        return (((E, h), 1), ((E,), 1), ((E, E), 1), ((E,), 1), ((h, E), 1), ((h,), 1))
    t = [((4 * E, h), 2), ((4 * E, E), 2), ((4 * E,), 4)]  # layer 0, both directions
    if pt.encoder_num_layers > 1:
        k = 2 * (pt.encoder_num_layers - 1)
        t += [((4 * E, 2 * E), k), ((4 * E, E), k), ((4 * E,), 2 * k)]
    return tuple(t) + (((2 * E, 2 * E), 1), ((2 * E,), 1), ((h, 2 * E), 1), ((h,), 1))


def encoder_saved(h: int, nvt: int, pt: PTuningConfig) -> int:
    """Bytes the prompt encoder saves for backward, on one sample (D7)."""
    E = pt.encoder_hidden_size
    if pt.encoder_type is EncoderType.MLP:
        return 4 * nvt * (h + 2 * E)
    Ln = pt.encoder_num_layers
    inputs = 4 * nvt * h + (Ln - 1) * 4 * nvt * 2 * E  # each layer's input, shared by its two directions
    steps = 2 * Ln * 4 * ((4 * E + E) * nvt + 2 * (nvt - 1) * E)  # gates, tanh(c); previous h and c
    zeros = 2 * 4 * 2 * Ln * E  # h0, c0: one zeros tensor each over the layer stack
    head = 2 * 4 * nvt * 2 * E  # the head's input and its ReLU output
    return inputs + steps + zeros + head


def ptuning_plan(cfg: PlanConfig, pt: PTuningConfig) -> M.Plan:
    """P-tuning: prompt tuning (``cfg.num_virtual_tokens``) with PEFT's prompt encoder (D6, D7). ``cfg.method``
    is not read (prompt tuning's configuration is derived)."""
    _check_scope(cfg, "ptuning")
    pcfg = M.replace(cfg, method=Method.PROMPT)
    p = M.plan(pcfg)
    comps = dict(p.components)
    h = cfg.model.hidden_size
    nvt = cfg.num_virtual_tokens
    head = encoder_tensors(h, pt)
    n_head = M._numel(head)
    tensors = (((nvt, h), 1),) + head
    comps["adapters"] += 4 * n_head
    comps["gradients"] += 4 * n_head
    comps["optimizer"], comps["optimizer_step"] = M._optimizer_bytes(cfg.optimizer, tensors, 4,
                                                                     cfg.device is DeviceMode.CPU)
    comps["activations"] += encoder_saved(h, nvt, pt)
    notes = list(p.notes) + [f"ptuning: {pt.encoder_type.value} prompt encoder (E = {pt.encoder_hidden_size}) of "
                             f"{n_head:,} fp32 parameters over {nvt} virtual tokens, run on one sample (D6, D7)"]
    return _compose(pcfg, p, comps, p.trainable_params + n_head, notes)


# ---------------------------------------------------------------------------------------------------------
# Distillation (D8, D9)

@dataclass(frozen=True)
class DistillConfig:
    teacher: ModelSpec
    beta: float = 0.5  # GKDConfig default: the generalized JSD; 0 forward KL, 1 reverse KL
    teacher_precision: Precision | None = None  # None: the student's precision

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, ModelSpec):
            raise SpecError("distill needs --teacher MODEL (a profile name or config.json)")
        if not 0.0 <= self.beta <= 1.0:
            raise SpecError(f"beta must be in [0, 1] (GKDConfig), got {self.beta!r}")


def jsd_units(beta: float) -> tuple[int, int]:
    """(T'·V tensors live at the loss's forward peak, T'·V tensors saved for backward) of TRL's
    ``generalized_jsd_loss`` (D9)."""
    if beta == 0:
        return 7, 2
    if beta == 1:
        return 8, 3
    return 15, 7


def jsd_small(beta: float, rows: int, d: int) -> int:
    """The loss's bytes that are not T'·V tensors: the bool mask (T'), the int64 token count the mean divides by
    and, for 0 < beta < 1, the 0-dim ``beta`` and ``1 - beta`` in the logits' dtype (D9)."""
    return rows + 8 + (0 if beta in (0, 1) else 2 * d)


def jsd_saved(cfg: PlanConfig, beta: float) -> int:
    """Bytes ``generalized_jsd_loss`` saves for backward at ``cfg``'s shape (D9)."""
    B, S, V = cfg.batch, cfg.seq, cfg.model.vocab_size
    d = M.loss_buffers(cfg)[0] // (B * S * V)
    return jsd_units(beta)[1] * B * (S - 1) * V * d + jsd_small(beta, B * (S - 1), d)


def distill_plan(cfg: PlanConfig, dc: DistillConfig) -> M.Plan:
    """GKD distillation (D8, D9): ``cfg`` is the student's training configuration."""
    _check_scope(cfg, "distill")
    if not cfg.method.is_training:
        raise SpecError("distill trains the student: give a training --method (full, lora, ...)")
    t = dc.teacher
    if t.vocab_size != cfg.model.vocab_size:
        raise SpecError(f"distill: the teacher's vocabulary ({t.vocab_size:,}) differs from the student's "
                        f"({cfg.model.vocab_size:,}); GKD compares logits token by token")
    if cfg.training_precision is TrainingPrecision.AMP:
        raise SpecError("distill under AMP is not modelled (the logits' dtypes of the two models differ there); "
                        "plan it with --training-precision pure")
    p = M.plan(cfg)
    comps = dict(p.components)
    comps.pop("logits_loss")
    B, S, V = cfg.batch, cfg.seq, cfg.model.vocab_size
    logits_bytes = M.loss_buffers(cfg)[0]  # T·V·d, the student's logits (memory assumption 6)
    d = logits_bytes // (B * S * V)
    Tp = B * (S - 1)
    tcfg = PlanConfig(model=t, method=Method.INFERENCE, precision=dc.teacher_precision or cfg.precision,
                      compute_dtype=cfg.compute_dtype, batch=B, seq=S, attn=cfg.attn, device=cfg.device,
                      flash_attention=cfg.flash_attention)
    tp = M.plan(tcfg)
    comps["teacher_weights"] = tp.components["weights"] + tp.components.get("quant_constants", 0)
    kv = M.kv_cache(tcfg)
    from quantlab.planner.serving import block_transient
    live, saved = jsd_units(dc.beta)
    small = jsd_small(dc.beta, Tp, d)
    comps["teacher_kv_cache"] = kv
    comps["teacher_forward"] = block_transient(tcfg, S, [])
    comps["distill_logits"] = 2 * logits_bytes
    comps["distill_loss"] = live * Tp * V * d + small
    act = comps["activations"]
    static = sum(comps.get(k, 0) for k in STATIC) + comps["teacher_weights"]
    dynamic = max(act + kv + comps["distill_logits"] + comps["distill_loss"],  # the loss's forward (D9)
                  act + logits_bytes + kv + max(comps["teacher_forward"], logits_bytes),  # the teacher's forward
                  act + saved * Tp * V * d + small + comps.get("embedding_grad_tail", 0),  # backward's end
                  comps.get("optimizer_step", 0))
    allocated = static + dynamic
    comps.pop("cuda_context", None)
    comps.pop("allocator_reserve", None)
    reserve, context = allocator(cfg, dynamic, comps)
    comps["cuda_context"] = context
    comps["allocator_reserve"] = reserve
    notes = list(p.notes) + [
        f"distill: TRL GKDTrainer (beta {dc.beta}), teacher {t.name} kept for the run, its KV cache built and held "
        "through the loss (no use_cache=False in compute_loss) (D8)",
        f"the generalized JSD loss holds {live} tensors of {Tp:,} x {V:,} at its peak and saves {saved} (D9)"]
    return M.Plan(cfg, p.params + tp.params, p.active_params, p.trainable_params, comps, allocated,
                  allocated + reserve, allocated + reserve + context, tuple(notes))
