"""Epitome layers and epitome-aware quantizers in PyTorch (spec section 2).

An :class:`EpitomeConv2d` owns only its epitome `E (Ce_out, Ce_in, k, k)`; the full weight is
sampled from it exactly as the spec says, so autograd flows to `E`. Weights are quantized on the
epitome with one learned scale per epitome (every filter shares its values and its scale, so a
crossbar stores one copy); activations after ReLU are quantized to unsigned integers with a
learned scale. Both use a straight-through estimator (LSQ).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def default_offsets(cin: int, cout: int, ce_in: int, ce_out: int, p_in: int, p_out: int,
                    d_r: int = 0, d_c: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Offset tables by the strided rule of spec section 2, `d_r = 0` by default.

    `row_offset = (gi*p_in + go*d_r) % Ce_in`, so with `d_r = 0` every input group needs one
    activation. `col_offset = (go*c + gi*d_c) % Ce_out`: the column step `c` is `p_out` when the
    output groups fit the epitome side by side, otherwise `Ce_out // G_out` (at least 1), so the
    output groups of an input group take distinct column rotations (output channel wrapping)
    instead of repeating; `d_c` defaults to 1 when there are several input groups, so each input
    group sees the epitome's columns rotated once more. See `docs/spec-notes.md`.
    """
    g_in, g_out = math.ceil(cin / p_in), math.ceil(cout / p_out)
    step = p_out if g_out * p_out <= ce_out else max(1, ce_out // g_out)
    if d_c is None:
        d_c = 1 if g_in > 1 else 0
    gi = np.arange(g_in)[:, None]
    go = np.arange(g_out)[None, :]
    row = (gi * p_in + go * d_r) % ce_in
    col = (go * step + gi * d_c) % ce_out
    return row.astype(np.int64), col.astype(np.int64)


def sample_index(cin: int, cout: int, ce_in: int, ce_out: int, p_in: int, p_out: int,
                 row_offset: np.ndarray, col_offset: np.ndarray) -> np.ndarray:
    """`(Cout, Cin)` flat indices `e_out*Ce_in + e_in` into the epitome's channel plane."""
    o, c = np.arange(cout), np.arange(cin)
    go, j = o // p_out, o % p_out
    gi, i = c // p_in, c % p_in
    e_out = (col_offset[gi[None, :], go[:, None]] + j[:, None]) % ce_out
    e_in = (row_offset[gi[None, :], go[:, None]] + i[None, :]) % ce_in
    return e_out * ce_in + e_in


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x - x * scale).detach() + x * scale


class _LearnedStep(nn.Module):
    """Learned-step-size quantizer (LSQ) to the integers `lo .. qmax` with one scale.

    `bits=None` is float (no quantization). The first call sets the scale from the data.
    """

    def __init__(self, bits: int | None):
        super().__init__()
        self.bits = bits
        self.scale = nn.Parameter(torch.tensor(1.0)) if bits else None
        self.register_buffer("initialised", torch.tensor(False))
        self._ready = False  # a Python copy of `initialised`: reading the buffer syncs a GPU

    lo = 0

    @property
    def qmax(self) -> int:
        raise NotImplementedError

    def elements(self, t: torch.Tensor) -> int:
        """Values sharing the scale in one sample (LSQ's gradient scale)."""
        return t.numel()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if not self.bits:
            return t
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # under autocast, quantize in float32 all the same
        if not self._ready:
            if not self.initialised:
                with torch.no_grad():
                    self.scale.copy_(2 * t.abs().mean() / math.sqrt(self.qmax) + 1e-8)
                    self.initialised.fill_(True)
            self._ready = True
        s = grad_scale(self.scale, 1.0 / math.sqrt(self.elements(t) * self.qmax))
        return torch.clamp(round_ste(t / s), self.lo, self.qmax) * s


class WeightQuant(_LearnedStep):
    """Symmetric signed `bits`-bit weights, one learned scale per epitome."""

    @property
    def lo(self) -> int:
        return -self.qmax

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def integers(self, w: torch.Tensor) -> torch.Tensor:
        """The integer weights the crossbar stores."""
        return torch.clamp(torch.round(w / self.scale), -self.qmax, self.qmax).to(torch.int64)


