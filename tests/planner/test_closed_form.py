"""activations A13: the closed form of a block's saved bytes equals the op-by-op sum on a sweep."""

import itertools

import pytest

from quantlab.planner.activations import Act, block_saved, block_saved_direct
from quantlab.profiles import list_models, load_model

SWITCHES = [dict(), dict(eager=True), dict(amp=True, a=2, r=4), dict(r=4, a=4, kbit=True), dict(cuda=False),
            dict(padded=True), dict(lora_dropout=True, rank=8), dict(prefix=True, extra=20), dict(flash=False),
            dict(kbit_keeps_input=True, kbit=True)]


@pytest.mark.parametrize("name", list_models())
def test_block_saved_closed_form_equals_the_sum(name):
    m = load_model(name).spec
    first = sorted({l.name for l in m.block_linears() if l.module})[:2]
    for sw, (trains, lora, ig, ia3, adapter) in itertools.product(
            SWITCHES, [(True, (), True, False, 0), (False, tuple(first), False, False, 0),
                       (False, tuple(first), True, False, 0), (False, (), True, True, 0), (False, (), True, False, 64)]):
        sw = dict(sw)
        extra = sw.pop("extra", 0)
        base = dict(r=2, a=2, c=2, amp=False, eager=False, cuda=True)
        base.update(sw)
        for b, s in ((1, 1), (3, 17), (7, 512), (2, 4096)):
            x = Act(b=b, s=s, kv_s=s + extra, **base)
            args = (m, x, trains, frozenset(lora), ig, ia3, adapter)
            assert block_saved(*args) == block_saved_direct(*args), (sw, b, s, trains, lora, ig, ia3, adapter)
