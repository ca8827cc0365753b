"""The integer reference: spec sections 1-6 implemented literally in NumPy, vectorised over pixels.

Every crossbar activation is computed as the spec writes it: IFAT row selection per step, input
bit slices, bit-sliced differential cells, per-row-chunk ADC saturation, shift-and-add, and OFAT
routing with output channel wrapping. With a lossless ADC the result equals `conv2d(X, W)`.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .epitome import ifat_sources, n_slices, steps
from .netfile import PIM, Layer, Network


class InputError(ValueError):
    """An input array does not fit the network."""


def check_inputs(net: Network, x: np.ndarray, what: str = "inputs") -> np.ndarray:
    """Validate an input batch `(N, C, H, W)` of unsigned `bits`-wide integers."""
    want = net.input_shape
    if not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"{what}: must be an integer array, got dtype {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise InputError(f"{what}: must have shape (N, {want[0]}, {want[1]}, {want[2]}) with "
                         f"N >= 1, got {tuple(x.shape)}")
    hi = 2**net.input_bits - 1
    if x.size and (x.min() < 0 or x.max() > hi):
        raise InputError(f"{what}: values must be in 0..{hi} ({net.input_bits}-bit input), "
                         f"got {x.min()}..{x.max()}")
    return x.astype(np.int64)


def im2col(x: np.ndarray, k: int, stride: int, padding: int) -> np.ndarray:
    """Windows of `x (N, C, H, W)` as `(N*Ho*Wo, C, k*k)`, zero outside the map, raster order."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :ho, :wo]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c, k * k)


def crossbar_slices(layer: Layer, cell_bits: int) -> np.ndarray:
    """Cell contents `(2, n_s, R, Ce_out)`: polarity (plus, minus), slice, row `rho`, column."""
    e = layer.epitome.weights
    m = e.reshape(e.shape[0], -1).T  # M[rho, e_out], rho = e_in*k*k + kh*k + kw
    mag = np.stack([np.maximum(m, 0), np.maximum(-m, 0)])
    ns = n_slices(layer, cell_bits)
    q = np.arange(ns)[None, :, None, None]
    return (mag[:, None] >> (q * cell_bits)) & (2**cell_bits - 1)


def crossbar_activation(x: np.ndarray, cells: np.ndarray, pim: PIM, in_bits: int) -> np.ndarray:
    """Column values `V (P, Ce_out)` of one activation with row inputs `x (P, R)` (spec sec. 4)."""
    n_t = math.ceil(in_bits / pim.dac_bits)
    ns = cells.shape[1]
    adc_max = 2**pim.adc_bits - 1
    r = x.shape[1]
    cells_f = cells.astype(np.float64)  # sums stay far below 2**53: float matmul is exact
    v = np.zeros((x.shape[0], cells.shape[3]), dtype=np.int64)
    for t in range(n_t):
        x_t = ((x >> (t * pim.dac_bits)) & (2**pim.dac_bits - 1)).astype(np.float64)
        for h0 in range(0, r, pim.xbar_rows):
            rows = slice(h0, min(h0 + pim.xbar_rows, r))
            s = np.rint(np.matmul(x_t[:, rows], cells_f[:, :, rows, :])).astype(np.int64)
            a = np.minimum(s, adc_max)  # ADC saturation, per row chunk
            for q in range(ns):
                v += (a[0, q] - a[1, q]) << (t * pim.dac_bits + q * pim.cell_bits)
    return v


def layer_acc(layer: Layer, pim: PIM, x: np.ndarray, reuse: bool = True) -> np.ndarray:
    """Accumulators `(N, Cout, Ho, Wo)` of a conv or linear layer on `x (N, C, H, W)`."""
    epi = layer.epitome
    n = x.shape[0]
    if layer.op == "linear":
        x = x.reshape(n, -1, 1, 1)
    k = layer.kernel
    cin, cout = layer.in_channels, layer.out_channels
    _, ho, wo = layer.out_shape
    cols = im2col(x, k, layer.stride, layer.padding)  # (P, Cin, k*k)
    cells = crossbar_slices(layer, pim.cell_bits)
    acc = np.zeros((cols.shape[0], cout), dtype=np.int64)
    j = np.arange(epi.patch_out)
    for st in steps(epi, reuse):
        src = ifat_sources(epi, cin, st)
        rows = np.where((src >= 0)[None, :, None], cols[:, np.maximum(src, 0), :], 0)
        v = crossbar_activation(rows.reshape(rows.shape[0], -1), cells, pim, layer.in_bits)
        for go in st.reuse:
            o = go * epi.patch_out + j
            keep = o < cout
            col = (epi.col_offset[st.gi, go] + j[keep]) % epi.out_channels
            acc[:, o[keep]] += v[:, col]
    return acc.reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)


