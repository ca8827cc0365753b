"""The contract package: typed parameters refuse what the generator would build differently,
word layouts pack and unpack exactly, network units are checked field by field."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.contract import graph
from epim.contract.images import (
    FIELDS,
    ImageError,
    offsets,
    pack,
    prog_fields,
    unpack,
)
from epim.contract.params import (
    AddParams,
    MaxPoolParams,
    TileParams,
    TileUnit,
    unit_from_dict,
    unit_to_dict,
)
from epim.sw.chip import examples, images, netfile
from tests.helpers import tile_params


def test_tile_params_round_trip_and_refusals(rng):
    net = netfile.parse(examples.conv_layer_net(rng, cin=5, cout=7, epitome=(3, 4, 2, 3)))
    p = images.compile_layer(net, net.layers[0]).params
    d = p.to_dict()
    assert TileParams.from_dict(d) == p
    assert list(d)[-4:] == ["passes", "widths", "n_steps", "reuse"]
    for change, message in [({"cin": "5"}, "'cin' must be an integer"),
                            ({"relu": 1}, "'relu' must be true or false"),
                            ({"extra": 1}, "unknown key 'extra'"),
                            ({"widths": {**d["widths"], "ofat": 99}}, "'widths' is"),
                            ({"passes": 7}, "'passes' is 7"),
                            ({"lanes": 0}, "'lanes' must be at least 1"),
                            ({"name": "../x"}, "is not an identifier"),
                            ({"h": 10**9}, "must be an integer in 0..")]:
        with pytest.raises(ImageError, match=message):
            TileParams.from_dict({**d, **change}, "m.json: params")
    bad = dict(d)
    del bad["acc_bits"]
    with pytest.raises(ImageError, match="m.json: params: 'acc_bits' is missing"):
        TileParams.from_dict(bad, "m.json: params")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_word_layout_packs_and_unpacks(data):
    p = tile_params(ce_in=data.draw(st.integers(1, 4)), ce_out=data.draw(st.integers(1, 5)),
                    g_in=data.draw(st.integers(1, 4)), g_out=data.draw(st.integers(1, 4)),
                    cin=4, src_bits=2, n_slices=data.draw(st.integers(1, 3)))
    for layout in [f(p) for f in FIELDS.values()] + [prog_fields(p)]:
        values = {name: data.draw(st.integers(-(2 ** (b - 1)), 2 ** (b - 1) - 1)
                                  if name == "bias" else st.integers(0, 2**b - 1))
                  for name, b in layout}
        word = pack(layout, values)
        assert 0 <= word < 2 ** sum(b for _, b in layout)
        assert unpack(layout, word) == values
        at, bits = offsets(layout)[layout[-1][0]]
        assert at + bits == sum(b for _, b in layout)
    with pytest.raises(ValueError, match="does not fit"):
        pack([("x", 3)], {"x": 8})


def test_network_units_are_checked(rng):
    net = netfile.parse(examples.random_network_net(0))
    units = images.compile_network(net)["manifest"]["units"]
    typed = [unit_from_dict(u, f"unit #{k}") for k, u in enumerate(units)]
    assert [unit_to_dict(u) for u in typed] == units
    assert any(isinstance(u, AddParams) for u in typed)
    assert any(isinstance(u, TileUnit) for u in typed)
    add = next(u for u in units if u["op"] == "add")
    for change, message in [({"fifo": [1]}, "'fifo' must be two depths"),
                            ({"ma": 2**31}, "'ma' must be an integer of magnitude below"),
                            ({"shift": -1}, "'shift' must be a non-negative integer"),
                            ({"op": "upsample"}, "unknown op"),
                            ({"a_signed": 1}, "'a_signed' must be true or false"),
                            ({"inputs": ["../x"]}, "'inputs' must be a list of names"),
                            ({"size": 3}, "unknown key 'size'")]:
        with pytest.raises(ImageError, match=message):
            unit_from_dict({**add, **change}, "network.json: unit #3")
    tile = next(u for u in units if u["op"] == "conv")
    with pytest.raises(ImageError, match="'folder' must be 'tiles/"):
        unit_from_dict({**tile, "folder": "../../elsewhere"}, "unit #0")


def test_plan_follows_the_rules():
    layers = [("a", "conv", ["x"]), ("b", "conv", ["a"]), ("s", "add", ["b", "a"]),
              ("f", "linear", ["s"])]
    nodes = graph.plan("x", layers, "f", flatten={"f"}, fifos={"s": [0, 5]})
    kinds = [(n.name, n.kind) for n in nodes]
    assert kinds == [("input", "source"), ("a", "tile"), ("a.fork", "fork"), ("b", "tile"),
                     ("s.fifob", "fifo"), ("s", "add"), ("f.flatten", "flatten"),
                     ("f", "tile"), ("output", "sink")]
    by = {n.name: n for n in nodes}
    assert by["a.fork"].ways == 2 and by["s"].inputs == (("b", 0), ("s.fifob", 0))
    assert by["s.fifob"].inputs == (("a.fork", 1),)
    assert graph.needs_flatten("linear", (8, 2, 2)) and not graph.needs_flatten("linear",
                                                                                (8, 1, 1))
    with pytest.raises(ValueError, match="no hardware unit for op 'upsample'"):
        graph.plan("x", [("m", "upsample", ["x"])], "m", set(), {})
    assert [n.kind for n in graph.plan("x", [("m", "maxpool", ["x"])], "m", set(), {})] == \
        ["source", "maxpool", "sink"]


def test_v11_units_round_trip_and_fit_together():
    """Contract v1.1 in network.json: a `maxpool` unit, and adders that name their signed
    inputs (the flags are written only when true, so a v1 manifest has none)."""
    net = netfile.parse(examples.random_network_net(1, v11=True))
    compiled = images.compile_network(net)
    man, units = compiled["manifest"], compiled["manifest"]["units"]
    typed = [unit_from_dict(u, f"unit #{k}") for k, u in enumerate(units)]
    assert [unit_to_dict(u) for u in typed] == units
    pool = next(u for u in typed if isinstance(u, MaxPoolParams))
    add = next(u for u in typed if isinstance(u, AddParams))
    assert add.a_signed and (pool.out_height, pool.out_width) == net.layer("pool").out_shape[1:]
    tiles = {n: img.params for n, img in compiled["tiles"].items()}
    graph.check_units(man, typed, tiles, "network.json")
    k = typed.index(pool)
    taller = MaxPoolParams(**{**unit_to_dict(pool), "inputs": pool.inputs,
                              "height": pool.height + 1})
    with pytest.raises(ValueError, match="unit 'pool' takes .* as input"):
        graph.check_units(man, typed[:k] + [taller] + typed[k + 1:], tiles, "network.json")
    v1 = images.compile_network(netfile.parse(examples.random_network_net(0)))["manifest"]
    assert not any("a_signed" in u or "b_signed" in u for u in v1["units"])


def test_units_that_do_not_fit_together_are_refused():
    net = netfile.parse(examples.random_network_net(0))
    compiled = images.compile_network(net)
    man = compiled["manifest"]
    tiles = {n: img.params for n, img in compiled["tiles"].items()}
    typed = [unit_from_dict(u, "u") for u in man["units"]]
    graph.check_units(man, typed, tiles, "network.json")
    add = next(k for k, u in enumerate(typed) if isinstance(u, AddParams))
    wide = AddParams(**{**unit_to_dict(typed[add]), "inputs": tuple(typed[add].inputs),
                        "fifo": tuple(typed[add].fifo), "a_bits": typed[add].a_bits + 1})
    with pytest.raises(ValueError, match=f"unit {wide.name!r} takes .* on input a"):
        graph.check_units(man, typed[:add] + [wide] + typed[add + 1:], tiles, "network.json")
    with pytest.raises(ValueError, match="which no earlier unit makes"):
        graph.check_units(man, typed[::-1], tiles, "network.json")
    # (found by the fuzz run: more copies than output pixels reached the replicated tile)
    many = dataclasses.replace(typed[0], replicas=10**6)
    with pytest.raises(ValueError, match="has 1000000 copies for"):
        graph.check_units(man, [many] + typed[1:], tiles, "network.json")
    with pytest.raises(ValueError, match="'output' does not describe"):
        graph.check_units({**man, "output": {**man["output"], "bits": 3}}, typed, tiles,
                          "network.json")
