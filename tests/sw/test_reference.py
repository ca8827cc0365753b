"""The integer reference against PyTorch (lossless ADC) and a literal per-pixel loop (lossy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from epim.sw.chip import epitome, examples, netfile, reference
from epim.sw.chip.ops.maxpool import maxpool
from tests.helpers import residual_net


@st.composite
def conv_nets(draw, lossless: bool, small: bool = False, adc: tuple[int, int] = (1, 3)):
    """A random single conv layer: shapes, patches, offset tables, PIM parameters."""
    cin = draw(st.integers(1, 4 if small else 9))
    cout = draw(st.integers(1, 4 if small else 9))
    k = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k - 1))
    stride = draw(st.integers(1, 3))
    h = draw(st.integers(max(1, k - 2 * pad), 4 if small else 9))
    w = draw(st.integers(max(1, k - 2 * pad), 4 if small else 9))
    dense = draw(st.booleans()) and not small
    if dense:
        epi = None
    else:
        ce_in = draw(st.integers(1, cin + 1))
        ce_out = draw(st.integers(1, cout + 1))
        epi = (ce_in, ce_out, draw(st.integers(1, ce_in)), draw(st.integers(1, ce_out)))
    cell_bits = draw(st.integers(1, 3))
    dac_bits = draw(st.integers(1, 3))
    xbar_rows = draw(st.integers(1, 40))
    rows = (epi[0] if epi else cin) * k * k
    need = min(xbar_rows, rows) * (2**dac_bits - 1) * (2**cell_bits - 1)
    adc_bits = need.bit_length() + 1 if lossless else draw(st.integers(*adc))
    seed = draw(st.integers(0, 2**32 - 1))
    obj = examples.conv_layer_net(
        np.random.default_rng(seed), cin=cin, cout=cout, h=h, w=w, kernel=k, stride=stride,
        padding=pad, in_bits=draw(st.integers(1, 6)), out_bits=draw(st.integers(2, 8)),
        weight_bits=draw(st.integers(2, 5)), epitome=epi, offsets="random",
        pim={"xbar_rows": xbar_rows, "xbar_cols": 16, "cell_bits": cell_bits,
             "dac_bits": dac_bits, "adc_bits": adc_bits},
        relu=draw(st.booleans()))
    net = netfile.parse(obj)
    x = np.random.default_rng(seed + 1).integers(0, 2**net.input_bits,
                                                 (2,) + net.input_shape)
    return net, x


def torch_acc(net, x):
    layer = net.layers[0]
    weight = epitome.sample_weight(layer.epitome, layer.in_channels, layer.out_channels)
    out = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64),
                                     torch.tensor(weight, dtype=torch.float64),
                                     stride=layer.stride, padding=layer.padding)
    return out.round().to(torch.int64).numpy()


@given(conv_nets(lossless=True))
def test_lossless_adc_equals_torch_conv2d(case):
    net, x = case
    layer = net.layers[0]
    acc = reference.layer_acc(layer, net.pim, x)
    np.testing.assert_array_equal(acc, torch_acc(net, x))
    # IFRT reuse changes how many activations run, never the result.
    np.testing.assert_array_equal(reference.layer_acc(layer, net.pim, x, reuse=False), acc)


def literal_acc(net, x):
    """Spec section 4 as written, one pixel, step, chunk, column and slice at a time.

    Returns the accumulators and, per output, the part lost to ADC saturation.
    """
    layer, pim = net.layers[0], net.pim
    epi = layer.epitome
    k, s, p = layer.kernel, layer.stride, layer.padding
    cin, cout = layer.in_channels, layer.out_channels
    _, ho, wo = layer.out_shape
    _, h, w = layer.in_shape
    ns = math.ceil((layer.weight_bits - 1) / pim.cell_bits)
    n_t = math.ceil(layer.in_bits / pim.dac_bits)
    rows = epi.in_channels * k * k
    m = np.zeros((rows, epi.out_channels), dtype=np.int64)
    for e_out in range(epi.out_channels):
        for e_in in range(epi.in_channels):
            for kh in range(k):
                for kw in range(k):
                    m[e_in * k * k + kh * k + kw, e_out] = epi.weights[e_out, e_in, kh, kw]
    polar = [np.maximum(m, 0), np.maximum(-m, 0)]
    g_in, g_out = math.ceil(cin / epi.patch_in), math.ceil(cout / epi.patch_out)
    n = x.shape[0]
    acc = np.zeros((n, cout, ho, wo), dtype=np.int64)
    lost = np.zeros_like(acc)
    adc_max = 2**pim.adc_bits - 1
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for gi in range(g_in):
                    for r in sorted({int(v) for v in epi.row_offset[gi]}):
                        reuse = [go for go in range(g_out) if epi.row_offset[gi][go] == r]
                        xv = np.zeros(rows, dtype=np.int64)
                        for e_in in range(epi.in_channels):
                            i = (e_in - r) % epi.in_channels
                            if i >= epi.patch_in or gi * epi.patch_in + i >= cin:
                                continue
                            for kh in range(k):
                                for kw in range(k):
                                    yy, xx = oy * s + kh - p, ox * s + kw - p
                                    if 0 <= yy < h and 0 <= xx < w:
                                        xv[e_in * k * k + kh * k + kw] = \
                                            x[b, gi * epi.patch_in + i, yy, xx]
                        v = np.zeros(epi.out_channels, dtype=np.int64)
                        v_loss = np.zeros(epi.out_channels, dtype=np.int64)
                        for t in range(n_t):
                            xt = (xv >> (t * pim.dac_bits)) & (2**pim.dac_bits - 1)
                            for h0 in range(0, rows, pim.xbar_rows):
                                for e_out in range(epi.out_channels):
                                    for q in range(ns):
                                        sums = []
                                        for mp in polar:
                                            cell = (mp[h0:h0 + pim.xbar_rows, e_out]
                                                    >> (q * pim.cell_bits)) \
                                                & (2**pim.cell_bits - 1)
                                            sums.append(int(xt[h0:h0 + pim.xbar_rows] @ cell))
                                        a = [min(sv, adc_max) for sv in sums]
                                        sh = t * pim.dac_bits + q * pim.cell_bits
                                        v[e_out] += (a[0] - a[1]) << sh
                                        v_loss[e_out] += ((sums[0] - a[0])
                                                          - (sums[1] - a[1])) << sh
                        for go in reuse:
                            for j in range(epi.patch_out):
                                o = go * epi.patch_out + j
                                if o < cout:
                                    col = (epi.col_offset[gi][go] + j) % epi.out_channels
                                    acc[b, o, oy, ox] += v[col]
                                    lost[b, o, oy, ox] += v_loss[col]
    return acc, lost


@given(conv_nets(lossless=False, small=True))
def test_lossy_adc_matches_literal_spec(case):
    net, x = case
    layer = net.layers[0]
    acc = reference.layer_acc(layer, net.pim, x)
    literal, lost = literal_acc(net, x)
    np.testing.assert_array_equal(acc, literal)
    # The lossy result differs from the exact convolution exactly by what saturation cut off:
    # nowhere else, and everywhere saturation left a net loss.
    exact = torch_acc(net, x)
    np.testing.assert_array_equal(exact - acc, lost)


@given(conv_nets(lossless=False, adc=(1, 9)))
def test_convolution_path_equals_the_step_by_step_path(case):
    """The reference's convolution for the (row chunk, column) pairs that cannot saturate plus
    the step-by-step path for the rest equals the step-by-step path everywhere."""
    net, x = case
    layer = net.layers[0]
    for reuse in (True, False):
        np.testing.assert_array_equal(
            reference.layer_acc(layer, net.pim, x, reuse=reuse),
            reference.layer_acc(layer, net.pim, x, reuse=reuse, literal=True))


def test_mixed_saturation_takes_both_paths(rng):
    """A layer where some columns of a row chunk can saturate and others cannot, with inputs
    that do saturate: both paths run and their sum is the literal result."""
    obj = examples.conv_layer_net(rng, cin=8, cout=8, h=6, w=6, epitome=(8, 8, 8, 8),
                                  pim={"xbar_rows": 32, "xbar_cols": 16, "cell_bits": 2,
                                       "dac_bits": 1, "adc_bits": 5})
    w = np.array(obj["layers"][0]["epitome"]["weights"])
    w[:4] = np.clip(w[:4], -1, 1) * (np.abs(w[:4]) > 2)  # a few small weights: lossless
    w[4:] = 3  # every cell at its maximum: these columns saturate
    obj["layers"][0]["epitome"]["weights"] = w.tolist()
    net = netfile.parse(obj)
    layer = net.layers[0]
    sat = reference.saturable(layer, net.pim)
    assert sat.any() and not sat.all()
    x = rng.integers(0, 16, (2,) + net.input_shape)
    acc = reference.layer_acc(layer, net.pim, x)
    np.testing.assert_array_equal(acc, reference.layer_acc(layer, net.pim, x, literal=True))
    assert (acc != torch_acc(net, x)).any()  # saturation did happen


def test_exact_dtype_bounds():
    assert reference.exact_dtype(288, 15, 3) is np.float32
    assert reference.exact_dtype(2**20, 2**8, 2**8) is np.float64
    assert reference.exact_dtype(2**30, 2**16, 2**16) is None
    # past 2**53 the product runs in int64, still exact
    x = np.full((1, 2, 1, 1), 2**31 - 1)
    w = np.array([2**31 - 1, 1]).reshape(1, 2, 1, 1)
    assert reference.exact_conv(x, w, 1, 0)[0, 0] == (2**31 - 1) ** 2 + 2**31 - 1


@pytest.mark.parametrize("path", ["examples/mnist-epim-cnn-r4/net.json",
                                  "examples/cifar10-epim-resnet20-r3/net.json"])
def test_committed_models_fast_path_equals_step_by_step(path):
    net = netfile.load(path)
    x = np.random.default_rng(3).integers(0, 2**net.input_bits, (3,) + net.input_shape)
    np.testing.assert_array_equal(reference.run_network(net, x),
                                  reference.run_network(net, x, literal=True))


def test_saturation_happens_and_changes_outputs(rng):
    obj = examples.conv_layer_net(rng, cin=8, cout=8, h=6, w=6, epitome=(8, 8, 8, 8),
                                  pim={"xbar_rows": 16, "xbar_cols": 16, "cell_bits": 2,
                                       "dac_bits": 1, "adc_bits": 4})
    net = netfile.parse(obj)
    x = rng.integers(0, 16, (2,) + net.input_shape)
    acc = reference.layer_acc(net.layers[0], net.pim, x)
    exact = torch_acc(net, x)
    assert (acc != exact).mean() > 0.1  # sums of up to 16 rows x 1 x 3 exceed 15 often


def test_output_stage_rounds_and_clamps():
    v = np.array([-9, -8, -7, -1, 0, 1, 7, 8, 9, 1000])
    # shift 2: round half up of v/4, then clamp to 0..15
    np.testing.assert_array_equal(reference.requantize(v, 1, 2, 0, 15),
                                  [0, 0, 0, 0, 0, 0, 2, 2, 2, 15])
    np.testing.assert_array_equal(reference.requantize(v, 3, 0, -8, 7),
                                  [-8, -8, -8, -3, 0, 3, 7, 7, 7, 7])
    # products past int64 fall back to exact integers
    big = np.array([2**40])
    assert reference.requantize(big, 2**30, 62, 0, 2**40)[0] == (2**70 + 2**61) >> 62


def test_inputs_are_checked(net_obj):
    net = netfile.parse(net_obj)
    with pytest.raises(reference.InputError, match=r"values must be in 0..15"):
        reference.run_network(net, np.full((1, 8, 16, 16), 16))
    with pytest.raises(reference.InputError, match=r"shape \(N, 8, 16, 16\)"):
        reference.run_network(net, np.zeros((1, 8, 16, 15), int))
    with pytest.raises(reference.InputError, match=r"N >= 1"):
        reference.run_network(net, np.zeros((0, 8, 16, 16), int))
    with pytest.raises(reference.InputError, match="integer array"):
        reference.run_network(net, np.zeros((1, 8, 16, 16)))


def test_add_does_not_overflow():
    """A 32-bit activation times a 31-bit multiplier, twice: exact, not wrapped in int64."""
    obj = {"format": "epim-net-v1", "pim": examples.EXAMPLE_PIM,
           "input": {"name": "input", "channels": 1, "height": 1, "width": 1, "bits": 8},
           "layers": [
               {"name": "c1", "op": "conv", "inputs": ["input"], "out_channels": 1, "kernel": 1,
                "stride": 1, "padding": 0, "weight_bits": 2, "weights": [[[[1]]]],
                "bias": [0], "mult": [2**31 - 1], "shift": [0], "relu": True, "out_bits": 32},
               {"name": "r", "op": "add", "inputs": ["c1", "c1"], "ma": 2**31 - 1,
                "mb": 2**31 - 1, "shift": 62, "out_bits": 8}],
           "output": "r"}
    y = reference.run_network(netfile.parse(obj), np.full((1, 1, 1, 1), 255))
    a = 2**32 - 1
    assert y[0, 0, 0, 0] == (2 * a * (2**31 - 1) + 2**61) >> 62 == 4


def test_examples_reach_wide_outputs(rng):
    """The wide-output examples really use their width: the reference's outputs reach the
    top bit of `out_bits` (and stay within it)."""
    for bits in (16, 24, 32):
        net = netfile.parse(examples.conv_layer_net(rng, out_bits=bits))
        assert net.layers[0].out_bits == bits
        x = rng.integers(0, 2**net.input_bits, (2,) + net.input_shape)
        y = reference.run_network(net, x)
        assert 0 <= y.min() and int(y.max()).bit_length() == bits


def test_network_ops(net_obj):
    net = netfile.parse(residual_net(net_obj))
    x = np.random.default_rng(0).integers(0, 16, (3, 8, 16, 16))
    t = reference.run_network(net, x, keep=True)
    r1 = np.clip((t["c2"] * 3 + t["epim_conv3x3"] * 5 + 4) >> 3, 0, 15)
    np.testing.assert_array_equal(t["r1"], r1)
    gap = np.clip((r1.sum(axis=(2, 3), keepdims=True) * 41 + 2048) >> 12, 0, 255)
    np.testing.assert_array_equal(t["gap"], gap)
    out = reference.run_network(net, x)
    assert out.shape == (3, 10)
    np.testing.assert_array_equal(out, gap.reshape(3, 16).sum(axis=1, keepdims=True)
                                  .repeat(10, axis=1))


def torch_network(net, x):
    """A network of the contract in PyTorch ops (conv2d on the sampled weight, the output
    stage in int64, max_pool2d, the residual add): the reference's arithmetic written apart."""
    import torch.nn.functional as F

    t = {net.input_name: torch.tensor(x, dtype=torch.int64)}
    for la in net.layers:
        xs = [t[i] for i in la.inputs]
        if la.op in ("conv", "linear"):
            w = torch.tensor(epitome.sample_weight(la.epitome, la.in_channels, la.out_channels),
                             dtype=torch.float64)
            xin = xs[0].flatten(1)[:, :, None, None] if la.op == "linear" else xs[0]
            acc = F.conv2d(xin.double(), w, stride=la.stride, padding=la.padding)
            acc = acc.round().long() + torch.tensor(la.bias)[:, None, None]
            m, s = (torch.tensor(a)[:, None, None] for a in (la.mult, la.shift))
            lo, hi = ((0, 2**la.out_bits - 1) if la.relu
                      else (-(2 ** (la.out_bits - 1)), 2 ** (la.out_bits - 1) - 1))
            rnd = torch.where(s > 0, 1 << (s - 1).clamp(min=0), 0)
            t[la.name] = ((acc * m + rnd) >> s).clamp(lo, hi)
        elif la.op == "maxpool":
            t[la.name] = F.max_pool2d(xs[0].double(), la.kernel, la.stride,
                                      la.padding).long()
        elif la.op == "add":
            rnd = 1 << (la.add_shift - 1) if la.add_shift else 0
            v = xs[0] * la.ma + xs[1] * la.mb + rnd
            t[la.name] = (v >> la.add_shift).clamp(0, 2**la.out_bits - 1)
        else:
            rnd = 1 << (la.pool_shift - 1) if la.pool_shift else 0
            v = xs[0].sum(dim=(2, 3), keepdim=True) * la.pool_mult + rnd
            t[la.name] = (v >> la.pool_shift).clamp(0, 2**la.out_bits - 1)
    return {k: v.numpy() for k, v in t.items()}


