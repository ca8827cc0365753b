"""Batch-norm folding and export: the exported file computes what the quantized model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epim.sw.chip import netfile, reference
from epim.sw.ml import export, models
from epim.sw.ml.models import INPUT, QuantConfig

PIM = {"xbar_rows": 32, "xbar_cols": 32, "cell_bits": 2, "dac_bits": 1, "adc_bits": 8}


def calibrated(name: str, ratio, seed: int = 0):
    torch.manual_seed(seed)
    model = models.build(name, ratio=ratio, width=8)
    x = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(export.quantize_inputs(x))
    # make batch norm non-trivial, as after training
    for unit in model.units.values():
        if isinstance(unit, models.ConvUnit):
            n = unit.bn.num_features
            unit.bn.weight.data = torch.rand(n) + 0.5
            unit.bn.bias.data = torch.randn(n) * 0.3
    return model.eval(), x


@pytest.mark.parametrize("name, ratio", [("cnn", None), ("cnn", 2), ("resnet", 2)])
def test_exported_file_equals_the_integer_model(name, ratio):
    model, x = calibrated(name, ratio)
    net = netfile.parse(export.export(model, PIM))
    ints = model.integer_forward(export.quantize_inputs(x), keep=True)
    ref = reference.run_network(net, x.numpy().astype(np.int64), keep=True)
    for nd in model.nodes:
        got = ints[nd.name].numpy().reshape(ref[nd.name].shape)
        np.testing.assert_array_equal(got, ref[nd.name], err_msg=nd.name)
    logits = model(export.quantize_inputs(x))  # eval mode: the folded integer network
    np.testing.assert_array_equal(logits.argmax(1).numpy(),
                                  reference.run_network(net, x.numpy()).argmax(1))


def test_folding_matches_batch_norm():
    """Folded integers equal the float model's quantized activations to within one step."""
    model, x = calibrated("cnn", 2)
    ints = model.integer_forward(export.quantize_inputs(x), keep=True)
    t = {INPUT: export.quantize_inputs(x)}
    with torch.no_grad():
        for nd in model.nodes[:-1]:
            unit = model.units[nd.name]
            # feed the integer path's own input so errors do not compound
            xs = [ints[i].float() * (unit_scale(model, i)) for i in nd.inputs]
            t[nd.name] = unit(*xs)
            ref = torch.round(t[nd.name] / unit.aq.scale)
            diff = (ref - ints[nd.name]).abs()
            assert diff.max() <= 1, nd.name
            # the integer bias is rounded to accumulator units, which moves a few values across
            # a rounding boundary (the folded float model reproduces that exactly, see below)
            assert (diff == 0).float().mean() > 0.95, nd.name


@pytest.mark.parametrize("name, ratio", [("cnn", 2), ("resnet", 2)])
def test_folded_fake_quant_model_agrees_with_the_integer_network(name, ratio):
    """The fake-quantized model with batch norm folded (float32) computes the integer network's
    activations up to float rounding: logits within a hair, every prediction the same."""
    model, x = calibrated(name, ratio, seed=1)
    xin = export.quantize_inputs(x)
    fq = model.folded_fake_quant_forward(xin)
    ints = model.integer_forward(xin)
    assert torch.equal(fq.argmax(1), ints.argmax(1))
    scale = ints.abs().max()
    assert (fq - ints).abs().max() <= 1e-3 * scale
    # the unfolded simulation (batch norm in float, bias not in accumulator units) drifts more
    un = model.fake_quant_forward(xin)
    assert (un - ints).abs().max() > (fq - ints).abs().max()


def unit_scale(model, name):
    if name == INPUT:
        return 1.0 / 255
    return float(model.units[name].aq.scale)


def test_float_model_cannot_export():
    model = models.build("cnn", quant=QuantConfig(weight_bits=None, act_bits=None))
    with pytest.raises(models.FoldError, match="only a quantized model"):
        export.export(model, PIM)


def test_mult_shift():
    for m in (1e-6, 0.37, 1.0, 3.5, 1000.0):
        mult, shift = models.mult_shift(m, "x")
        assert 1 <= mult < 2**31 and 0 <= shift <= 62
        assert abs(mult / 2**shift - m) <= m * 2**-29
    with pytest.raises(models.FoldError, match="layer 'c2' channel 3"):
        models.mult_shift(-0.5, "layer 'c2' channel 3")


def test_constrain_keeps_batch_norm_positive():
    model = models.build("cnn", width=8)
    model.units["c2"].bn.weight.data[0] = -1.0
    model.units["c3"].aq.scale.data.fill_(-0.5)
    model.constrain_()
    assert model.units["c2"].bn.weight.min() > 0
    assert model.units["c3"].aq.scale > 0
