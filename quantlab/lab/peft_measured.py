"""The lab side of issue #13: BitFit, DoRA, P-tuning and Houlsby bottleneck adapters built with the field's
libraries where they exist, and one training step measured per component on a CPU.

Builders: BitFit (``requires_grad`` on ``*.bias`` parameters only; no library: BitFit is a selection of parameters,
Ben Zaken et al. 2022), DoRA (PEFT ``LoraConfig(use_dora=True)``), P-tuning (PEFT ``PromptEncoderConfig``) and
bottleneck adapters (:class:`Bottleneck`, hand-written: see its docstring for why).

Measurement (:func:`measure_step`): the method of ``quantlab.validate`` (its assumptions 2-5), for a model built
here: two optimizer steps on one random batch, the second measured. ``activations`` are the tensors saved for
backward that are still alive when the forward returns (:class:`LiveSaved`: a saved tensor whose graph was freed
during the forward, as DoRA's ``get_lora_weight`` graph is, is not an activation); ``saved_all`` is every tensor
the hook saw (``quantlab.lab.saved_tensors``' count). ``allocated``: live tensor bytes at the start plus the
profiler's peak growth (``quantlab.validate.cpu_peak``, matmul workspace apart).
"""

from __future__ import annotations

import contextlib
import weakref

from quantlab.errors import QuantlabError


# ---- models --------------------------------------------------------------------------------------------

def tiny_from_profile(name: str, overrides: dict, dtype: str = "fp32", seed: int = 0):
    """A random-weight model of a shipped profile's architecture with HF config ``overrides`` (in memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantlab.profiles import load_model

    d = dict(load_model(name).config)
    d.update(overrides)
    mt = d.pop("model_type")
    for k in ("architectures", "torch_dtype", "dtype"):
        d.pop(k, None)
    torch.manual_seed(seed)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **d), dtype=dt)


def bitfit(model):
    """BitFit: train ``*.bias`` parameters only (planner D1). Raises when the model has none."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(".bias"))
        n += p.requires_grad
    if not n:
        raise QuantlabError("bitfit: the model has no bias parameters; nothing would train")
    return model


