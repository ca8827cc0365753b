"""`conv` and `linear` (contract sections 2-5): the layers on crossbars, each a PIM tile
(`epim.hw.tile.PIMTile`): epitome weights in the cells, IFAT/IFRT/OFAT tables, the output
stage."""

from __future__ import annotations

from ....contract.params import FlattenParams, TileUnit
from .common import unit_head


class TileOp:
    """`conv` and `linear`: the same tile, their own keys."""

    def __init__(self, fields: set[str]):
        self.fields = frozenset(fields)

    def parse(self, ctx, lay, srcs, common):
        from ..netfile import parse_tile

        return parse_tile(ctx, lay, common)

    def reference(self, layer, pim, xs, reuse, literal, noise):
        from ..reference import layer_acc, output_stage

        if noise is not None:
            return output_stage(noise.acc(layer, pim, xs[0], reuse), layer)
        return output_stage(layer_acc(layer, pim, xs[0], reuse, literal), layer)

    def unit(self, net, layer, ctx):
        from ..cyclemodel import replicas_for
        from ..images import compile_layer, stream_bits
        from ..netcycles import needs_flatten, shape_of

        ctx.tiles[layer.name] = compile_layer(net, layer, reuse=ctx.reuse, lanes=ctx.lanes,
                                              faults=(ctx.faults or {}).get(layer.name))
        src = shape_of(net, layer.inputs[0])
        flat = (FlattenParams(src[0], src[1] * src[2], stream_bits(net, layer.inputs[0]))
                if needs_flatten(net, layer) else None)
        return TileUnit(**unit_head(layer), folder=f"tiles/{layer.name}", flatten=flat,
                        replicas=replicas_for(layer, ctx.replicas))

    def model(self, net, layer, ctx):
        from ..netcycles import tile_model

        return tile_model(layer, net.pim, ctx.reuse, ctx.lanes, ctx.replicas)
