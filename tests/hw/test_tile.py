"""The tile in Amaranth's simulator: bit-exact against the reference, cycles equal the model."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from epim.contract import tileplan
from epim.contract.images import ProgTarget, pack, prog_fields
from epim.hw.tile import PIMTile
from epim.sw.chip import cyclemodel, examples, images, netfile, reference
from tests.hw.streams import beats_of, decode, simulate


def compile_net(obj, lanes=None, cols=None):
    net = netfile.with_cols(netfile.parse(obj), cols)
    return net, images.compile_layer(net, net.layers[0], lanes=lanes)


def make(obj, lanes=None, fixed=False, cols=None):
    net, img = compile_net(obj, lanes, cols)
    return net, img, PIMTile(img.params, img.words, fixed=fixed)


CASES = {
    "default": {},
    "stride2-random-offsets": dict(cin=3, cout=5, h=5, w=6, stride=2, epitome=(2, 3, 2, 2),
                                   offsets="random"),
    "dense-1x1-lossy": dict(cin=4, cout=4, h=4, w=4, kernel=1, padding=0, epitome=None,
                            in_bits=3, pim=dict(xbar_rows=3, xbar_cols=8, cell_bits=1,
                                                dac_bits=2, adc_bits=3)),
    "compute-shorter-than-gather": dict(cin=3, cout=4, h=5, w=5, epitome=None, in_bits=2,
                                        pim=dict(examples.EXAMPLE_PIM, dac_bits=2)),
    "wrap-signed": dict(cin=2, cout=3, h=3, w=3, padding=0, epitome=(2, 3, 1, 1),
                        offsets="random", relu=False, out_bits=6),
    "signed-3bit": dict(cin=3, cout=6, h=4, w=4, epitome=(2, 4, 2, 3), relu=False, out_bits=3),
    # 27 rows in 4 chunks of 8 with a lossy ADC: one lane (4 passes), three lanes (2 passes)
    "lanes-1": dict(cin=3, cout=4, h=4, w=4, epitome=None, in_bits=3, _lanes=1,
                    pim=dict(xbar_rows=8, xbar_cols=8, cell_bits=2, dac_bits=2, adc_bits=3)),
    # no ADC can saturate (8 rows of 1-bit cells, 4-bit ADC): a fixed tile's slotted trees
    "lanes-1-linear": dict(cin=5, cout=4, h=4, w=4, epitome=(3, 4, 2, 2), in_bits=3, _lanes=1,
                           offsets="random",
                           pim=dict(xbar_rows=8, xbar_cols=8, cell_bits=1, dac_bits=1,
                                    adc_bits=4)),
    # more input channels than an input-memory word holds: 2 and 3 words per input beat
    "wide-input": dict(cin=12, cout=5, h=4, w=5, epitome=(5, 4, 3, 2), offsets="random"),
    "wide-1x1-stride2": dict(cin=20, cout=7, h=3, w=3, kernel=1, padding=0, epitome=None,
                             stride=2),
    # 15 physical columns in 5 blocks of 3, two lanes of 8 rows, lossy 2-bit ADCs
    "column-blocks": dict(cin=4, cout=6, h=4, w=4, epitome=(3, 5, 2, 3), in_bits=3, _lanes=2,
                          offsets="random",
                          pim=dict(xbar_rows=8, xbar_cols=3, cell_bits=1, dac_bits=1,
                                   adc_bits=2)),
    # 12 physical columns read 5 a cycle (3 blocks, the last of 2); 27 rows, 2 lanes of 8
    "cols-5": dict(cin=5, cout=6, h=4, w=4, epitome=(3, 6, 2, 3), in_bits=3, _lanes=2, _cols=5,
                   offsets="random",
                   pim=dict(xbar_rows=8, xbar_cols=32, cell_bits=1, dac_bits=1, adc_bits=3)),
    "lanes-3-epitome": dict(cin=5, cout=4, h=4, w=4, epitome=(3, 3, 2, 2), in_bits=3, _lanes=3,
                            offsets="random",
                            pim=dict(xbar_rows=8, xbar_cols=8, cell_bits=1, dac_bits=1,
                                     adc_bits=3)),
}


# the slowest cases in Amaranth's simulator: in the full suite only
SLOW_CASES = {("default", True), ("lanes-1-linear", True)}
FIXED = {False: "programmable", True: "fixed"}
TILE_CASES = [pytest.param(name, fixed, id=f"{name}-{ident}",
                           marks=[pytest.mark.slow] if (name, fixed) in SLOW_CASES else [])
              for fixed, ident in FIXED.items() for name in CASES]


@pytest.mark.parametrize(("name", "fixed"), TILE_CASES)
def test_tile_matches_reference_and_cycle_model(name, fixed, rng):
    """Programmable memories, and a network's fixed tile (the same tile on ROMs)."""
    kw = dict(CASES[name])
    lanes, cols = kw.pop("_lanes", None), kw.pop("_cols", None)
    if name == "default":
        kw = dict(cin=8, cout=16, h=6, w=6, epitome=(4, 8, 4, 8), d_c=4)
    net, img, tile = make(examples.conv_layer_net(rng, **kw), lanes, fixed, cols)
    cfg = tile.cfg
    if lanes:
        assert cfg.passes > 1
    x = rng.integers(0, 2**cfg.in_bits, (3,) + net.input_shape)
    got, in_cycles, out_cycles = simulate(tile, beats_of(x, cfg.in_bits), 3 * cfg.ho * cfg.wo)
    np.testing.assert_array_equal(decode(got, cfg), reference.run_network(net, x))
    t = cyclemodel.tile_timing(net.layers[0], net.pim, lanes=lanes)
    assert t.passes == cfg.passes
    sched = cyclemodel.schedule(t, 3)
    assert in_cycles[::t.in_beats] == sched.first_in
    assert out_cycles[t.pixels - 1::t.pixels] == sched.last_out


