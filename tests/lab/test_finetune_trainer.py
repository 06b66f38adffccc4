"""The Trainer pieces of the lab's fine-tune (quantlab.lab.finetune_trainer) on a tiny random Llama: the collator's
labels against the lab's token-weighted loss, the fractional prompt-loss weight, gradient accumulation in the
measured step, and resume after an early stop."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ft_fixtures import fast, quiet, small_jsonl, tiny_folder  # noqa: E402

from quantlab.lab.finetune import build_model, loss_from_logits  # noqa: E402
from quantlab.lab.finetune_trainer import LabCollator  # noqa: E402
from quantlab.lab.model import resolve  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("tinyt"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_jsonl(tmp_path_factory.mktemp("dt"))


def _examples(tiny, data, weight):
    from quantlab.data.lengths import load_tokenizer
    from quantlab.lab.data import prepare

    cfg = fast(model=tiny, data=data, prompt_loss_weight=weight)
    tok = load_tokenizer(tiny, progress=False)
    d = prepare(cfg.data_path, tok, cfg.max_len, weight, 0, 0.9, val_ratio=0.1, test_ratio=0.1)
    return d.train[:3], tok.pad_token_id


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_collator_labels_give_the_lab_token_weighted_loss(tiny, data, weight):
    """Weights 0 / 1 become labels (-100 where a target weighs 0: the prompt at weight 0, and padding); the model's
    ForCausalLMLoss over them equals the lab's token-weighted cross-entropy with the same weights, so the labels
    carry exactly the prompt mask."""
    ex, pad = _examples(tiny, data, weight)
    batch = LabCollator(pad, None, fractional=False)(ex)
    assert "loss_weights" not in batch
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    w = torch.tensor([[0.0] * ids.shape[1]] * len(ex))
    for i, e in enumerate(ex):
        w[i, :len(e.weights)] = torch.tensor(e.weights)
    assert torch.equal(labels == -100, w == 0)
    if weight == 0.0:
        assert (labels[mask.bool()] == -100).any()  # the prompt is masked
    model = build_model(fast(model=tiny, data=data, method="full"), resolve(tiny)).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        want = loss_from_logits(out.logits, ids, w)
    assert float(out.loss) == pytest.approx(float(want), rel=1e-5)


def test_fractional_prompt_weight_trains_on_the_lab_loss(tiny, data):
    """0.5 is no integer label: the collator gives loss_weights and LabTrainer.compute_loss the lab's weighted
    loss. The first training loss lies between the response-only (0) and the all-token (1) runs' first loss on the
    same batch, and the loss outside the model's forward is said in the notes (what it saves is not measured)."""
    first = {}
    for w in (0.0, 0.5, 1.0):
        r = quiet(fast(model=tiny, data=data, method="lora", prompt_loss_weight=w, max_steps=2, lr=0.0))
        first[w] = r.history[0][1]
        if w == 0.5:
            assert any("outside the model's forward" in n for n in r.notes)
            assert r.metrics["meas_activations_bytes"] == r.metrics["pred_activations_bytes"]
    lo, hi = sorted((first[0.0], first[1.0]))
    assert lo < first[0.5] < hi


def test_gradient_accumulation_is_one_measured_step_of_two_micro_batches(tiny, data):
    """grad_accum 2: the measured optimizer step runs two forwards; gradients and optimizer states are the
    planner's, the activations those of one micro-batch (the planner's, at the micro-batch shape)."""
    m = quiet(fast(model=tiny, data=data, method="lora", grad_accum=2, max_steps=2, packing=True, max_len=64)).metrics
    assert m["meas_step_micro_batches"] == 2 and (m["meas_step_batch"], m["meas_step_seq"]) == (2, 64)
    for comp in ("gradients", "optimizer", "activations"):
        assert m[f"meas_{comp}_bytes"] == m[f"pred_{comp}_bytes"], comp


def test_resume_after_an_early_stop_trains_no_further(tmp_path, tiny, data):
    """A run that stopped early, rerun with its checkpoint dir: Trainer reloads the last checkpoint (the early
    stopping counter restored) and no step is added."""
    ck = str(tmp_path / "ck")
    kw = dict(method="lora", lr=0.0, eval_every=1, patience=2, max_steps=20, checkpoint_dir=ck)
    a = quiet(fast(model=tiny, data=data, **kw))
    assert a.stopped_early and a.metrics["meas_steps"] == 3
    b = quiet(fast(model=tiny, data=data, **kw))
    assert b.stopped_early and b.metrics["meas_steps"] == 3 and [h[0] for h in b.history] == [1, 2, 3]


def test_a_checkpoint_of_another_method_is_refused(tmp_path, tiny, data):
    from quantlab.errors import QuantlabError

    ck = str(tmp_path / "ck")
    quiet(fast(model=tiny, data=data, method="lora", checkpoint_dir=ck), interrupt_after=2)
    with pytest.raises(QuantlabError, match="does not match this model/method"):
        quiet(fast(model=tiny, data=data, method="ia3", checkpoint_dir=ck))
