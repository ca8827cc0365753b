"""Replicated tiles in Amaranth's simulator: the copies' merged outputs equal the reference bit
for bit, and every handshake happens in the cycle the network cycle model predicts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module

from epim.contract.params import TileParams
from epim.hw.replicas import ReplicatedTile
from epim.hw.tile import PIMTile, walk_layout, walk_values
from epim.sw.chip import examples, images, netcycles, netfile, reference
from tests.hw.streams import beats_of, decode, simulate

CASES = {
    # 4x4 outputs over 3 copies: copies of 6, 5 and 5 pixels, rows wrap inside a copy's walk
    "3-copies": (dict(cin=3, cout=4, h=4, w=4, epitome=(2, 4, 2, 2), offsets="random"), 3),
    # stride 2 and 3x3 outputs over 2 copies; more copies than output columns below
    "stride2": (dict(cin=3, cout=5, h=6, w=5, stride=2, epitome=(2, 3, 2, 2),
                     offsets="random"), 2),
    "more-copies-than-columns": (dict(cin=2, cout=3, h=3, w=3, epitome=None), 5),
    # one copy per output pixel; 8-bit inputs make the compute longer than the gather
    "copy-per-pixel": (dict(cin=2, cout=3, h=2, w=2, epitome=None, in_bits=8), 4),
    # outputs without ReLU, with output channel wrapping and a lossy ADC
    "lossy-signed": (dict(cin=4, cout=4, h=4, w=5, kernel=1, padding=0, epitome=(4, 2, 4, 2),
                          in_bits=3, relu=False, out_bits=6,
                          pim=dict(xbar_rows=3, xbar_cols=8, cell_bits=1, dac_bits=2,
                                   adc_bits=3)), 3),
}


@pytest.mark.parametrize("name", CASES)
def test_replicated_tile_matches_reference_and_network_model(name, rng):
    kw, copies = CASES[name]
    net = netfile.parse(examples.conv_layer_net(rng, **kw))
    layer = net.layers[0]
    img = images.compile_layer(net, layer)
    cfg = img.params
    tile = ReplicatedTile(cfg, img.words, copies)
    n = 3
    x = rng.integers(0, 2**cfg.in_bits, (n,) + net.input_shape)
    got, in_cycles, out_cycles = simulate(tile, beats_of(x, cfg.in_bits), n * cfg.ho * cfg.wo)
    np.testing.assert_array_equal(decode(got, cfg), reference.run_network(net, x))
    graph = netcycles.build_graph(net, n, None, replicas={layer.name: copies})
    run = netcycles.simulate(graph, n * cfg.ho * cfg.wo)
    assert in_cycles == run.in_cycles
    assert out_cycles == run.out_cycles
    # the copies share the work: faster than one tile, whose model is the same graph
    one = netcycles.simulate(netcycles.build_graph(net, n, None), n * cfg.ho * cfg.wo)
    assert run.out_cycles[-1] < one.out_cycles[-1]


def test_replicated_tile_survives_back_pressure(rng):
    net = netfile.parse(examples.conv_layer_net(rng, cin=3, cout=4, h=4, w=4,
                                                epitome=(2, 4, 2, 2), offsets="random"))
    img = images.compile_layer(net, net.layers[0])
    cfg = img.params
    x = rng.integers(0, 16, (2,) + net.input_shape)
    pattern = np.random.default_rng(1).random(5000) > 0.6
    got, _, _ = simulate(ReplicatedTile(cfg, img.words, 3), beats_of(x, 4), 2 * 16,
                         ready=lambda c: bool(pattern[c]))
    np.testing.assert_array_equal(decode(got, cfg), reference.run_network(net, x))


def test_replica_counts_are_checked(rng):
    net = netfile.parse(examples.conv_layer_net(rng, cin=2, cout=2, h=2, w=2, epitome=None))
    img = images.compile_layer(net, net.layers[0])
    cfg = img.params
    for bad in (1, 5):
        with pytest.raises(ValueError, match=r"replicas must be in 2\.\.4"):
            ReplicatedTile(cfg, img.words, bad)


class WalkDriven(Elaboratable):
    """A tile whose pixel walk comes from its `walk` port (a shared copy module), driven with
    the constants of copy `r`; the bench reaches the tile's streams through it."""

    def __init__(self, tile: PIMTile, cfg: TileParams):
        self.tile, self.cfg = tile, cfg
        self.i, self.o = tile.i, tile.o

    def elaborate(self, platform):
        m = Module()
        m.submodules.tile = self.tile
        m.d.comb += self.tile.walk.eq(walk_layout(self.cfg).const(walk_values(self.cfg)))
        return m


def test_walk_port_copy_equals_the_constant_copy(rng):
    """A copy module with its walk from the port computes what the copy with the walk baked
    in computes, in the same cycles (the copies of a shared module differ only there)."""
    net = netfile.parse(examples.conv_layer_net(rng, cin=3, cout=4, h=5, w=4, stride=1,
                                                epitome=(2, 4, 2, 2), offsets="random"))
    img = images.compile_layer(net, net.layers[0])
    cfg = img.params
    x = rng.integers(0, 16, (2,) + net.input_shape)
    for r in range(3):
        copy = replace(cfg, pix_first=r, pix_step=3)
        want = simulate(PIMTile(copy, img.words, fixed=True), beats_of(x, 4), 2 * copy.pixels)
        got = simulate(WalkDriven(PIMTile(replace(cfg, pix_step=3), img.words, fixed=True,
                                          walk_port=True), copy),
                       beats_of(x, 4), 2 * copy.pixels)
        assert got == want
