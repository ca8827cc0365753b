"""The integer reference: spec sections 1-6 in NumPy, exact, vectorised over pixels and images.

Every crossbar activation is defined as the spec writes it: IFAT row selection per step, input
bit slices, bit-sliced differential cells, per-row-chunk ADC saturation, shift-and-add, and OFAT
routing with output channel wrapping. Where no ADC can saturate - a column of a row chunk whose
largest possible sum, every input slice at its maximum, fits the ADC - that column's share of
every activation is exactly its part of `conv2d(X, W)` with `W` sampled from the epitome, so
the reference computes it as one convolution per layer (an im2col matrix product in float32
or float64, exact while every partial sum stays below 2**24 or 2**53, else in int64). Only the
(row chunk, column) pairs that can saturate take the slice-by-slice path
(:func:`crossbar_activation`), per IFRT step. The result equals the literal path bit for bit
(`literal=True` runs that path alone; the tests compare them).
"""

from __future__ import annotations

import os

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...contract import geometry
from ...contract.ops import Op
from . import workload
from .epitome import ifat_sources, n_slices, sample_indices, steps
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
    v = np.zeros((x.shape[0], cells.shape[3]), dtype=np.int64)
    for h0 in range(0, x.shape[1], pim.xbar_rows):
        rows = slice(h0, min(h0 + pim.xbar_rows, x.shape[1]))
        v += chunk_activation(x[:, rows], cells[:, :, rows, :], pim, in_bits)
    return v


def chunk_activation(x: np.ndarray, cells: np.ndarray, pim: PIM, in_bits: int) -> np.ndarray:
    """One row chunk's part of the column values: `x (P, rows)` and `cells (2, n_s, rows, C)`,
    every DAC slice, with the ADC saturating each slice's column sum (spec section 4)."""
    n_t = geometry.dac_slices(in_bits, pim.dac_bits)
    cells_f = cells.astype(np.float64)  # a chunk's sums stay far below 2**53: exact
    v = np.zeros((x.shape[0], cells.shape[3]), dtype=np.int64)
    for t in range(n_t):
        x_t = ((x >> (t * pim.dac_bits)) & geometry.dac_max(pim.dac_bits)).astype(np.float64)
        s = np.rint(np.matmul(x_t, cells_f)).astype(np.int64)  # (2, n_s, P, C)
        a = geometry.saturate(s, pim.adc_bits)
        for q in range(cells.shape[1]):
            v += (a[0, q] - a[1, q]) << (t * pim.dac_bits + q * pim.cell_bits)
    return v


def saturable(layer: Layer, pim: PIM) -> np.ndarray:
    """`(chunks, Ce_out)`: True where a row chunk's column can saturate its ADC, i.e. where the
    column sum of some slice and polarity exceeds `2**adc_bits - 1` with every input slice at
    its maximum `2**dac_bits - 1`. Elsewhere the ADC is lossless for every input."""
    cells = crossbar_slices(layer, pim.cell_bits)  # (2, n_s, R, Ce_out)
    r = cells.shape[2]
    chunks = geometry.row_chunks(r, pim.xbar_rows)
    pad = chunks * pim.xbar_rows - r
    c = np.pad(cells, ((0, 0), (0, 0), (0, pad), (0, 0)))
    sums = c.reshape(2, cells.shape[1], chunks, pim.xbar_rows, -1).sum(axis=3)
    top = sums.max(axis=(0, 1)) * geometry.dac_max(pim.dac_bits)
    return top > geometry.adc_max(pim.adc_bits)


def lossless_weight(layer: Layer, pim: PIM, sat: np.ndarray) -> np.ndarray:
    """The sampled weight `W (Cout, Cin, k, k)` with the entries whose (row chunk, column) can
    saturate set to 0: the part of the layer that is exactly a convolution."""
    e_out, e_in = sample_indices(layer.epitome, layer.in_channels, layer.out_channels)
    k2 = layer.kernel**2
    rho = e_in[:, :, None] * k2 + np.arange(k2)  # (Cout, Cin, k*k)
    keep = ~sat[rho // pim.xbar_rows, e_out[:, :, None]]
    w = layer.epitome.weights[e_out, e_in].reshape(keep.shape)
    return np.where(keep, w, 0).reshape(w.shape[:2] + (layer.kernel, layer.kernel))


def exact_dtype(k: int, amax: int, bmax: int):
    """The narrowest float type in which a dot product of length `k` of integers bounded by
    `amax` and `bmax` is exact: every partial sum is an integer below the type's 2**mantissa
    (float32 below 2**24, float64 below 2**53), whatever order BLAS adds in. None: neither."""
    bound = k * amax * bmax
    if bound < 2**24:
        return np.float32
    return np.float64 if bound < 2**53 else None


def exact_conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """`conv2d(x, w)` of integer arrays, exactly, as `(N*Ho*Wo, Cout)` int64 in raster order:
    an im2col matrix product by BLAS in the narrowest exact float type, else in int64."""
    cout, cin, k, _ = w.shape
    dtype = exact_dtype(cin * k * k, int(np.abs(x).max(initial=0)), int(np.abs(w).max(initial=0)))
    dtype = dtype or np.int64
    cols = im2col(x.astype(dtype), k, stride, padding)
    out = cols.reshape(cols.shape[0], -1) @ w.reshape(cout, -1).T.astype(dtype)
    return out.astype(np.int64) if dtype is np.int64 else np.rint(out).astype(np.int64)


def layer_acc(layer: Layer, pim: PIM, x: np.ndarray, reuse: bool = True,
              literal: bool = False) -> np.ndarray:
    """Accumulators `(N, Cout, Ho, Wo)` of a conv or linear layer on `x (N, C, H, W)`.

    The lossless part is one convolution; the row chunks and columns that can saturate run
    step by step (`literal=True`: every chunk and column does, the spec read literally)."""
    n = x.shape[0]
    if layer.op == Op.LINEAR:
        x = x.reshape(n, -1, 1, 1)
    cout = layer.out_channels
    _, ho, wo = layer.out_shape
    sat = saturable(layer, pim)
    if literal:
        sat[:] = True
    if sat.all():
        acc = np.zeros((n * ho * wo, cout), dtype=np.int64)
    else:
        acc = exact_conv(x, lossless_weight(layer, pim, sat), layer.stride, layer.padding)
    if sat.any():
        cols = im2col(x, layer.kernel, layer.stride, layer.padding)  # (P, Cin, k*k)
        _saturating_part(layer, pim, cols, sat, acc, reuse)
    return acc.reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)