@pytest.mark.parametrize("seed", range(8))
def test_v11_networks_equal_pytorch(seed):
    """Max pools and signed shortcuts (contract v1.1): every tensor of random networks equals
    PyTorch's `max_pool2d`, conv and add (lossless ADCs, where the contract is conv2d)."""
    obj = examples.random_network_net(seed, v11=True)
    obj["pim"]["adc_bits"] = 30
    net = netfile.parse(obj)
    x = np.random.default_rng(seed).integers(0, 2**net.input_bits, (3,) + net.input_shape)
    ours = reference.run_network(net, x, keep=True)
    theirs = torch_network(net, x)
    assert any(v.min() < 0 for v in ours.values())  # a signed branch reached an adder
    for name, v in theirs.items():
        np.testing.assert_array_equal(ours[name], v, err_msg=name)


def test_maxpool_equals_pytorch():
    rng = np.random.default_rng(3)
    for _ in range(40):
        k = int(rng.integers(1, 5))
        s, p = int(rng.integers(1, 4)), int(rng.integers(0, k // 2 + 1))
        h, w = int(rng.integers(max(1, k - 2 * p), 9)), int(rng.integers(max(1, k - 2 * p), 9))
        x = rng.integers(0, 16, (2, 3, h, w))
        want = torch.nn.functional.max_pool2d(torch.tensor(x, dtype=torch.float64), k, s, p)
        np.testing.assert_array_equal(maxpool(x, k, s, p), want.long().numpy())
