#!/usr/bin/env python
"""Saved-for-backward bytes of one training forward under the installed transformers, against the planner.

    /tmp/v457/bin/python scripts/stack_saved_tensors.py [--json OUT.json]     # transformers 4.57.6 side venv
    .venv/bin/python scripts/stack_saved_tensors.py                           # transformers 5.x (the project's)

Run from the repository root with ``PYTHONPATH=$PWD``. It needs torch, transformers and peft (not bitsandbytes);
the planner is pure Python, so the same process plans every case with ``stack`` set to the installed version's
modelled stack (``quantlab.specs.installed_transformers_stack``) and, for reference, with the other one.

How it measures (the lab's instrument, ``quantlab.lab.saved_tensors.count_saved``): every tensor a training forward
(``model.train()``, ``labels=input_ids``, no attention mask, ``use_cache=False`` as under gradient checkpointing and
the transformers 5 Trainer) saves for backward passes through ``torch.autograd.graph.saved_tensors_hooks``;
storages are deduplicated and parameters and buffers excluded. The planner's ``activations`` (``device=cpu``) plus
the loss's three saved tensors (4·T·V + 8·T + 4, counted by the planner in ``logits_loss``) must equal it to the
byte. Under gradient checkpointing the tensors the checkpointed blocks hold as keyword arguments (cos/sin, the
position ids, the masks) are alive but not saved: the planner counts them and the script subtracts them
(``closure``), as tests/planner/test_activations_vs_torch.py does.

A second pass runs each uncheckpointed case with the config's own ``use_cache`` (True for these families): a
DynamicCache is built during the forward. Column ``with_cache``: those bytes minus the transformers==5 plan (4.57
with a cache builds no mask and matches transformers 5; Phi-3 and GPT-2 keep ``torch.cat`` copies of k and v).

Tiny random models (2-3 blocks, hidden 64, 4 heads, 2 KV heads unless MHA, intermediate 128, vocabulary 256)
at a few (batch, seq) points. Output: one line per case, and with ``--json`` the records.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from quantlab.lab.saved_tensors import count_saved
from quantlab.planner import plan
from quantlab.specs import (STACKS, Attention, DeviceMode, DType, Method, ModelSpec, PlanConfig, Precision,
                            TrainingPrecision, installed_transformers_stack)

TD = {"fp32": torch.float32, "bf16": torch.bfloat16}

# (family, method, dtype, attn, amp, ckpt, batch, seq, layers, kv_heads)
CASES = [
    ("llama", "full", "bf16", "sdpa", False, False, 2, 24, 2, 2),
    ("llama", "full", "bf16", "sdpa", False, False, 1, 40, 3, 2),
    ("llama", "full", "bf16", "sdpa", False, False, 3, 16, 2, 2),
    ("llama", "full", "fp32", "sdpa", False, False, 2, 24, 2, 2),
    ("llama", "full", "bf16", "sdpa", True, False, 2, 24, 2, 2),
    ("llama", "full", "bf16", "sdpa", False, False, 2, 24, 2, 4),  # MHA: repeat_kv is the identity
    ("llama", "full", "bf16", "sdpa", False, False, 2, 24, 2, 1),  # MQA: repeat_kv copies to 4 heads
    ("llama", "lora", "bf16", "sdpa", False, False, 2, 24, 2, 2),
    ("llama", "lora", "bf16", "sdpa", False, False, 1, 48, 3, 2),
    ("llama", "lora", "fp32", "sdpa", False, False, 2, 24, 2, 2),
    ("llama", "lora", "bf16", "sdpa", True, False, 2, 24, 2, 2),
    ("llama", "full", "bf16", "eager", False, False, 2, 24, 2, 2),
    ("llama", "lora", "bf16", "eager", False, False, 2, 24, 2, 2),
    ("qwen2", "lora", "bf16", "sdpa", False, False, 2, 24, 2, 2),
    ("qwen2", "full", "bf16", "sdpa", False, False, 1, 32, 2, 2),
    ("mistral", "full", "bf16", "sdpa", False, False, 2, 24, 2, 2),
    ("phi3", "full", "bf16", "sdpa", False, False, 2, 24, 2, 2),
    ("gpt2", "full", "bf16", "sdpa", False, False, 2, 24, 2, 4),  # dropout 0.1: the CPU math kernel
    ("gpt2-nodrop", "full", "bf16", "sdpa", False, False, 2, 24, 2, 4),  # the fused CPU kernel: keeps the mask
    ("llama", "full", "bf16", "sdpa", False, True, 2, 24, 2, 2),
    ("llama", "lora", "bf16", "sdpa", False, True, 2, 24, 3, 2),
    ("llama", "full", "bf16", "eager", False, True, 2, 24, 2, 2),
    ("gemma2", "lora", "bf16", "eager", False, False, 2, 24, 2, 2),
    ("mixtral", "full", "bf16", "sdpa", False, False, 2, 24, 2, 2),  # 4.57: a loop over nn.Linear experts
]
TARGETS = {"phi3": ["qkv_proj", "o_proj"], "gpt2": ["c_attn"], "gpt2-nodrop": ["c_attn"]}


def _config(family: str, layers: int, kv: int):
    if family.startswith("gpt2"):
        drop = dict(attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0) if family == "gpt2-nodrop" else {}
        return AutoConfig.for_model("gpt2", n_embd=64, n_layer=layers, n_head=4, vocab_size=256, n_positions=512,
                                    **drop)
    over = dict(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv,
                intermediate_size=128, vocab_size=256, max_position_embeddings=512)
    if family == "phi3":
        over["pad_token_id"] = 0
    if family == "mixtral":
        over.update(num_local_experts=4, num_experts_per_tok=2)
    return AutoConfig.for_model(family, **over)


def measure(family, method, dtype, attn, amp, ckpt, b, s, layers, kv, use_cache=False):
    cfg = _config(family, layers, kv)
    gc.collect()
    torch.manual_seed(0)
    # transformers 4.57 names the load dtype ``torch_dtype``; 5 accepts ``dtype``
    kw = {"torch_dtype" if transformers.__version__.startswith("4.") else "dtype": torch.float32 if amp else TD[dtype]}
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, **kw)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = TARGETS.get(family, ["q_proj", "v_proj"])
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    model.train()
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method != "full":
            model.enable_input_require_grads()
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    autocast = torch.autocast("cpu", dtype=TD[dtype]) if amp else contextlib.nullcontext()
    gc.collect()
    before = {id(t) for t in gc.get_objects() if isinstance(t, torch.Tensor)}
    extra = {} if use_cache is None else {"use_cache": use_cache}
    with count_saved(model) as c, autocast:
        out = model(input_ids=ids, labels=ids, **extra)
    # under checkpointing: the bool masks alive after the forward (held by the checkpointed blocks' keyword
    # arguments until their recompute), found among the live objects
    gc.collect()
    masks = sum(t.numel() for t in gc.get_objects() if isinstance(t, torch.Tensor) and id(t) not in before
                and t.dtype == torch.bool and t.dim() == 4 and tuple(t.shape) == (b, 1, s, s)) if ckpt else 0
    del out
    return cfg, c.bytes, masks


def predict(cfg, family, method, dtype, attn, amp, ckpt, b, s, stack):
    spec = ModelSpec.from_hf_config(cfg.to_dict(), name=family)
    family = family.split("-")[0]
    targets = tuple(TARGETS.get(family, ("q_proj", "v_proj")))
    pc = PlanConfig(model=spec, method=Method(method), precision=Precision.FP32 if amp else Precision(dtype),
                    compute_dtype=DType(dtype), batch=b, seq=s, attn=Attention(attn), device=DeviceMode.CPU,
                    training_precision=TrainingPrecision.AMP if amp else TrainingPrecision.PURE, lora_r=4,
                    lora_targets=targets, grad_checkpointing=ckpt, stack=stack)
    return pc, *_terms(pc, family, attn, ckpt)


def _terms(pc, family, attn, ckpt):
    """(planned activations, the loss's saved bytes, the checkpoint closure's bytes) of a case (see the module
    docstring; tests/planner/test_stack.py replays the recorded cases through this rule)."""
    spec, b, s, stack = pc.model, pc.batch, pc.seq, pc.stack
    dtype, amp = pc.compute_dtype.value, pc.training_precision is TrainingPrecision.AMP
    p = plan(pc)
    # the loss's fp32 log_softmax, int64 targets and total_weight; at batch 1 the targets are a contiguous slice of
    # the labels padded by one position (``ForCausalLMLoss``: ``pad(labels, (0, 1))[..., 1:].contiguous()`` copies
    # nothing), so their storage has one element more: 8 bytes the planner's logits_loss does not count
    loss = 4 * b * s * spec.vocab_size + 8 * b * s + 4 + (8 if b == 1 else 0)
    closure = 0
    if ckpt and family != "gpt2":
        r = 4 if (dtype == "fp32" or amp) else 2
        closure = 2 * s * spec.head_dim * r + 8 * s  # cos, sin; the int64 position ids
        if attn == "eager":
            closure += b * s * s * r  # the causal mask in the residual dtype
        elif stack == "transformers==4.57":
            closure += b * s * s  # 4.57: the materialised bool mask (activations A3d), checked apart (masks)
    return p.components["activations"], loss, closure


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the records here")
    a = ap.parse_args()
    mine = installed_transformers_stack()
    other = [st for st in STACKS if st != mine and st != "litgpt"][0]
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}: planned as {mine} "
          f"(and {other} for reference); bytes saved for backward in one training forward, CPU")
    print(f"{'case':44s} {'measured':>9s} {'planned':>9s} {'diff':>6s} {other + ' diff':>24s} {'with_cache':>10s}")
    records, bad = [], 0
    for case in CASES:
        family, method, dtype, attn, amp, ckpt, b, s, layers, kv = case
        cfg, meas, masks = measure(*case)
        default = None if ckpt else measure(*case, use_cache=None)[1]
        pc, act, loss, closure = predict(cfg, family, method, dtype, attn, amp, ckpt, b, s, mine)
        pred = act + loss - closure
        _, ract, rloss, rclosure = predict(cfg, family, method, dtype, attn, amp, ckpt, b, s, other)
        ref = ract + rloss - rclosure
        name = (f"{family}-{method}-{'amp-' if amp else ''}{dtype}-{attn}{'-ckpt' if ckpt else ''}"
                f" b{b} s{s} L{layers} kv{kv}")
        bad += pred != meas
        five = pred if mine == "transformers==5" else ref
        print(f"{name:44s} {meas:9d} {pred:9d} {pred - meas:+6d} {ref - meas:+24d} "
              f"{'-' if default is None else f'{default - five:+d}':>10s}"
              + (f"   bool masks alive after the forward: {masks} bytes" if ckpt else ""))
        records.append(dict(case=name, family=family, attn=attn, ckpt=ckpt, transformers=transformers.__version__,
                            torch=torch.__version__, stack=mine, plan_config=pc.to_dict(),
                            measured_bytes=meas, planned_bytes=pred, loss_bytes=loss, closure_bytes=closure,
                            other_stack=other, other_planned_bytes=ref,
                            with_cache_bytes=default, ckpt_bool_mask_bytes=masks if ckpt else None))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
    print(f"# {len(CASES) - bad} of {len(CASES)} cases equal to the byte")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
