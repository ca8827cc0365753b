"""Crossbar non-idealities on the physical cells: a seeded statistical mode of the reference.

The ideal reference (`reference.py`) computes every column sum `S` of spec section 4 exactly and
saturates it in the ADC. Real crossbars do not: a programmed cell's conductance misses its
level, some cells are stuck, every read adds noise, and every ADC has an offset, a gain error
and noise of its own. This module runs the same activations, literally (IFRT step by step, row
chunk by row chunk, DAC slice by DAC slice, polarity and bit slice apart), on cells whose
conductances and ADCs carry those errors. Everything after the ADC (shift-and-add, OFAT routing
and output channel wrapping, the output stage) is the spec's integer arithmetic, unchanged.

Units: a cell's conductance is counted in levels, `0 .. gmax` with `gmax = 2**cell_bits - 1`
(level `u` is the ideal cell holding slice value `u`); the ADC's input and output are in its
LSB, one level times one DAC unit. The configuration (`NoiseConfig`, a JSON file of format
`epim-noise-v1`, every parameter 0 by default; `docs/noise.md` has the table):

- `programming.sigma`, `programming.distribution`: programming variation, `gaussian`
  (`g = u + sigma*gmax*N(0,1)`, sigma a fraction of the cell range) or `lognormal`
  (`g = u*exp(sigma*N(0,1))`, multiplicative: an empty cell stays empty); clipped to `0..gmax`;
- `stuck_at.zero`, `stuck_at.max`: the shares of cells stuck at `0` or at `gmax`;
- `read.sigma`: read noise per cell and per read (each DAC slice of each activation), a fraction
  of `gmax`;
- `adc.offset_sigma` (LSB), `adc.gain_sigma` (a fraction): one offset and gain per ADC (one per
  physical column of each crossbar and polarity), fixed for the chip: `(1 + gain)*S + offset`;
- `adc.noise_sigma`: input-referred ADC noise, LSB, per conversion.

The ADC rounds to the nearest code and clips to `0 .. 2**adc_bits - 1`.

Randomness: a chip (`seed`) fixes the programming variation, the stuck cells and the ADC offset
and gain, each from a stream of its own that is drawn whatever the configuration (so a seed is
the same chip at every setting); read and ADC noise are drawn afresh for every conversion from
two more streams of the seed, in the order of the conversions (so they depend on the batch a
`NoisyChip` has run before). One seed gives one repeatable run, and Monte Carlo over seeds
gives the spread. With
every parameter 0 the mode computes, through the same code, exactly the ideal reference's
integers (`tests/sw/test_noise.py` checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...contract import geometry
from ...contract.ops import Op
from .epitome import ifat_sources, steps
from .netfile import PIM, Layer, Network
from .reference import crossbar_slices, im2col

FORMAT = "epim-noise-v1"
MAX_CONFIG_BYTES = 1 << 16


class NoiseConfigError(ValueError):
    """A noise configuration file is malformed; the message names the key."""


@dataclass(frozen=True)
class NoiseConfig:
    """The non-idealities, each a non-negative number (0: ideal)."""

    programming_sigma: float = 0.0
    programming_distribution: str = "gaussian"
    stuck_at_zero: float = 0.0
    stuck_at_max: float = 0.0
    read_sigma: float = 0.0
    adc_offset_sigma: float = 0.0
    adc_gain_sigma: float = 0.0
    adc_noise_sigma: float = 0.0
    source: str = field(default="", compare=False)

    @property
    def ideal(self) -> bool:
        return not any((self.programming_sigma, self.stuck_at_zero, self.stuck_at_max,
                        self.read_sigma, self.adc_offset_sigma, self.adc_gain_sigma,
                        self.adc_noise_sigma))

    def to_json(self) -> dict:
        return {"format": FORMAT,
                "programming": {"sigma": self.programming_sigma,
                                "distribution": self.programming_distribution},
                "stuck_at": {"zero": self.stuck_at_zero, "max": self.stuck_at_max},
                "read": {"sigma": self.read_sigma},
                "adc": {"offset_sigma": self.adc_offset_sigma,
                        "gain_sigma": self.adc_gain_sigma,
                        "noise_sigma": self.adc_noise_sigma}}


# (section, key, field, largest accepted value): a bound keeps a typo (sigma 50 for 50%) from
# passing as a plausible, silently absurd model
_KEYS = [("programming", "sigma", "programming_sigma", 10.0),
         ("stuck_at", "zero", "stuck_at_zero", 1.0),
         ("stuck_at", "max", "stuck_at_max", 1.0),
         ("read", "sigma", "read_sigma", 10.0),
         ("adc", "offset_sigma", "adc_offset_sigma", 1e6),
         ("adc", "gain_sigma", "adc_gain_sigma", 1.0),
         ("adc", "noise_sigma", "adc_noise_sigma", 1e6)]
_SECTIONS = {"programming": {"sigma", "distribution"}, "stuck_at": {"zero", "max"},
             "read": {"sigma"}, "adc": {"offset_sigma", "gain_sigma", "noise_sigma"}}


def parse(obj, source: str = "noise configuration") -> NoiseConfig:
    """A `NoiseConfig` from a parsed JSON object; `NoiseConfigError` names what is wrong."""
    if not isinstance(obj, dict):
        raise NoiseConfigError(f"{source}: must be a JSON object")
    if obj.get("format") != FORMAT:
        raise NoiseConfigError(f"{source}: 'format' must be {FORMAT!r}, got {obj.get('format')!r}")
    unknown = set(obj) - set(_SECTIONS) - {"format", "comment"}
    if unknown:
        raise NoiseConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: "
                               f"{sorted(_SECTIONS)}")
    for sec, keys in _SECTIONS.items():
        part = obj.get(sec, {})
        if not isinstance(part, dict):
            raise NoiseConfigError(f"{source}: '{sec}' must be an object")
        extra = set(part) - keys
        if extra:
            raise NoiseConfigError(f"{source}: unknown key(s) {sorted(extra)} in '{sec}'; "
                                   f"known: {sorted(keys)}")
    values: dict = {}
    for sec, key, name, top in _KEYS:
        v = obj.get(sec, {}).get(key, 0.0)
        try:
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) \
                and math.isfinite(float(v)) and 0 <= v <= top
        except OverflowError:  # an integer too large for a float
            ok = False
        if not ok:
            raise NoiseConfigError(f"{source}: '{sec}.{key}' must be a number in 0..{top:g}, "
                                   f"got {v!r}")
        values[name] = float(v)
    if values["stuck_at_zero"] + values["stuck_at_max"] > 1:
        raise NoiseConfigError(f"{source}: 'stuck_at.zero' + 'stuck_at.max' exceeds 1")
    dist = obj.get("programming", {}).get("distribution", "gaussian")
    if dist not in ("gaussian", "lognormal"):
        raise NoiseConfigError(f"{source}: 'programming.distribution' must be 'gaussian' or "
                               f"'lognormal', got {dist!r}")
    return NoiseConfig(programming_distribution=dist, source=source, **values)


def load(path: str | Path) -> NoiseConfig:
    """Read and check a noise configuration file (bounded in size before it is read)."""
    from ...contract.files import load_json

    obj = load_json(path, "a noise configuration", MAX_CONFIG_BYTES, NoiseConfigError)
    return parse(obj, str(path))


@dataclass
class LayerChip:
    """One layer's crossbars on one chip: conductances `(2, n_s, R, Ce_out)` (polarity, slice,
    row, column; physical column `e_out*n_s + q`, crossbar by row chunk and column chunk), and
    the ADCs' gain and offset `(2, n_s, chunks, Ce_out)`."""

    g: np.ndarray
    gain: np.ndarray
    offset: np.ndarray


