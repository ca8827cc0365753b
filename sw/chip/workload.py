"""Work and memory a network will cost, estimated from its shapes before any of it is spent.

A valid network file can still be more than a machine can run: a 1 KB file that describes a
4096x4096 input under a 15x15 conv passes validation, and the integer reference would then try
to allocate tens of GiB. `estimate` gives, from the shapes alone, the reference's peak memory
and multiply-accumulates and the cost model's slot-schedule steps; `epim check` prints them,
and `epim reference`, `epim cosim` and `epim cost` refuse, with the estimate, what would exceed
the machine (`--max-memory`, `--max-steps` raise the bounds).

The memory model, measured with `ru_maxrss` on the reference (docs/spec-notes.md): per chunk of
images, about 5 bytes per im2col window element when no crossbar can saturate and up to 35 when
some can (int64 rows and float64 crossbar slices), plus every tensor of the chunk (int64) and
the batch's inputs and outputs. `BYTES_PER_WINDOW` takes the larger figure.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ...contract.ops import TILE_OPS, Op
from .netfile import Layer, Network

BYTES_PER_WINDOW = 40  # peak bytes per im2col element of a chunk (measured 5-35)
BYTES_PER_VALUE = 16  # a tensor value: int64, and a copy while it is made
CHUNK_ELEMENTS = 2**24  # im2col elements per chunk of images (`reference.chunk_size`)
SCHEDULE_IMAGES = 3  # the cost model replays each distinct tile for this many images
MAX_SCHEDULE_STEPS = 20_000_000  # about 25 s of slot replay on a 2-core machine


class WorkTooLarge(ValueError):
    """A job would exceed the machine (memory) or the bound on work; the message has the
    estimate and the option that raises the bound."""


def windows_per_image(layer: Layer) -> int:
    """im2col elements of one image through a conv or linear layer."""
    if layer.op == Op.LINEAR:
        return layer.in_channels
    _, ho, wo = layer.out_shape
    return ho * wo * layer.in_channels * layer.kernel**2


def chunk_size(net: Network) -> int:
    """Images per reference chunk, so the largest layer's windows hold `CHUNK_ELEMENTS`."""
    per_image = max([1] + [windows_per_image(la) for la in net.layers
                           if la.op in TILE_OPS])
    return max(1, CHUNK_ELEMENTS // per_image)


def macs_per_image(layer: Layer) -> int:
    if layer.op not in TILE_OPS:
        return 0
    return windows_per_image(layer) * layer.out_channels


@dataclass(frozen=True)
class Estimate:
    images: int
    reference_bytes: int  # peak memory of the integer reference on `images` images
    macs_per_image: int
    schedule_steps: int  # slot steps of the cost model's tile schedules

    def line(self) -> str:
        return (f"work: the reference on {self.images} image(s) needs about "
                f"{human_bytes(self.reference_bytes)} of memory and "
                f"{self.macs_per_image / 1e6:.4g} M multiply-accumulates per image; the cost "
                f"model replays {self.schedule_steps:.3g} slot steps")


def estimate(net: Network, images: int = 1) -> Estimate:
    chunk = min(images, chunk_size(net))
    windows = max([0] + [windows_per_image(la) for la in net.layers
                         if la.op in TILE_OPS])
    per_image_values = math.prod(net.input_shape) + sum(math.prod(la.out_shape)
                                                        for la in net.layers)
    io_values = images * (math.prod(net.input_shape) + math.prod(net.output_layer.out_shape))
    ref = (BYTES_PER_WINDOW * chunk * windows + BYTES_PER_VALUE * chunk * per_image_values
           + BYTES_PER_VALUE * io_values)
    tiles = {}
    for la in net.layers:
        if la.op in TILE_OPS:
            _, ho, wo = la.out_shape
            tiles[(la.in_hw, ho, wo, la.kernel, la.stride)] = ho * wo
    steps = SCHEDULE_IMAGES * sum(tiles.values())
    return Estimate(images, ref, sum(macs_per_image(la) for la in net.layers), steps)


def machine_memory() -> int:
    """Bytes of physical memory (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def default_max_memory() -> int:
    """Three quarters of the machine's memory (EPIM_MAX_MEMORY, in bytes or with a unit,
    overrides)."""
    env = os.environ.get("EPIM_MAX_MEMORY")
    if env:
        return parse_size(env)
    total = machine_memory()
    return total * 3 // 4 if total else 16 * 2**30


def check_reference(net: Network, images: int, max_memory: int | None = None) -> Estimate:
    """Refuse (`WorkTooLarge`) a reference run whose estimated peak memory is above
    `max_memory` (default `default_max_memory()`), before anything is allocated."""
    est = estimate(net, images)
    limit = default_max_memory() if max_memory is None else max_memory
    whose = ("three quarters of this machine's memory" if max_memory is None
             and not os.environ.get("EPIM_MAX_MEMORY") else "as given")
    if est.reference_bytes > limit:
        one = estimate(net, 1).reference_bytes
        hint = (f"; one image at a time needs about {human_bytes(one)}"
                if images > 1 and one <= limit else "")
        raise WorkTooLarge(
            f"{net.source}: the integer reference on {images} image(s) would need about "
            f"{human_bytes(est.reference_bytes)} of memory ({est.macs_per_image / 1e6:.4g} M "
            f"multiply-accumulates per image), more than the limit of {human_bytes(limit)} "
            f"({whose}){hint}; give --max-memory to raise the limit")
    return est


def check_schedule(net: Network, max_steps: int | None = None) -> Estimate:
    """Refuse (`WorkTooLarge`) a cost-model run whose slot schedules would take more than
    `max_steps` steps (default `MAX_SCHEDULE_STEPS`), before it starts."""
    est = estimate(net, 1)
    limit = MAX_SCHEDULE_STEPS if max_steps is None else max_steps
    if est.schedule_steps > limit:
        raise WorkTooLarge(
            f"{net.source}: the cost model would replay about {est.schedule_steps:.3g} slot "
            f"steps of its tiles' schedules (about {est.schedule_steps * 1.2e-6:.0f} s on a "
            f"2-core machine), more than the limit of {limit:.3g}; give --max-steps to raise "
            "the limit")
    return est


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20,
          "mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40,
          "tib": 2**40}


def parse_size(text: str) -> int:
    """`'512M'`, `'20G'`, `'3GiB'`, `'1000000'` as bytes (binary units); ValueError else."""
    t = text.strip().lower()
    num = t.rstrip("kmgtib")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = math.nan
    if unit not in _UNITS or not math.isfinite(value) or value <= 0 or value > 2**60:
        raise ValueError(f"{text!r}: a size such as 512M, 20G or 3GiB")
    return int(value * _UNITS[unit])


def human_bytes(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"
