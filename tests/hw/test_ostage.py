"""The output stage (`epim.hw.ostage`): its arithmetic, thresholds and tables against spec
section 5 for every accumulator value, and its hardware in Amaranth's simulator."""

from __future__ import annotations

import random

from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.contract.images import BIAS_BITS, MULT_BITS
from epim.hw.ostage import (
    output_range,
    output_table,
    output_value,
    threshold_stage,
    thresholds,
)
from tests.helpers import tile_params


@settings(max_examples=60, deadline=None)
@given(relu=st.booleans(), out_bits=st.integers(1, 4), acc_bits=st.integers(4, 10),
       bias=st.integers(-2**20, 2**20), mult=st.integers(1, 2**MULT_BITS - 1),
       shift=st.integers(0, 62))
def test_thresholds_reproduce_the_output_stage_for_every_accumulator(relu, out_bits, acc_bits,
                                                                     bias, mult, shift):
    cfg = tile_params(relu=relu, out_bits=out_bits, acc_bits=acc_bits)
    word = (bias & (2**BIAS_BITS - 1)) | (mult << BIAS_BITS) | (shift << (BIAS_BITS + MULT_BITS))
    ts = thresholds(word, cfg)
    lo, hi = output_range(cfg)
    assert len(ts) == hi - lo
    for acc in range(-2 ** (acc_bits - 1), 2 ** (acc_bits - 1)):
        by_thresholds = lo + sum(t is not None and acc >= t for t in ts)
        assert by_thresholds == output_value(acc, word, cfg)


@settings(max_examples=60, deadline=None)
@given(relu=st.booleans(), out_bits=st.integers(1, 4), acc_bits=st.integers(4, 11),
       bias=st.integers(-2**12, 2**12), mult=st.integers(1, 2**16), shift=st.integers(0, 20))
def test_output_tables_reproduce_the_output_stage_for_every_accumulator(relu, out_bits,
                                                                        acc_bits, bias, mult,
                                                                        shift):
    cfg = tile_params(relu=relu, out_bits=out_bits, acc_bits=acc_bits)
    word = (bias & (2**BIAS_BITS - 1)) | (mult << BIAS_BITS) | (shift << (BIAS_BITS + MULT_BITS))
    t = output_table(word, cfg)
    if t is None:
        ts = [x for x in thresholds(word, cfg) if x is not None]
        assert max(ts) - min(ts) + 2 > 1024
        return
    base, table = t
    for acc in range(-2 ** (acc_bits - 1), 2 ** (acc_bits - 1)):
        got = table[min(max(acc - base, 0), len(table) - 1)]
        assert got == output_value(acc, word, cfg) & (2**out_bits - 1)


def test_threshold_stage_hardware_for_every_accumulator():
    """The binary-search threshold stage of fixed tiles, in the simulator, against the spec's
    output stage for every accumulator value of random words (signed and ReLU outputs)."""
    rnd = random.Random(7)
    for relu, out_bits in [(True, 4), (False, 4), (True, 2), (False, 3), (True, 1)]:
        cfg = tile_params(relu=relu, out_bits=out_bits, acc_bits=9)
        for _ in range(3):
            bias, mult = rnd.randrange(-300, 300), rnd.randrange(1, 2**12)
            shift = rnd.randrange(0, 14)
            word = ((bias & (2**BIAS_BITS - 1)) | (mult << BIAS_BITS)
                    | (shift << (BIAS_BITS + MULT_BITS)))
            m = Module()
            acc = Signal(signed(9))
            y = Signal(signed(out_bits + 2))
            m.d.comb += y.eq(threshold_stage(m, acc, word, cfg))

            async def bench(ctx, word=word, cfg=cfg, acc=acc, y=y):
                for a in range(-256, 256):
                    ctx.set(acc, a)
                    assert ctx.get(y) == output_value(a, word, cfg), (a, word)

            sim = Simulator(m)
            sim.add_testbench(bench)
            sim.run()
