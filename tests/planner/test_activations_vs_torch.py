"""The planner's saved-activation bytes equal what autograd saves, to the byte, on tiny CPU models of every family.

How it is measured: ``quantlab.lab.saved_tensors.count_saved`` (``torch.autograd.graph.saved_tensors_hooks``)
sees every tensor a training forward saves for backward, storages deduplicated, parameters and buffers excluded.
The planner (``device=cpu``) predicts ``activations``: everything the blocks and the layers around them save.
The loss saves three more tensors, which the planner counts in ``logits_loss`` with the loss buffers: the fp32
``log_softmax`` output (4·T·V), the int64 targets (8·T) and ``nll_loss``'s ``total_weight`` (4 bytes).

Under gradient checkpointing RoPE's cos/sin (2·s·head_dim·r bytes), the int64 position ids (8·s) and the eager causal
mask(s) (b·s²·r each) are keyword arguments of the checkpointed blocks: alive, held by the checkpoint's closure, but
not saved tensors; the planner counts them, so it exceeds the hook count by exactly those bytes.

Tiny models: 2 blocks, hidden 64, 4 heads (2 KV heads), intermediate 128, vocabulary 256, batch 2 x 24 tokens
(``quantlab.lab.model.tiny_config``); Gemma-2's default head_dim is 256; Mixtral 4 experts, top-2.
"""

import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from quantlab.planner import plan  # noqa: E402
from quantlab.specs import (Attention, DeviceMode, DType, Method, ModelSpec, PlanConfig, Precision,  # noqa: E402
                            TrainingPrecision)

B, S, L = 2, 24, 2
TD = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"phi3": ("qkv_proj", "o_proj"), "gpt2": ("c_attn",)}


def _config(family: str):
    from quantlab.lab.model import tiny_config

    over = {"num_hidden_layers": L} if family != "gpt2" else {"n_layer": L}
    if family == "phi3":
        over["pad_token_id"] = 0
    if family == "mixtral":
        over.update(num_local_experts=4, num_experts_per_tok=2)
    return tiny_config(family, **over)


def _build(family, method, dtype, attn, amp, targets, lora_dropout, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = _config(family)
    torch.manual_seed(0)
    if method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(tmp_path)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=TD[dtype])
        model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=TD[dtype], attn_implementation=attn,
                                                     quantization_config=q)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32 if amp else TD[dtype],
                                                 attn_implementation=attn)
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                 lora_dropout=lora_dropout))
    elif method == "ia3":
        from peft import IA3Config, get_peft_model

        kw = dict(target_modules=["qkv_proj", "down_proj"], feedforward_modules=["down_proj"]) \
            if family == "phi3" else {}  # PEFT has no IA3 default for Phi-3; the planner's choice
        model = get_peft_model(model, IA3Config(task_type="CAUSAL_LM", **kw))
    elif method == "prefix":
        from peft import PrefixTuningConfig, get_peft_model

        model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    elif method == "prompt":
        from peft import PromptTuningConfig, get_peft_model

        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    elif method == "freeze":  # the last block trains
        for p in model.parameters():
            p.requires_grad_(False)
        blocks = model.transformer.h if family == "gpt2" else model.model.layers
        for p in blocks[-1].parameters():
            p.requires_grad_(True)
    return cfg, model


