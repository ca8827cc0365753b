"""Stuck cells on a chip's crossbars, and fault-aware remapping of the epitomes onto them.

**Fault map.** For each conv and linear layer, the stuck cells of its crossbars. A cell is named
by physical coordinates, as the crossbar mapping (contract section 3) lays the layer out:

- `polarity` 0 (the `M+` crossbars) or 1 (`M-`);
- `row`, a row of the layer's row space: row chunk `row // xbar_rows` (which crossbar), row
  `row % xbar_rows` inside it;
- `col`, a physical column `e_out*n_s + q`: column chunk `col // xbar_cols`, column
  `col % xbar_cols` inside it.

A cell is stuck at 0 or at `gmax = 2**cell_bits - 1`, whatever is programmed. The file format,
`epim-faults-v1`, is a JSON object: `{"format": "epim-faults-v1", "layers": {NAME:
{"stuck_at_zero": [[polarity, row, col], ...], "stuck_at_max": [...]}}}`. Rows and columns
range over the whole crossbars, including the rows and columns the layer leaves unused.

**Remapping.** The epitome of a layer can be placed on its crossbars in many ways that compute
the same layer. Rotating the epitome's input channels by `s` and its output channels by `t`,
`E'[(e_out + t) % Ce_out, (e_in + s) % Ce_in] = E[e_out, e_in]`, with the offset tables moved
along, `row_offset' = (row_offset + s) % Ce_in` and `col_offset' = (col_offset + t) % Ce_out`,
samples every filter exactly as before (contract section 2). The entries, however, land on
other cells: row `rho` moves by `s*k*k`, column `e_out` by `t`. So a stuck cell can be made to
hold a value it is stuck at anyway (most cells of a polarity hold 0), or an entry that few
filters use. `remap` chooses `(s, t)` per layer to minimise the damage:

    damage = sum over epitome entries of uses(e_out, e_in) * (w_faulty - w)^2

where `uses` counts the full weights sampled from the entry (every pair `(s, t)` is tried
where there are at most `MAX_JOINT`, else the best `t`, then the best `s` with it). The result
is an ordinary
`epim-net-v1` file: the same compiler, tables and RTL run it. A row rotation moves entries
across row chunks, which changes what an ADC that can saturate sees, so rows are rotated only
where the ADC is lossless before and after (then the function is exactly the same); columns
always may be.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ...contract import geometry
from ...contract.ops import TILE_OPS
from .epitome import n_slices, sample_indices
from .netfile import PIM, Layer, Network

FORMAT = "epim-faults-v1"
MAX_FILE_BYTES = 64 << 20
STUCK_ZERO, STUCK_MAX = 1, 2
MAX_JOINT = 4096  # rotation pairs searched jointly; larger epitomes search one axis at a time


class FaultMapError(ValueError):
    """A fault map file is malformed or does not fit the network; the message says where."""


def crossbar_extent(layer: Layer, pim: PIM) -> tuple[int, int]:
    """`(rows, cols)` of the layer's crossbars laid side by side: whole crossbars."""
    e = layer.epitome
    rows = geometry.epitome_rows(e.in_channels, layer.kernel)
    cols = e.out_channels * n_slices(layer, pim.cell_bits)
    return (geometry.row_chunks(rows, pim.xbar_rows) * pim.xbar_rows,
            geometry.ceil_div(cols, pim.xbar_cols) * pim.xbar_cols)


def tiles(net: Network) -> list[Layer]:
    return [la for la in net.layers if la.op in TILE_OPS]


def sample(net: Network, stuck_at_zero: float, stuck_at_max: float, seed: int = 0
           ) -> dict[str, np.ndarray]:
    """A random fault map: every cell of every crossbar stuck at 0 or at max at these rates.
    Per layer an int8 array `(2, rows, cols)` of 0 (healthy), 1 (stuck at 0), 2 (stuck at max).
    The draw is `noise.py`'s (one uniform number per cell, stuck-at-max from the top), so a
    higher rate only adds faults."""
    out = {}
    for i, la in enumerate(tiles(net)):
        shape = (2, *crossbar_extent(la, net.pim))
        u = np.random.default_rng([seed, 2, i]).random(shape)
        f = np.zeros(shape, dtype=np.int8)
        f[u < stuck_at_zero] = STUCK_ZERO
        f[u >= 1.0 - stuck_at_max] = STUCK_MAX
        out[la.name] = f
    return out


