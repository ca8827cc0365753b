"""Whole-network accelerators: images, the network cycle model, and cosim on Verilator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epim.app import verify
from epim.hw.images import ImageError
from epim.hw.network import load_network
from epim.sw.chip import cyclemodel, examples, images, netcycles, netfile, reference


@given(st.integers(0, 10_000), st.sampled_from([None, 1, 2]))
@settings(max_examples=30)
def test_tile_model_equals_the_tile_schedule(seed, lanes):
    """The cycle-stepped tile of the network model equals the slot replay checked on Verilator
    (and in Amaranth's simulator for every lane setting, tests/hw/test_tile.py)."""
    net = netfile.parse(examples.random_layer_net(seed))
    layer = net.layers[0]
    want = cyclemodel.schedule(cyclemodel.tile_timing(layer, net.pim, lanes=lanes), 3)
    got = netcycles.predict(net, 3, lanes=lanes)
    assert got.latency == want.latency and got.steady == want.steady


@pytest.mark.slow  # over 5 s
@given(st.integers(0, 10_000), st.booleans())
@settings(max_examples=25)
def test_random_networks_never_deadlock(seed, stalls):
    """FIFO depths from the model keep every random network flowing, with and without the
    testbench's random gaps and back-pressure, and no tile computes faster than its crossbar:
    the slowest tile's busy cycles for all images fit between the first input and last output."""
    net = netfile.parse(examples.random_network_net(seed))
    depths = netcycles.fifo_depths(net)
    pred = netcycles.predict(net, 4, depths, stalls_seed=seed if stalls else None)
    assert len(pred.latency) == 4 and min(pred.latency) > 0
    busiest = max(r["ideal_cycles_per_image"] for r in pred.layers.values()
                  if "ideal_cycles_per_image" in r)
    assert pred.run.out_cycles[-1] - pred.run.in_cycles[0] >= 4 * busiest


@given(st.integers(0, 10_000), st.booleans())
@settings(max_examples=4, deadline=None)
def test_v11_networks_flow_through_the_model(seed, stalls):
    """Revision-1.1 networks (a max pool after the stem, signed residual branches): the plan has
    a max-pool unit, the FIFO depths keep the network flowing with and without the testbench's
    gaps and back-pressure, and the max pool's output beats are `Ho*Wo` per image."""
    net = netfile.parse(examples.random_network_net(seed, v11=True))
    assert [n.kind for n in netcycles.unit_plan(net, None)].count("maxpool") == 1
    pred = netcycles.predict(net, 3, stalls_seed=seed if stalls else None)
    assert len(pred.latency) == 3 and min(pred.latency) > 0
    _, ho, wo = net.layer("pool").out_shape
    assert len(pred.run.beats["pool"]) == 3 * ho * wo


def test_network_images_are_checked(tmp_path):
    net = netfile.parse(examples.random_network_net(0))
    images.write_network(images.compile_network(net), tmp_path / "n")
    loaded = load_network(tmp_path / "n")
    assert set(loaded["tiles"]) == {la.name for la in net.layers if la.op in ("conv", "linear")}
    # a tile folder from another compile
    other = netfile.parse(examples.random_network_net(3))
    images.write_network(images.compile_network(other), tmp_path / "o")
    (tmp_path / "n" / "tiles" / "stem" / "manifest.json").write_bytes(
        (tmp_path / "o" / "tiles" / "stem" / "manifest.json").read_bytes())
    with pytest.raises(ImageError, match="layer 'stem' come from another compile"):
        load_network(tmp_path / "n")
    # an edited network manifest
    images.write_network(images.compile_network(net), tmp_path / "m")
    man = json.loads((tmp_path / "m" / "network.json").read_text())
    man["units"][-1]["inputs"] = ["stem"]
    (tmp_path / "m" / "network.json").write_text(json.dumps(man))
    with pytest.raises(ImageError, match="'units' do not match 'units_sha256'"):
        load_network(tmp_path / "m")


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("netcosim")


@pytest.mark.verilator
@pytest.mark.slow
@given(seed=st.integers(0, 10_000))
@settings(max_examples=2, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_networks_in_cosim(seed, build_root):
    """Random residual networks (pooling, flatten, lossy ADCs, odd shapes) on Verilator:
    outputs bit-exact, and every handshake in the cycle the network model predicts."""
    net = netfile.parse(examples.random_network_net(seed))
    x = np.random.default_rng(seed).integers(0, 2**net.input_bits, (3, *net.input_shape))
    y, rep = verify.cosim_network(net, x, build_root / f"n{seed}")
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["match"] and rep["matching_images"] == 3
    assert rep["cycles"] == rep["predicted_cycles"] and rep["cycles_match"]


@pytest.mark.verilator
@pytest.mark.slow
@given(seed=st.integers(0, 10_000), stalls=st.booleans())
@settings(max_examples=3, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_v11_networks_in_cosim(seed, stalls, build_root):
    """Revision-1.1 networks on Verilator: the streaming max pool (random window, stride and
    padding) and adders reading signed conv outputs, bit-exact against the reference, every
    handshake in the cycle the network model predicts, with and without random stalls."""
    net = netfile.parse(examples.random_network_net(seed, v11=True))
    x = np.random.default_rng(seed).integers(0, 2**net.input_bits, (3, *net.input_shape))
    y, rep = verify.cosim_network(net, x, build_root / f"v11-{seed}", stalls=stalls, seed=seed)
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["match"] and rep["cycles_match"]
    assert any(unit.get("a_signed") or unit.get("b_signed") for unit in
               json.loads((build_root / f"v11-{seed}" / "generated" / "network.json")
                          .read_text())["units"])


@pytest.mark.verilator
@pytest.mark.slow
def test_resnet50_stem_pool_streams_on_verilator(build_root):
    """A ResNet-50 stem's max pool alone (112x112x64 at 4 bits, 3x3 windows, stride 2, padding
    1): it keeps 5 rows, not the map, takes about one input beat per cycle, and is bit-exact
    with every handshake as modelled. (A network without tiles: no slowest tile.)"""
    obj = {"format": "epim-net-v1", "pim": examples.EXAMPLE_PIM,
           "input": {"name": "input", "channels": 64, "height": 112, "width": 112, "bits": 4},
           "layers": [{"name": "pool", "op": "maxpool", "inputs": ["input"], "kernel": 3,
                       "stride": 2, "padding": 1}],
           "output": "pool"}
    net = netfile.parse(obj)
    x = np.random.default_rng(0).integers(0, 16, (2, 64, 112, 112))
    y, rep = verify.cosim_network(net, x, build_root / "stem")
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["cycles_match"] and rep["slowest_tile"] is None
    assert rep["steady_cycles_per_image"] < 112 * 112 * 1.01


@pytest.mark.verilator
@pytest.mark.slow
def test_network_with_stalls_and_one_lane_loses_nothing(build_root):
    """Random input gaps and output back-pressure, every tile with one chunk lane: nothing
    lost or repeated, and the model, replaying the testbench's random pattern, still predicts
    every handshake."""
    net = netfile.parse(examples.random_network_net(4))  # two residual blocks
    assert sum(la.op == "add" for la in net.layers) == 2
    x = np.random.default_rng(1).integers(0, 2**net.input_bits, (4, *net.input_shape))
    y, rep = verify.cosim_network(net, x, build_root / "stalls", stalls=True, seed=5, lanes=1)
    assert any(row.get("passes", 1) > 1 for row in rep["layers"].values())
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["cycles_match"]


@pytest.mark.verilator
@pytest.mark.slow
def test_replicated_network_with_stalls_on_verilator(build_root):
    """A residual network whose tiles have copies (the replication search under a budget),
    with random gaps and back-pressure: outputs bit-exact, every handshake as modelled."""
    from epim.sw.chip import replication

    net = netfile.parse(examples.random_network_net(4))
    reps = replication.choose_replicas(net, replication.crossbars(net) * 2)
    assert max(reps.values()) > 1
    x = np.random.default_rng(2).integers(0, 2**net.input_bits, (3, *net.input_shape))
    y, rep = verify.cosim_network(net, x, build_root / "replicas", stalls=True, seed=3,
                                 replicas=reps)
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["cycles_match"] and rep["replicas"] == reps


@given(st.integers(0, 10_000))
@settings(max_examples=10)
def test_replication_search_stays_within_budget_and_never_slows(seed):
    """Copies chosen under twice the network's crossbars: within budget, and the network's
    modelled rate is at least as fast as without copies."""
    from epim.sw.chip import replication

    net = netfile.parse(examples.random_network_net(seed))
    budget = 2 * replication.crossbars(net)
    reps = replication.choose_replicas(net, budget)
    assert replication.crossbars(net, reps) <= budget
    plain = netcycles.predict(net, 4).steady
    assert netcycles.predict(net, 4, replicas=reps).steady <= plain
