"""The cost model: crossbars by spec section 3, cycles equal to the RTL's cycle model, energy
accounting, shapes from PyTorch models, the ResNet-50 table and the command line."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.app.cli import main as cli
from epim.sw.chip import cost, examples, netcycles, netfile
from epim.sw.chip.netfile import PIM, parse
from epim.sw.ml import compress, export, models
from epim.sw.studies import study


def spec_crossbars(ce_in, ce_out, k, bits, pim):
    """Spec section 3, written out again."""
    ns = math.ceil((bits - 1) / pim.cell_bits)
    return (math.ceil(ce_in * k * k / pim.xbar_rows) * math.ceil(ce_out * ns / pim.xbar_cols)
            * 2)


@settings(max_examples=60, deadline=None)
@given(cin=st.integers(1, 300), cout=st.integers(1, 300), k=st.sampled_from([1, 3, 5]),
       bits=st.integers(2, 8), rows=st.sampled_from([16, 32, 64, 128]),
       cols=st.sampled_from([16, 32, 128]), cell=st.integers(1, 3),
       fi=st.floats(0.05, 1), fo=st.floats(0.05, 1))
def test_crossbars_follow_spec_section_3(cin, cout, k, bits, rows, cols, cell, fi, fo):
    pim = PIM(rows, cols, cell, 1, 8)
    ce_in, ce_out = max(1, round(cin * fi)), max(1, round(cout * fo))
    layer = cost.shape_layer("l", cin, cout, k, 1, (4, 4), (ce_in, ce_out, ce_in, ce_out),
                             weight_bits=bits)
    c = cost.layer_cost(layer, pim)
    assert c.crossbars == spec_crossbars(ce_in, ce_out, k, bits, pim)
    assert c.dense8_crossbars == spec_crossbars(cin, cout, k, 8, pim)
    assert c.cell_area_mm2 == pytest.approx(c.crossbars * rows * cols * 1.44e-6)


def test_resnet50_crossbars_follow_spec_and_shapes_are_torchvisions():
    pim = study.PIM_DEFAULT
    layers = cost.resnet50()
    assert len(layers) == 54 and sum(la.op == "conv" for la in layers) == 53
    assert layers[-1].in_channels == 2048 and layers[-1].out_channels == 1000
    assert layers[-2].out_shape == (2048, 7, 7)
    weights = sum(la.in_channels * la.out_channels * la.kernel**2 for la in layers)
    assert weights == 25_502_912  # torchvision resnet50: 25.56 M parameters minus BN and bias
    nc = cost.network_cost(layers, pim)
    assert nc.crossbars == sum(spec_crossbars(la.in_channels, la.out_channels, la.kernel, 3, pim)
                               for la in layers)
    assert nc.dense8_crossbars == sum(spec_crossbars(la.in_channels, la.out_channels,
                                                     la.kernel, 8, pim) for la in layers)


@pytest.mark.parametrize("seed", range(8))
def test_cycles_equal_the_rtl_cycle_model_on_random_layers(seed):
    """The tile model of `netcycles` is the RTL's control transcribed (and checked against
    Verilator in tests/sim); the cost model's cycles must equal it."""
    net = parse(examples.random_layer_net(1000 + seed))
    for reuse in (True, False):
        c = cost.network_cost(net, reuse=reuse).layers[0]
        t = netcycles.predict(net, 3, reuse=reuse)
        assert c.cycles_latency == t.latency[0]
        assert c.cycles_per_image == t.steady


@pytest.mark.parametrize("lanes", [1, 2])
def test_cycles_follow_chunk_lanes(lanes):
    net = parse(examples.random_layer_net(7))
    c = cost.network_cost(net, lanes=lanes).layers[0]
    t = netcycles.predict(net, 3, lanes=lanes)
    assert (c.cycles_latency, c.cycles_per_image) == (t.latency[0], t.steady)


def test_reuse_saves_activations_and_their_energy():
    # output channel wrapping: 4 output groups share each input group's row offset
    layer = cost.shape_layer("l", 64, 64, 3, 1, (8, 8), (16, 16, 16, 16))
    pim = study.PIM_DEFAULT
    on, off = cost.layer_cost(layer, pim, reuse=True), cost.layer_cost(layer, pim, reuse=False)
    assert on.activations == 64 * 4 and off.activations == 64 * 16
    assert off.activations_no_reuse == on.activations_no_reuse == off.activations
    for part in ("dac", "cells", "adc", "shift_add"):
        assert off.energy_pj[part] == pytest.approx(4 * on.energy_pj[part])
    assert on.cycles_per_image < off.cycles_per_image


def test_constants_come_from_mnsim_and_a_file_overrides_them(tmp_path):
    c = cost.Constants()
    assert c.adc_energy_pj == pytest.approx(4.0 * 10 / 1.1)  # 8-bit, 1.1 GS/s, 4 mW
    assert c.cell_read_pj == pytest.approx(0.25 / math.sqrt(3e4 * 1.5e5) * 3.16e-9 * 1e12)
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"adc_power_mw": 2.0, "clock_mhz": 50}))
    d = cost.Constants.from_file(f)
    assert d.adc_energy_pj == pytest.approx(c.adc_energy_pj / 2) and d.clock_mhz == 50
    f.write_text(json.dumps({"adc_pwr": 2.0}))
    with pytest.raises(ValueError, match="unknown constant.*adc_pwr"):
        cost.Constants.from_file(f)
    f.write_text(json.dumps({"clock_mhz": -1}))
    with pytest.raises(ValueError, match="clock_mhz.*positive"):
        cost.Constants.from_file(f)


