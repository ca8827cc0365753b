"""Helpers shared by the test modules (tests import these, never each other)."""

from __future__ import annotations

import copy

import numpy as np

from epim.contract.params import TileParams


def tile_params(**over) -> TileParams:
    """A small valid tile (one 3x3 conv of 2 channels on a 4x4 map), with `over` replacing
    any parameter."""
    p = dict(name="t", op="conv", cin=2, cout=2, h=4, w=4, ho=4, wo=4, kernel=3, stride=1,
             padding=1, in_bits=4, out_bits=4, relu=True, weight_bits=3, ce_in=2, ce_out=2,
             patch_in=2, patch_out=2, g_in=1, g_out=1, n_slices=2, n_t=4, max_steps=1,
             acc_bits=16, src_bits=1, xbar_rows=32, xbar_cols=32, cell_bits=2, dac_bits=1,
             adc_bits=8, lanes=1, cols=32, n_steps=1, reuse=True)
    p.update(over)
    return TileParams(**p)


def residual_net(net_obj) -> dict:
    """conv -> conv -> add(conv1, conv2) -> avgpool -> linear: every op of the spec."""
    c1 = net_obj["layers"][0]
    c1["relu"] = True
    c2 = copy.deepcopy(c1)
    c2.update(name="c2", inputs=[c1["name"]])
    c2["epitome"]["in_channels"] = 4
    c2["epitome"]["patch_in"] = 4
    c2["epitome"]["row_offset"] = [[0, 0], [0, 0], [0, 0], [0, 0]]
    c2["epitome"]["col_offset"] = [[0, 0], [0, 0], [0, 0], [0, 0]]
    return {**net_obj, "layers": [
        c1, c2,
        {"name": "r1", "op": "add", "inputs": ["c2", c1["name"]], "ma": 3, "mb": 5,
         "shift": 3, "out_bits": 4},
        {"name": "gap", "op": "avgpool_global", "inputs": ["r1"], "mult": 41, "shift": 12,
         "out_bits": 8},
        {"name": "fc", "op": "linear", "inputs": ["gap"], "out_features": 10, "weight_bits": 3,
         "weights": np.ones((10, 16, 1, 1), int).tolist(), "bias": [0] * 10,
         "mult": [1] * 10, "shift": [0] * 10, "relu": False, "out_bits": 16}],
        "output": "fc"}


def with_repeated_layer(net: dict, name: str) -> dict:
    """`net` (a JSON object) with a copy of layer `name`, `name + "x"`, right after it and
    reading its output: the same shape (a layer whose input and output have equal shapes and
    widths), other weights and output stage, and whatever read `name` now reads the copy."""
    net = copy.deepcopy(net)
    layers = net["layers"]
    k = next(i for i, la in enumerate(layers) if la["name"] == name)
    twin = copy.deepcopy(layers[k])
    twin.update(name=name + "x", inputs=[name], bias=[b + 3 for b in twin["bias"]])
    w = np.array(twin["epitome"]["weights"])
    twin["epitome"]["weights"] = w.reshape(-1)[::-1].reshape(w.shape).tolist()
    for la in layers[k + 1:]:
        la["inputs"] = [name + "x" if s == name else s for s in la["inputs"]]
    layers.insert(k + 1, twin)
    return net
