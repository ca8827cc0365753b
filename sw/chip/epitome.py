"""Epitome sampling (spec section 2) and the IFRT step list (spec section 4), in NumPy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...contract import geometry
from .netfile import Epitome, Layer


def sample_indices(epi: Epitome, cin: int, cout: int) -> tuple[np.ndarray, np.ndarray]:
    """`(e_out, e_in)`, each `(Cout, Cin)`: the epitome channels weight `W[o, c]` is sampled
    from (spec section 2)."""
    o = np.arange(cout)
    c = np.arange(cin)
    go, j = o // epi.patch_out, o % epi.patch_out
    gi, i = c // epi.patch_in, c % epi.patch_in
    e_out = (epi.col_offset[gi[None, :], go[:, None]] + j[:, None]) % epi.out_channels
    e_in = (epi.row_offset[gi[None, :], go[:, None]] + i[None, :]) % epi.in_channels
    return e_out, e_in


def sample_weight(epi: Epitome, cin: int, cout: int) -> np.ndarray:
    """The full weight `W (Cout, Cin, k, k)` sampled from the epitome, wrapping channel axes."""
    return epi.weights[sample_indices(epi, cin, cout)]


def strided_offsets(cin: int, cout: int, ce_in: int, ce_out: int, p_in: int, p_out: int,
                    d_r: int = 0, d_c: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The strided offset rule of spec section 2: `(row_offset, col_offset)`, each (G_in, G_out)."""
    g_in, g_out = math.ceil(cin / p_in), math.ceil(cout / p_out)
    gi = np.arange(g_in)[:, None]
    go = np.arange(g_out)[None, :]
    row = (gi * p_in + go * d_r) % ce_in
    col = (go * p_out + gi * d_c) % ce_out
    return row.astype(np.int64), col.astype(np.int64)


@dataclass(frozen=True)
class Step:
    """One IFRT step: input group `gi`, row offset `r`, reuse set `B` of output groups."""

    gi: int
    r: int
    reuse: tuple[int, ...]


def steps(epi: Epitome, reuse: bool = True) -> list[Step]:
    """The step order of spec section 4; `reuse=False` gives one step per block (gi, go)."""
    out = []
    g_in, g_out = epi.row_offset.shape
    for gi in range(g_in):
        row = [int(v) for v in epi.row_offset[gi]]
        if reuse:
            for r in sorted(set(row)):
                out.append(Step(gi, r, tuple(go for go in range(g_out) if row[go] == r)))
        else:
            out.extend(Step(gi, row[go], (go,)) for go in range(g_out))
    return out


def ifat_sources(epi: Epitome, cin: int, step: Step) -> np.ndarray:
    """IFAT for one step: the input channel feeding each epitome input channel, -1 if inactive."""
    e_in = np.arange(epi.in_channels)
    i = (e_in - step.r) % epi.in_channels
    src = step.gi * epi.patch_in + i
    return np.where((i < epi.patch_in) & (src < cin), src, -1)


def n_slices(layer: Layer, cell_bits: int) -> int:
    """Bit slices per weight magnitude: `ceil((weight_bits - 1) / cell_bits)`."""
    return geometry.cell_slices(layer.weight_bits, cell_bits)


def crossbar_count(layer: Layer, cell_bits: int, xbar_rows: int, xbar_cols: int,
                   dense: bool = False, weight_bits: int | None = None) -> int:
    """Crossbars for a layer (spec section 3); `dense=True` counts the dense layer's, and
    `weight_bits` overrides the layer's (to count, say, the dense 8-bit baseline)."""
    k2 = layer.kernel * layer.kernel
    if dense:
        rows, cols = layer.in_channels * k2, layer.out_channels
    else:
        rows, cols = layer.epitome.in_channels * k2, layer.epitome.out_channels
    return matrix_crossbars(rows, cols, weight_bits or layer.weight_bits, cell_bits, xbar_rows,
                            xbar_cols)


def matrix_crossbars(rows: int, cols: int, weight_bits: int, cell_bits: int, xbar_rows: int,
                     xbar_cols: int) -> int:
    """Spec section 3 for one `rows x cols` weight matrix: row chunks x column blocks x 2."""
    return geometry.crossbars(rows, cols, weight_bits, cell_bits, xbar_rows, xbar_cols)


@dataclass(frozen=True)
class Fill:
    """Crossbar geometry an epitome is fitted to: `rows` crossbar rows, and `cols` weights per
    crossbar row (crossbar columns divided by the bit slices of a weight)."""

    rows: int
    cols: int

    def grow_in(self, cin: int, ce_in: int, kernel: int) -> int:
        """`Ce_in` grown to the most channels whose rows fill the row chunks it occupies."""
        k2 = kernel * kernel
        return min(cin, max(ce_in, math.ceil(ce_in * k2 / self.rows) * self.rows // k2))

    def grow_out(self, cout: int, ce_out: int) -> int:
        """`Ce_out` grown to fill the column blocks it occupies."""
        return min(cout, math.ceil(ce_out / self.cols) * self.cols)

    @classmethod
    def of(cls, pim: dict, weight_bits: int) -> Fill:
        slices = geometry.cell_slices(weight_bits, pim["cell_bits"])
        return cls(pim["xbar_rows"], max(1, pim["xbar_cols"] // slices))


def epitome_shape(cin: int, cout: int, ratio: float | None, kernel: int = 3,
                  fill: Fill | None = None, wrap: int = 1) -> tuple[int, int, int, int] | None:
    """An epitome that shrinks a layer's weights by about `ratio`: the input side first (crossbar
    rows, `Ce_in * k * k`, set the row-chunk count), then the output side (columns, with output
    channel wrapping) for what is left; None (dense) for ratio <= 1. With `fill`, each side then
    grows to use the row chunks and column blocks it occupies anyway: the same crossbars, more
    weights.

    `wrap > 1` takes the output side first instead: `Ce_out = p_out = ceil(Cout / wrap)`, so
    the output channels wrap `wrap` times around the epitome's columns through the OFAT and
    the output groups share each input group's activation (IFRT reuse, with the default
    offsets); the rest of `ratio` goes to the input side, which `fill` grows as above."""
    if not ratio or ratio <= 1:
        return None
    if wrap > 1 and cout > 1:
        ce_out = max(1, -(-cout // wrap))
        rest = ratio * ce_out / cout
        ce_in = max(1, round(cin / rest)) if rest > 1 else cin
        if fill:
            ce_in = fill.grow_in(cin, ce_in, kernel)
        return (ce_in, ce_out, ce_in, ce_out)
    ce_in = max(1, round(cin / ratio))
    rest = ratio / (cin / ce_in)
    ce_out = max(1, round(cout / rest)) if rest > 1 else cout
    if fill:
        ce_in, ce_out = fill.grow_in(cin, ce_in, kernel), fill.grow_out(cout, ce_out)
    return (ce_in, ce_out, ce_in, ce_out)
