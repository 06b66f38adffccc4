"""PTQ loaders without their library, and a user's GGUF file quantized like a safetensors folder."""

import sys

import pytest

torch = pytest.importorskip("torch")

from quantlab.errors import UnsupportedOnDevice  # noqa: E402
from quantlab.lab import ptq  # noqa: E402
from quantlab.lab.model import embedded_gguf_path, load_model, model_path, resolve  # noqa: E402


@pytest.mark.parametrize("method, module", [("int8", "bitsandbytes"), ("nf4", "bitsandbytes"),
                                            ("torchao-int8", "torchao.quantization")])
def test_a_missing_library_skips_that_method_only(monkeypatch, method, module):
    """A method whose library is absent raises UnsupportedOnDevice (one line, the comparison goes on: run_ptq
    catches it per method), not an ImportError that ends the run."""
    monkeypatch.setitem(sys.modules, module, None)  # import of it now raises ImportError
    m = ptq.parse_methods(method)[0]
    with pytest.raises(UnsupportedOnDevice, match=method.split("-")[0] if module == "torchao.quantization"
                       else "bitsandbytes") as e:
        ptq.load_quantized(m, resolve("smollm2-135m"), None, ptq.EvalSizes.quick())
    assert "\n" not in str(e.value)


def test_the_harness_version_is_part_of_every_row_key():
    """Rows measured by an older harness are not reused (their figures differ): the key holds the version."""
    assert isinstance(ptq.HARNESS_VERSION, int) and ptq.HARNESS_VERSION >= 2


def test_a_gguf_file_converts_once_then_quantizes(tmp_path, monkeypatch):
    """transformers 5 refuses quantization_config together with gguf_file; a .gguf --model is converted to a
    cached safetensors folder first, so bitsandbytes NF4 quantizes it (the embedded GGUF, in a fresh cache)."""
    from transformers import BitsAndBytesConfig

    monkeypatch.setenv("QUANTLAB_CACHE", str(tmp_path))
    src = resolve(str(embedded_gguf_path()))
    assert src.kind == "gguf"
    folder = model_path(src, progress=False)
    assert folder.is_relative_to(tmp_path) and any(folder.glob("*.safetensors"))
    assert model_path(src, progress=False) == folder  # reused, not converted again
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = load_model(src, dtype=torch.float32, quantization_config=q, device_map="cpu", progress=False)
    import bitsandbytes as bnb

    assert sum(isinstance(mod, bnb.nn.Linear4bit) for mod in model.modules()) == 30 * 7
