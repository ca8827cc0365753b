"""`epim cosim --per-layer`: every tile alone with its real input, builds shared by shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from epim.app.cli import main as cli
from epim.sw import examples, netfile


def _two_equal_tiles() -> dict:
    """conv a -> conv b of one shape and width (different weights), then a 1x1 classifier."""
    rng = np.random.default_rng(5)
    pim = {"xbar_rows": 16, "xbar_cols": 16, "cell_bits": 2, "dac_bits": 1, "adc_bits": 5}
    layers = []
    for name, src in (("a", "input"), ("b", "a")):
        lay = examples.conv_layer_net(rng, cin=4, cout=4, h=5, w=5, epitome=(4, 4, 2, 2),
                                      offsets="strided", pim=pim, name=name)["layers"][0]
        lay["inputs"] = [src]
        layers.append(lay)
    return {"format": "epim-net-v1", "pim": pim,
            "input": {"name": "input", "channels": 4, "height": 5, "width": 5, "bits": 4},
            "layers": layers, "output": "b"}


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_per_layer_cosim_checks_every_tile_and_shares_builds(tmp_path, jobs):
    """One after the other, and on a local Dask cluster of 2 worker processes."""
    obj = _two_equal_tiles()
    (tmp_path / "n.json").write_text(json.dumps(obj))
    net = netfile.parse(obj)
    x = np.random.default_rng(0).integers(0, 16, (2, *net.input_shape))
    np.save(tmp_path / "x.npy", x)
    assert cli(["cosim", str(tmp_path / "n.json"), "--inputs", str(tmp_path / "x.npy"),
                "--outputs", str(tmp_path / "y.npy"), "--per-layer", "--report",
                str(tmp_path / "r.json"), "--build-dir", str(tmp_path / "b"),
                "--jobs", str(jobs)]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["jobs"] == jobs
    assert [r["layer"] for r in rep["per_layer"]] == ["a", "b"]
    assert all(r["match"] and r["cycles_match"] for r in rep["per_layer"])
    assert rep["distinct_builds"] == 1  # two tiles of one shape: one module, one build
    assert len(list((tmp_path / "b" / "modules").glob("tile-*.v"))) == 1  # emitted once
    from epim.sw import reference

    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), reference.run_network(net, x))
