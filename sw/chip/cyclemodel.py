"""Cycle model of the PIM tile: latency per image and steady-state cycles per image, exactly.

The tile (`epim.hw.tile`, described in `docs/tile.md`) works in pixel *slots*. A slot computes one
pixel on the crossbar (`T_c = steps * n_t * passes` cycles: per IFRT step and DAC slice, one cycle
per pass over the row chunks, `passes = ceil(chunks / lanes)`, 1 by default) while
the window gather fetches the next pixel (`k + 1` cycles: `k` column reads and one read latency).
A slot lasts as long as the longer of the two it holds. At the end of a slot the next pixel to
gather is taken if its input bank is full; otherwise the tile idles until it is, then spends one
cycle to start. A pixel's output beat leaves 5 cycles after its last crossbar cycle (the DAC
register, the pipeline register after the column sums, OFAT routing, output stage, output
register). The loader takes one beat per cycle into the free bank.

This module replays that schedule image by image (no stalls: inputs always valid, outputs always
ready) and also gives the closed forms for the common case.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...contract import geometry
from .epitome import steps
from .netfile import PIM, Layer

# last crossbar cycle -> DAC register -> column-sum register -> route -> output stage ->
# output register/beat
OUTPUT_PIPELINE = 5


@dataclass(frozen=True)
class TileTiming:
    """The figures that fix a tile's schedule."""

    pixels: int  # Ho * Wo output pixels per image
    in_beats: int  # H * W input beats per image
    kernel: int
    n_steps: int  # IFRT steps per pixel
    n_t: int  # DAC slices per activation
    passes: int = 1  # cycles per DAC slice: row chunks / chunk lanes, rounded up

    @property
    def cycles_per_step(self) -> int:
        return self.n_t * self.passes

    @property
    def compute(self) -> int:
        """Crossbar cycles per pixel, `T_c = steps * n_t * passes`."""
        return self.n_steps * self.n_t * self.passes

    @property
    def gather(self) -> int:
        return self.kernel + 1

    @property
    def slot(self) -> int:
        """Cycles of a slot that both computes and gathers."""
        return max(self.compute, self.gather)

    @property
    def ideal(self) -> int:
        """Crossbar-busy cycles per image: `Ho * Wo * steps * n_t`."""
        return self.pixels * self.compute


def row_chunks(layer: Layer, pim: PIM) -> int:
    """Row chunks of the layer's epitome matrix: `ceil(Ce_in * k * k / xbar_rows)`."""
    return geometry.row_chunks(geometry.epitome_rows(layer.epitome.in_channels, layer.kernel),
                               pim.xbar_rows)


def lanes_for(layer: Layer, pim: PIM, lanes: int | dict | None) -> int:
    """Chunk lanes of a tile: `lanes` (an int for every tile, or a dict by layer name) capped
    at the layer's row chunks; None or 0 (or a missing name) computes every chunk at once."""
    if isinstance(lanes, dict):
        lanes = lanes.get(layer.name)
    chunks = row_chunks(layer, pim)
    return min(lanes, chunks) if lanes else chunks


def replicas_for(layer: Layer, replicas: int | dict | None) -> int:
    """Copies of a layer's tile: `replicas` (an int for every tile, or a dict by layer name;
    None or a missing name: 1), at most the layer's output pixels per image."""
    if isinstance(replicas, dict):
        replicas = replicas.get(layer.name)
    _, ho, wo = layer.out_shape
    return max(1, min(replicas or 1, ho * wo))


def replica_pixels(pixels: int, r: int, replicas: int) -> int:
    """Output pixels per image that copy `r` of `replicas` computes: `r, r + R, ...`."""
    return -(-(pixels - r) // replicas)


def tile_timing(layer: Layer, pim: PIM, reuse: bool = True,
                lanes: int | dict | None = None, replica: tuple[int, int] = (0, 1)
                ) -> TileTiming:
    """The figures of a layer's tile, or of copy `r` of `R` for `replica=(r, R)`."""
    h, w = layer.in_hw
    _, ho, wo = layer.out_shape
    chunks = row_chunks(layer, pim)
    return TileTiming(pixels=replica_pixels(ho * wo, *replica), in_beats=h * w,
                      kernel=layer.kernel,
                      n_steps=len(steps(layer.epitome, reuse)),
                      n_t=geometry.dac_slices(layer.in_bits, pim.dac_bits),
                      passes=geometry.ceil_div(chunks, lanes_for(layer, pim, lanes)))


@dataclass(frozen=True)
class Schedule:
    """Predicted handshake cycles for a batch fed back to back."""

    first_in: list[int]  # cycle of each image's first input beat
    last_out: list[int]  # cycle of each image's last output beat

    @property
    def latency(self) -> list[int]:
        """Per image: cycles from its first input beat to its last output beat."""
        return [o - i for i, o in zip(self.first_in, self.last_out, strict=True)]

    @property
    def steady(self) -> float:
        """Mean cycles between successive images' last output beats."""
        n = len(self.last_out)
        return (self.last_out[-1] - self.last_out[0]) / (n - 1) if n > 1 else float("nan")


def schedule(t: TileTiming, n_images: int) -> Schedule:
    """Replay the tile's slot schedule for `n_images` images arriving back to back."""
    first_in: list[int] = []
    full_at: list[int] = []  # first cycle the image's bank reads as full
    release: list[int] = []  # cycle at whose end the image's bank is released

    def loaded(n: int) -> int:
        while len(full_at) <= n:
            m = len(full_at)
            start = 0 if m == 0 else full_at[m - 1]  # the cycle after the previous last beat
            if m >= 2:
                start = max(start, release[m - 2] + 1)
            first_in.append(start)
            full_at.append(start + t.in_beats)
        return full_at[n]

    last_out = [0] * n_images
    total = n_images * t.pixels  # pixel `m` of the batch is (image, pixel) divmod(m, pixels)
    computing, gathering = None, (0, 0)
    start = loaded(0) + 1  # the idle tile sees the full bank, then starts a gather-only slot
    taken = 1
    while computing or gathering:
        end = start + max(t.compute if computing else 0, t.gather if gathering else 0) - 1
        if computing:
            last_out[computing[0]] = start + t.compute - 1 + OUTPUT_PIPELINE
        if gathering and gathering[1] == t.pixels - 1:
            release.append(end)
        # Slot boundary: the gathered pixel is computed next; the next gather is taken if its
        # bank already reads full, otherwise the tile goes idle until it does.
        computing, gathering = gathering, None
        start = end + 1
        if taken < total:
            avail = loaded(taken // t.pixels)
            if avail <= end or not computing:
                gathering = divmod(taken, t.pixels)
                taken += 1
                if avail > end:
                    start = avail + 1
    return Schedule(first_in[:n_images], last_out)


def closed_form(t: TileTiming) -> tuple[int, int]:
    """`(latency, steady cycles per image)` when the crossbar is the bottleneck.

    Latency: `H*W` input beats, one cycle to start, the first gather (`k+1`), `Ho*Wo - 1` full
    slots, the last pixel's compute and the output pipeline. Steady state: one slot per pixel.
    Valid when loading the next image hides under computing this one; :func:`schedule` is exact
    in every case.
    """
    latency = (t.in_beats + 1 + t.gather + (t.pixels - 1) * t.slot + t.compute - 1
               + OUTPUT_PIPELINE)
    return latency, t.pixels * t.slot