def program_cells(cells: np.ndarray, cfg: NoiseConfig, cell_bits: int,
                  rng: np.random.Generator, faults: np.random.Generator | None = None
                  ) -> np.ndarray:
    """Conductances of cells programmed to the integer levels `cells`, on one chip: the
    variation drawn from `rng`, the stuck cells from `faults` (default `rng`). Both are drawn
    whatever the configuration, so a stream gives the same chip for every setting."""
    gmax = 2**cell_bits - 1
    g = cells.astype(np.float64)
    z = rng.standard_normal(g.shape)
    u = (rng if faults is None else faults).random(g.shape)
    if cfg.programming_sigma:
        if cfg.programming_distribution == "gaussian":
            g = g + cfg.programming_sigma * gmax * z
        else:
            g = g * np.exp(cfg.programming_sigma * z)
        g = np.clip(g, 0.0, gmax)
    if cfg.stuck_at_zero or cfg.stuck_at_max:
        g = np.where(u < cfg.stuck_at_zero, 0.0, g)
        # stuck at max from the top of the draw: a higher rate of either kind only adds cells
        g = np.where(u >= 1.0 - cfg.stuck_at_max, float(gmax), g)
    return g


class NoisyChip:
    """A network's crossbars with non-idealities: one chip of seed `seed`.

    `acc(layer, pim, x, reuse)` is the noisy counterpart of `reference.layer_acc`; pass the chip
    as `noise=` to `reference.run_network`."""

    def __init__(self, net: Network, cfg: NoiseConfig, seed: int = 0,
                 faults: dict[str, np.ndarray] | None = None):
        """`faults`: a fault map (`faults.py`), stuck cells on top of those `cfg` draws."""
        self.cfg = cfg
        self.faults = faults or {}
        self.seed = int(seed)
        self.pim = net.pim
        self._layers: dict[str, LayerChip] = {}
        self._index = {la.name: i for i, la in enumerate(net.layers)}
        # read and ADC noise, per conversion: a stream each, so one does not move the other
        self._reads = np.random.default_rng([self.seed, 1, 0])
        self._adc = np.random.default_rng([self.seed, 1, 1])

    def layer(self, layer: Layer) -> LayerChip:
        """The chip's state for `layer`, drawn once (so every image sees the same chip)."""
        chip = self._layers.get(layer.name)
        if chip is None:
            # one stream per effect and per layer, each always drawn: a seed is one chip, so
            # turning one effect on or up never moves another (the same cells stay stuck
            # whatever the variation)
            streams = [np.random.default_rng([self.seed, 0, self._index[layer.name], k])
                       for k in range(4)]
            cells = crossbar_slices(layer, self.pim.cell_bits)
            g = program_cells(cells, self.cfg, self.pim.cell_bits, streams[0], streams[1])
            if layer.name in self.faults:
                from .faults import cell_faults, faulty_levels

                fmap = cell_faults(layer, self.pim, self.faults[layer.name])
                g = faulty_levels(g, fmap, self.pim.cell_bits).astype(np.float64)
            chunks = geometry.row_chunks(cells.shape[2], self.pim.xbar_rows)
            shape = (2, cells.shape[1], chunks, cells.shape[3])
            gain = 1.0 + self.cfg.adc_gain_sigma * streams[2].standard_normal(shape)
            offset = self.cfg.adc_offset_sigma * streams[3].standard_normal(shape)
            chip = self._layers[layer.name] = LayerChip(g, gain, offset)
        return chip

    def acc(self, layer: Layer, pim: PIM, x: np.ndarray, reuse: bool = True) -> np.ndarray:
        """Accumulators `(N, Cout, Ho, Wo)` of a conv or linear layer on this chip."""
        n = x.shape[0]
        if layer.op == Op.LINEAR:
            x = x.reshape(n, -1, 1, 1)
        epi = layer.epitome
        cout = layer.out_channels
        _, ho, wo = layer.out_shape
        chip = self.layer(layer)
        cols = im2col(x, layer.kernel, layer.stride, layer.padding)  # (P, Cin, k*k)
        acc = np.zeros((cols.shape[0], cout), dtype=np.int64)
        j = np.arange(epi.patch_out)
        for st in steps(epi, reuse):
            src = ifat_sources(epi, layer.in_channels, st)
            rows = np.where((src >= 0)[None, :, None], cols[:, np.maximum(src, 0), :], 0)
            rows = rows.reshape(rows.shape[0], -1)
            v = np.zeros((rows.shape[0], epi.out_channels), dtype=np.int64)
            for h, h0 in enumerate(range(0, rows.shape[1], pim.xbar_rows)):
                part = slice(h0, h0 + pim.xbar_rows)
                v += self._chunk(rows[:, part], chip.g[:, :, part, :], chip.gain[:, :, h],
                                 chip.offset[:, :, h], layer.in_bits)
            for go in st.reuse:
                o = go * epi.patch_out + j
                keep = o < cout
                col = (epi.col_offset[st.gi, go] + j[keep]) % epi.out_channels
                acc[:, o[keep]] += v[:, col]
        return acc.reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)

    def _chunk(self, x: np.ndarray, g: np.ndarray, gain: np.ndarray, offset: np.ndarray,
               in_bits: int) -> np.ndarray:
        """One row chunk's part of the column values, as `reference.chunk_activation` but on
        conductances `g (2, n_s, rows, C)`, with read noise and the ADC's errors."""
        pim, cfg = self.pim, self.cfg
        gmax = 2**pim.cell_bits - 1
        n_t = geometry.dac_slices(in_bits, pim.dac_bits)
        v = np.zeros((x.shape[0], g.shape[3]), dtype=np.int64)
        for t in range(n_t):
            x_t = ((x >> (t * pim.dac_bits)) & geometry.dac_max(pim.dac_bits)).astype(
                np.float64)
            s = np.matmul(x_t, g)  # (2, n_s, P, C)
            if cfg.read_sigma:
                # independent noise on every cell read: the column sum's noise is Gaussian with
                # variance sigma^2 * sum of the squared row inputs (exact in distribution)
                scale = cfg.read_sigma * gmax * np.sqrt((x_t * x_t).sum(axis=1))  # (P,)
                s = s + scale[:, None] * self._reads.standard_normal(s.shape)
            if cfg.adc_noise_sigma:  # input-referred: at the ADC's input, before its gain
                s = s + cfg.adc_noise_sigma * self._adc.standard_normal(s.shape)
            s = s * gain[:, :, None, :] + offset[:, :, None, :]
            a = geometry.saturate(np.rint(s), pim.adc_bits).astype(np.int64)
            for q in range(g.shape[1]):
                v += (a[0, q] - a[1, q]) << (t * pim.dac_bits + q * pim.cell_bits)
        return v
