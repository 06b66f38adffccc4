"""TRL 1.16's activation offloading (``get_act_offloading_ctx_manager``, SFTTrainer's call) run on this CPU through
its own code (quantlab/lab/offload_measured.py: the accelerator reported as cpu, no pinning), counted at the end of
the forward, against quantlab/planner/offload.py (O1-O6).

Measured on the project's 2-core CPU, torch 2.13 CPU, transformers 5.24, TRL 1.16: tiny random models (2 layers,
hidden 64), batch 2 x 128 tokens (T = 256: a norm's rsqrt is 4·T = 1,024 bytes, at the threshold). With streams
(TRL's default) the host copies and the device-kept storages match the plan to the byte; without streams the plan's
host figure is a lower bound (every reference copied again) and the test prints the measured ratio.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from quantlab.lab.model import tiny_config, tiny_model  # noqa: E402
from quantlab.lab.offload_measured import offload_step  # noqa: E402
from quantlab.lab.saved_tensors import count_saved  # noqa: E402
from quantlab.planner.offload import OffloadConfig, OffloadMode, offload_plan  # noqa: E402
from quantlab.specs import DeviceMode, DType, Method, ModelSpec, PlanConfig, Precision  # noqa: E402

B, S = 2, 128
DT = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _cfg(family, dtype):
    spec = ModelSpec.from_hf_config(tiny_config(family).to_dict(), name=family)
    return PlanConfig(model=spec, method=Method.FULL, precision=Precision(dtype), compute_dtype=DType(dtype),
                      batch=B, seq=S, device=DeviceMode.CPU)


def _ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (B, S), generator=g)


@pytest.mark.parametrize("family,dtype", [("llama", "fp32"), ("llama", "bf16"), ("qwen2", "bf16"),
                                          ("mistral", "fp32"), ("gpt2", "fp32")])
def test_trl_streams_byte_exact(family, dtype):
    model = tiny_model(family, dtype=DT[dtype])
    got = offload_step(model, _ids())
    assert got.backward_ran and got.host_copies > 0
    op = offload_plan(_cfg(family, dtype), OffloadConfig(OffloadMode.TRL))
    assert op.host_exact
    # O8: a storage that lands on the address of a freed, non-contiguous offloaded tensor whose key is still
    # tracked is kept, not copied: the host may be lower by at most the plan's collision bound
    assert op.host_pinned_bytes - op.host_collision_bound <= got.host_bytes <= op.host_pinned_bytes
    print(f"{family} {dtype}: host measured {got.host_bytes:,} B, plan {op.host_pinned_bytes:,} B "
          f"(bound {op.host_collision_bound:,} B); device {got.device_bytes:,} B {got.device_by_reason}")
    # the device keeps, beyond the plan's kept activations: the forward stash (O4; the loss's share is in
    # memory's logits_loss) and nll_loss's 4-byte total_weight (also in logits_loss)
    stash = op.plan.components.get("offload_stash", 0)
    loss_saved = 4 * B * S * 256 + 8 * B * S
    assert got.device_bytes == op.device_kept_bytes + stash + loss_saved + 4, got.device_by_reason
    # O5: what the manager holds brought back during backward stays under one block's saved bytes
    assert 0 < got.backward_stash_peak_bytes <= op.in_flight_bound
    print(f"  backward: brought back at once {got.backward_stash_peak_bytes:,} B, bound {op.in_flight_bound:,} B")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_trl_no_streams_host_lower_bound(family):
    model = tiny_model(family)
    got = offload_step(model, _ids(), use_streams=False)
    op = offload_plan(_cfg(family, "fp32"), OffloadConfig(OffloadMode.TRL_NO_STREAMS))
    assert not op.host_exact
    assert got.host_bytes >= op.host_pinned_bytes
    assert got.device_bytes == op.device_kept_bytes + 4  # lm_head's region and nll's total_weight only
    print(f"{family} no streams: host measured {got.host_bytes:,} B, plan lower bound {op.host_pinned_bytes:,} B "
          f"(x{got.host_bytes / op.host_pinned_bytes:.3f})")


def test_plan_activations_match_saved_per_storage():
    """The per-storage saved bytes the host figure starts from (memory's activations + the loss's saved tensors)."""
    model = tiny_model("llama")
    ids = _ids()
    with count_saved(model) as c:
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    op = offload_plan(_cfg("llama", "fp32"))
    head_in = 4 * B * S * 64
    assert c.bytes == op.host_pinned_bytes + head_in + 4


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_save_on_cpu_copies_every_reference(family):
    """save_on_cpu keeps nothing on the device (O1: no threshold, no parameter skip, no NoOp region); its host
    copies include every saved weight reference, so the plan's host figure is a lower bound (O6)."""
    from quantlab.lab.offload_measured import save_on_cpu_step

    model = tiny_model(family)
    got = save_on_cpu_step(model, _ids())
    op = offload_plan(_cfg(family, "fp32"), OffloadConfig(OffloadMode.SAVE_ON_CPU))
    assert op.device_kept_bytes == 0 == got.device_bytes
    assert got.host_bytes >= op.host_pinned_bytes and not op.host_exact
    print(f"{family} save_on_cpu: host measured {got.host_bytes:,} B over {got.host_copies} copies, plan lower bound "
          f"{op.host_pinned_bytes:,} B (x{got.host_bytes / op.host_pinned_bytes:.3f})")


def test_runs_with_bitsandbytes_imported_and_peft():
    """TRL's __enter__ empties the accelerator cache when bitsandbytes is imported (PEFT imports it): the CPU run
    still goes through. LoRA is outside the plan's scope (O7); the count must still split host and device."""
    peft = pytest.importorskip("peft")
    import sys

    model = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                                                     task_type="CAUSAL_LM"))
    assert "bitsandbytes" in sys.modules
    got = offload_step(model, _ids())
    assert got.backward_ran and got.host_copies > 0 and got.device_bytes > 0
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
