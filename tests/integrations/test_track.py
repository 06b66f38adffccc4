"""quantlab.track in a plain PyTorch loop (tiny random model, CPU)."""

import pytest

torch = pytest.importorskip("torch")

from integ_fixtures import lora_model  # noqa: E402


def _loop(model, opt, t_steps, batch=4, seq=32, accum=1):
    g = torch.Generator().manual_seed(0)
    for _ in range(t_steps):
        for _ in range(accum):
            ids = torch.randint(0, 256, (batch, seq), generator=g)
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()  # the loop holds `out` (and its logits) through backward
        opt.step()
        opt.zero_grad(set_to_none=False)
        del out


def test_track_plain_loop_every_component_and_the_total():
    """A loop that holds the output through backward and keeps gradients allocated is the planner's reading:
    every component within 2%, the total within 3%."""
    import quantlab

    model = lora_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = []
    with quantlab.track(model, opt, print_fn=out.append) as t:
        _loop(model, opt, 3)
    assert t.check is not None and t.check.ok, t.check.text
    assert t.check.derived.config.method.value == "lora" and t.check.derived.config.grad_accum == 1
    assert len(out) == 1


def test_track_counts_accumulation_and_first_step():
    import quantlab

    model = lora_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with quantlab.track(model, opt, step=1, print_fn=lambda s: None) as t:
        _loop(model, opt, 1, accum=3, batch=2)
    assert t.check.derived.config.grad_accum == 3 and t.check.derived.config.batch == 2
    assert {r.component: r for r in t.check.rows}["activations"].ok


def test_track_refuses_a_non_optimizer_and_reports_a_short_loop():
    import quantlab
    from quantlab.errors import QuantlabError

    model = lora_model()
    with pytest.raises(QuantlabError, match="torch.optim.Optimizer"):
        with quantlab.track(model, object()):
            pass
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = []
    with quantlab.track(model, opt, step=3, print_fn=out.append):
        _loop(model, opt, 1)
    assert "before optimizer step 3" in out[-1]


def test_import_quantlab_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, quantlab; assert 'torch' not in sys.modules; quantlab.__version__; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr
