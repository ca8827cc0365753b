"""The cycle model: closed forms agree with the replayed schedule; the utilisation target."""

from __future__ import annotations

import random

import numpy as np
import pytest

from epim.sw.chip import cyclemodel, examples, netfile


def timing(**kw):
    net = netfile.parse(examples.conv_layer_net(np.random.default_rng(0), **kw))
    return cyclemodel.tile_timing(net.layers[0], net.pim)


@pytest.mark.parametrize("kw", [
    {},
    dict(kernel=1, padding=0, epitome=None),
    dict(cin=6, cout=6, epitome=(3, 3, 2, 2), d_r=1),
    dict(in_bits=8, pim=dict(examples.EXAMPLE_PIM, dac_bits=2)),
])
def test_closed_form_equals_schedule_when_compute_bound(kw):
    t = timing(**kw)
    sched = cyclemodel.schedule(t, 5)
    latency, steady = cyclemodel.closed_form(t)
    assert sched.latency[0] == latency
    assert sched.steady == steady
    # every later image waits only for the crossbar
    assert all(b - a == steady for a, b in zip(sched.last_out, sched.last_out[1:], strict=False))


def test_load_bound_layer_is_limited_by_input_beats():
    # a 1x1 conv of stride 8 on a 16x16 map: 4 pixels cannot hide 256 input beats
    t = timing(h=16, w=16, kernel=1, stride=8, padding=0, epitome=None, cout=4)
    assert t.pixels * t.pixel_cycles < t.load
    sched = cyclemodel.schedule(t, 6)
    assert sched.steady > t.pixels * t.pixel_cycles + 1
    assert sched.steady >= t.load


def test_wide_inputs_take_one_cycle_per_input_word():
    """An input beat of more channels than an input-memory word holds is written in several
    cycles: the loader's time per image is `in_beats * blocks`."""
    t = timing(cin=20, cout=4, h=4, w=4, kernel=1, padding=0, epitome=None)
    assert t.blocks == 3 and t.load == 48
    assert cyclemodel.schedule(t, 1).latency[0] == cyclemodel.closed_form(t)[0]


def test_default_layer_cycles_per_pixel():
    """The default layer (2 steps of one pass, 4 DAC slices): per step 1 + (4 + 1) + 4 + 1 +
    (2 + 2) cycles, then 16 + 5 for the output stage and 1 to move: 52 cycles a pixel, of
    which the crossbar computes 8."""
    net = netfile.parse(examples.default_layer_net())
    t = cyclemodel.tile_timing(net.layers[0], net.pim)
    assert (t.n_steps, t.n_t, t.passes, t.step, t.output) == (2, 4, 1, 15, 21)
    assert t.pixel_cycles == 52 and t.busy == 8
    sched = cyclemodel.schedule(t, 4)
    assert sched.steady == t.pixels * 52 + 1


def test_reuse_off_costs_steps():
    net = netfile.parse(examples.default_layer_net())
    on = cyclemodel.tile_timing(net.layers[0], net.pim, reuse=True)
    off = cyclemodel.tile_timing(net.layers[0], net.pim, reuse=False)
    assert (on.n_steps, off.n_steps) == (2, 4)
    # each step costs the same; the output stage is paid once per pixel
    assert (cyclemodel.closed_form(off)[1] - cyclemodel.closed_form(on)[1]
            == on.pixels * 2 * on.step)


@pytest.mark.slow  # over 5 s
@pytest.mark.parametrize("path", ["examples/mnist-epim-cnn-r4-nowrap/net.json", None])
def test_balanced_lanes_keep_the_throughput_with_fewer_adder_trees(path):
    from pathlib import Path

    from epim.sw.chip import netcycles

    root = Path(__file__).resolve().parents[2]
    net = (netfile.load(root / path) if path
           else netfile.parse(examples.random_network_net(4)))
    lanes = netcycles.balanced_lanes(net)
    every = {la.name: cyclemodel.row_chunks(la, net.pim) for la in net.layers
             if la.op in ("conv", "linear")}
    full = netcycles.predict(net, 6, lanes=every).steady
    assert netcycles.predict(net, 6, lanes=lanes).steady == full
    # one lane everywhere (the default) is slower or as fast
    assert netcycles.predict(net, 6).steady >= full
    for la in net.layers:
        if la.op in ("conv", "linear"):
            assert 1 <= lanes[la.name] <= cyclemodel.row_chunks(la, net.pim)
    if path:  # the FPGA build's MNIST model: c2 and c4 have cycles to spare
        assert lanes == {"c1": 1, "c2": 1, "c3": 2, "c4": 1, "fc": 1}


@pytest.mark.parametrize("seed", [3, 11] + [pytest.param(s, marks=pytest.mark.slow)
                                      for s in (0, 1, 2, 4, 5)])
def test_event_driven_model_changes_no_handshake(seed):
    """The network model run event by event (a unit evaluated only when something can change
    for it, `Unit.quiet`) gives every handshake of stepping each unit every cycle: random
    residual networks with a max pool (contract v1.0 and v1.1), tile copies, columns per
    cycle, with and without the testbench's random gaps."""
    from epim.sw.chip import netcycles

    net = netfile.parse(examples.random_network_net(seed, v11=seed % 2 == 1))
    net = netfile.with_cols(net, 1 + seed % 4)
    tiles = [la.name for la in net.layers if la.op in ("conv", "linear")]
    per = netcycles.out_beats_per_image(net)
    for stalls in (None, 5 + seed):
        for replicas in (None, {tiles[seed % len(tiles)]: 2 + seed % 2}):
            runs = []
            for events in (True, False):
                graph = netcycles.build_graph(
                    net, 3, None, rng=None if stalls is None else random.Random(stalls),
                    replicas=replicas)
                runs.append(netcycles.simulate(graph, 3 * per, skip_quiet=events))
            a, b = runs
            assert a.beats == b.beats and a.cycles == b.cycles
            assert (a.in_cycles, a.out_cycles) == (b.in_cycles, b.out_cycles)
            assert a.busy == b.busy and a.peaks == b.peaks


@pytest.mark.parametrize("cin", [9, 17, 33])
def test_event_driven_model_sleeps_through_a_beats_input_words(cin):
    """A tile whose input beat is several input-memory words (`in_blocks` > 1) sleeps while its
    loader writes them, and the handshakes stay those of stepping every cycle."""
    from epim.sw.chip import netcycles

    net = netfile.parse(examples.conv_layer_net(np.random.default_rng(cin), cin=cin, cout=8,
                                                h=5, w=5, epitome=None))
    assert cyclemodel.tile_timing(net.layers[0], net.pim).blocks > 1
    per = netcycles.out_beats_per_image(net)
    for stalls in (None, 7):
        a, b = (netcycles.simulate(netcycles.build_graph(
            net, 3, None, rng=None if stalls is None else random.Random(stalls)), 3 * per,
            skip_quiet=events) for events in (True, False))
        assert (a.beats, a.cycles, a.busy) == (b.beats, b.cycles, b.busy)