class ActQuant(_LearnedStep):
    """Unsigned `bits`-bit activations after ReLU, one learned scale; `signed=True`: two's
    complement `bits`-bit values (a residual branch without ReLU before its add)."""

    def __init__(self, bits: int | None, signed: bool = False):
        super().__init__(bits)
        self.signed = signed

    @property
    def lo(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def elements(self, t: torch.Tensor) -> int:
        return t.numel() // t.shape[0]


class EpitomeConv2d(nn.Module):
    """A conv layer whose weight is sampled from an epitome (spec section 2).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding
        As for `torch.nn.Conv2d` (square kernel, groups and dilation 1, no bias).
    epitome : (Ce_in, Ce_out, p_in, p_out) or None
        Epitome shape and patch sizes; None is a dense layer.
    row_offset, col_offset : arrays (G_in, G_out), optional
        Offset tables; default :func:`default_offsets`.
    weight_bits : int or None
        Epitome-aware weight quantization (None keeps float weights).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, epitome: tuple[int, int, int, int] | None = None,
                 row_offset=None, col_offset=None, weight_bits: int | None = None):
        super().__init__()
        if epitome is None:
            epitome = (in_channels, out_channels, in_channels, out_channels)
        ce_in, ce_out, p_in, p_out = epitome
        if not (1 <= p_in <= ce_in and 1 <= p_out <= ce_out):
            raise ValueError(f"epitome {epitome}: need 1 <= p_in <= Ce_in and "
                             "1 <= p_out <= Ce_out")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.epitome_shape = tuple(epitome)
        self.dense = epitome == (in_channels, out_channels, in_channels, out_channels)
        if row_offset is None or col_offset is None:
            row_offset, col_offset = default_offsets(in_channels, out_channels, *epitome)
        self.register_buffer("row_offset", torch.as_tensor(np.asarray(row_offset)))
        self.register_buffer("col_offset", torch.as_tensor(np.asarray(col_offset)))
        idx = sample_index(in_channels, out_channels, *epitome, np.asarray(row_offset),
                           np.asarray(col_offset))
        self.register_buffer("index", torch.as_tensor(idx), persistent=False)
        self.E = nn.Parameter(torch.empty(ce_out, ce_in, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.E, nonlinearity="relu")
        self.wq = WeightQuant(weight_bits)

    def sampled_weight(self, e: torch.Tensor | None = None) -> torch.Tensor:
        """The full `(Cout, Cin, k, k)` weight sampled from (a version of) the epitome."""
        e = self.E if e is None else e
        ce_out, ce_in, k, _ = e.shape
        return e.reshape(ce_out * ce_in, k, k)[self.index]

    noise = None  # a `noise_train.LayerNoise`: crossbar non-idealities while training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise is not None and self.training:
            return self.noise.forward(self, x)
        w = self.sampled_weight(self.wq(self.E))
        return F.conv2d(x, w, stride=self.stride, padding=self.padding)

    def forward_by_steps(self, x: torch.Tensor) -> torch.Tensor:
        """The same result computed as the crossbar does: one convolution per IFRT step with
        the `Ce_out` epitome columns, then OFAT routing (with wrapping) to output channels."""
        ce_in, ce_out, p_in, p_out = self.epitome_shape
        e = self.wq(self.E)
        rows, cols = self.row_offset.tolist(), self.col_offset
        out = None
        for gi, row in enumerate(rows):
            xg = x[:, gi * p_in:(gi + 1) * p_in]
            for r in sorted(set(row)):
                reuse = [go for go, v in enumerate(row) if v == r]
                e_rows = (r + torch.arange(xg.shape[1], device=x.device)) % ce_in
                y = F.conv2d(xg, e[:, e_rows], stride=self.stride, padding=self.padding)
                o = torch.cat([torch.arange(go * p_out, min((go + 1) * p_out, self.out_channels))
                               for go in reuse])
                c = (cols[gi, o // p_out] + o % p_out) % ce_out
                if out is None:
                    out = y.new_zeros(y.shape[0], self.out_channels, *y.shape[2:])
                out[:, o] += y[:, c]
        return out

    @classmethod
    def from_dense(cls, weight: torch.Tensor, epitome, stride: int = 1, padding: int = 0,
                   row_offset=None, col_offset=None, weight_bits=None) -> EpitomeConv2d:
        """The epitome that best reproduces a dense weight in least squares."""
        cout, cin, k, _ = weight.shape
        layer = cls(cin, cout, k, stride, padding, epitome, row_offset, col_offset, weight_bits)
        with torch.no_grad():
            layer.E.copy_(project(weight, layer.index, layer.E.shape))
        return layer

    def extra_repr(self) -> str:
        ce_in, ce_out, p_in, p_out = self.epitome_shape
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, "
                f"s={self.stride}, p={self.padding}, epitome=(Ce_in={ce_in}, Ce_out={ce_out}, "
                f"p_in={p_in}, p_out={p_out}), weight_bits={self.wq.bits}")


class EpitomeLinear(EpitomeConv2d):
    """A linear layer as a 1x1 epitome conv on a 1x1 map (spec section 6)."""

    def __init__(self, in_features: int, out_features: int, epitome=None, row_offset=None,
                 col_offset=None, weight_bits=None):
        super().__init__(in_features, out_features, 1, 1, 0, epitome, row_offset, col_offset,
                         weight_bits)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise is not None and self.training:
            return self.noise.forward(self, x)
        w = self.sampled_weight(self.wq(self.E))
        return F.linear(x.flatten(1), w.flatten(1), self.bias)


def project(weight: torch.Tensor, index: torch.Tensor, shape) -> torch.Tensor:
    """Least-squares epitome for a dense weight: each entry is the mean of the weights sampled
    from it (entries no weight samples stay 0)."""
    ce_out, ce_in, k, _ = shape
    flat = weight.reshape(-1, k * k)
    idx = index.reshape(-1)
    total = torch.zeros(ce_out * ce_in, k * k, dtype=weight.dtype)
    total.index_add_(0, idx, flat)
    count = torch.bincount(idx, minlength=ce_out * ce_in).clamp(min=1).to(weight.dtype)
    return (total / count[:, None]).reshape(shape)