def test_pytorch_shapes_cost_the_same_as_the_exported_file():
    model = models.build("resnet", 4, models.QuantConfig(3, 4), width=8)
    model.train()
    model(torch.rand(4, 1, 28, 28))
    model.eval()
    net = parse(export.export(model, models.DEFAULT_PIM))
    pim = net.pim
    from_file = cost.network_cost(net)
    # the classifier reads the 8-bit pooled map
    from_torch = cost.network_cost(compress.torch_layers(model, (1, 28, 28),
                                                     in_bits={"units.fc": 8}), pim)
    by_name = {c.name: c for c in from_torch.layers}
    assert len(by_name) == len(from_file.layers)
    for a in from_file.layers:
        b = by_name[f"units.{a.name}.conv" if a.op == "conv" else f"units.{a.name}"]
        assert (a.crossbars, a.activations, a.cycles_latency, a.cycles_per_image) == \
               (b.crossbars, b.activations, b.cycles_latency, b.cycles_per_image), a.name


def test_plain_torch_modules_are_costed():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(16, 10))
    layers = compress.torch_layers(net, (3, 16, 16))
    assert [la.out_shape for la in layers] == [(8, 16, 16), (16, 8, 8), (10, 1, 1)]
    assert layers[0].in_bits == 8 and layers[1].in_bits == 4
    with pytest.raises(ValueError, match="square, ungrouped"):
        compress.torch_layers(torch.nn.Conv2d(4, 4, 3, groups=2), (4, 8, 8))


@pytest.mark.slow  # over 5 s
def test_study_reaches_30x_and_writes_its_report(tmp_path):
    assert study.main(["--out", str(tmp_path), "--ratios", "8", "16", "--generations", "20"]) == 0
    result = json.loads((tmp_path / "study.json").read_text())
    rows = {r["name"]: r for r in result["configs"]}
    assert rows["dense 8-bit"]["compression_vs_dense8"] == 1
    assert any(r["compression_vs_dense8"] >= 30 for r in rows.values())
    wrap = rows["EPIM 3-bit r=16, both sides (wrapping)"]
    nore = rows["EPIM 3-bit r=16, both sides (wrapping), no IFRT reuse"]
    assert wrap["crossbars"] == nore["crossbars"] and wrap["activations"] < nore["activations"]
    found = next(r for r in rows.values() if r["split"] == "searched")
    assert found["crossbars"] <= found["dense8_crossbars"] / 30.65
    # the search improves on its uniform seeds rather than returning one of them
    assert found["search"]["proxy"] < min(found["search"]["seed_proxies"]) - 0.01
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert (tmp_path / "layers.png").stat().st_size > 0
    assert "| EPIM 3-bit r=16, both sides (wrapping) |" in (tmp_path / "study.md").read_text()


def test_cost_command(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cli(["cost", "examples/mnist-epim-cnn-r4/net.json", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "network: 32 crossbars (8.38x fewer than dense 8-bit: 268)" in text
    obj = json.loads(out.read_text())
    assert obj["summary"]["crossbars"] == 32 and len(obj["layers"]) == 5
    # the showcase is EPIM: IFRT reuse saves activations, and output channels wrap
    assert obj["summary"]["activations"] < obj["summary"]["activations_no_reuse"]
    net = netfile.load("examples/mnist-epim-cnn-r4/net.json")
    assert any(la.epitome is not None and la.epitome.out_channels < la.out_channels
               for la in net.layers)
    assert cli(["cost", "examples/mnist-epim-cnn-r4/net.json", "--constants",
                str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("seed", [1003, 1011])
def test_network_cycles_are_the_network_models(seed, tmp_path, capsys):
    """On a residual network the cost report gives the whole accelerator's steady cycles per
    image from the network cycle model (what `epim cosim` measures on the RTL), beside the
    slowest tile's alone; the command prints and writes it."""
    obj = examples.random_network_net(seed)
    net = parse(obj)
    nc = cost.network_cost(net)
    want = netcycles.predict(net, cost.NETWORK_MODEL_IMAGES)
    assert nc.network["status"] == "modelled"
    assert nc.summary()["network_steady_cycles_per_image"] == want.steady
    assert nc.summary()["network_latency_cycles"] == want.latency[0]
    assert nc.summary()["cycles_per_image"] == max(c.cycles_per_image for c in nc.layers)
    (tmp_path / "n.json").write_text(json.dumps(obj))
    assert cli(["cost", str(tmp_path / "n.json"), "--json", str(tmp_path / "c.json")]) == 0
    assert f"{want.steady:g} cycles per image (mean distance" in capsys.readouterr().out
    saved = json.loads((tmp_path / "c.json").read_text())["summary"]
    assert saved["network_steady_cycles_per_image"] == want.steady


def test_network_model_is_skipped_when_too_large(monkeypatch):
    net = parse(examples.random_network_net(1003))
    monkeypatch.setattr(cost, "NETWORK_MODEL_LIMIT", 1000)
    s = cost.network_cost(net).summary()
    assert s["network_steady_cycles_per_image"] is None
    assert s["network_model"]["status"].startswith("skipped: too large")
    assert cost.network_cost(list(net.layers), net.pim).network["status"].startswith(
        "skipped: no network")


def test_a_network_without_crossbars_is_refused():
    net = netfile.parse({
        "format": "epim-net-v1", "pim": {"xbar_rows": 32, "xbar_cols": 32, "cell_bits": 2,
                                         "dac_bits": 1, "adc_bits": 8},
        "input": {"name": "input", "channels": 2, "height": 4, "width": 4, "bits": 4},
        "layers": [{"name": "mp", "op": "maxpool", "inputs": ["input"], "kernel": 2}],
        "output": "mp"}, source="pool.json")
    with pytest.raises(ValueError, match="pool.json: no conv or linear layer"):
        cost.network_cost(net)
