"""Validation of epim-net-v1 files: good files parse, every broken rule names layer and field."""

from __future__ import annotations

import copy
import json

import pytest

from epim.sw.chip import netfile
from epim.sw.chip.netfile import NetFileError
from tests.helpers import residual_net


def test_default_parses(net_obj):
    net = netfile.parse(net_obj)
    layer = net.layers[0]
    assert layer.in_shape == (8, 16, 16)
    assert layer.out_shape == (16, 16, 16)
    assert (layer.g_in, layer.g_out) == (2, 2)
    assert layer.epitome.weights.shape == (8, 4, 3, 3)


def _conv(obj):
    return obj["layers"][0]


def _epi(obj):
    return obj["layers"][0]["epitome"]


# (mutation, text that must appear in the message): each breaks one rule of spec section 7.
BROKEN = [
    (lambda o: o.update(format="epim-net-v2"), "field 'format'"),
    (lambda o: o["pim"].pop("adc_bits"), "field 'pim.adc_bits': missing"),
    (lambda o: o["pim"].update(cell_bits=0), "field 'pim.cell_bits'"),
    (lambda o: o["input"].update(bits=True), "input, field 'bits': must be an integer"),
    (lambda o: _conv(o).update(op="conv3d"), "layer 'epim_conv3x3', field 'op': unknown op"),
    (lambda o: _conv(o).update(inputs=["nope"]), "layer 'epim_conv3x3', field 'inputs'"),
    (lambda o: _conv(o).pop("kernel"), "layer 'epim_conv3x3', field 'kernel': missing"),
    (lambda o: _conv(o).update(padding=3), "field 'padding': must be in 0..2"),
    (lambda o: _conv(o).update(weight_bits=1), "field 'weight_bits'"),
    (lambda o: _conv(o).update(relu="yes"), "field 'relu'"),
    (lambda o: _conv(o).update(bias=[0] * 15), "field 'bias': must have shape [16]"),
    (lambda o: _conv(o).update(mult=[0] * 16), "field 'mult': values must be in 1.."),
    (lambda o: _conv(o).update(shift=[63] * 16), "field 'shift': values must be in 0..62"),
    (lambda o: _conv(o).update(stride_y=1), "field 'stride_y': unknown field"),
    (lambda o: _conv(o).update(weights=[[[[0]]]]), "field 'epitome': give exactly one"),
    (lambda o: _epi(o).update(patch_in=5), "field 'epitome.patch_in': must be in 1..4"),
    (lambda o: _epi(o).update(patch_out=0), "field 'epitome.patch_out'"),
    (lambda o: _epi(o).update(row_offset=[[0, 0]]),
     "field 'epitome.row_offset': must have shape [2, 2]"),
    (lambda o: _epi(o).update(col_offset=[[0, 8], [0, 0]]),
     "field 'epitome.col_offset': values must be in 0..7, got 8 at [0, 1]"),
    (lambda o: _epi(o)["weights"][1][2][0].__setitem__(1, 4),
     "field 'epitome.weights': values must be in -3..3, got 4 at [1, 2, 0, 1]"),
    (lambda o: _epi(o)["weights"][0].pop(), "field 'epitome.weights': must be a nested list of "
     "integers (|v| < 2**62) of shape [8, 4, 3, 3] (Ce_out, Ce_in, k, k)"),
    (lambda o: _epi(o).update(weights="zeros"), "field 'epitome.weights': must be a nested"),
    (lambda o: o.update(output="gap"), "field 'output': names no layer"),
    (lambda o: o["layers"].append(copy.deepcopy(_conv(o))), "field 'name': duplicate"),
]


@pytest.mark.parametrize("mutate, message", BROKEN)
def test_broken_files_are_refused(net_obj, mutate, message):
    mutate(net_obj)
    with pytest.raises(NetFileError) as err:
        netfile.parse(net_obj, source="net.json")
    text = str(err.value)
    assert text.startswith("net.json: ")
    assert message in text
    assert "\n" not in text


def test_residual_network_shapes(net_obj):
    net = netfile.parse(residual_net(net_obj))
    assert [la.name for la in net.layers] == ["epim_conv3x3", "c2", "r1", "gap", "fc"]
    assert net.layer("gap").out_shape == (16, 1, 1)
    assert net.layer("fc").in_channels == 16
    assert net.layer("fc").out_shape == (10, 1, 1)