def _saturating_part(layer: Layer, pim: PIM, cols: np.ndarray, sat: np.ndarray,
                     acc: np.ndarray, reuse: bool) -> None:
    """Add, step by step, what the (row chunk, column) pairs that can saturate contribute."""
    epi = layer.epitome
    cout = layer.out_channels
    cells = crossbar_slices(layer, pim.cell_bits)
    j = np.arange(epi.patch_out)
    for st in steps(epi, reuse):
        src = ifat_sources(epi, layer.in_channels, st)
        rows = np.where((src >= 0)[None, :, None], cols[:, np.maximum(src, 0), :], 0)
        rows = rows.reshape(rows.shape[0], -1)
        for h, h0 in enumerate(range(0, rows.shape[1], pim.xbar_rows)):
            if not sat[h].any():
                continue
            part = slice(h0, h0 + pim.xbar_rows)
            v = chunk_activation(rows[:, part], cells[:, :, part, :], pim, layer.in_bits)
            v[:, ~sat[h]] = 0  # (those columns are in the convolution already)
            for go in st.reuse:
                o = go * epi.patch_out + j
                keep = o < cout
                col = (epi.col_offset[st.gi, go] + j[keep]) % epi.out_channels
                acc[:, o[keep]] += v[:, col]


def needs_bigint(*arrays) -> bool:
    """True when products of these magnitudes could overflow int64: use Python integers."""
    bound = 1
    for a in arrays:
        bound *= int(np.abs(np.asarray(a, dtype=np.int64)).max(initial=0)) + 1
    return bound >= 2**61


def requantize(v: np.ndarray, mult, shift, lo: int, hi: int) -> np.ndarray:
    """`clamp(v*mult + rnd >> shift, lo, hi)` with `rnd = 2**(shift-1)` if `shift > 0`."""
    mult = np.asarray(mult, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if v.dtype == object or needs_bigint(v, mult):
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


def run_layer(layer: Layer, pim: PIM, *xs: np.ndarray, reuse: bool = True,
              literal: bool = False, noise=None) -> np.ndarray:
    """One layer's output tensor `(N, C, H, W)` from its input tensor(s); `noise`, a
    `noise.NoisyChip`, computes the crossbars' part on a chip with non-idealities."""
    from .ops import chip_op  # (each op's arithmetic lives with its registry entry)

    return chip_op(layer.op).reference(layer, pim, xs, reuse, literal, noise)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def blas_threads():
    """A context in which BLAS uses `EPIM_THREADS` threads (default: the CPUs this process may
    use). OpenBLAS would otherwise start one thread per core of the machine, which on a shared
    or container-limited machine oversubscribes the cores it really has."""
    from threadpoolctl import threadpool_limits

    n = int(os.environ.get("EPIM_THREADS", "0") or 0) or cpu_count()
    return threadpool_limits(limits=n, user_api="blas")


def run_network(net: Network, x: np.ndarray, reuse: bool = True, keep: bool = False,
                literal: bool = False, progress=None,
                noise=None) -> np.ndarray | dict[str, np.ndarray]:
    """The network output for a batch `x (N, C, H, W)`: `(N, C, H, W)`, or `(N, F)` for linear.

    With `keep=True` every tensor is returned by name (in `(N, C, H, W)` form). Large batches
    run in chunks of images (`workload.chunk_size`), so memory stays bounded. `noise` (a
    `noise.NoisyChip`) runs the crossbars with non-idealities instead of ideally.
    """
    x = check_inputs(net, x)
    step = workload.chunk_size(net)
    parts = []
    with blas_threads():
        for i in range(0, len(x), step):
            parts.append(_run_chunk(net, x[i:i + step], reuse, keep, literal, noise))
            if progress is not None:
                progress(min(step, len(x) - i))
    if keep:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _run_chunk(net: Network, x: np.ndarray, reuse: bool, keep: bool, literal: bool,
               noise=None):
    tensors = {net.input_name: x}
    for layer in net.layers:
        tensors[layer.name] = run_layer(layer, net.pim, *(tensors[i] for i in layer.inputs),
                                        reuse=reuse, literal=literal, noise=noise)
    if keep:
        return tensors
    out = tensors[net.output]
    return out.reshape(out.shape[0], -1) if net.output_layer.op == Op.LINEAR else out
