"""Cycle model of the PIM tile: latency per image and steady-state cycles per image, exactly.

The tile (`epim.hw.tile`, described in `docs/tile.md`) computes one output pixel after another.
A pixel takes `pixel_cycles` cycles from its first IFRT step to the cycle that moves its result
into the output register: per step, one cycle to read the step's tables, per pass over the row
chunks a fill (one epitome input channel a cycle, plus the read latency) and the `n_t` DAC
slices, then the OFAT accumulation (`g_out + 1`); after the last step the output stage
(`cout + 5`) and the move (`epim.contract.tileplan`). The output beat leaves the cycle after the
move. The loader writes `in_blocks` input-memory words per input beat, one a cycle, into the
bank of its image; the tile waits for a full bank before an image's first pixel (one cycle to
see it, one to start) and releases the bank when the image's last pixel moves out.

This module replays that schedule image by image (no stalls: inputs always valid, outputs always
ready) and also gives the closed forms for the common case.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from ...contract import geometry, tileplan
from .epitome import steps
from .netfile import PIM, Layer


@dataclass(frozen=True)
class TileTiming:
    """The figures that fix a tile's schedule."""

    pixels: int  # output pixels per image (of this copy)
    in_beats: int  # H * W input beats per image
    n_steps: int  # IFRT steps per pixel
    n_t: int  # DAC slices per activation
    passes: int = 1  # passes over the row chunks per step: row chunks / chunk lanes, rounded up
    step: int = 0  # cycles of one IFRT step (`tileplan.step_cycles`)
    output: int = 0  # cycles of a pixel's output stage (`tileplan.output_cycles`)
    blocks: int = 1  # input-memory words per input beat (`tileplan.in_blocks`)
    blocks_x: int = 1  # column blocks of the crossbar, one after another (`tileplan.col_blocks`)

    @property
    def pixel_cycles(self) -> int:
        """Cycles from a pixel's first step to the move of its result."""
        return tileplan.pixel_cycles(self.n_steps, self.step, self.output)

    @property
    def load(self) -> int:
        """Cycles the loader takes for one image: `in_beats * blocks`."""
        return self.in_beats * self.blocks

    @property
    def busy(self) -> int:
        """Crossbar cycles per pixel: `steps * passes * column blocks * n_t` (a DAC slice of a
        column block of a pass each)."""
        return self.n_steps * self.passes * self.blocks_x * self.n_t

    @property
    def ideal(self) -> int:
        """Crossbar-busy cycles per image: `pixels * busy`."""
        return self.pixels * self.busy


def row_chunks(layer: Layer, pim: PIM) -> int:
    """Row chunks of the layer's epitome matrix: `ceil(Ce_in * k * k / xbar_rows)`."""
    return geometry.row_chunks(geometry.epitome_rows(layer.epitome.in_channels, layer.kernel),
                               pim.xbar_rows)


def cols_for(pim: PIM) -> int:
    """Physical columns a tile computes in a cycle: `pim.cycle_cols` (`epim generate --cols`),
    all `xbar_cols` by default."""
    return min(pim.cycle_cols or pim.xbar_cols, pim.xbar_cols)


def lanes_for(layer: Layer, pim: PIM, lanes: int | dict | None) -> int:
    """Chunk lanes of a tile (row chunks computed in one cycle): `lanes` (an int for every
    tile, or a dict by layer name) capped at the layer's row chunks; None or 0 (or a missing
    name) gives one lane, one crossbar's rows a cycle."""
    if isinstance(lanes, dict):
        lanes = lanes.get(layer.name)
    chunks = row_chunks(layer, pim)
    return min(lanes, chunks) if lanes else 1


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
    n_lanes = lanes_for(layer, pim, lanes)
    p = SimpleNamespace(kernel=layer.kernel, ce_in=layer.epitome.in_channels,
                        ce_out=layer.epitome.out_channels,
                        n_slices=geometry.cell_slices(layer.weight_bits, pim.cell_bits),
                        xbar_rows=pim.xbar_rows, xbar_cols=pim.xbar_cols, lanes=n_lanes,
                        cols=cols_for(pim),
                        n_t=geometry.dac_slices(layer.in_bits, pim.dac_bits),
                        g_out=layer.g_out, cout=layer.out_channels)
    return TileTiming(pixels=replica_pixels(ho * wo, *replica), in_beats=h * w,
                      n_steps=len(steps(layer.epitome, reuse)), n_t=p.n_t,
                      passes=geometry.ceil_div(chunks, n_lanes), blocks_x=tileplan.col_blocks(p),
                      step=tileplan.step_cycles(p), output=tileplan.output_cycles(p),
                      blocks=tileplan.in_blocks(layer.in_channels))


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
    """Replay the tile's schedule for `n_images` images arriving back to back."""
    first_in: list[int] = []
    full_at: list[int] = []  # first cycle the image's bank reads as full
    release: list[int] = []  # cycle at whose end the image's bank is released
    last_out: list[int] = []
    moved = -1  # the cycle that moved the previous image's last pixel out
    for n in range(n_images):
        start = 0 if n == 0 else first_in[n - 1] + t.load
        if n >= 2:
            start = max(start, release[n - 2] + 1)
        first_in.append(start)
        full_at.append(start + t.load)
        # waiting from the cycle after the last move, it sees the bank full, then starts
        first_step = max(moved + 1, full_at[n]) + 1
        moved = first_step + t.pixels * t.pixel_cycles - 1
        release.append(moved)
        last_out.append(moved + 1)
    return Schedule(first_in, last_out)


def closed_form(t: TileTiming) -> tuple[int, int]:
    """`(latency, steady cycles per image)`: an image arriving at an idle tile takes its load,
    one cycle to see the full bank, then `pixels * pixel_cycles`; back to back, an image that
    is loaded while the previous one computes starts one cycle after its last move.
    Valid when loading the next image hides under computing this one; :func:`schedule` is exact
    in every case.
    """
    run = t.pixels * t.pixel_cycles
    return t.load + 1 + run, run + 1
