"""Fine-tunes on the embedded SmolLM2-135M: QLoRA's structure, freeze, and one short end-to-end run through the CLI
(data, training, measurement, adapter save/reload/merge, store, report). The training loop itself is tested on a
tiny model in test_finetune_loop.py."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ft_fixtures import fast, small_jsonl  # noqa: E402

from quantlab.cli import main  # noqa: E402
from quantlab.lab.finetune import build_model  # noqa: E402
from quantlab.lab.model import resolve  # noqa: E402


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return small_jsonl(tmp_path_factory.mktemp("d"))


@pytest.fixture(scope="module")
def qlora_model(small_data):
    return build_model(fast(method="qlora", data=small_data), resolve("smollm2-135m"))


def test_qlora_base_is_4bit_and_frozen_only_adapters_train(qlora_model):
    """Per parameter name: exactly the LoRA A/B matrices train; every block linear is a bitsandbytes 4-bit layer
    holding packed uint8 NF4 data (two weights a byte); embeddings and norms stay fp32 and frozen."""
    import bitsandbytes as bnb

    m = qlora_model
    for name, p in m.named_parameters():
        assert p.requires_grad == ("lora_A" in name or "lora_B" in name), name
    lin = {n: mod for n, mod in m.named_modules() if isinstance(mod, bnb.nn.Linear4bit)}
    assert len(lin) == 30 * 7  # 30 blocks x (q, k, v, o, gate, up, down)
    q = lin["base_model.model.model.layers.0.self_attn.q_proj.base_layer"]
    assert q.weight.dtype == torch.uint8 and q.weight.numel() == 576 * 576 // 2 and not q.weight.requires_grad
    assert q.weight.quant_state.quant_type == "nf4"
    emb = dict(m.named_parameters())["base_model.model.model.embed_tokens.weight"]
    assert emb.dtype == torch.float32 and not emb.requires_grad
    # LoRA r=16 on the plan's default targets, q (576->576) and v (576->192, 3 KV heads of 64): r(in + out) each,
    # 30 blocks
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 30 * 16 * ((576 + 576) + (576 + 192))


def test_qlora_training_unchanged_by_an_evaluation(qlora_model):
    """bitsandbytes repacks 4-bit weights for CPU inference in eval mode, which broke training after a validation
    pass; the QLoRA builder turns that off: the training loss of one batch is the same before and after an
    evaluation, and gradients reach the first layer's adapters (lora_B: lora_A starts with a zero gradient, B being 0)."""
    import bitsandbytes as bnb

    m = qlora_model
    assert not any(getattr(mod, "support_avx512bf16_for_cpu", False) for mod in m.modules()
                   if isinstance(mod, bnb.nn.Linear4bit))
    x = torch.randint(0, 1000, (1, 16))
    m.train()
    with torch.no_grad():
        before = float(m(x, labels=x).loss)
    m.eval()
    with torch.no_grad():
        m(x)
    m.train()
    loss = m(x, labels=x).loss
    assert float(loss.detach()) == pytest.approx(before, rel=1e-5)
    loss.backward()
    g = dict(m.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"].grad
    assert g is not None and float(g.abs().sum()) > 0


def test_freeze_trains_exactly_the_chosen_layers(small_data):
    m = build_model(fast(method="freeze", data=small_data, freeze_last_layers=2, freeze_modules=("model.norm",)),
                    resolve("smollm2-135m"))
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {n.split(".")[2] for n in trained if n.startswith("model.layers.")} == {"28", "29"}
    assert {n for n in trained if not n.startswith("model.layers.")} == {"model.norm.weight"}
    assert all(not p.requires_grad for n, p in m.named_parameters() if n.startswith("model.layers.27."))


def test_qlora_end_to_end_through_the_cli(tmp_path, small_data, capsys):
    """Two QLoRA steps on the embedded model from the command line: the run is stored with memory per component
    (equal to the planner's prediction for weights, adapters, gradients and optimizer states), the adapter is saved
    as safetensors, reloaded onto the fp32 base and merged (merged == base + adapter), and 'quantlab report' renders
    the row."""
    store, out = tmp_path / "s.sqlite", tmp_path / "out"
    rc = main(["lab", "finetune", "--method", "qlora", "--data", small_data, "--max-steps", "2", "--batch", "2",
               "--eval-items", "2", "--max-new-tokens", "4", "--eval-every", "2", "--lr", "0.01",
               "--store", str(store), "--out", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "memory per component" in cap.out and "exact match" in cap.out
    from quantlab.report.store import ResultStore

    (rec,) = ResultStore(store).records("finetune")
    m = rec.metrics
    for comp in ("weights", "quant_constants", "adapters", "gradients", "optimizer"):
        assert m[f"meas_{comp}_bytes"] == m[f"pred_{comp}_bytes"] > 0, comp
    assert m["meas_activations_bytes"] == m["pred_activations_bytes"]
    assert m["meas_merge_max_abs_logit_diff"] < 1e-3 and m["meas_merged_argmax_agreement"] == 1.0
    assert list((out / "qlora-small-adapter").glob("*.safetensors"))
    assert (out / "qlora-small-loss.png").stat().st_size > 1000
    # the stored config is the plan's vocabulary: nf4 weights computing in fp32 on this CPU, checkpointed (the
    # QLoRA recipe, resolved by PlanConfig.from_dict), beside the lab's own settings
    c = rec.config
    assert (c["method"], c["precision"], c["compute_dtype"], c["training_precision"], c["grad_checkpointing"],
            c["batch"], c["max_steps"]) == ("qlora", "nf4", "fp32", "pure", True, 2, 2) and rec.env.get("torch")
    assert main(["report", "--store", str(store), "--kind", "finetune", "--format", "markdown"]) == 0
    assert "qlora" in capsys.readouterr().out
    rc = main(["lab", "finetune", "--method", "qlora", "--data", small_data, "--max-steps", "2", "--batch", "2",
               "--eval-items", "2", "--max-new-tokens", "4", "--eval-every", "2", "--lr", "0.01",
               "--store", str(store), "--out", str(out), "--no-progress"])
    assert rc == 0 and "already in" in capsys.readouterr().err  # reused, not rerun
    json.dumps(m)  # stored metrics are plain JSON