@pytest.mark.parametrize("fixed", [False, True], ids=["programmable", "fixed"])
def test_back_pressure_loses_nothing(fixed, rng):
    net, img, tile = make(examples.conv_layer_net(rng, cin=3, cout=4, h=4, w=4,
                                                  epitome=(2, 4, 2, 2), offsets="random"),
                          fixed=fixed)
    x = rng.integers(0, 16, (2,) + net.input_shape)
    pattern = rng.random(10_000) < 0.35
    got, _, _ = simulate(tile, beats_of(x, 4), 2 * 16, ready=lambda c: bool(pattern[c]))
    np.testing.assert_array_equal(decode(got, tile.cfg), reference.run_network(net, x))


@pytest.mark.parametrize(("lanes", "cols"), [(None, None), (2, 3)],
                         ids=["one-block", "lanes-2-cols-3"])
def test_programming_port_replaces_every_memory(lanes, cols, rng):
    """A tile built for one layer computes another after the port writes its images; with
    `cols` 3 each crossbar row is written block by block (read-modify-write)."""
    kw = dict(cin=5, cout=6, h=4, w=4, epitome=(3, 4, 2, 3), offsets="random")
    if cols:
        kw["pim"] = dict(xbar_rows=8, xbar_cols=16, cell_bits=1, dac_bits=1, adc_bits=3)
    _, _, tile = make(examples.conv_layer_net(rng, **kw), lanes, cols=cols)
    net_b, img_b = compile_net(examples.conv_layer_net(rng, **kw), lanes, cols)
    if cols:
        assert tileplan.col_blocks(tile.cfg) > 1 and tile.cfg.passes > 1
    x = rng.integers(0, 16, (1,) + net_b.input_shape)
    got, _, _ = simulate(tile, beats_of(x, 4), 16, program=prog_words(tile, img_b))
    np.testing.assert_array_equal(decode(got, tile.cfg), reference.run_network(net_b, x))


def prog_words(tile, img):
    layout = prog_fields(tile.cfg)
    return [pack(layout, {"mem": target, "addr": addr, "data": word})
            for target in ProgTarget for addr, word in enumerate(img.words[target.name.lower()])]


def test_programming_survives_reset(rng):
    """Programmed cells and tables are kept through a reset, as non-volatile cells are; an
    image that was half loaded when reset came is dropped."""
    kw = dict(cin=3, cout=4, h=3, w=3, epitome=(2, 4, 2, 2), offsets="random")
    _, _, tile = make(examples.conv_layer_net(rng, **kw))
    net_b, img_b = compile_net(examples.conv_layer_net(rng, **kw))
    x = rng.integers(0, 16, (1,) + net_b.input_shape)
    top = Module()
    top.domains.sync = sync = ClockDomain()
    top.submodules.tile = tile
    got = []

    async def bench(ctx):
        for word in prog_words(tile, img_b):
            ctx.set(tile.prog.payload.as_value(), word)
            ctx.set(tile.prog.valid, 1)
            while not (await ctx.tick().sample(tile.prog.ready))[2]:
                pass
        ctx.set(tile.prog.valid, 0)
        for beat in beats_of(x, 4)[:5]:  # a partial image, lost in the reset
            ctx.set(tile.i.payload, beat ^ 0b1010)
            ctx.set(tile.i.valid, 1)
            await ctx.tick()
        ctx.set(tile.i.valid, 0)
        ctx.set(sync.rst, 1)
        await ctx.delay(3e-8)  # three clock periods in reset
        ctx.set(sync.rst, 0)
        ctx.set(tile.o.ready, 1)
        for beat in beats_of(x, 4):
            ctx.set(tile.i.payload, beat)
            ctx.set(tile.i.valid, 1)
            await ctx.tick()
        ctx.set(tile.i.valid, 0)
        for _ in range(500):
            _, _, ov, op = await ctx.tick().sample(tile.o.valid, tile.o.payload)
            if ov:
                got.append(op)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    np.testing.assert_array_equal(decode(got, tile.cfg), reference.run_network(net_b, x))


def test_rejects_images_of_the_wrong_size(net_obj):
    net = netfile.parse(net_obj)
    img = images.compile_layer(net, net.layers[0])
    cfg = img.params
    words = dict(img.words, ofat=img.words["ofat"][:-1])
    with pytest.raises(ValueError, match="memory 'ofat' needs 2 words, got 1"):
        PIMTile(cfg, words)