def dora(model, r: int, alpha: int, targets):
    """PEFT LoRA with ``use_dora=True`` (planner D3)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                                            use_dora=True, task_type="CAUSAL_LM"))


def ptuning(model, num_virtual_tokens: int, encoder_hidden_size: int, encoder_type: str = "mlp",
            encoder_num_layers: int = 2):
    """PEFT P-tuning (``PromptEncoderConfig``, planner D6)."""
    from peft import PromptEncoderConfig, get_peft_model

    return get_peft_model(model, PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, encoder_hidden_size=encoder_hidden_size,
        encoder_reparameterization_type=encoder_type.upper(), encoder_num_layers=encoder_num_layers))


def _bottleneck_cls():
    import torch

    class Bottleneck(torch.nn.Module):
        """A Houlsby bottleneck adapter after a sublayer's output projection: ``y + up(relu(down(y)))``.

        Hand-written because the library that provides it, AdapterHub ``adapters`` (1.3.0, the registry's latest),
        pins ``transformers~=4.57.6``: ``pip install --dry-run adapters`` here would replace transformers 5.24 with
        4.57.6, so it is not installed. PEFT has no bottleneck adapter. The layout is what memory.py's
        ``Method.ADAPTER`` plans (its ``_adapter_params``: per block two adapters, down h -> m and up m -> h with
        biases; activations ``block_saved_direct``: on the residual stream, down / nonlinearity / up). Like PEFT's
        adapters (memory assumption 2) the adapter is fp32 and casts its input to fp32; ReLU (its output is the
        only tensor between the two linears that backward needs). Up starts at zero (Houlsby: near-identity).
        """

        def __init__(self, base, hidden: int, size: int):
            super().__init__()
            self.base = base
            self.down = torch.nn.Linear(hidden, size, dtype=torch.float32)
            self.up = torch.nn.Linear(size, hidden, dtype=torch.float32)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

        def forward(self, x, *args, **kwargs):
            y = self.base(x, *args, **kwargs)
            return y + self.up(torch.relu(self.down(y.float()))).to(y.dtype)

    return Bottleneck


def bottleneck_adapters(model, size: int, sublayers=("self_attn.o_proj", "mlp.down_proj")):
    """Freeze the model and wrap each block's attention and MLP output projections with a :class:`Bottleneck`
    (Houlsby: two adapters per block)."""
    Bottleneck = _bottleneck_cls()
    for p in model.parameters():
        p.requires_grad_(False)
    h = model.config.hidden_size
    n = 0
    for name, mod in list(model.named_modules()):
        for sub in sublayers:
            parent, _, leaf = sub.rpartition(".")
            if name.endswith(parent) and hasattr(mod, leaf) and not isinstance(getattr(mod, leaf), Bottleneck):
                setattr(mod, leaf, Bottleneck(getattr(mod, leaf), h, size))
                n += 1
    if not n:
        raise QuantlabError(f"bottleneck adapters: no {', '.join(sublayers)} in the model")
    return model


def count_bottlenecks(model) -> int:
    """How many :class:`Bottleneck` adapters ``model`` holds."""
    return sum(type(m).__name__ == "Bottleneck" and hasattr(m, "down") and hasattr(m, "up")
               for m in model.modules())


# ---- measurement ---------------------------------------------------------------------------------------

class LiveSaved:
    """Saved-tensor hook that keeps a weak reference to each saved tensor object: autograd holds the packed
    object for as long as its node lives, so the ones still alive after the forward are the saved activations;
    storages deduplicated, parameters and buffers (and ``exclude``) left out, as ``saved_tensors.count_saved``."""

    def __init__(self, skip=()):
        from quantlab.lab.measure import _storage_key

        self._key = _storage_key
        self.skip = {_storage_key(t) for t in skip}
        self.refs: list = []

    def pack(self, t):
        from quantlab.lab.measure import _nbytes

        k = self._key(t)
        if k not in self.skip:
            self.refs.append((k, _nbytes(t), weakref.ref(t)))
        return t

    @staticmethod
    def unpack(t):
        return t

    def live(self) -> dict:
        """{storage key: bytes} of the saved tensors still alive (a freed tensor's address may be reused: only
        live references are keyed)."""
        return {k: n for k, n, r in self.refs if r() is not None}

    def live_bytes(self) -> int:
        return sum(self.live().values())

    def packed(self) -> int:
        """How many tensors the hook saw (freed ones included)."""
        return len(self.refs)


@contextlib.contextmanager
def live_saved(model, exclude=()):
    import torch

    c = LiveSaved(list(model.parameters()) + list(model.buffers()) + list(exclude))
    with torch.autograd.graph.saved_tensors_hooks(c.pack, c.unpack):
        yield c


def measure_step(model, batch: int, seq: int, *, virtual_tokens: int = 0, peft: bool = True, lr: float = 1e-4,
                 seed: int = 0) -> dict:
    """``meas_<component>_bytes`` of the second of two AdamW steps on one random ``batch x seq`` batch (CPU)."""
    import torch

    from quantlab.lab.finetune import component_bytes
    from quantlab.lab.measure import _nbytes, _storage_key, model_bytes, tensor_bytes
    from quantlab.lab.saved_tensors import count_saved, grad_bytes, optimizer_bytes
    from quantlab.validate import _cpu_totals, cpu_peak

    torch.manual_seed(seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise QuantlabError("nothing to train")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    V = base_model.config.vocab_size
    ids = torch.randint(0, V, (batch, seq))
    labels = ids
    if virtual_tokens:  # PEFT gives the virtual tokens label -100
        labels = torch.cat([torch.full((batch, virtual_tokens), -100), ids], dim=1)
    loss_fn = base_model.loss_function
    out: dict = {}

    def step(measure: bool):
        if measure:
            with live_saved(model) as act:
                logits = model(input_ids=ids).logits
            with count_saved(model, exclude=[logits]) as ls:
                loss = loss_fn(logits=logits, labels=labels, vocab_size=V)
            live = act.live()
            held = 0 if _storage_key(logits) in live else _nbytes(logits)
            out["meas_activations_bytes"] = sum(live.values())
            out["meas_saved_packed"] = act.packed()
            out["meas_logits_loss_bytes"] = held + ls.bytes
        else:
            logits = model(input_ids=ids).logits
            loss = loss_fn(logits=logits, labels=labels, vocab_size=V)
        loss.backward()
        del loss, logits
        if measure:
            out["meas_gradients_bytes"] = grad_bytes(model)
        opt.step()
        if measure:
            out["meas_optimizer_bytes"] = optimizer_bytes(opt)
        opt.zero_grad(set_to_none=False)

    step(False)
    cb = component_bytes(model, "lora" if peft else "freeze")
    out.update({k: cb[k] for k in ("meas_weights_bytes", "meas_adapters_bytes", "meas_trainable_params")})
    out["meas_trainable_bytes"] = cb["meas_trainable_bytes"]
    base = model_bytes(model).total + grad_bytes(model) + optimizer_bytes(opt) + tensor_bytes([ids, labels]).total
    with cpu_peak() as pk:
        step(True)
    out.update(_cpu_totals(base, pk))
    return out


# ---- distillation (TRL 1.16 experimental GKDTrainer's loss) -------------------------------------------

def measure_distill(student, teacher, batch: int, seq: int, *, beta: float = 0.5, temperature: float = 1.0,
                    lr: float = 1e-4, seed: int = 0) -> dict:
    """One measured GKD step as ``GKDTrainer.compute_loss`` runs it (``trl/experimental/gkd/gkd_trainer.py``):
    the student forward, the teacher forward under ``no_grad`` (eval mode), both logits shifted by one, TRL's own
    ``generalized_jsd_loss``; ``compute_loss`` returns the loss only, so both outputs are dropped before backward
    (the Trainer's ``training_step`` calls backward after it returns). The second of two AdamW steps is measured:
    ``activations`` (student forward) and ``loss_saved`` (the loss's live saved tensors after it returns), both with
    :class:`LiveSaved`; ``teacher_weights``; the total as :func:`measure_step`."""
    import torch
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    from quantlab.lab.finetune import component_bytes
    from quantlab.lab.measure import model_bytes, tensor_bytes
    from quantlab.lab.saved_tensors import grad_bytes, optimizer_bytes
    from quantlab.validate import _cpu_totals, cpu_peak

    torch.manual_seed(seed)
    student.train()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    V = student.config.vocab_size
    ids = torch.randint(0, V, (batch, seq))
    labels = ids.clone()
    out: dict = {}

    def compute_loss(measure: bool):  # GKDTrainer.compute_loss, with the counters around its parts
        cm = live_saved(student) if measure else contextlib.nullcontext()
        with cm as act:
            s_out = student(input_ids=ids)
        with torch.no_grad():
            t_out = teacher(input_ids=ids)
        cl = live_saved(student) if measure else contextlib.nullcontext()
        with cl as ls:
            loss = GKDTrainer.generalized_jsd_loss(student_logits=s_out.logits[:, :-1, :],
                                                   teacher_logits=t_out.logits[:, :-1, :], labels=labels[:, 1:],
                                                   beta=beta, temperature=temperature)
        return loss, act, ls

    def step(measure: bool):
        loss, act, ls = compute_loss(measure)
        if measure:
            out["meas_activations_bytes"] = act.live_bytes()
            out["meas_loss_saved_bytes"] = ls.live_bytes()
        loss.backward()
        del loss
        if measure:
            out["meas_gradients_bytes"] = grad_bytes(student)
        opt.step()
        if measure:
            out["meas_optimizer_bytes"] = optimizer_bytes(opt)
        opt.zero_grad(set_to_none=False)

    step(False)
    cb = component_bytes(student, "full")
    out["meas_weights_bytes"] = cb["meas_weights_bytes"]
    out["meas_teacher_weights_bytes"] = model_bytes(teacher).total
    base = (model_bytes(student).total + model_bytes(teacher).total + grad_bytes(student) + optimizer_bytes(opt)
            + tensor_bytes([ids, labels]).total)
    with cpu_peak() as pk:
        step(True)
    out.update(_cpu_totals(base, pk))
    return out
