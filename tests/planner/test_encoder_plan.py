"""The encoder planner: byte-exact against the lab's instrument on tiny random encoders, parameter counts against
transformers' own modules for every encoder profile, and the directions memory must move in.

Golden number: bert-base-uncased's BertModel has 109,482,240 parameters (embeddings 30522*768 + 512*768 + 2*768 +
2*768 = 23,837,184; 12 blocks of 4*768^2 + 2*768*3072 + 9*768 + 3072 = 7,087,872; pooler 768^2 + 768 = 590,592);
an 8-label classifier adds 768*8 + 8 = 6,152: 109,488,392. Its last 3 blocks and the head train:
3*7,087,872 + 590,592 + 6,152 = 21,860,360.
"""

import ast
from pathlib import Path

import pytest

from quantlab.planner.encoder import (FAMILIES, EncoderPlanConfig, EncoderSpec, Head, block_activation_bytes,
                                      plan_encoder)

COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits_loss")


def test_encoder_planner_is_pure():
    src = Path(__file__).resolve().parents[2] / "quantlab" / "planner" / "encoder.py"
    mods = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
            for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert mods <= {"__future__", "dataclasses", "enum"}


def test_bert_base_golden_counts():
    from quantlab.encoder_profiles import load_encoder

    p = plan_encoder(load_encoder("bert-base-uncased"), EncoderPlanConfig(num_labels=8, train_last_k=3))
    assert (p.params, p.trainable_params) == (109_488_392, 21_860_360)
    assert p.weights_bytes == 4 * 109_488_392 + 2 * 8 * 512  # fp32 + position_ids/token_type_ids int64 buffers
    assert p.gradients_bytes == 4 * 21_860_360
    assert p.optimizer_bytes == 8 * 21_860_360 + 4 * (3 * 16 + 4)  # 16 tensors a block, pooler 2, classifier 2


def _configs():
    from transformers import BertConfig, ModernBertConfig, RobertaConfig

    small = dict(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4)
    return {"bert": BertConfig(**small, intermediate_size=64, max_position_embeddings=64),
            "roberta": RobertaConfig(**small, intermediate_size=64, max_position_embeddings=66, pad_token_id=1),
            "modernbert": ModernBertConfig(**small, intermediate_size=48, max_position_embeddings=64, pad_token_id=0,
                                           bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)}


def _measure(model, batch, seq, labels, head, padded):
    """Optimizer step 2 of a plain loop through StepProbe (the lab's instrument), loss inside the forward."""
    import torch

    from quantlab.lab.measure import StepProbe

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(3, 100, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:
        mask[0, seq - 2:] = 0
    y = torch.randint(0, 2, (batch, labels)).float() if head is Head.SEQ_CLS else torch.randint(0, labels,
                                                                                                 (batch, seq))
    for step in (1, 2):
        probe = StepProbe(model).start(opt) if step == 2 else None
        loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
        loss.backward()
        if probe:
            probe.after_backward()
        opt.step()
        if probe:
            probe.after_optimizer_step(opt)
        opt.zero_grad()
    return probe.stop()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("head", list(Head))
@pytest.mark.parametrize("padded", [False, True])
def test_byte_exact_against_the_measured_step(family, head, padded):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from quantlab.lab.classify import freeze_all_but_last_k

    torch.manual_seed(0)
    c = _configs()[family]
    c.num_labels = 5
    c.problem_type = "multi_label_classification" if head is Head.SEQ_CLS else None
    auto = AutoModelForSequenceClassification if head is Head.SEQ_CLS else AutoModelForTokenClassification
    model = auto.from_config(c)
    model.train()
    trainable = freeze_all_but_last_k(model, 2)
    m = _measure(model, 3, 7, 5, head, padded)
    plan = plan_encoder(EncoderSpec.from_config(c.to_dict()),
                        EncoderPlanConfig(head=head, num_labels=5, train_last_k=2, batch=3, seq=7, padded=padded))
    assert plan.trainable_params == trainable == m.trainable_params
    for k in COMPONENTS:
        assert getattr(plan, f"{k}_bytes") == getattr(m, f"{k}_bytes"), k


def test_every_encoder_profile_counts_what_transformers_builds():
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from quantlab.encoder_profiles import encoder_doc, list_encoders, load_encoder

    assert {"all-minilm-l6-v2", "bert-base-uncased", "roberta-base", "modernbert-base"} <= set(list_encoders())
    for name in list_encoders():
        doc = encoder_doc(name)
        assert doc["source"] == f"https://huggingface.co/{doc['hf_id']}/blob/main/config.json"
        spec = load_encoder(name)
        for head, auto in ((Head.SEQ_CLS, AutoModelForSequenceClassification),
                           (Head.TOK_CLS, AutoModelForTokenClassification)):
            cfg = AutoConfig.for_model(**doc["config"])
            cfg.num_labels = 8
            with torch.device("meta"):
                model = auto.from_config(cfg)
            plan = plan_encoder(spec, EncoderPlanConfig(head=head, num_labels=8, train_last_k=3))
            assert plan.params == sum(p.numel() for p in model.parameters()), (name, head)
            buffers = sum(b.numel() * b.element_size() for b in model.buffers())
            assert plan.weights_bytes == 4 * plan.params + buffers, (name, head)


def test_memory_grows_with_trained_layers_batch_and_sequence():
    from quantlab.encoder_profiles import load_encoder

    s = load_encoder("bert-base-uncased")
    base = EncoderPlanConfig(num_labels=8, train_last_k=3, batch=8, seq=128)

    def total(**kw):
        import dataclasses

        return plan_encoder(s, dataclasses.replace(base, **kw)).total_bytes

    assert total(train_last_k=0) < total() < total(train_last_k=6) < total(train_last_k=12)
    assert total() < total(batch=16) and total() < total(seq=256)
    # frozen layers save nothing: activations are k blocks (plus the pooler), linear in k
    a = [plan_encoder(s, EncoderPlanConfig(train_last_k=k)).activations_bytes for k in (1, 2, 3)]
    assert a[2] - a[1] == a[1] - a[0] == block_activation_bytes(s, EncoderPlanConfig(), 11)
    # the weights do not depend on k
    assert len({plan_encoder(s, EncoderPlanConfig(train_last_k=k)).weights_bytes for k in (0, 5, 12)}) == 1


def test_bad_plans_are_refused():
    from quantlab.encoder_profiles import load_encoder

    s = load_encoder("all-minilm-l6-v2")
    with pytest.raises(ValueError, match="exceeds"):
        plan_encoder(s, EncoderPlanConfig(train_last_k=7))
    with pytest.raises(ValueError, match="train-last-k"):
        EncoderPlanConfig(train_last_k=-1)
    with pytest.raises(ValueError, match="not an encoder"):
        EncoderSpec.from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": 100,
                                 "max_position_embeddings": 128})


