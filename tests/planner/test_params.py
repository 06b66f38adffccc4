"""Parameter counts from the architecture equal transformers' own, to the parameter, for every profile."""

import pytest

from quantlab.planner import count_params
from quantlab.profiles import list_models, load_model


def _hf_count(config: dict) -> int:
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    c = dict(config)
    mt = c.pop("model_type")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **c))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_count_equals_transformers_on_meta_device(name):
    r = load_model(name)
    assert count_params(r.spec).total == _hf_count(r.config)


def test_golden_counts():
    """Published totals: Llama-2-7B 6,738,415,616; Llama-3.1-8B 8,030,261,248 (untied 128,256-token head);
    Mixtral-8x7B 46,702,792,704 total, ~12.9 B active (2 of 8 experts)."""
    assert count_params(load_model("llama-2-7b").spec).total == 6_738_415_616
    assert count_params(load_model("llama-3.1-8b").spec).total == 8_030_261_248
    mix = count_params(load_model("mixtral-8x7b").spec)
    assert mix.total == 46_702_792_704
    # active = total - 32 layers x 6 unused experts x 3 x 4096 x 14336
    assert mix.active == 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336


def test_tied_embeddings_counted_once():
    tied = load_model("llama-3.2-1b").spec
    pc = count_params(tied)
    assert pc.lm_head == 0 and pc.embedding == 128256 * 2048
