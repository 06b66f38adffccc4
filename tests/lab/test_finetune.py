"""Fine-tunes on the embedded model (short runs on small data) and the precision paths on a tiny model."""

import json
import math
import shutil

import pytest

torch = pytest.importorskip("torch")

from quantlab.cli import main  # noqa: E402
from quantlab.lab.finetune import FinetuneConfig, build_model, run_finetune  # noqa: E402
from quantlab.lab.model import ensure_embedded, resolve  # noqa: E402


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    src = [json.loads(l) for l in open("tasks/json-extract/data.jsonl")][:40]
    p = tmp_path_factory.mktemp("d") / "small.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in src))
    return str(p)


def fast(**kw):
    base = dict(batch=2, max_len=128, eval_items=2, max_new_tokens=4, eval_every=2, max_steps=4, task=None)
    base.update(kw)
    return FinetuneConfig(**base)


def test_qlora_base_is_4bit_and_frozen_only_adapters_train(small_data):
    m = build_model(fast(method="qlora", data=small_data), resolve("smollm2-135m"))
    import bitsandbytes as bnb

    for name, p in m.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
    lin = [n for n, mod in m.named_modules() if isinstance(mod, bnb.nn.Linear4bit)]
    assert len(lin) == 30 * 7  # every block linear is 4-bit
    q = dict(m.named_modules())["base_model.model.model.layers.0.self_attn.q_proj.base_layer"]
    assert q.weight.dtype == torch.uint8 and not q.weight.requires_grad


def test_freeze_trains_exactly_the_last_layers(small_data):
    m = build_model(fast(method="freeze", data=small_data, freeze_last_layers=2), resolve("smollm2-135m"))
    trained = {n.split(".")[2] for n, p in m.named_parameters() if p.requires_grad}
    assert trained == {"28", "29"}


def test_merge_equals_base_plus_adapter(tmp_path, small_data):
    from peft import LoraConfig, get_peft_model

    from quantlab.lab.adapters import merge_check, save_adapter
    from quantlab.lab.model import load_model, load_tokenizer

    src = resolve("smollm2-135m")
    m = get_peft_model(load_model(src, progress=False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a non-trivial adapter
    d = save_adapter(m, tmp_path / "a")
    assert list(d.glob("*.safetensors"))
    diff, merged = merge_check(src, d, load_tokenizer(src, progress=False))
    assert diff < 1e-3
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_early_stopping_stops(small_data):
    r = run_finetune(fast(method="lora", data=small_data, lr=0.0, eval_every=1, patience=2, max_steps=20),
                     progress=False, log=lambda s: None, evaluate_before=False)
    assert r.stopped_early and len(r.history) == 3  # first eval sets the best, two more without improvement


def test_resume_gives_the_same_losses(tmp_path, small_data):
    full = run_finetune(fast(method="lora", data=small_data), progress=False, log=lambda s: None,
                        evaluate_before=False)
    ck = str(tmp_path / "ck")
    run_finetune(fast(method="lora", data=small_data, checkpoint_dir=ck), progress=False, log=lambda s: None,
                 evaluate_before=False, interrupt_after=2)
    resumed = run_finetune(fast(method="lora", data=small_data, checkpoint_dir=ck), progress=False,
                           log=lambda s: None, evaluate_before=False)
    assert [h[0] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(full.history, resumed.history):
        assert a[1] == pytest.approx(b[1], rel=1e-4, abs=1e-5)


def test_measured_components(small_data):
    r = run_finetune(fast(method="lora", data=small_data, max_steps=2), progress=False, log=lambda s: None,
                     evaluate_before=False)
    m = r.metrics
    assert m["meas_gradient_bytes"] == m["meas_trainable_bytes"] > 0
    assert m["meas_optimizer_bytes"] >= 2 * m["meas_trainable_bytes"]
    assert m["meas_activation_bytes"] > 0 and m["meas_s_per_step"] > 0
    gc = run_finetune(fast(method="lora", data=small_data, max_steps=2, grad_checkpointing=True), progress=False,
                      log=lambda s: None, evaluate_before=False)
    assert gc.metrics["meas_activation_bytes"] < m["meas_activation_bytes"] / 2


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama with the embedded model's tokenizer, saved as safetensors (unit tests only)."""
    from quantlab.lab.model import tiny_model

    d = tmp_path_factory.mktemp("tiny")
    tiny_model("llama", vocab_size=49152).save_pretrained(d, safe_serialization=True)
    for f in ensure_embedded(progress=False).iterdir():
        if f.name.startswith(("tokenizer", "special", "chat_template")):
            shutil.copy(f, d / f.name)
    return str(d)


@pytest.mark.parametrize("precision", ["bf16", "amp-bf16", "amp-fp16"])
def test_precision_paths_on_a_tiny_model(tiny_folder, small_data, precision):
    r = run_finetune(fast(method="full", model=tiny_folder, data=small_data, precision=precision, max_steps=2,
                          lr=1e-3), progress=False, log=lambda s: None, evaluate_before=False, keep_model=True)
    assert all(math.isfinite(h[1]) for h in r.history)
    dt = next(r.model.parameters()).dtype
    assert dt == (torch.bfloat16 if precision == "bf16" else torch.float32)  # AMP keeps fp32 master weights


@pytest.mark.parametrize("lines,needle", [(["{bad json"], "line 1"), ([""], "no records")])
def test_bad_data_one_line_exit_2(tmp_path, capsys, lines, needle):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    rc = main(["lab", "finetune", "--data", str(p), "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and needle in err[-1]


def test_too_long_record_exit_2(tmp_path, capsys, small_data):
    rc = main(["lab", "finetune", "--data", small_data, "--max-len", "20", "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "more than the context of 20" in err[-1]


def test_qlora_training_unchanged_by_an_evaluation(small_data):
    """bitsandbytes repacks 4-bit weights for CPU inference in eval mode, which broke training after a validation
    pass; the QLoRA builder turns that off: the training loss of one batch is the same before and after an
    evaluation, and gradients reach the first layer's adapters (lora_B: lora_A starts with a zero gradient, B being 0)."""
    import bitsandbytes as bnb

    m = build_model(fast(method="qlora", data=small_data), resolve("smollm2-135m"))
    assert not any(getattr(mod, "support_avx512bf16_for_cpu", False) for mod in m.modules()
                   if isinstance(mod, bnb.nn.Linear4bit))
    x = torch.randint(0, 1000, (1, 16))
    m.train()
    before = float(m(x, labels=x).loss)
    m.eval()
    with torch.no_grad():
        m(x)
    m.train()
    loss = m(x, labels=x).loss
    assert float(loss) == pytest.approx(before, rel=1e-5)
    loss.backward()
    g = dict(m.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"].grad
    assert g is not None and float(g.abs().sum()) > 0