def _exact(*arrays) -> bool:
    """True when products of these magnitudes could overflow int64: use Python integers."""
    bound = 1
    for a in arrays:
        bound *= int(np.abs(np.asarray(a, dtype=np.int64)).max(initial=0)) + 1
    return bound >= 2**61


def requantize(v: np.ndarray, mult, shift, lo: int, hi: int) -> np.ndarray:
    """`clamp(v*mult + rnd >> shift, lo, hi)` with `rnd = 2**(shift-1)` if `shift > 0`."""
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if v.dtype == object or _exact(v, mult):
        v, mult, shift = v.astype(object), mult.astype(object), shift.astype(object)
    rnd = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    y = (v * mult + rnd) >> shift
    return np.clip(y, lo, hi).astype(np.int64)


def output_stage(acc: np.ndarray, layer: Layer) -> np.ndarray:
    """Spec section 5 on accumulators `(N, Cout, ...)`."""
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    if layer.relu:
        lo, hi = 0, 2**layer.out_bits - 1
    else:
        lo, hi = -(2 ** (layer.out_bits - 1)), 2 ** (layer.out_bits - 1) - 1
    return requantize(acc + layer.bias.reshape(shape), layer.mult.reshape(shape),
                      layer.shift.reshape(shape), lo, hi)


def run_layer(layer: Layer, pim: PIM, *xs: np.ndarray, reuse: bool = True) -> np.ndarray:
    """One layer's output tensor `(N, C, H, W)` from its input tensor(s)."""
    hi = 2**layer.out_bits - 1
    if layer.op in ("conv", "linear"):
        return output_stage(layer_acc(layer, pim, xs[0], reuse), layer)
    if layer.op == "add":
        a, b = xs
        if _exact(a, layer.ma) or _exact(b, layer.mb):
            a, b = a.astype(object), b.astype(object)
        return requantize(a * layer.ma + b * layer.mb, 1, layer.add_shift, 0, hi)
    if layer.op == "avgpool_global":
        s = xs[0].astype(object).sum(axis=(2, 3), keepdims=True)
        return requantize(s, layer.pool_mult, layer.pool_shift, 0, hi)
    raise ValueError(f"layer {layer.name!r}: unknown op {layer.op!r}")


# Elements of im2col windows per chunk of images: bounds the working memory (several int64 and
# float64 copies of this size are alive at once) to a few GB, whatever the batch size.
CHUNK_ELEMENTS = 2**24


def chunk_size(net: Network) -> int:
    """Images per chunk so that the largest layer's windows hold about `CHUNK_ELEMENTS`."""
    per_image = 1
    for layer in net.layers:
        if layer.op in ("conv", "linear"):
            _, ho, wo = layer.out_shape
            per_image = max(per_image, ho * wo * layer.in_channels * layer.kernel**2)
    return max(1, CHUNK_ELEMENTS // per_image)


def run_network(net: Network, x: np.ndarray, reuse: bool = True,
                keep: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """The network output for a batch `x (N, C, H, W)`: `(N, C, H, W)`, or `(N, F)` for linear.

    With `keep=True` every tensor is returned by name (in `(N, C, H, W)` form). Large batches
    run in chunks of images (:func:`chunk_size`), so memory stays bounded.
    """
    x = check_inputs(net, x)
    step = chunk_size(net)
    parts = [_run_chunk(net, x[i:i + step], reuse, keep) for i in range(0, len(x), step)]
    if keep:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _run_chunk(net: Network, x: np.ndarray, reuse: bool, keep: bool):
    tensors = {net.input_name: x}
    for layer in net.layers:
        tensors[layer.name] = run_layer(layer, net.pim, *(tensors[i] for i in layer.inputs),
                                        reuse=reuse)
    if keep:
        return tensors
    out = tensors[net.output]
    return out.reshape(out.shape[0], -1) if net.output_layer.op == "linear" else out
