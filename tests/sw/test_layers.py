"""The epitome operator: sampling equals the spec, gradients reach the epitome, projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epim.sw.chip import epitome, netfile
from epim.sw.ml.layers import (
    ActQuant,
    EpitomeConv2d,
    EpitomeLinear,
    WeightQuant,
    default_offsets,
    project,
)

SHAPES = [  # cin, cout, k, (Ce_in, Ce_out, p_in, p_out)
    (8, 16, 3, (4, 8, 4, 8)),
    (6, 10, 3, (4, 4, 3, 2)),
    (5, 7, 1, (3, 5, 2, 3)),
    (16, 32, 3, (16, 8, 16, 8)),
]


def as_epitome(layer: EpitomeConv2d) -> netfile.Epitome:
    ce_in, ce_out, p_in, p_out = layer.epitome_shape
    return netfile.Epitome(ce_in, ce_out, p_in, p_out, layer.row_offset.numpy(),
                           layer.col_offset.numpy(), layer.E.detach().numpy())


@pytest.mark.parametrize("cin, cout, k, epi", SHAPES)
def test_sampling_equals_spec(cin, cout, k, epi):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    g_in, g_out = -(-cin // epi[2]), -(-cout // epi[3])
    row = rng.integers(0, epi[0], (g_in, g_out))
    col = rng.integers(0, epi[1], (g_in, g_out))
    layer = EpitomeConv2d(cin, cout, k, 1, k // 2, epi, row, col)
    want = epitome.sample_weight(as_epitome(layer), cin, cout)
    np.testing.assert_array_equal(layer.sampled_weight().detach().numpy(), want)
    x = torch.randn(2, cin, 6, 6)
    ref = torch.nn.functional.conv2d(x, torch.as_tensor(want), padding=k // 2)
    torch.testing.assert_close(layer(x), ref)


def test_default_offsets_keep_output_groups_distinct():
    row, col = default_offsets(16, 32, 8, 8, 8, 8)
    assert (row == 0).all()  # d_r = 0: one activation per input group
    for gi in range(2):  # 4 output groups: 4 distinct rotations of the 8 epitome columns
        assert len(set(col[gi].tolist())) == col.shape[1] == 4
    assert (col[1] - col[0]).tolist() == [1, 1, 1, 1]  # d_c = 1: the next input group rotates
    layer = EpitomeConv2d(16, 32, 3, epitome=(8, 8, 8, 8))
    w = layer.sampled_weight().detach()
    blocks = {tuple(w[go * 8:(go + 1) * 8, :8].reshape(-1).tolist()) for go in range(4)}
    assert len(blocks) == 4
    assert not torch.equal(w[:, :8], w[:, 8:])  # input groups see different columns


def test_gradient_flows_to_the_epitome():
    torch.manual_seed(0)
    layer = EpitomeConv2d(6, 10, 3, 1, 1, (4, 4, 3, 2), weight_bits=3)
    x = torch.randn(2, 6, 5, 5)
    layer(x).square().sum().backward()
    assert layer.E.grad is not None and layer.E.grad.abs().sum() > 0
    assert layer.wq.scale.grad is not None
    # each epitome entry's gradient is the sum over the weights sampled from it
    layer2 = EpitomeConv2d(6, 10, 3, 1, 1, (4, 4, 3, 2))
    w = layer2.sampled_weight().detach().requires_grad_(True)
    torch.nn.functional.conv2d(x, w, padding=1).square().sum().backward()
    layer2(x).square().sum().backward()
    manual = torch.zeros(16, 3, 3).index_add_(0, layer2.index.reshape(-1),
                                              w.grad.reshape(-1, 3, 3))
    torch.testing.assert_close(layer2.E.grad, manual.reshape(4, 4, 3, 3))


def test_least_squares_projection():
    torch.manual_seed(0)
    dense = torch.randn(10, 6, 3, 3)
    layer = EpitomeConv2d.from_dense(dense, (4, 4, 3, 2), padding=1)
    idx = layer.index.reshape(-1)
    flat = dense.reshape(-1, 9)
    for entry in range(16):
        sampled = flat[idx == entry]
        if len(sampled):
            torch.testing.assert_close(layer.E.reshape(16, 9)[entry], sampled.mean(0))
    # the mean minimises the squared error: any perturbation of E does worse
    err = (layer.sampled_weight() - dense).square().sum()
    bumped = project(dense, layer.index, layer.E.shape) + 0.01 * torch.randn(4, 4, 3, 3)
    assert (layer.sampled_weight(bumped) - dense).square().sum() > err
    # an epitome as large as the layer reproduces it exactly
    exact = EpitomeConv2d.from_dense(dense, (6, 10, 6, 10), padding=1)
    torch.testing.assert_close(exact.sampled_weight().detach(), dense)


def test_weight_quantizer_shares_values_across_filters():
    torch.manual_seed(0)
    layer = EpitomeConv2d(8, 16, 3, 1, 1, (4, 8, 4, 8), weight_bits=3)
    q = layer.wq(layer.E)
    ints = q / layer.wq.scale
    torch.testing.assert_close(ints, ints.round())
    assert ints.abs().max() <= 3
    np.testing.assert_array_equal(layer.wq.integers(layer.E.detach()).numpy(),
                                  ints.round().detach().numpy().astype(np.int64))
    assert sorted(set(ints.detach().round().unique().tolist())) <= [-3, -2, -1, 0, 1, 2, 3]


def test_quantizers_straight_through():
    wq, aq = WeightQuant(3), ActQuant(4)
    w = torch.randn(100, requires_grad=True)
    x = torch.rand(4, 25, requires_grad=True)
    wq(w).sum().backward()
    aq(x).sum().backward()
    assert w.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    assert wq.scale.grad is not None and aq.scale.grad is not None
    y = aq(x.detach()) / aq.scale
    assert y.min() >= 0 and y.max() <= 15
    assert WeightQuant(None)(w) is w


def test_linear_flattens_in_chw_order():
    torch.manual_seed(0)
    lin = EpitomeLinear(12, 5, (6, 4, 6, 2))
    x = torch.randn(3, 3, 2, 2)
    w = lin.sampled_weight().reshape(5, 12)
    torch.testing.assert_close(lin(x), x.reshape(3, 12) @ w.T + lin.bias)


@pytest.mark.parametrize("cin, cout, k, epi", SHAPES)
def test_step_by_step_forward_equals_gathered(cin, cout, k, epi):
    """One convolution per IFRT step plus OFAT routing gives the gathered-weight result."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    g_in, g_out = -(-cin // epi[2]), -(-cout // epi[3])
    layer = EpitomeConv2d(cin, cout, k, 2, k // 2, epi, rng.integers(0, epi[0], (g_in, g_out)),
                          rng.integers(0, epi[1], (g_in, g_out)), weight_bits=3)
    x = torch.randn(2, cin, 7, 7)
    torch.testing.assert_close(layer.forward_by_steps(x), layer(x), rtol=1e-5, atol=1e-5)
