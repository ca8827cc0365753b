"""The streams' beats, defined once: how a pixel's channels pack into one beat, and how many
beats an image takes.

A beat carries one pixel: channel `c` of a `bits`-wide tensor at bits `[c*bits, (c+1)*bits)`,
least significant first, two's complement for a signed tensor. Pixels follow in raster order
(`y`, then `x`). A conv, max pool or add stream has `H*W` beats per image; a linear layer's
output and a global average pool's have one (contract section 6; `docs/tile.md`).

Standard library only: the simulator's testbenches, the hardware's tests, the board's host
code and the software all pack and unpack through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .ops import spec


def beats_per_image(op: str, shape: Sequence[int]) -> int:
    """Beats of one image on the stream out of a unit of `op` with output `(C, H, W)`."""
    return 1 if spec(op).one_beat else shape[1] * shape[2]


def pack(pixels: Iterable[Sequence[int]], bits: int) -> list[int]:
    """One beat per pixel (a sequence of channel values), channel `c` at `[c*bits, ...)`;
    negative values as two's complement."""
    mask = (1 << bits) - 1
    return [sum((int(v) & mask) << (c * bits) for c, v in enumerate(p)) for p in pixels]


def to_signed(v: int, bits: int) -> int:
    """A `bits`-wide field read as two's complement."""
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


def unpack(beat: int, channels: int, bits: int, signed: bool = False) -> list[int]:
    """The channel values of one beat."""
    mask = (1 << bits) - 1
    vals = [(beat >> (c * bits)) & mask for c in range(channels)]
    return [to_signed(v, bits) for v in vals] if signed else vals
