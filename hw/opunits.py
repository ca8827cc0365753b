"""The accelerator's unit of each op that is not a crossbar layer, found by the op's name.

`hw/network.py` asks `op_unit(params)` for a unit of the network manifest (`epim.contract.params`)
and wires the streams it gets back; the tiles of `conv` and `linear` are built there (they are
shared by shape and programmed). A new op's unit is its own module and one entry here
(`docs/architecture.md`, "Adding an op")."""

from __future__ import annotations

from ..contract.ops import Op, spec
from .maxpool import MaxPoolUnit
from .units import AddUnit, PoolUnit


def _add(p):
    unit = AddUnit(p.channels, p.a_bits, p.b_bits, p.out_bits, p.ma, p.mb, p.shift, p.a_signed,
                   p.b_signed)
    return unit, [unit.a, unit.b], [unit.o]


def _pool(p):
    unit = PoolUnit(p.channels, p.pixels, p.in_bits, p.out_bits, p.mult, p.shift)
    return unit, [unit.i], [unit.o]


def _maxpool(p):
    unit = MaxPoolUnit(p)
    return unit, [unit.i], [unit.o]


UNITS = {Op.ADD: _add, Op.AVGPOOL_GLOBAL: _pool, Op.MAXPOOL: _maxpool}  # op -> its builder


def op_unit(p) -> tuple[object, str, list, list]:
    """`(unit, submodule name, input streams, output streams)` of the unit parameters `p`;
    the submodule is named after the layer and its unit kind (`epim.contract.ops`)."""
    unit, ins, outs = UNITS[p.op](p)
    return unit, f"{p.name}_{spec(p.op).unit}", ins, outs
