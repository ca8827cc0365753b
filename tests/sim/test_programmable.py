"""Programmable network accelerators: one Verilog module per distinct tile shape, its memories
blank until the network's programming port writes them."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from epim.app import verify
from epim.app.generate import generate_network
from epim.hw.generate import emit_network_verilog, network_from_images
from epim.hw.network import load_network
from epim.sim import cosim
from epim.sw.chip import examples, images, netfile, reference
from tests.helpers import with_repeated_layer


def twin_net() -> netfile.Network:
    """A random residual network whose block conv `b0c2` has a twin of the same shape (other
    weights) right after it."""
    return netfile.parse(with_repeated_layer(examples.random_network_net(0), "b0c2"))


def test_the_twin_has_the_same_tile_shape_and_other_words():
    comp = images.compile_network(twin_net())["tiles"]
    a, b = comp["b0c2"], comp["b0c2x"]
    assert dataclasses.replace(a.params, name="t") == dataclasses.replace(b.params, name="t")
    assert a.words["xbar"] != b.words["xbar"] and a.words["ostage"] != b.words["ostage"]


def test_equal_shapes_share_one_module_with_blank_memories(tmp_path):
    """Tiles of equal shape are instances of one module with no parameter of its own (which
    would make Verilator build one copy per value); their memories start blank, and the Verilog
    has nothing for simulation only (no `$readmemh`, no plusargs, no `initial` text written by
    hand) and no module but what Amaranth emits."""
    net = twin_net()
    images.write_network(images.compile_network(net), tmp_path / "n")
    acc = network_from_images(tmp_path / "n")
    tiles = [la.name for la in net.layers if la.op in ("conv", "linear")]
    assert len(acc.shared_modules) == len(tiles) - 1
    text = emit_network_verilog(acc)
    assert text.count("\nmodule epim_tile_") == len(tiles) - 1
    # every tile module instantiates the crossbar array of its physical crossbar, emitted once
    arrays = {name for tile in acc.shared_modules.values() for name in tile.arrays}
    assert 1 <= len(arrays) < len(tiles) - 1
    assert sorted(re.findall(r"^module (epim_array_\S+)\(", text, re.M)) == sorted(arrays)
    assert len(re.findall(r"^\s+(epim_array_\S+) array \(", text, re.M)) == len(tiles) - 1
    assert "parameter" not in text
    assert "initial begin" not in text  # blank memories: no initial words (`to_verilog`)
    for banned in ("$readmemh", "$value$plusargs", "string ", "unroll_disable", "epim_xbar_"):
        assert banned not in text
    # the network's programming port: tile, memory, address, data
    fields = dict(acc.signature.members["prog"].signature.members["payload"].shape.members)
    assert list(fields) == ["tile", "mem", "addr", "data"]
    # fixed tiles: one module each, no port, no loader
    fixed = emit_network_verilog(network_from_images(tmp_path / "n", fixed=True))
    assert "initial begin" in fixed  # the images as the ROMs' words
    assert "epim_tile_" not in fixed and "$readmemh" not in fixed and "$value$plusargs" not in fixed
    assert re.search(r"input .*prog__payload", text) and not re.search(r"input .*prog__", fixed)


@pytest.mark.verilator
@pytest.mark.slow
def test_programmable_network_is_programmed_and_runs_bit_exact(tmp_path):
    """One build for every way of starting: blank memories written through the network's
    programming port (bit-exact and cycle-exact, without and with stalls; the second time
    every memory starts with random words, since the Verilog gives blank memories no initial
    words: a tile writes its input and accumulator words before it reads them), and blank memories
    never written (wrong outputs: the words really come from the port). The weight-baked
    accelerator gives the same outputs."""
    net = twin_net()
    c, h, w = net.input_shape
    x = np.random.default_rng(1).integers(0, 2**net.input_bits, (3, c, h, w))
    ref = reference.run_network(net, x)
    y, rep = verify.cosim_network(net, x, tmp_path)
    assert rep["match"] and rep["cycles_match"] and rep["programmed_via_port"]
    y2, rep2 = verify.cosim_network(net, x, tmp_path, program=True, stalls=True, seed=3,
                                    plusargs=["+verilator+rand+reset+2", "+verilator+seed+7"])
    assert rep2["match"] and rep2["cycles_match"] and rep2["programmed_via_port"]
    loaded = load_network(tmp_path / "generated")
    assert rep2["prog_beats"] == sum(sum(len(v) for v in t.words.values())
                                     for t in loaded["tiles"].values())
    assert len(list(tmp_path.glob("net-*"))) == 1  # one Verilator build for both
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(y2, ref)
    gen = generate_network(net, tmp_path / "generated")
    assert gen.cached
    per = 1  # the random network 0 ends in a linear classifier
    phase = {"program": [], "inputs": cosim.pack_beats(x, net.input_bits), "n_out": 3 * per}
    blank = cosim.run_phases(gen, [phase], tmp_path, max_cycles=200_000, top="epim_net",
                             prog_port=True)[0]
    assert not np.array_equal(cosim.unpack_beats(blank["outputs"], net.output_layer), ref)
    y3, rep3 = verify.cosim_network(net, x, tmp_path, fixed=True)
    assert rep3["match"] and rep3["cycles_match"] and rep3["tiles"] == "fixed"
    assert json.loads(json.dumps(rep3))["verilog_bytes"] > 0


@pytest.mark.verilator
@pytest.mark.slow
def test_replicated_tiles_are_programmed_through_the_port(tmp_path):
    """The copies of a replicated layer are instances of one module; a word for that layer
    goes to every copy at once, so the programmed network is bit-exact and cycle-exact."""
    from epim.sw.chip import replication

    net = netfile.parse(examples.random_network_net(4))
    reps = replication.choose_replicas(net, replication.crossbars(net) * 2)
    assert max(reps.values()) > 1
    x = np.random.default_rng(2).integers(0, 2**net.input_bits, (3, *net.input_shape))
    y, rep = verify.cosim_network(net, x, tmp_path, replicas=reps, program=True)
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["cycles_match"] and rep["programmed_via_port"] and rep["prog_beats"] > 0
