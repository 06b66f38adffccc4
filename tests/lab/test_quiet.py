"""Known library noise is dropped at its source, nothing else is, and GPTQModel leaves the allocator alone."""

import logging
import subprocess
import sys

import pytest


def test_lab_imports_are_quiet_and_gptqmodel_keeps_the_allocator_setting():
    pytest.importorskip("torchao")
    code = ("import os, sys, quantlab.lab\n"
            "import torch, transformers, peft, torchao\n"
            "import importlib.util\n"
            "ok = importlib.util.find_spec('gptqmodel') is not None\n"
            "if ok:\n"
            "    import gptqmodel\n"
            "print(ok, os.environ.get('PYTORCH_ALLOC_CONF'), os.environ.get('CUDA_DEVICE_ORDER'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PYTORCH_ALLOC_CONF", "CUDA_DEVICE_ORDER")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    installed = __import__("importlib").util.find_spec("gptqmodel") is not None
    assert r.stdout.split() == [str(installed), "None", "None"]  # no banner on stdout; the variables restored
    assert "Failed to load" not in r.stderr and "Enum subclass" not in r.stderr


def test_filters_drop_only_the_known_messages(capsys):
    from quantlab.lab import quiet

    quiet.install()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    h = Keep()
    for name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(name).addHandler(h)
    try:
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: Could not load this library")
        logging.getLogger("torchao").warning("a torchao warning that matters")
        logging.getLogger("torch.utils._pytree").warning("<enum 'X'> is an Enum subclass and is now natively "
                                                         "supported by torch.compile")
        for _ in range(2):
            logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
                "Failed to load CPU gemm_4bit_forward from kernels-community: no module")
    finally:
        for name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
            logging.getLogger(name).removeHandler(h)
    assert seen == ["a torchao warning that matters"]
    err = capsys.readouterr().err
    assert err.count("quantlab: note:") <= 1  # the bitsandbytes fallback: once per process, as a note


def test_peft_and_cached_decoding_raise_no_deprecation():
    """get_peft_model (peft reads the deprecated is_gradient_checkpointing) and a cached decode step through
    lab.model's cache keyword run clean with FutureWarning as an error."""
    code = ("import quantlab.lab, torch\n"
            "from transformers import LlamaConfig, AutoModelForCausalLM\n"
            "from peft import LoraConfig, get_peft_model\n"
            "from quantlab.lab.model import cache_kwarg, output_cache\n"
            "m = AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=64, intermediate_size=128, "
            "num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=100))\n"
            "out = m(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)\n"
            "out = m(input_ids=torch.tensor([[4]]), use_cache=True, **{cache_kwarg(m): output_cache(out)})\n"
            "print(output_cache(out).get_seq_length())\n"
            "get_peft_model(m, LoraConfig(r=4, target_modules=['q_proj']))\n")
    r = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "4"


def test_deepspeed_cpu_accelerator_warning_dropped_only_without_cuda(monkeypatch):
    """quiet 6: DeepSpeed's "Setting accelerator to CPU" is dropped while torch sees no CUDA device, shown when one
    is there (then DeepSpeed missed it), and its other warnings pass."""
    import torch

    from quantlab.lab import quiet

    quiet.install()
    f = next(x for x in logging.getLogger("DeepSpeed").filters if isinstance(x, quiet._DropWithoutCuda))

    def rec(msg):
        return logging.LogRecord("DeepSpeed", logging.WARNING, __file__, 1, msg, None, None)

    cpu_msg = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert f.filter(rec(cpu_msg)) is False and f.filter(rec("ZeRO stage 3 ...")) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert f.filter(rec(cpu_msg)) is True


def test_dpo_config_raises_no_checkpointing_rename_warning():
    """TRL 1.16's configs set the deprecated gradient_checkpointing; the lab passes transformers 5's
    activation_checkpointing (quantlab/lab/preference.py), so no FutureWarning is raised for it."""
    import warnings

    pytest.importorskip("trl")
    from trl import DPOConfig

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = DPOConfig(output_dir="/tmp/quantlab-test-dpo", use_cpu=True, report_to="none", bf16=False,
                      activation_checkpointing=True)
    assert a.gradient_checkpointing is True
    assert not [x for x in w if "gradient_checkpointing" in str(x.message)]