def test_layers_may_come_in_any_order(net_obj):
    obj = residual_net(net_obj)
    obj["layers"].reverse()
    assert [la.name for la in netfile.parse(obj).layers][-1] == "fc"


def test_cycle_is_refused(net_obj):
    obj = residual_net(net_obj)
    obj["layers"][0]["inputs"] = ["r1"]
    obj["layers"][0]["epitome"]["in_channels"] = 4
    with pytest.raises(NetFileError, match="form a cycle"):
        netfile.parse(obj)


def test_add_shapes_must_match(net_obj):
    obj = residual_net(net_obj)
    obj["layers"][2]["inputs"] = ["c2", "input"]
    with pytest.raises(NetFileError, match=r"layer 'r1', field 'inputs': inputs differ in shape"):
        netfile.parse(obj)


def test_signed_tensor_may_feed_an_add(net_obj):
    obj = residual_net(net_obj)
    obj["layers"][1]["relu"] = False  # c2 -> r1: a standard residual branch (v1.1)
    net = netfile.parse(obj)
    assert net.signed("c2") and not net.signed("r1") and not net.signed("input")


def _with_pool(obj, **pool):
    """residual_net with a max pool between the add and the global pool."""
    obj["layers"].insert(3, {"name": "mp", "op": "maxpool", "inputs": ["r1"], **pool})
    obj["layers"][4]["inputs"] = ["mp"]
    return obj


def test_maxpool_shapes(net_obj):
    net = netfile.parse(_with_pool(residual_net(net_obj), kernel=3, stride=2, padding=1))
    mp = net.layer("mp")
    assert (mp.in_shape, mp.out_shape) == ((16, 16, 16), (16, 8, 8))
    assert mp.out_bits == mp.in_bits == 4
    assert netfile.parse(_with_pool(residual_net(net_obj), kernel=2)).layer("mp").out_shape \
        == (16, 15, 15)


# v1.1: malformed max pools and signed tensors where the DAC needs unsigned ones.
BROKEN_V11 = [
    (dict(kernel=0), "layer 'mp', field 'kernel': must be in 1..15, got 0"),
    (dict(kernel=3, padding=2), "layer 'mp', field 'padding': must be in 0..1, got 2"),
    (dict(kernel=3, stride=0), "layer 'mp', field 'stride': must be in 1..15"),
    (dict(stride=2), "layer 'mp', field 'kernel': missing"),
    (dict(kernel=2, out_bits=4), "layer 'mp', field 'out_bits': unknown field"),
    (dict(kernel=2, padding=True), "layer 'mp', field 'padding': must be an integer"),
]


@pytest.mark.parametrize("pool, message", BROKEN_V11)
def test_broken_maxpool_is_refused(net_obj, pool, message):
    with pytest.raises(NetFileError) as err:
        netfile.parse(_with_pool(residual_net(net_obj), **pool), source="net.json")
    assert message in str(err.value)


def test_maxpool_window_larger_than_its_map_is_refused(net_obj):
    obj = residual_net(net_obj)  # gap's output is a 16x1x1 map
    obj["layers"].append({"name": "mp", "op": "maxpool", "inputs": ["gap"], "kernel": 2})
    with pytest.raises(NetFileError, match=r"layer 'mp', field 'kernel': a 2x2 window with "
                       r"padding 0 is larger than the padded 1x1 input map"):
        netfile.parse(obj)


@pytest.mark.parametrize("reader", ["fc", "gap", "mp"])
def test_signed_tensor_feeding_a_crossbar_or_pool_is_refused(net_obj, reader):
    obj = _with_pool(residual_net(net_obj), kernel=2, stride=2)
    obj["layers"][1]["relu"] = False  # c2's output is signed; r1 may read it, nothing else
    next(la for la in obj["layers"] if la["name"] == reader)["inputs"] = ["c2"]
    with pytest.raises(NetFileError) as err:
        netfile.parse(obj, source="net.json")
    assert f"layer '{reader}', field 'inputs': input 'c2' is signed" in str(err.value)
    assert "only add layers may read a signed tensor" in str(err.value)


def test_load_reports_bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "epim-net-v1",')
    with pytest.raises(NetFileError, match=r"broken.json: not valid JSON"):
        netfile.load(path)


def test_load_round_trip(tmp_path, net_obj):
    path = tmp_path / "n.json"
    path.write_text(json.dumps(net_obj))
    assert netfile.load(path).layers[0].name == "epim_conv3x3"
