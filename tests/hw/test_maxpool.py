"""The streaming max-pool unit (`hw/maxpool.py`) in Amaranth's simulator: the integer
reference's outputs for random shapes, windows, strides and paddings, images back to back,
with random output back-pressure, and every handshake in the cycle `MaxPoolModel` predicts."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.contract.images import ImageError
from epim.contract.params import MaxPoolParams, unit_from_dict, unit_to_dict
from epim.hw.maxpool import MaxPoolUnit
from epim.sw.chip.ops.maxpool import MaxPoolModel, maxpool

from .streams import beats_of, simulate


def model_cycles(p: MaxPoolParams, n_in: int, n_out: int, ready) -> tuple[list, list]:
    """The model's input and output handshake cycles, the input always offered."""
    unit = MaxPoolModel((p.channels, p.height, p.width), p.kernel, p.stride,
                                  p.padding)
    ins, outs, cycle = [], [], 0
    while len(outs) < n_out:
        iv = len(ins) < n_in
        orr = ready(cycle)
        fin = iv and unit.ready(0, [iv], [orr])
        fout = unit.valid(0) and orr
        unit.step([fin], [fout], [orr])
        if fin:
            ins.append(cycle)
        if fout:
            outs.append(cycle)
        cycle += 1
        assert cycle < 100_000
    return ins, outs


def params(c, h, w, bits, k, s, pad) -> MaxPoolParams:
    return MaxPoolParams("mp", "maxpool", ("x",), c, h, w, bits, k, s, pad)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), bits=st.integers(1, 5),
       k=st.integers(1, 4), s=st.integers(1, 4), pad=st.integers(0, 2), seed=st.integers(0, 99),
       busy=st.sampled_from([0.0, 0.5]))
def test_maxpool_unit_equals_reference_and_model(c, h, w, bits, k, s, pad, seed, busy):
    pad = min(pad, k // 2)
    if h + 2 * pad < k or w + 2 * pad < k:
        h, w = h + k, w + k
    p = params(c, h, w, bits, k, s, pad)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**bits, (3, c, h, w))
    want = maxpool(x, k, s, pad)
    pattern = random.Random(seed)
    table = [pattern.random() >= busy for _ in range(100_000)]
    ready = table.__getitem__
    n_out = 3 * p.out_height * p.out_width
    got, ins, outs = simulate(MaxPoolUnit(p), beats_of(x, bits), n_out, ready=ready)
    mask = 2**bits - 1
    y = np.array([[(v >> (ch * bits)) & mask for ch in range(c)] for v in got])
    y = y.reshape(3, p.out_height, p.out_width, c).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(y, want)
    m_ins, m_outs = model_cycles(p, len(ins), n_out, ready)
    assert (ins, outs) == (m_ins, m_outs)


def test_resnet50_stem_pool_streams_about_a_beat_per_cycle():
    """112x112 input, 3x3 windows every 2 pixels, padding 1 (the model only: the scanner's
    56 * 113 steps per image stay under the 12544 input beats)."""
    p = params(64, 112, 112, 4, 3, 2, 1)
    ins, outs = model_cycles(p, 2 * 112 * 112, 2 * 56 * 56, lambda c: True)
    assert ins[-1] - ins[0] < 2 * 112 * 112 * 1.01


def test_maxpool_units_are_checked():
    good = unit_to_dict(params(2, 6, 6, 3, 3, 2, 1))
    assert unit_from_dict(good, "u") == params(2, 6, 6, 3, 3, 2, 1)
    for key, bad, msg in (("padding", 2, "exceeds kernel // 2"), ("kernel", 16, "at most 15"),
                          ("kernel", 9, "larger than the padded map"),
                          ("bits", True, "non-negative integer")):
        with pytest.raises(ImageError, match=msg):
            unit_from_dict({**good, key: bad}, "u")
