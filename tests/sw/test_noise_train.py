"""Noise-aware training's forward (`sw/ml/noise_train.py`) against the noisy reference
(`sw/chip/noise.py`): the same layer, the same integers, the same non-idealities, in
distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epim.sw.chip import examples, netfile, noise
from epim.sw.ml import noise_train
from epim.sw.ml.layers import EpitomeConv2d

PIM = {"xbar_rows": 16, "xbar_cols": 16, "cell_bits": 2, "dac_bits": 1, "adc_bits": 12}
SAMPLES = 300


def _layer_pair():
    """One conv layer as a network file and as a torch layer holding the same integers."""
    obj = examples.conv_layer_net(np.random.default_rng(11), cin=6, cout=8, h=5, w=5,
                                  padding=0, epitome=(4, 4, 2, 2), offsets="random", pim=PIM)
    net = netfile.parse(obj)
    la = net.layers[0]
    epi = la.epitome
    conv = EpitomeConv2d(la.in_channels, la.out_channels, la.kernel, la.stride, la.padding,
                         (epi.in_channels, epi.out_channels, epi.patch_in, epi.patch_out),
                         epi.row_offset, epi.col_offset, weight_bits=la.weight_bits)
    with torch.no_grad():
        conv.E.copy_(torch.as_tensor(epi.weights, dtype=torch.float32))
        conv.wq.scale.fill_(1.0)  # the fake-quantized epitome is the integers themselves
        conv.wq.initialised.fill_(True)
    conv.train()
    return net, conv


def _samples(cfg: noise.NoiseConfig, shift_offsets: float = 0.0):
    net, conv = _layer_pair()
    la = net.layers[0]
    x = np.random.default_rng(2).integers(1, 2**la.in_bits, (1, *net.input_shape))
    ref = []
    for seed in range(SAMPLES):
        chip = noise.NoisyChip(net, cfg, seed=seed)
        if shift_offsets:  # the same offset on both polarities: it cancels, but lifts every
            chip.layer(la).offset[:] = shift_offsets  # sum clear of the ADC's zero
        ref.append(chip.acc(la, net.pim, x)[0])
    gen = torch.Generator().manual_seed(0)
    conv.noise = noise_train.LayerNoise(conv, cfg, PIM, la.in_bits, 1.0, gen)
    xt = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        got = [conv(xt)[0].numpy() for _ in range(SAMPLES)]
    with torch.no_grad():
        exact = torch.nn.functional.conv2d(xt, conv.sampled_weight(conv.E))[0].numpy()
    return np.array(ref, dtype=np.float64), np.array(got, dtype=np.float64), exact


@pytest.mark.parametrize("cfg, shift", [
    (noise.NoiseConfig(programming_sigma=0.1, stuck_at_zero=0.02, stuck_at_max=0.02), 0.0),
    (noise.NoiseConfig(programming_sigma=0.2, programming_distribution="lognormal"), 0.0),
    (noise.NoiseConfig(read_sigma=0.2), 50.0),
    (noise.NoiseConfig(adc_noise_sigma=1.0), 50.0),
], ids=["gaussian-and-stuck", "lognormal", "read-noise", "adc-noise"])
def test_training_noise_matches_the_noisy_reference_in_distribution(cfg, shift):
    ref, got, exact = _samples(cfg, shift)
    n = SAMPLES
    m_ref, m_got = ref.mean(0), got.mean(0)
    s_ref, s_got = ref.std(0), got.std(0)
    assert (s_ref > 0.5).all()  # every output is really noisy
    assert np.abs(m_ref - exact).max() > 0 or cfg.read_sigma  # variation biases some outputs
    # means: equal within 5 standard errors of their difference, output by output
    se = np.sqrt((s_ref**2 + s_got**2) / n)
    assert (np.abs(m_ref - m_got) < 5 * se + 1e-9).all(), np.abs(m_ref - m_got).max()
    # spreads: within 7 % over all outputs, and 35 % output by output
    ratio = s_got / s_ref
    assert abs(ratio.mean() - 1) < 0.07, ratio.mean()
    assert (np.abs(ratio - 1) < 0.35).all(), (ratio.min(), ratio.max())


def test_without_noise_the_training_forward_is_unchanged():
    _, conv = _layer_pair()
    x = torch.randint(0, 16, (2, 6, 5, 5)).float()
    want = conv(x)
    conv.noise = noise_train.LayerNoise(conv, noise.NoiseConfig(), PIM, 4, 1.0,
                                        torch.Generator().manual_seed(0))
    torch.testing.assert_close(conv(x), want, rtol=0, atol=0)
    conv.eval()  # and in eval mode the noise never acts
    conv.noise = noise_train.LayerNoise(conv, noise.NoiseConfig(read_sigma=0.5), PIM, 4, 1.0,
                                        torch.Generator().manual_seed(0))
    torch.testing.assert_close(conv(x), want, rtol=0, atol=0)


def test_attach_gives_every_epitome_layer_its_input_and_trains_through_the_noise():
    from epim.sw.ml import models

    torch.manual_seed(0)
    model = models.build("resnet", ratio=4, width=8)
    x = torch.rand(4, 1, 28, 28)
    model.train()
    model(x)  # the quantizers take their first scales
    noise_train.attach(model, noise.NoiseConfig(programming_sigma=0.1, read_sigma=0.02),
                       models.DEFAULT_PIM, seed=3)
    layers = [m for m in model.modules() if isinstance(m, EpitomeConv2d)]
    assert layers and all(m.noise is not None for m in layers)
    first = model.units[model.nodes[0].name].conv.noise
    assert first.in_bits == 8 and first.scale_in() == pytest.approx(1 / 255)
    fc = model.units["fc"].noise
    assert fc.in_bits == 8 and fc.in_scale is model.units["gap"].aq  # the 8-bit pool's
    later = [m.noise for m in layers if m.noise not in (first, fc)]
    assert later and all(n.in_bits == 4 for n in later)  # the rest read 4-bit activations
    a, b = model(x), model(x)  # a fresh chip per forward pass
    assert not torch.equal(a, b)
    a.sum().backward()
    assert all(m.E.grad is not None and m.E.grad.abs().sum() > 0 for m in layers)
    noise_train.detach(model)
    assert all(m.noise is None for m in layers)
