"""The plan of a live job, read from TrainingArguments, the model's PEFT state and the batch (derive assumptions)."""

import pytest

pytest.importorskip("torch")

from quantlab.errors import QuantlabError
from quantlab.integrations.derive import derive, resolve_amp, trainer_args_fields

from integ_fixtures import lora_model


def test_trainer_args_fields_maps_the_arguments():
    f, amp, und = trainer_args_fields({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4,
                                       "gradient_checkpointing": True, "optim": "adamw_bnb_8bit", "bf16": True,
                                       "max_length": 512, "output_dir": "x"})
    assert f == {"batch": 8, "grad_accum": 4, "grad_checkpointing": True, "optimizer": "adamw-8bit", "seq": 512,
                 "loop": "trainer"}  # a TrainingArguments file is a Trainer job (derive assumption 7)
    assert amp == "bf16" and und == []
    f, amp, und = trainer_args_fields({"output_dir": "x", "optim": "ademamix", "fsdp": "full_shard auto_wrap"})
    assert amp is None and f == {"fsdp": "full_shard", "loop": "trainer"} and "ademamix" in und[0]


@pytest.mark.parametrize("bad, msg", [({"output_dir": "x", "bf16": True, "fp16": True}, "both true"),
                                      ({"output_dir": "x", "per_device_train_batch_size": 0}, "positive integer"),
                                      ({"lr": 1}, "not a TrainingArguments"), ([], "JSON object")])
def test_trainer_args_fields_refuses_bad_files(bad, msg):
    with pytest.raises(QuantlabError, match=msg):
        trainer_args_fields(bad)


def test_autocast_over_fp32_weights_is_amp_and_over_bf16_is_pure():
    assert resolve_amp("bf16", "fp32") == {"training_precision": "amp", "compute_dtype": "bf16", "precision": "fp32"}
    assert resolve_amp("bf16", "bf16") == {"training_precision": "pure", "compute_dtype": "bf16", "precision": "bf16"}
    assert resolve_amp(None, "fp32")["training_precision"] == "pure"


def test_derive_lora_from_peft_state_and_the_batch():
    m = lora_model(r=8, targets=("q_proj", "k_proj", "v_proj"))
    d = derive(m, args={"output_dir": "x", "per_device_train_batch_size": 2, "optim": "adamw_torch_fused"},
               batch=2, seq=24, padded=True)
    pc = d.config
    assert pc.method.value == "lora" and pc.lora_r == 8 and pc.lora_alpha == 16
    assert pc.lora_targets == ("k_proj", "q_proj", "v_proj")
    assert (pc.batch, pc.seq, pc.padding_mask, pc.device.value) == (2, 24, True, "cpu")
    assert pc.precision.value == "fp32" and pc.training_precision.value == "pure" and not pc.grad_checkpointing
    assert d.underived == ()


def test_derive_full_freeze_and_what_it_cannot_derive():
    from quantlab.lab.model import tiny_model

    m = tiny_model("llama", num_hidden_layers=3)
    assert derive(m, batch=1, seq=8).config.method.value == "full"
    for p in m.parameters():
        p.requires_grad = False
    for p in m.model.layers[-2:].parameters():
        p.requires_grad = True
    d = derive(m, batch=1, seq=8)
    assert d.config.method.value == "freeze" and d.config.freeze_last_layers == 2 and d.underived == ()
    for p in m.model.layers[0].parameters():  # block 0 and 2 train, block 1 not: said, not guessed silently
        p.requires_grad = True
    for p in m.model.layers[1].parameters():
        p.requires_grad = False
    assert any("last k whole decoder blocks" in u for u in derive(m, batch=1, seq=8).underived)
    assert any("sequence length" in u for u in derive(m).underived)


def test_derive_reads_the_optimizer_without_arguments():
    import torch

    from quantlab.lab.model import tiny_model

    m = tiny_model("llama")
    sgd = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    assert derive(m, optimizer=sgd, batch=1, seq=8).config.optimizer.value == "sgd-momentum"
    d = derive(m, optimizer=torch.optim.RMSprop(m.parameters()), batch=1, seq=8)
    assert d.config.optimizer.value == "adamw" and "RMSprop" in d.underived[0]


def test_derive_prefix_tuning_and_amp_from_autocast():
    from peft import PrefixTuningConfig, get_peft_model

    from quantlab.lab.model import tiny_model

    m = get_peft_model(tiny_model("llama"), PrefixTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"))
    pc = derive(m, batch=1, seq=8, amp="bf16", grad_accum=3).config
    assert pc.method.value == "prefix" and pc.num_virtual_tokens == 5
    assert pc.training_precision.value == "amp" and pc.compute_dtype.value == "bf16" and pc.grad_accum == 3


def test_derive_plans_trls_fused_head_as_the_trl_fused_loss():
    """derive assumption 6: SFTTrainer patches the base model with add_fused_lm_head (TRL 1.16); label smoothing with
    the nll loss computes the loss from the full logits instead."""
    pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    m = lora_model(r=8)
    args = {"output_dir": "x", "per_device_train_batch_size": 2}
    assert derive(m, args=args, batch=2, seq=24).config.loss.value == "hf"
    add_fused_lm_head(m.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    d = derive(m, args=args, batch=2, seq=24)
    assert d.config.loss.value == "trl-fused" and d.underived == ()
    smoothed = derive(m, args=dict(args, label_smoothing_factor=0.1), batch=2, seq=24)
    assert smoothed.config.loss.value == "hf" and "label-smoothed" in smoothed.underived[0]


@pytest.mark.parametrize("d, want", [
    ({"output_dir": "x", "eval_strategy": "steps", "per_device_eval_batch_size": 16}, 16),
    ({"output_dir": "x", "eval_strategy": "IntervalStrategy.EPOCH"}, 8),  # transformers' default eval batch
    ({"output_dir": "x", "eval_strategy": "no", "per_device_eval_batch_size": 16}, None),
    ({"output_dir": "x", "per_device_eval_batch_size": 16}, None),
])
def test_trainer_args_fields_derive_the_eval_batch_from_the_eval_strategy(d, want):
    """derive assumption 8: an eval strategy other than "no" is evaluation during training over
    per_device_eval_batch_size rows (memory assumption 20), and the derivation says so."""
    f, _, und = trainer_args_fields(d)
    assert f.get("eval_batch") == want
    assert any("per_device_eval_batch_size" in n for n in und) == (want is not None)


def test_trainer_args_fields_refuses_a_bad_eval_batch():
    with pytest.raises(QuantlabError, match="per_device_eval_batch_size"):
        trainer_args_fields({"output_dir": "x", "eval_strategy": "steps", "per_device_eval_batch_size": 0})


def test_evaluation_with_trls_fused_head_is_not_planned_and_says_so():
    """memory assumption 20 models transformers' loss: a TRL-patched model (loss trl-fused) with an eval strategy
    keeps its plan (no eval_batch: PlanConfig refuses the pair) and says evaluation is not planned."""
    pytest.importorskip("trl")
    from trl.trainer.utils import add_fused_lm_head

    m = lora_model(r=8)
    args = {"output_dir": "x", "per_device_train_batch_size": 2, "eval_strategy": "steps",
            "per_device_eval_batch_size": 4}
    assert derive(m, args=args, batch=2, seq=24).config.eval_batch == 4
    add_fused_lm_head(m.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    d = derive(m, args=args, batch=2, seq=24)
    assert d.config is not None and d.config.loss.value == "trl-fused" and d.config.eval_batch is None
    assert any("evaluation during training with the trl-fused loss is not planned" in n for n in d.underived)
