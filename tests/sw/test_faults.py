"""Fault maps, the reference on stuck cells, and fault-aware remapping (`sw/chip/faults.py`)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from epim.app.cli import main as cli
from epim.sw.chip import faults, netfile, noise, reference

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples/mnist-epim-cnn-r4/net.json"


def _net():
    obj = json.loads(MNIST.read_text())
    return obj, netfile.parse(obj)


def _x(net, n=4, seed=1):
    return np.random.default_rng(seed).integers(0, 2**net.input_bits, (n, *net.input_shape))


def test_one_stuck_cell_lands_on_the_entry_the_mapping_puts_there():
    """Physical row `rho = e_in*k*k + kh*k + kw`, column `e_out*n_s + q`, polarity 0 (`M+`)."""
    obj, net = _net()
    la = net.layers[1]  # c2, an epitome layer
    e = la.epitome
    w = e.weights
    # an entry holding a negative weight: its M+ cell is 0; stuck at max it reads gmax = 3
    eo, ei, kh, kw = map(int, np.argwhere(w < 0)[0])
    rho = ei * la.kernel**2 + kh * la.kernel + kw
    fmap = {name: np.zeros_like(f) for name, f in faults.sample(net, 0, 0).items()}
    fmap[la.name][0, rho, eo] = faults.STUCK_MAX  # n_s = 1 at 3-bit weights, 2-bit cells
    faulty = copy.deepcopy(obj)
    lay = next(x for x in faulty["layers"] if x["name"] == la.name)
    lay["epitome"]["weights"][eo][ei][kh][kw] = 3 + int(w[eo, ei, kh, kw])  # g+ - g-
    x = _x(net)
    chip = noise.NoisyChip(net, noise.NoiseConfig(), faults=fmap)
    got = reference.run_network(net, x, noise=chip)
    np.testing.assert_array_equal(got, reference.run_network(netfile.parse(faulty), x))
    assert (got != reference.run_network(net, x)).any()


def test_remapping_keeps_the_function_and_lowers_the_damage(tmp_path):
    obj, net = _net()
    fmap = faults.sample(net, 0.005, 0.005, seed=4)
    new, report = faults.remap(obj, net, fmap)
    moved = [r for r in report if (r["row_rotation"], r["col_rotation"]) != (0, 0)]
    assert moved  # some layer found a better placement
    assert all(r["damage_after"] <= r["damage_before"] for r in report)
    assert sum(r["damage_after"] for r in report) < sum(r["damage_before"] for r in report)
    remapped = netfile.parse(new)
    x = _x(net, 6)
    # without faults, the remapped network computes exactly what the original does
    np.testing.assert_array_equal(reference.run_network(remapped, x),
                                  reference.run_network(net, x))
    # on the faulty chip, the remapped network's damage is what `damage` said
    for la in faults.tiles(remapped):
        r = next(r for r in report if r["layer"] == la.name)
        assert faults.damage(la, remapped.pim, fmap[la.name]) == pytest.approx(r["damage_after"])


def test_fault_map_files_round_trip_and_bad_ones_say_where(tmp_path):
    obj, net = _net()
    fmap = faults.sample(net, 0.01, 0.01, seed=1)
    (tmp_path / "f.json").write_text(json.dumps(faults.to_json(fmap)))
    back = faults.load(tmp_path / "f.json", net)
    assert all(np.array_equal(back[k], fmap[k]) for k in fmap)
    bad = {"format": "epim-faults-v1", "layers": {"c2": {"stuck_at_max": [[0, 10**6, 0]]}}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(faults.FaultMapError, match=r"layers.c2.stuck_at_max\[0\]"):
        faults.load(tmp_path / "bad.json", net)
    bad = {"format": "epim-faults-v1", "layers": {"nope": {}}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(faults.FaultMapError, match="'nope'"):
        faults.load(tmp_path / "bad.json", net)


def test_faults_remap_and_reference_commands(tmp_path, capsys):
    np.save(tmp_path / "x.npy", _x(netfile.load(MNIST), 3))
    f, new = tmp_path / "faults.json", tmp_path / "remapped.json"
    assert cli(["faults", str(MNIST), "--stuck-at-zero", "0.005", "--stuck-at-max", "0.005",
                "--seed", "2", "--out", str(f)]) == 0
    assert cli(["remap", str(MNIST), "--faults", str(f), "--out", str(new), "--report",
                str(tmp_path / "r.json")]) == 0
    assert "% less" in capsys.readouterr().out
    for net, name in ((MNIST, "a"), (new, "b")):
        assert cli(["reference", str(net), "--inputs", str(tmp_path / "x.npy"), "--outputs",
                    str(tmp_path / f"{name}.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert cli(["reference", str(new), "--inputs", str(tmp_path / "x.npy"), "--outputs",
                str(tmp_path / "c.npy"), "--faults", str(f)]) == 0
    assert "stuck cells" in capsys.readouterr().out
    assert cli(["faults", str(MNIST), "--stuck-at-zero", "2", "--out", str(f)]) == 2