def test_modernbert_plan_says_what_it_does_not_model():
    from quantlab.encoder_profiles import load_encoder

    notes = " ".join(plan_encoder(load_encoder("modernbert-base"), EncoderPlanConfig(seq=512)).notes)
    assert "sliding layers get a mask" in notes
    # its own mean pooling is modelled (assumption 5a) and said so; cls pooling needs no note
    assert "classifier_pooling 'mean'" in notes


@pytest.mark.parametrize("family, pooling", [("bert", None), ("roberta", None), ("modernbert", "cls"),
                                             ("modernbert", "mean")])
@pytest.mark.parametrize("head", list(Head))
def test_bf16_and_pooling_byte_exact(family, head, pooling):
    """bf16 weights and compute (assumption 5: the math SDPA path's fp32 q/k/v and probabilities, LayerNorm stats
    and ModernBERT's cos/sin in bf16; 5a: one additive mask per trainable block) and ModernBERT's two poolings,
    padded, three of four layers trained (two attention types, two blocks of one)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from quantlab.lab.classify import freeze_all_but_last_k

    torch.manual_seed(0)
    c = _configs()[family]
    c.num_labels = 5
    c.problem_type = "multi_label_classification" if head is Head.SEQ_CLS else None
    if pooling is not None:  # ModernBERT's field
        c.classifier_pooling = pooling
    auto = AutoModelForSequenceClassification if head is Head.SEQ_CLS else AutoModelForTokenClassification
    model = auto.from_config(c, dtype=torch.bfloat16)
    model.train()
    freeze_all_but_last_k(model, 3)
    m = _measure(model, 3, 7, 5, head, True)
    plan = plan_encoder(EncoderSpec.from_config(c.to_dict()),
                        EncoderPlanConfig(head=head, num_labels=5, train_last_k=3, batch=3, seq=7, padded=True,
                                          param_bytes=2))
    for k in COMPONENTS:
        assert getattr(plan, f"{k}_bytes") == getattr(m, f"{k}_bytes"), k


def test_modernbert_sliding_mask_from_half_the_window():
    """Assumption 5a: without padding the sliding layers get a mask from seq = local_attention // 2 on
    (masking_utils ``kv_length < local_attention_size`` skips it below), one per trainable sliding block; padded,
    every trainable block has one. 4 layers: full, sliding, sliding, full; the last 3 trained (2 sliding)."""
    from quantlab.planner.encoder import attention_mask_bytes

    s = EncoderSpec("modernbert", 64, 4, 4, 96, 100, 8192, 0, 0.0, 0.0, 0.0, local_attention=128)
    def mask(seq, padded=False):
        return attention_mask_bytes(s, EncoderPlanConfig(train_last_k=3, batch=2, seq=seq, padded=padded))

    assert mask(63) == 0
    assert mask(64) == 2 * 4 * 2 * 64 * 64  # two sliding blocks, fp32 B x 1 x S x S each
    assert mask(63, padded=True) == 3 * 4 * 2 * 63 * 63
