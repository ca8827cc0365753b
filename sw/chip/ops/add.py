"""`add` (contract section 6): two tensors scaled by integer multipliers, summed, shifted with
rounding and clamped; its accelerator unit is `epim.hw.units.AddUnit`, with a skip FIFO on each
input that the network cycle model sizes."""

from __future__ import annotations

from ....contract.params import AddParams
from ..netcycles import Unit
from .common import unit_head


class AddModel(Unit):
    n_in = 2

    def __init__(self):
        self.o_valid = False

    def valid(self, port):
        return self.o_valid

    def ready(self, port, in_valid, out_ready):
        return in_valid[0] and in_valid[1] and (not self.o_valid or out_ready[0])

    def step(self, in_fire, out_fire, out_ready):
        if in_fire[0]:
            self.o_valid = True
        elif out_ready[0]:
            self.o_valid = False


class AddOp:
    fields = frozenset({"ma", "mb", "shift", "out_bits"})

    def parse(self, ctx, lay, srcs, common):
        from ..netfile import MAX_SHIFT, MULT_LIMIT, Layer

        shape = common["in_shape"]
        if srcs[1][0] != shape:
            raise ctx.fail("inputs", f"inputs differ in shape: {list(shape)} and "
                           f"{list(srcs[1][0])}")
        return Layer(**common, out_shape=shape,
                     ma=ctx.int(lay, "ma", -MULT_LIMIT + 1, MULT_LIMIT - 1),
                     mb=ctx.int(lay, "mb", -MULT_LIMIT + 1, MULT_LIMIT - 1),
                     add_shift=ctx.int(lay, "shift", 0, MAX_SHIFT))

    def reference(self, layer, pim, xs, reuse, literal, noise):
        from ..reference import needs_bigint, requantize

        a, b = xs
        if needs_bigint(a, layer.ma) or needs_bigint(b, layer.mb):
            a, b = a.astype(object), b.astype(object)
        return requantize(a * layer.ma + b * layer.mb, 1, layer.add_shift, 0,
                          2**layer.out_bits - 1)

    def unit(self, net, layer, ctx):
        from ..images import stream_bits

        return AddParams(
            **unit_head(layer), channels=layer.out_shape[0],
            a_bits=stream_bits(net, layer.inputs[0]),
            b_bits=stream_bits(net, layer.inputs[1]), out_bits=layer.out_bits,
            ma=int(layer.ma), mb=int(layer.mb), shift=int(layer.add_shift),
            fifo=tuple(ctx.fifo_depths[layer.name]), a_signed=net.signed(layer.inputs[0]),
            b_signed=net.signed(layer.inputs[1]))

    def model(self, net, layer, ctx):
        return AddModel()
