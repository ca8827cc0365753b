"""The ops of the network file, by name, and what every part of EPIM needs to know of each: the
registry that replaces op names written as strings across the code.

An op's entry says which accelerator unit carries it, how many tensors it reads, whether it
runs on crossbars (a tile), whether its output stream has one beat per image, whether its
output keeps its input's width, and whether it may read a signed tensor. Code asks these
questions of the entry (`spec(op).crossbar`, `TILE_OPS`) instead of listing op names, and
this module is the only place that spells them (`tests/test_layout.py` checks it).

The names are plain strings (not an enum), so they go into JSON, network files and training
checkpoints (read with `weights_only=True`) as they are.
"""

from __future__ import annotations

from dataclasses import dataclass


class Op:
    """The network file's op names (`docs/contract.md`, section 7)."""

    CONV = "conv"
    LINEAR = "linear"
    ADD = "add"
    AVGPOOL_GLOBAL = "avgpool_global"
    MAXPOOL = "maxpool"


@dataclass(frozen=True)
class OpSpec:
    name: str
    unit: str  # the accelerator's unit kind (`contract.graph`): tile, add, pool, maxpool
    inputs: int  # tensors the op reads
    crossbar: bool  # a tile on crossbars: weights, epitome, IFAT/IFRT/OFAT, output stage
    one_beat: bool  # its output stream carries one beat per image (else one per pixel)
    keeps_bits: bool  # its output has its input's width (no `out_bits` of its own)
    reads_signed: bool  # it may read a signed tensor


REGISTRY: dict[str, OpSpec] = {s.name: s for s in (
    OpSpec(Op.CONV, "tile", 1, crossbar=True, one_beat=False, keeps_bits=False,
           reads_signed=False),
    OpSpec(Op.LINEAR, "tile", 1, crossbar=True, one_beat=True, keeps_bits=False,
           reads_signed=False),
    OpSpec(Op.ADD, "add", 2, crossbar=False, one_beat=False, keeps_bits=False,
           reads_signed=True),
    OpSpec(Op.AVGPOOL_GLOBAL, "pool", 1, crossbar=False, one_beat=True, keeps_bits=False,
           reads_signed=False),
    OpSpec(Op.MAXPOOL, "maxpool", 1, crossbar=False, one_beat=False, keeps_bits=True,
           reads_signed=False),
)}

NAMES = tuple(REGISTRY)
TILE_OPS = tuple(n for n, s in REGISTRY.items() if s.crossbar)  # conv, linear
ONE_BEAT_OPS = tuple(n for n, s in REGISTRY.items() if s.one_beat)  # linear, global pool


def spec(op: str) -> OpSpec:
    """The entry of `op` (KeyError for a name that is no op)."""
    return REGISTRY[op]