def _measure(family, method, dtype, attn, amp=False, ckpt=False, targets=None, lora_dropout=0.0, tmp_path=None,
             padded=False):
    from quantlab.lab.saved_tensors import count_saved

    targets = targets or TARGETS.get(family, ("q_proj", "v_proj"))
    cfg, model = _build(family, method, dtype, attn, amp, targets, lora_dropout, tmp_path)
    model.train()
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method != "full":
            model.enable_input_require_grads()
    ids = torch.randint(0, cfg.vocab_size, (B, S))
    mask = None
    if padded:  # the last 3 positions of the first row are padding: transformers builds an attention mask
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0
    autocast = torch.autocast("cpu", dtype=TD[dtype]) if amp else contextlib.nullcontext()
    with count_saved(model) as c, autocast:
        model(input_ids=ids, attention_mask=mask, labels=ids)
    spec = ModelSpec.from_hf_config(cfg.to_dict(), name=family)
    pc = PlanConfig(model=spec, method=Method(method),
                    precision=Precision.NF4 if method == "qlora" else Precision.FP32 if amp else Precision(dtype),
                    compute_dtype=DType(dtype), batch=B, seq=S, attn=Attention(attn), device=DeviceMode.CPU,
                    training_precision=TrainingPrecision.AMP if amp else TrainingPrecision.PURE, lora_r=4,
                    lora_targets=tuple(targets), lora_dropout=lora_dropout, grad_checkpointing=ckpt,
                    freeze_last_layers=1, num_virtual_tokens=4, padding_mask=padded)
    return c.bytes, spec, plan(pc)


def _loss_saved(spec, method):
    T = B * (S + (4 if method == "prompt" else 0))
    return 4 * T * spec.vocab_size + 8 * T + 4


# every family x full/LoRA x SDPA/eager in bf16 (Gemma-2: eager only), the fp32 paths (where LoRA adapters share the
# fp32 norm output), Qwen2/Mistral once (Llama's code), and freeze / IA3 / prompt tuning across families
CASES = [(f, m, "bf16", a) for f in ("llama", "phi3", "gpt2", "mixtral") for m in ("full", "lora")
         for a in ("sdpa", "eager")]
CASES += [("gemma2", "full", "bf16", "eager"), ("gemma2", "lora", "bf16", "eager"), ("gemma2", "lora", "fp32", "eager"),
          ("llama", "full", "fp32", "sdpa"), ("llama", "lora", "fp32", "sdpa"), ("llama", "lora", "fp32", "eager"),
          ("gpt2", "full", "fp32", "sdpa"), ("gpt2", "lora", "fp32", "eager"),
          ("qwen2", "lora", "bf16", "sdpa"), ("mistral", "full", "bf16", "sdpa")]
CASES += [("llama", "freeze", "bf16", "sdpa"), ("gemma2", "freeze", "bf16", "eager"), ("gpt2", "freeze", "bf16", "eager"),
          ("mixtral", "freeze", "bf16", "sdpa"), ("phi3", "freeze", "bf16", "sdpa"),
          ("llama", "ia3", "bf16", "sdpa"), ("gemma2", "ia3", "bf16", "eager"), ("gpt2", "ia3", "bf16", "sdpa"),
          ("mixtral", "ia3", "bf16", "eager"), ("phi3", "ia3", "bf16", "eager"),
          ("llama", "prompt", "bf16", "eager"), ("gpt2", "prompt", "bf16", "sdpa"), ("gemma2", "prompt", "bf16", "eager"),
          ("llama", "prefix", "bf16", "sdpa"), ("mixtral", "prefix", "bf16", "eager"), ("gpt2", "prefix", "fp32", "eager")]


@pytest.mark.parametrize("family,method,dtype,attn", CASES, ids=["-".join(c) for c in CASES])
def test_activations_equal_saved_tensor_bytes(family, method, dtype, attn):
    meas, spec, p = _measure(family, method, dtype, attn)
    assert p.components["activations"] + _loss_saved(spec, method) == meas


@pytest.mark.parametrize("family,method,attn", [("llama", "lora", "sdpa"), ("gemma2", "lora", "eager"),
                                                ("gpt2", "full", "eager"), ("mixtral", "full", "sdpa"),
                                                ("llama", "freeze", "sdpa")])
def test_amp_autocast_copies(family, method, attn):
    """fp32 master weights under bf16 autocast: every linear keeps its own bf16 input cast and its weight's cast;
    Mixtral's grouped_mm experts are not autocast (fp32 internals, no weight casts)."""
    meas, spec, p = _measure(family, method, "bf16", attn, amp=True)
    assert p.components["activations"] + _loss_saved(spec, method) == meas


