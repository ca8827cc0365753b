"""The chip wing's ops: one module per op (or family of ops), one registered object each.

An op's object answers, for a layer of that op, everything the chip wing computes from it:

- `fields` and `parse(ctx, lay, srcs, common)`: its keys in the network file, their ranges and
  its shape rule (`epim.sw.chip.netfile.parse` reads the keys every layer has and hands over);
- `reference(layer, pim, xs, reuse, literal, noise)`: its output tensor from its input tensors
  (the integer reference, `epim.sw.chip.reference.run_layer`);
- `unit(net, layer, ctx)`: its accelerator unit's parameters for the network images
  (`epim.contract.params`; `epim.sw.chip.images.compile_network`);
- `model(net, layer, ctx)`: the network cycle model's unit (`epim.sw.chip.netcycles.Unit`;
  `epim.sw.chip.netcycles.build_graph`).

The dispatchers above find an op here by its name (`chip_op`), so a new op is one new module
in this package, its line in `REGISTRY`, its entry in `epim.contract.ops` (what kind of unit it
is, how many inputs it reads); the hardware side registers its unit in `epim.hw.opunits`
(`docs/architecture.md`, "Adding an op").
"""

from __future__ import annotations

from types import SimpleNamespace

from ....contract.ops import Op
from .add import AddOp
from .avgpool import GlobalAvgPoolOp
from .maxpool import MaxPoolOp
from .tile import TileOp

_OUTPUT_STAGE = {"weight_bits", "epitome", "weights", "bias", "mult", "shift", "relu", "out_bits"}
REGISTRY = {
    Op.CONV: TileOp({"out_channels", "kernel", "stride", "padding"} | _OUTPUT_STAGE),
    Op.LINEAR: TileOp({"out_features"} | _OUTPUT_STAGE),
    Op.ADD: AddOp(),
    Op.AVGPOOL_GLOBAL: GlobalAvgPoolOp(),
    Op.MAXPOOL: MaxPoolOp(),
}


def chip_op(name: str):
    """The registered op `name` (ValueError for an op the chip wing does not know)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"op {name!r} has no entry in epim.sw.chip.ops") from None


def context(**kw) -> SimpleNamespace:
    """What a network-wide step hands every op (build options, FIFO depths, ...)."""
    return SimpleNamespace(**kw)