def to_json(fmap: dict[str, np.ndarray]) -> dict:
    layers = {}
    for name, f in fmap.items():
        layers[name] = {"stuck_at_zero": np.argwhere(f == STUCK_ZERO).tolist(),
                        "stuck_at_max": np.argwhere(f == STUCK_MAX).tolist()}
    return {"format": FORMAT, "layers": layers}


def parse(obj, net: Network, source: str = "fault map") -> dict[str, np.ndarray]:
    """A fault map for `net` from a parsed JSON object, every coordinate checked."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise FaultMapError(f"{source}: must be a JSON object with 'format': {FORMAT!r}")
    layers = obj.get("layers")
    if not isinstance(layers, dict):
        raise FaultMapError(f"{source}: 'layers' must be an object of layer names")
    by_name = {la.name: la for la in tiles(net)}
    out = {name: np.zeros((2, *crossbar_extent(la, net.pim)), dtype=np.int8)
           for name, la in by_name.items()}
    for name, part in layers.items():
        if name not in by_name:
            raise FaultMapError(f"{source}: layer {name!r} is not a conv or linear layer of "
                                f"the network (it has {sorted(by_name)})")
        if not isinstance(part, dict) or set(part) - {"stuck_at_zero", "stuck_at_max"}:
            raise FaultMapError(f"{source}: layers.{name} must be an object with "
                                "'stuck_at_zero' and 'stuck_at_max'")
        f = out[name]
        for key, code in (("stuck_at_zero", STUCK_ZERO), ("stuck_at_max", STUCK_MAX)):
            cells = part.get(key, [])
            if not isinstance(cells, list) or len(cells) > f.size:
                raise FaultMapError(f"{source}: layers.{name}.{key} must be a list of at most "
                                    f"{f.size} [polarity, row, col] cells")
            for n, cell in enumerate(cells):
                if not (isinstance(cell, list) and len(cell) == 3
                        and all(isinstance(v, int) and not isinstance(v, bool) for v in cell)
                        and all(0 <= v < m for v, m in zip(cell, f.shape, strict=True))):
                    raise FaultMapError(
                        f"{source}: layers.{name}.{key}[{n}] = {cell!r}: must be [polarity, "
                        f"row, col] with polarity 0..1, row 0..{f.shape[1] - 1}, col "
                        f"0..{f.shape[2] - 1}")
                f[tuple(cell)] = code
    return out


def load(path: str | Path, net: Network) -> dict[str, np.ndarray]:
    from ...contract.files import load_json

    obj = load_json(path, "a fault map", MAX_FILE_BYTES, FaultMapError)
    return parse(obj, net, str(path))


def cell_faults(layer: Layer, pim: PIM, fmap: np.ndarray) -> np.ndarray:
    """The fault codes in the cell layout of `reference.crossbar_slices`, `(2, n_s, R,
    Ce_out)`: cell `(polarity, q, rho, e_out)` sits at physical column `e_out*n_s + q`."""
    e = layer.epitome
    ns = n_slices(layer, pim.cell_bits)
    rows = e.in_channels * layer.kernel**2
    f = fmap[:, :rows, :e.out_channels * ns].reshape(2, rows, e.out_channels, ns)
    return f.transpose(0, 3, 1, 2)


def faulty_levels(cells: np.ndarray, faults: np.ndarray, cell_bits: int) -> np.ndarray:
    """Cell levels with the stuck cells at their stuck level."""
    out = np.where(faults == STUCK_ZERO, 0, cells)
    return np.where(faults == STUCK_MAX, 2**cell_bits - 1, out)


def uses(layer: Layer) -> np.ndarray:
    """`(Ce_out, Ce_in)`: how many full weights `W[o, c]` are sampled from each epitome
    channel pair (each has `k*k` entries)."""
    e = layer.epitome
    e_out, e_in = sample_indices(e, layer.in_channels, layer.out_channels)
    u = np.zeros((e.out_channels, e.in_channels), dtype=np.int64)
    np.add.at(u, (e_out, e_in), 1)
    return u


def _cells(weights: np.ndarray, cell_bits: int, ns: int) -> np.ndarray:
    """`(2, n_s, R, Ce_out)` levels of an epitome `(Ce_out, Ce_in, k, k)` (contract section 3)."""
    m = weights.reshape(weights.shape[0], -1).T
    mag = np.stack([np.maximum(m, 0), np.maximum(-m, 0)])
    q = np.arange(ns)[None, :, None, None]
    return (mag[:, None] >> (q * cell_bits)) & (2**cell_bits - 1)


def damage(layer: Layer, pim: PIM, fmap: np.ndarray, weights: np.ndarray | None = None,
           use: np.ndarray | None = None) -> float:
    """`sum uses * (w_faulty - w)^2` over the epitome's entries, for `weights` (default the
    layer's epitome) with use counts `use` (default `uses(layer)`; both rotated alike) placed
    on the crossbars with faults `fmap`."""
    w = layer.epitome.weights if weights is None else weights
    use = uses(layer) if use is None else use
    ns = n_slices(layer, pim.cell_bits)
    cells = _cells(w, pim.cell_bits, ns)
    bad = faulty_levels(cells, cell_faults(layer, pim, fmap), pim.cell_bits)
    scale = (2 ** (np.arange(ns) * pim.cell_bits))[:, None, None]
    wf = ((bad[0] - bad[1]) * scale).sum(0)  # (R, Ce_out)
    err = (wf - w.reshape(w.shape[0], -1).T).astype(np.float64) ** 2
    k2 = layer.kernel**2
    per_pair = err.reshape(w.shape[1], k2, w.shape[0]).sum(1).T  # (Ce_out, Ce_in)
    return float((per_pair * use).sum())


def _lossless(weights: np.ndarray, pim: PIM, ns: int) -> bool:
    cells = _cells(weights, pim.cell_bits, ns)
    r = cells.shape[2]
    chunks = geometry.row_chunks(r, pim.xbar_rows)
    c = np.pad(cells, ((0, 0), (0, 0), (0, chunks * pim.xbar_rows - r), (0, 0)))
    sums = c.reshape(2, ns, chunks, pim.xbar_rows, -1).sum(axis=3)
    return int(sums.max(initial=0)) * geometry.dac_max(pim.dac_bits) <= geometry.adc_max(
        pim.adc_bits)


def best_rotation(layer: Layer, pim: PIM, fmap: np.ndarray) -> tuple[int, int, float, float]:
    """`(s, t, damage before, damage after)`: the rotation of the epitome's input channels
    (`s`) and output channels (`t`) that least damages the layer on these faults."""
    e = layer.epitome
    ns = n_slices(layer, pim.cell_bits)
    w = e.weights
    before = damage(layer, pim, fmap)
    rows_ok = _lossless(w, pim, ns)  # (a rotation keeps every cell's sum: both or neither)
    s_all = range(e.in_channels if rows_ok else 1)
    t_all = range(e.out_channels)
    best = [0, 0, before]

    use = uses(layer)

    def try_(s: int, t: int) -> None:
        d = damage(layer, pim, fmap, np.roll(np.roll(w, s, axis=1), t, axis=0),
                   np.roll(np.roll(use, s, axis=1), t, axis=0))
        if d < best[2] - 1e-9:
            best[:] = [s, t, d]

    if len(s_all) * len(t_all) <= MAX_JOINT:
        for s in s_all:
            for t in t_all:
                try_(s, t)
    else:  # large epitomes: the best column rotation, then the best row rotation with it
        for t in t_all:
            try_(0, t)
        t_best = best[1]
        for s in s_all:
            try_(s, t_best)
    return best[0], best[1], before, best[2]


def remap(obj: dict, net: Network, fmap: dict[str, np.ndarray]) -> tuple[dict, list[dict]]:
    """A copy of the network object `obj` (the parsed `net`) with every conv and linear layer's
    epitome rotated to the placement `best_rotation` finds, and a report per layer. A dense
    layer becomes the equivalent epitome (`Ce = p = C`, offsets 0) when it moves."""
    out = copy.deepcopy(obj)
    by_name = {lay["name"]: lay for lay in out["layers"]}
    report = []
    for la in tiles(net):
        s, t, before, after = best_rotation(la, net.pim, fmap[la.name])
        report.append({"layer": la.name, "row_rotation": s, "col_rotation": t,
                       "damage_before": before, "damage_after": after,
                       "stuck_cells": int((fmap[la.name] != 0).sum())})
        if s == 0 and t == 0:
            continue
        e = la.epitome
        lay = by_name[la.name]
        lay.pop("weights", None)
        lay["epitome"] = {
            "in_channels": e.in_channels, "out_channels": e.out_channels,
            "patch_in": e.patch_in, "patch_out": e.patch_out,
            "row_offset": ((e.row_offset + s) % e.in_channels).tolist(),
            "col_offset": ((e.col_offset + t) % e.out_channels).tolist(),
            "weights": np.roll(np.roll(e.weights, s, axis=1), t, axis=0).tolist()}
    return out, report
