"""Crossbar non-idealities (`sw/chip/noise.py`, `epim reference --noise`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from epim.app.cli import main as cli
from epim.sw.chip import examples, netfile, noise, reference

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples/mnist-epim-cnn-r4/net.json"


def _cfg(**kw) -> noise.NoiseConfig:
    return noise.NoiseConfig(**kw)


def _saturating_net():
    """One conv layer whose small ADC saturates on some columns (the literal path matters)."""
    pim = {"xbar_rows": 16, "xbar_cols": 16, "cell_bits": 2, "dac_bits": 2, "adc_bits": 4}
    obj = examples.conv_layer_net(np.random.default_rng(3), cin=6, cout=8, h=6, w=6,
                                  epitome=(4, 4, 2, 2), offsets="random", pim=pim)
    return netfile.parse(obj)


@pytest.mark.parametrize("which", ["mnist", "saturating"])
def test_zero_noise_equals_the_ideal_reference_bit_for_bit(which):
    net = netfile.load(MNIST) if which == "mnist" else _saturating_net()
    x = np.random.default_rng(1).integers(0, 2**net.input_bits, (3, *net.input_shape))
    if which == "saturating":
        layer = net.layers[0]
        assert reference.saturable(layer, net.pim).any()  # the ADC clips somewhere
    ideal = reference.run_network(net, x)
    chip = noise.NoisyChip(net, _cfg(), seed=7)
    np.testing.assert_array_equal(reference.run_network(net, x, noise=chip), ideal)


def test_cli_noise_with_every_parameter_zero_equals_the_reference(tmp_path):
    net = netfile.load(MNIST)
    x = np.random.default_rng(2).integers(0, 2**net.input_bits, (4, *net.input_shape))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "zero.json").write_text(json.dumps(_cfg().to_json()))
    assert cli(["reference", str(MNIST), "--inputs", str(tmp_path / "x.npy"),
                "--outputs", str(tmp_path / "ideal.npy")]) == 0
    assert cli(["reference", str(MNIST), "--inputs", str(tmp_path / "x.npy"),
                "--outputs", str(tmp_path / "noisy.npy"), "--noise",
                str(tmp_path / "zero.json"), "--seed", "3"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "noisy.npy"), np.load(tmp_path / "ideal.npy"))


def test_a_seed_is_one_repeatable_chip_and_seeds_differ():
    net = netfile.load(MNIST)
    x = np.random.default_rng(4).integers(0, 2**net.input_bits, (4, *net.input_shape))
    cfg = _cfg(programming_sigma=0.1, read_sigma=0.02, adc_noise_sigma=0.5)
    a = reference.run_network(net, x, noise=noise.NoisyChip(net, cfg, seed=1))
    b = reference.run_network(net, x, noise=noise.NoisyChip(net, cfg, seed=1))
    c = reference.run_network(net, x, noise=noise.NoisyChip(net, cfg, seed=2))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a != reference.run_network(net, x)).any()


def test_stuck_cells_land_at_their_rates_and_levels():
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 4, (2, 1, 200, 200))
    g = noise.program_cells(cells, _cfg(stuck_at_zero=0.01, stuck_at_max=0.02), 2, rng)
    changed = g != cells
    zero, top = (g == 0) & changed, (g == 3) & changed
    # a stuck cell that already held its stuck level does not show as changed: 3/4 of them do
    assert abs(zero.mean() - 0.01 * 3 / 4) < 0.002
    assert abs(top.mean() - 0.02 * 3 / 4) < 0.003
    assert np.array_equal(g[~changed], cells[~changed])


def test_programming_variation_has_the_configured_spread():
    rng = np.random.default_rng(0)
    cells = np.full((2, 1, 300, 300), 2)  # mid-range: clipping at 0..3 is rare at sigma 5%
    g = noise.program_cells(cells, _cfg(programming_sigma=0.05), 2, rng)
    assert abs(g.mean() - 2) < 0.01
    assert abs(g.std() - 0.05 * 3) < 0.005
    ln = noise.program_cells(cells, _cfg(programming_sigma=0.1,
                                         programming_distribution="lognormal"), 2, rng)
    assert abs(np.log(ln / 2).std() - 0.1) < 0.005
    empty = noise.program_cells(np.zeros((4, 4)), _cfg(programming_sigma=0.1,
                                                       programming_distribution="lognormal"),
                                2, rng)
    assert not empty.any()  # multiplicative: an empty cell stays empty


def test_read_noise_is_unbiased_with_the_spread_of_independent_cell_noise():
    """Column sums over many reads: mean the ideal sum, spread sigma*gmax*||x||."""
    net = _saturating_net()
    chip = noise.NoisyChip(net, _cfg(read_sigma=0.2), seed=0)
    chip.pim = type(net.pim)(**{**vars(net.pim), "dac_bits": 1, "adc_bits": 8})
    rng = np.random.default_rng(5)
    x = np.tile(rng.integers(0, 2, (1, 16)), (20000, 1))  # one input, read 20000 times
    g = rng.integers(0, 4, (2, 1, 16, 1)).astype(float)
    # an offset of 100 LSB on both polarities keeps every sum inside the ADC and cancels
    gain, offset = np.ones((2, 1, 1)), np.full((2, 1, 1), 100.0)
    v = chip._chunk(x, g, gain, offset, in_bits=1)[:, 0]
    ideal = float((x[0] @ g[0, 0, :, 0]) - (x[0] @ g[1, 0, :, 0]))
    sd = 0.2 * 3 * math.sqrt(x[0].sum())  # per polarity, before the ADC rounds
    assert sd > 1.5  # (so that rounding adds about 1/12 LSB^2 of variance)
    assert abs(v.mean() - ideal) < 0.06
    assert abs(v.std() - math.sqrt(2 * (sd**2 + 1 / 12))) < 0.06


@pytest.mark.parametrize("obj, says", [
    ({"format": "epim-noise-v1", "programming": {"sigma": -0.1}}, "'programming.sigma'"),
    ({"format": "epim-noise-v1", "stuck_at": {"zero": 0.7, "max": 0.6}}, "exceeds 1"),
    ({"format": "epim-noise-v1", "adc": {"gain": 0.1}}, "unknown key(s) ['gain'] in 'adc'"),
    ({"format": "epim-noise-v2"}, "'format'"),
    ({"format": "epim-noise-v1", "programming": {"distribution": "uniform"}}, "distribution"),
    ({"format": "epim-noise-v1", "read": {"sigma": True}}, "'read.sigma'"),
])
def test_a_bad_configuration_is_one_line_naming_the_key(tmp_path, capsys, obj, says):
    net = netfile.load(MNIST)
    np.save(tmp_path / "x.npy", np.zeros((1, *net.input_shape), dtype=np.int64))
    (tmp_path / "bad.json").write_text(json.dumps(obj))
    assert cli(["reference", str(MNIST), "--inputs", str(tmp_path / "x.npy"), "--outputs",
                str(tmp_path / "y.npy"), "--noise", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "bad.json" in err
    assert not (tmp_path / "y.npy").exists()


def test_a_seed_is_the_same_chip_at_every_setting():
    """Raising a rate only adds stuck cells; turning the variation on does not move them."""
    cells = np.random.default_rng(0).integers(1, 3, (2, 1, 100, 100))  # levels 1..2: never 0/3

    def stuck(cfg):
        g = noise.program_cells(cells, cfg, 2, np.random.default_rng(1),
                                np.random.default_rng(2))
        return g == 0, g == 3

    z1, m1 = stuck(_cfg(stuck_at_zero=0.01, stuck_at_max=0.01))
    z2, m2 = stuck(_cfg(stuck_at_zero=0.02, stuck_at_max=0.03))
    z3, m3 = stuck(_cfg(stuck_at_zero=0.01, stuck_at_max=0.01, programming_sigma=0.05))
    assert z1.any() and m1.any()
    assert (z1 <= z2).all() and (m1 <= m2).all() and z2.sum() > z1.sum()
    assert (z1 == z3).all() and (m1 == m3).all()  # (sigma 5 % never reaches 0 or 3 from 1..2)


def test_a_huge_number_or_a_huge_file_is_a_clear_error(tmp_path):
    (tmp_path / "big.json").write_text('{"format": "epim-noise-v1", "read": {"sigma": 1'
                                       + "0" * 400 + "}}")
    with pytest.raises(noise.NoiseConfigError, match="a number of 401 digits"):
        noise.load(tmp_path / "big.json")
    (tmp_path / "huge.json").write_text(" " * (noise.MAX_CONFIG_BYTES + 1))
    with pytest.raises(noise.NoiseConfigError, match="larger than"):
        noise.load(tmp_path / "huge.json")
