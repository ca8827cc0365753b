"""Noise-aware training: the crossbar non-idealities of `noise.py` in the PyTorch forward pass.

`attach(model, cfg, pim, seed)` makes every epitome conv and linear layer of an `EpimNet`, in
training mode, compute its fake-quantized output on a freshly drawn chip (one per forward pass,
so training sees many chips):

- **Programming variation and stuck cells** act on the layer's physical cells exactly as in
  `noise.py`: the integer epitome is split into polarities and bit slices, each cell's
  conductance is drawn (`noise.program_cells`'s rules, in torch) and the weight is put back
  together from the conductances. Every filter sampled from a noisy epitome entry shares its
  error, as on the crossbar. The ADC gain error scales the cells of its (polarity, slice, row
  chunk, column) the same way.
- **Read noise, ADC noise and ADC offset** are added to the accumulator as Gaussian noise with
  the variance they have in `noise.py` (independent noise per cell read and per conversion,
  summed over the DAC slices, bit slices, polarities, row chunks and IFRT steps that feed an
  output), and the offsets as the bias they add to each output channel.

The noise is additive to the fake-quantized weight and output, so gradients flow as without it
(straight through). What this forward leaves out, and `noise.py` models: the ADC's clipping
(the rounding is counted as variance of 1/12 LSB^2 per conversion while any noise is on) and
saturation. Where no sum reaches the ADC's ends, the two agree in distribution
(`tests/sw/test_noise_train.py` compares them on a layer).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...contract import geometry
from ...contract.ops import TILE_OPS, Op
from ..chip.noise import NoiseConfig
from .layers import ActQuant, EpitomeConv2d, EpitomeLinear

INPUT = "input"


class LayerNoise:
    """The noise of one epitome layer in training: its input's scale and width, the PIM."""

    def __init__(self, layer: EpitomeConv2d, cfg: NoiseConfig, pim: dict, in_bits: int,
                 in_scale, generator: torch.Generator):
        self.cfg, self.pim, self.in_bits = cfg, dict(pim), int(in_bits)
        self.in_scale = in_scale  # an ActQuant (its learned scale) or a float
        self.gen = generator
        ce_out, ce_in, k, _ = layer.E.shape
        self.rows = geometry.epitome_rows(ce_in, k)
        self.chunks = geometry.row_chunks(self.rows, pim["xbar_rows"])

    def scale_in(self) -> torch.Tensor | float:
        s = self.in_scale
        return s.scale.detach() if isinstance(s, ActQuant) else s

    def _normal(self, shape, device) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen).to(device)

    def noisy_epitome(self, layer: EpitomeConv2d) -> torch.Tensor:
        """The fake-quantized epitome as programmed on one chip (float, in weight units)."""
        e_q = layer.wq(layer.E)
        s_w = layer.wq.scale.detach()
        w_int = torch.round(e_q.detach() / s_w).to(torch.int64)  # (Ce_out, Ce_in, k, k)
        cfg, cb = self.cfg, self.pim["cell_bits"]
        gmax = 2**cb - 1
        ns = geometry.cell_slices(layer.wq.bits, cb)
        mag, neg = w_int.abs(), w_int < 0
        q = torch.arange(ns, device=w_int.device).view(-1, 1, 1, 1, 1)
        lev = (mag.unsqueeze(0) >> (q * cb)) & gmax  # (n_s, Ce_out, Ce_in, k, k)
        lev = torch.stack([torch.where(neg, 0, lev), torch.where(neg, lev, 0)])  # (2, n_s, ...)
        g = lev.to(torch.float32)
        z = self._normal(g.shape, g.device)
        u = torch.rand(g.shape, generator=self.gen).to(g.device)
        if cfg.programming_sigma:
            if cfg.programming_distribution == "gaussian":
                g = g + cfg.programming_sigma * gmax * z
            else:
                g = g * torch.exp(cfg.programming_sigma * z)
            g = g.clamp(0, gmax)
        if cfg.stuck_at_zero or cfg.stuck_at_max:
            g = torch.where(u < cfg.stuck_at_zero, torch.zeros_like(g), g)
            g = torch.where(u >= 1 - cfg.stuck_at_max, torch.full_like(g, gmax), g)
        if cfg.adc_gain_sigma:  # one gain per (polarity, slice, row chunk, column)
            gain = 1 + cfg.adc_gain_sigma * self._normal((2, ns, self.chunks, g.shape[2]),
                                                         g.device)
            rho = torch.arange(self.rows, device=g.device) // self.pim["xbar_rows"]
            per_cell = gain[:, :, rho, :].permute(0, 1, 3, 2)  # (2, n_s, Ce_out, rows)
            g = g * per_cell.reshape(g.shape)
        noisy = ((g[0] - g[1]) * (2 ** (q * cb)).to(g.dtype)).sum(0)
        delta = noisy - w_int.to(noisy.dtype)
        return e_q + (delta * s_w).detach()

    def output_noise(self, layer: EpitomeConv2d, x: torch.Tensor, out_shape) -> torch.Tensor:
        """Read noise, ADC noise and ADC offset on the accumulators, in the output's units."""
        cfg, pim = self.cfg, self.pim
        gmax = 2 ** pim["cell_bits"] - 1
        ns = geometry.cell_slices(layer.wq.bits, pim["cell_bits"])
        d = pim["dac_bits"]
        n_t = geometry.dac_slices(self.in_bits, d)
        w_q = sum(4 ** (qq * pim["cell_bits"]) for qq in range(ns))  # sum of squared weights
        w_t = [4 ** (t * d) for t in range(n_t)]
        s_in = self.scale_in()
        s_out = s_in * layer.wq.scale.detach()
        noisy = cfg.read_sigma or cfg.adc_noise_sigma or cfg.programming_sigma \
            or cfg.stuck_at_zero or cfg.stuck_at_max or cfg.adc_offset_sigma \
            or cfg.adc_gain_sigma
        if not noisy:
            return torch.zeros(out_shape, device=x.device)
        g_in = layer.row_offset.shape[0]
        conversions = 2 * g_in * self.chunks  # per (bit slice, DAC slice) and output
        var = torch.zeros(out_shape, device=x.device)
        # rounding in the ADC, and its input-referred noise, on every conversion
        adc_var = cfg.adc_noise_sigma**2 + 1 / 12
        var = var + adc_var * conversions * w_q * sum(w_t)
        if cfg.read_sigma:
            x_int = torch.round(x.detach() / s_in).to(torch.int64)
            if isinstance(layer, EpitomeLinear):
                x_int = x_int.flatten(1)[:, :, None, None]
            total = 0
            ones = torch.ones(1, x_int.shape[1], layer.kernel_size, layer.kernel_size,
                              device=x.device)
            for t in range(n_t):
                x_t = ((x_int >> (t * d)) & (2**d - 1)).to(torch.float32)
                total = total + w_t[t] * F.conv2d(x_t * x_t, ones, stride=layer.stride,
                                                  padding=layer.padding)
            read = 2 * w_q * (cfg.read_sigma * gmax) ** 2 * total  # (N, 1, Ho, Wo)
            var = var + read.reshape(out_shape[0], 1, *out_shape[2:])
        y = torch.sqrt(var) * self._normal(out_shape, x.device)
        if cfg.adc_offset_sigma:
            y = y + self._offset_bias(layer, x.device).view(1, -1, *([1] * (len(out_shape) - 2)))
        return y * s_out

    def _offset_bias(self, layer: EpitomeConv2d, device) -> torch.Tensor:
        """The bias the ADC offsets add to each output channel (in accumulator units)."""
        pim, cfg = self.pim, self.cfg
        ns = geometry.cell_slices(layer.wq.bits, pim["cell_bits"])
        d = pim["dac_bits"]
        n_t = geometry.dac_slices(self.in_bits, d)
        ce_out = layer.E.shape[0]
        off = cfg.adc_offset_sigma * self._normal((2, ns, self.chunks, ce_out), "cpu")
        diff = (off[0] - off[1]).numpy()  # (n_s, chunks, Ce_out)
        per_col = sum(diff[qq] * 2 ** (qq * pim["cell_bits"]) for qq in range(ns)).sum(0)
        per_col = per_col * sum(2 ** (t * d) for t in range(n_t))  # (Ce_out,)
        ce_in, _, p_in, p_out = layer.epitome_shape
        cols = layer.col_offset.cpu().numpy()
        o = np.arange(layer.out_channels)
        bias = np.zeros(layer.out_channels)
        for gi in range(cols.shape[0]):  # one activation per input group feeds each output
            bias += per_col[(cols[gi, o // p_out] + o % p_out) % ce_out]
        return torch.as_tensor(bias, dtype=torch.float32, device=device)

    def forward(self, layer: EpitomeConv2d, x: torch.Tensor) -> torch.Tensor:
        e = self.noisy_epitome(layer)
        w = layer.sampled_weight(e)
        if isinstance(layer, EpitomeLinear):
            y = F.linear(x.flatten(1), w.flatten(1), layer.bias)
        else:
            y = F.conv2d(x, w, stride=layer.stride, padding=layer.padding)
        return y + self.output_noise(layer, x, y.shape)


def attach(model, cfg: NoiseConfig, pim: dict, seed: int = 0) -> torch.Generator:
    """Give every epitome layer of `model` (an `EpimNet`) its `LayerNoise`; they act in
    training mode only. Returns the generator they share (seeded by `seed`)."""
    gen = torch.Generator().manual_seed(int(seed))
    source: dict[str, tuple] = {INPUT: (model.quant.input_bits,
                                        1.0 / (2**model.quant.input_bits - 1))}
    for nd in model.nodes:
        unit = model.units[nd.name]
        if nd.op in TILE_OPS:
            layer = unit.conv if nd.op == Op.CONV else getattr(unit, "lin", unit)
            bits, scale = source[nd.inputs[0]]
            if layer.wq.bits is None or bits is None:
                raise ValueError(f"layer {nd.name!r}: noise-aware training needs quantized "
                                 "weights and activations")
            layer.noise = LayerNoise(layer, cfg, pim, bits, scale, gen)
        if nd.op == Op.MAXPOOL:
            source[nd.name] = source[nd.inputs[0]]
        elif hasattr(unit, "aq"):
            source[nd.name] = (unit.aq.bits, unit.aq)
    return gen


def detach(model) -> None:
    """Remove the noise from every layer of `model`."""
    for mod in model.modules():
        if isinstance(mod, EpitomeConv2d):
            mod.noise = None