@pytest.mark.parametrize("family,attn,amp", [("llama", "sdpa", False), ("mixtral", "sdpa", False),
                                             ("llama", "eager", True), ("phi3", "sdpa", True)])
def test_qlora_on_bitsandbytes(family, attn, amp, tmp_path):
    """bitsandbytes 0.50 keeps no activation for a 4-bit linear and returns its input's dtype; PEFT's k-bit
    preparation runs the rest in fp32; under autocast the attention and adapter inputs are bf16 casts."""
    meas, spec, p = _measure(family, "qlora", "bf16", attn, amp=amp, tmp_path=tmp_path)
    assert p.components["activations"] + _loss_saved(spec, "qlora") == meas


@pytest.mark.parametrize("family,dtype,targets", [("llama", "fp32", None), ("phi3", "bf16", None),
                                                  ("llama", "bf16", ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"))])
def test_lora_dropout_and_all_linear(family, dtype, targets):
    """With dropout each adapter keeps a mask (fp32 on a CPU: the dropout follows PEFT's fp32 cast) and its own
    dropped copy; the first block's input needs no gradient, so its adapters keep no mask."""
    meas, spec, p = _measure(family, "lora", dtype, "sdpa", targets=targets, lora_dropout=0.1)
    assert p.components["activations"] + _loss_saved(spec, "lora") == meas


@pytest.mark.parametrize("family,method,attn", [("llama", "full", "sdpa"), ("llama", "lora", "eager"),
                                                ("gemma2", "full", "eager"), ("gpt2", "lora", "sdpa")])
def test_checkpointing_keeps_block_inputs(family, method, attn):
    meas, spec, p = _measure(family, method, "bf16", attn, ckpt=True)
    r = 2  # bf16 residual stream
    closure = 0 if family == "gpt2" else 2 * S * spec.head_dim * r + 8 * S  # cos, sin; the int64 position ids
    if attn == "eager" and family != "gpt2":
        closure += (2 if family == "gemma2" else 1) * B * S * S * r  # causal (and sliding-window) masks
    assert p.components["activations"] + _loss_saved(spec, method) - closure == meas


@pytest.mark.parametrize("family,method,opt,dtype", [("llama", "full", "adamw", "bf16"), ("gpt2", "lora", "adamw", "fp32"),
                                                     ("llama", "full", "adafactor", "bf16"),
                                                     ("llama", "lora", "sgd-momentum", "fp32"),
                                                     ("mixtral", "full", "adamw-8bit", "fp32"),
                                                     ("phi3", "lora", "adamw-8bit", "fp32")])
def test_gradients_and_optimizer_states_equal_torch(family, method, opt, dtype):
    """After one step: gradient storages and every tensor in ``optimizer.state`` (the lab's instrument). AdamW's
    states in the weights' dtype and its fp32 ``step`` scalars, Adafactor's fp32 factors and RMS scalars,
    bitsandbytes' uint8 states, absmax and shared quantile maps, fp32 states for tensors under 4096 values."""
    from transformers import AutoModelForCausalLM

    from quantlab.lab.saved_tensors import grad_bytes, optimizer_bytes

    cfg = _config(family)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=TD[dtype])
    targets = TARGETS.get(family, ("q_proj", "v_proj"))
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    params = [p for p in model.parameters() if p.requires_grad]
    if opt == "adamw":
        o = torch.optim.AdamW(params, lr=1e-4)
    elif opt == "sgd-momentum":
        o = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    elif opt == "adafactor":
        from transformers.optimization import Adafactor

        o = Adafactor(params, lr=1e-4, relative_step=False, scale_parameter=False)
    else:
        bnb = pytest.importorskip("bitsandbytes")
        o = bnb.optim.AdamW8bit(params, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (B, S))
    model(input_ids=ids, labels=ids).loss.backward()
    o.step()
    spec = ModelSpec.from_hf_config(cfg.to_dict(), name=family)
    from quantlab.specs import Optimizer

    p = plan(PlanConfig(model=spec, method=Method(method), precision=Precision(dtype), compute_dtype=DType(dtype), batch=B,
                        seq=S, device=DeviceMode.CPU, lora_r=4, lora_targets=targets, optimizer=Optimizer(opt)))
    assert p.components["gradients"] == grad_bytes(model)
    assert p.components["optimizer"] == optimizer_bytes(o)


PADDED = [("llama", "full", "bf16", "sdpa"), ("llama", "lora", "fp32", "sdpa"), ("mixtral", "lora", "bf16", "sdpa"),
          ("phi3", "full", "bf16", "sdpa"), ("qwen2", "lora", "bf16", "sdpa"), ("gpt2", "full", "bf16", "sdpa"),
          ("llama", "lora", "bf16", "eager")]


@pytest.mark.parametrize("family,method,dtype,attn", PADDED, ids=["-".join(c) for c in PADDED])
def test_padded_batches_save_the_mask_and_repeated_kv(family, method, dtype, attn):
    """Activations A3c: with padding (an attention mask) SDPA saves k and v repeated to H heads and the mask per
    layer: 2 layers x (2·a·T·(qd - kvd) + r·b·s·s) = 2 x (2·2·48·(64 - 32) + 2·2·24·24) = 16,896 more bytes on the
    bf16 tiny Llama (measured). GPT-2's SDPA and eager attention save nothing more."""
    meas, spec, p = _measure(family, method, dtype, attn, padded=True)
    assert p.components["activations"] + _loss_saved(spec, method) == meas
    plain, _, q = _measure(family, method, dtype, attn)
    grows = attn == "sdpa" and family != "gpt2"
    assert (meas > plain) == grows and (p.components["activations"] > q.components["activations"]) == grows


def test_gpt2_fused_sdpa_keeps_the_padding_mask():
    """Activations A3c: without dropout GPT-2's SDPA runs the fused CPU kernel, which keeps the padding mask in the
    attention dtype (a·b·s·s per layer: 2 x 2·2·24·24 = 4,608 bytes more than the unpadded batch); with dropout the
    CPU math kernel adds it to its scores and keeps nothing more (test_padded_batches_save_the_mask_and_repeated_kv)."""
    from transformers import AutoModelForCausalLM

    from quantlab.lab.model import tiny_config
    from quantlab.lab.saved_tensors import count_saved

    cfg = tiny_config("gpt2", n_layer=L, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    spec = ModelSpec.from_hf_config(cfg.to_dict(), name="gpt2")
    got = {}
    for padded in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        model.train()
        ids = torch.randint(0, cfg.vocab_size, (B, S))
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0 if padded else 1
        with count_saved(model) as c:
            model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
        p = plan(PlanConfig(model=spec, method=Method.FULL, precision=Precision.BF16, batch=B, seq=S,
                            device=DeviceMode.CPU, padding_mask=padded))
        assert p.components["activations"] + _loss_saved(spec, "full") == c.bytes
        got[padded] = c.bytes
    assert got[True] - got[False] == L * 2 * B * S * S


def test_padding_mask_is_kept_in_the_autocast_dtype():
    """Activations A3c under bf16 autocast over fp32 weights: the mask is converted to the query's dtype (bf16), not
    the fp32 residual stream's: 2 layers x (2·2·48·32 + 2·2·24·24) = 16,896 bytes more than unpadded (fp32 would be
    21,504)."""
    meas, spec, p = _measure("llama", "full", "bf16", "sdpa", amp=True, padded=True)
    assert p.components["activations"] + _loss_saved(spec, "full") == meas
    plain, _, _ = _measure("llama", "full", "bf16", "sdpa", amp=True)
    assert meas - plain == 16_896
