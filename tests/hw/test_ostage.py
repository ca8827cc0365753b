"""The output stage (`epim.hw.ostage`): the tile's rounding shift against spec section 5."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from epim.contract.images import BIAS_BITS, MULT_BITS
from epim.hw.ostage import output_range, output_value, rounded_shift
from tests.helpers import tile_params


@settings(max_examples=300, deadline=None)
@given(prod=st.integers(-2**70, 2**70), shift=st.integers(0, 62))
def test_rounded_shift_is_the_spec_rounding(prod, shift):
    rnd = (1 << (shift - 1)) if shift else 0
    assert rounded_shift(prod, shift) == (prod + rnd) >> shift


@settings(max_examples=100, deadline=None)
@given(relu=st.booleans(), out_bits=st.integers(1, 8), acc=st.integers(-2**20, 2**20),
       bias=st.integers(-2**20, 2**20), mult=st.integers(1, 2**MULT_BITS - 1),
       shift=st.integers(0, 62))
def test_output_value_clamps_to_the_output_range(relu, out_bits, acc, bias, mult, shift):
    cfg = tile_params(relu=relu, out_bits=out_bits)
    word = (bias & (2**BIAS_BITS - 1)) | (mult << BIAS_BITS) | (shift << (BIAS_BITS + MULT_BITS))
    lo, hi = output_range(cfg)
    y = output_value(acc, word, cfg)
    assert lo <= y <= hi
    assert y == min(hi, max(lo, rounded_shift((acc + bias) * mult, shift)))
