"""`avgpool_global` (contract section 6): each channel's sum over the map, requantized by a
multiplier and a shift; its accelerator unit is `epim.hw.units.PoolUnit` (one output beat an
image)."""

from __future__ import annotations

from ....contract.params import PoolParams
from ..netcycles import CollectModel, shape_of
from .common import unit_head


class GlobalAvgPoolOp:
    fields = frozenset({"mult", "shift", "out_bits"})

    def parse(self, ctx, lay, srcs, common):
        from ..netfile import MAX_SHIFT, MULT_LIMIT, Layer

        return Layer(**common, out_shape=(common["in_shape"][0], 1, 1),
                     pool_mult=ctx.int(lay, "mult", 1, MULT_LIMIT - 1),
                     pool_shift=ctx.int(lay, "shift", 0, MAX_SHIFT))

    def reference(self, layer, pim, xs, reuse, literal, noise):
        from ..reference import requantize

        s = xs[0].sum(axis=(2, 3), keepdims=True)  # (int64: requantize widens if needed)
        return requantize(s, layer.pool_mult, layer.pool_shift, 0, 2**layer.out_bits - 1)

    def unit(self, net, layer, ctx):
        from ..images import stream_bits

        c, h, w = shape_of(net, layer.inputs[0])
        return PoolParams(**unit_head(layer), channels=c, pixels=h * w,
                          in_bits=stream_bits(net, layer.inputs[0]), out_bits=layer.out_bits,
                          mult=int(layer.pool_mult), shift=int(layer.pool_shift))

    def model(self, net, layer, ctx):
        _, h, w = shape_of(net, layer.inputs[0])
        return CollectModel(h * w)
