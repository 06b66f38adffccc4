import pytest

torch = pytest.importorskip("torch")

from quantlab.lab.saved_tensors import count_saved, grad_bytes, optimizer_bytes  # noqa: E402


def test_calibrated_on_a_linear_layer():
    """nn.Linear saves its input for the weight gradient: 8 x 16 float32 = 512 bytes; the weight (a parameter)
    is excluded and the bias needs nothing saved."""
    lin = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16)
    with count_saved(lin) as c:
        y = lin(x)
    assert c.bytes == 8 * 16 * 4
    y.sum().backward()
    assert grad_bytes(lin) == (16 * 4 + 4) * 4
    opt = torch.optim.AdamW(lin.parameters())
    opt.step()
    assert optimizer_bytes(opt) >= 2 * (16 * 4 + 4) * 4


def test_checkpointing_lowers_saved_bytes():
    from quantlab.lab.model import tiny_model

    def saved(gc):
        m = tiny_model("llama", num_hidden_layers=4)
        m.train()
        if gc:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        x = torch.randint(0, 256, (2, 64))
        with count_saved(m) as c:
            m(x, labels=x).loss
        return c.bytes

    assert saved(True) < saved(False) / 2
