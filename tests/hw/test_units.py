"""Pieces of the tile on their own, against the spec's arithmetic: the OFAT's rotation, the
adder trees and the fill plan (`epim.contract.tileplan`), and the network's adder unit.
(`test_ostage.py` has the output stage's rounding; `test_tile.py` the tile as a whole, every
unit in place.)"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module, Signal, signed
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.contract import tileplan
from epim.contract.images import ubits
from epim.hw import arith
from epim.hw.ofat import rotate
from epim.sw.chip import epitome, examples, images, netfile

LOSSY = dict(xbar_rows=8, xbar_cols=8, cell_bits=2, dac_bits=2, adc_bits=3)
LINEAR = dict(xbar_rows=8, xbar_cols=8, cell_bits=1, dac_bits=1, adc_bits=4)


def layer_image(rng, lanes=None, pim=None, **kw):
    kw = {"cin": 3, "cout": 5, "h": 4, "w": 4, "epitome": (2, 3, 2, 2), "offsets": "random",
          "in_bits": 3, **kw}
    net = netfile.parse(examples.conv_layer_net(rng, pim=pim or examples.EXAMPLE_PIM, **kw))
    return net, images.compile_layer(net, net.layers[0], lanes=lanes)


def run(m: Module, bench) -> None:
    m.domains.sync = ClockDomain()
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def rom(m: Module, name: str, width: int, words: list[int]):
    mem = Memory(shape=width, depth=len(words), init=words)
    m.submodules[name] = mem
    return mem.read_port(domain="comb")


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(-2**9, 2**9 - 1), min_size=1, max_size=12),
       data=st.data())
def test_rotate_takes_each_column_from_its_wrapped_place(values, data):
    """The OFAT's rotation: output `i` is value `(i + amount) mod n`, the output channel
    wrapping of contract section 4, for every amount below `n`."""
    n = len(values)
    amount = data.draw(st.integers(0, n - 1))
    m = Module()
    ins = [Signal(signed(10), name=f"v{i}") for i in range(n)]
    a = Signal(ubits(n))
    outs = [Signal(signed(10), name=f"o{i}") for i in range(n)]
    m.d.comb += [o.eq(r) for o, r in zip(outs, rotate(m, ins, a, n), strict=True)]

    async def bench(ctx):
        for sig, v in zip(ins, values, strict=True):
            ctx.set(sig, v)
        ctx.set(a, amount)
        await ctx.delay(1e-9)
        assert [ctx.get(o) for o in outs] == [values[(i + amount) % n] for i in range(n)]

    run(m, bench)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.integers(0, 2**6 - 1), max_size=9), signed_=st.booleans())
def test_tree_sum_adds_exactly(words, signed_):
    """`tree_sum` gives the sum modulo its width (signed: two's complement)."""
    width = 8
    m = Module()
    sigs = [Signal(signed(7) if signed_ else 6, name=f"w{i}") for i in range(len(words))]
    total = Signal(signed(width) if signed_ else width)
    m.d.comb += total.eq(arith.tree_sum(sigs, width, is_signed=signed_))
    vals = [w - 64 if signed_ else w for w in words]

    async def bench(ctx):
        for sig, v in zip(sigs, vals, strict=True):
            ctx.set(sig, v)
        await ctx.delay(1e-9)
        want = sum(vals) % 2**width
        got = ctx.get(total) % 2**width
        assert got == want

    run(m, bench)


@pytest.mark.parametrize("kw", [dict(), dict(cin=11, epitome=(7, 3, 5, 2)),
                                dict(kernel=1, padding=0, epitome=(9, 3, 4, 2)),
                                dict(cin=13, epitome=(13, 3, 13, 3), _lanes=1,
                                     pim=dict(xbar_rows=8, xbar_cols=8, cell_bits=1,
                                              dac_bits=1, adc_bits=3))])
def test_fill_plan_puts_every_row_of_every_pass_in_the_shift_register(rng, kw):
    """`tileplan`: each pass fills the channels its rows need, and each row of the pass
    finds its own (channel, window position) in the fill shift register."""
    kw = dict(kw)
    lanes = kw.pop("_lanes", None)
    net, img = layer_image(rng, lanes=lanes, **kw)
    p = img.params
    k2 = p.kernel**2
    plan = tileplan.fill_plan(p)
    assert len(plan) == p.passes
    seen = set()
    for q, (first, count) in enumerate(plan):
        # the shift register after the pass's fill: channel first+i at (count-1-i)*k2 + pos
        held = {(count - 1 - i) * k2 + pos: (first + i) * k2 + pos
                for i in range(count) for pos in range(k2)}
        for r in range(tileplan.pass_rows(p)):
            rho = q * tileplan.pass_rows(p) + r
            src = tileplan.row_source(p, q, r)
            if rho >= p.rows:
                assert src is None
                continue
            assert held[src] == rho
            seen.add(rho)
        assert count <= tileplan.fill_depth(p)
    assert seen == set(range(p.rows))


def test_input_words_hold_every_channel_and_split_the_source_without_a_divider():
    for cin in range(1, 40):
        w = tileplan.in_word(cin)
        assert w & (w - 1) == 0 and w <= tileplan.IN_WORD_MAX
        assert tileplan.in_blocks(cin) * w >= cin
        assert (tileplan.in_blocks(cin) - 1) * w < cin


def test_steps_of_the_images_are_the_spec_steps(rng):
    """(the sequencer test's premise) the IFRT image holds the spec's steps, `last` on the
    final one."""
    net, img = layer_image(rng)
    assert img.params.n_steps == len(epitome.steps(net.layers[0].epitome))


@pytest.mark.parametrize("signs", [(False, False), (True, False), (True, True)])
def test_add_unit_reads_signed_inputs_as_twos_complement(rng, signs):
    """The residual adder (contract v1.1): an input whose producer has no ReLU is two's
    complement; `clamp((a*ma + b*mb + rnd) >> shift)` per channel, negative sums included."""
    from amaranth.sim import Simulator

    from epim.hw.units import AddUnit, scale_clamped

    c, ab, bb, ob, shift = 3, 4, 5, 3, 2
    negative = False
    for ma, mb in ((3, 1), (5, -2), (-1, 7)):
        unit = AddUnit(c, ab, bb, ob, ma, mb, shift, *signs)
        vals = []
        for bits, signed_ in zip((ab, bb), signs, strict=True):
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed_ else (0, 2**bits)
            vals.append(rng.integers(lo, hi, (40, c)))
        a, b = vals
        got = []

        async def bench(ctx, a=a, b=b, got=got, unit=unit):
            ctx.set(unit.o.ready, 1)
            for n in range(len(a)):
                ctx.set(unit.a.payload, sum((int(v) % 2**ab) << (i * ab)
                                            for i, v in enumerate(a[n])))
                ctx.set(unit.b.payload, sum((int(v) % 2**bb) << (i * bb)
                                            for i, v in enumerate(b[n])))
                ctx.set(unit.a.valid, 1)
                ctx.set(unit.b.valid, 1)
                await ctx.tick()
                got.append(ctx.get(unit.o.payload))

        sim = Simulator(unit)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        mask = 2**ob - 1
        y = np.array([[(w >> (i * ob)) & mask for i in range(c)] for w in got])
        # the formula of `scale_clamped` with multiplier 1: clamp((a*ma + b*mb + rnd) >> shift)
        want = np.vectorize(lambda s, hi=mask: scale_clamped(int(s), 1, shift, hi))(a * ma + b * mb)
        np.testing.assert_array_equal(y, want)
        negative |= bool((a * ma + b * mb < 0).any())
    if any(signs):
        assert negative
