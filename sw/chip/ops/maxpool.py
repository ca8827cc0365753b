"""`maxpool` (contract section 6): the largest value of each `k x k` window at a stride, the
padding never winning; its accelerator unit is `epim.hw.maxpool.MaxPoolUnit` (line buffers
in a memory)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ....contract.params import MaxPoolParams
from ..netcycles import Unit, shape_of
from .common import unit_head


def maxpool(x: np.ndarray, k: int, stride: int, padding: int) -> np.ndarray:
    """Spec section 6: the largest value of each window, over the positions inside the map
    (padding never wins: the inputs are unsigned, the padding is -1)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                constant_values=-1)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :ho, :wo]
    return win.max(axis=(4, 5))


class MaxPoolModel(Unit):
    """`hw/maxpool.py: MaxPoolUnit`: the loader's row count, the scanner's row and column, the
    read stage and the output register (the data never changes the timing)."""

    def __init__(self, channels_hw: tuple[int, int, int], kernel: int, stride: int,
                 padding: int):
        _, self.h, self.w = channels_hw
        self.k, self.s, self.p = kernel, stride, padding
        self.ho = (self.h + 2 * padding - kernel) // stride + 1
        wo = (self.w + 2 * padding - kernel) // stride + 1
        self.slots = kernel + stride
        self.steps = (wo - 1) * stride + kernel
        self.ylast = min((self.ho - 1) * stride - padding + kernel - 1, self.h - 1)
        self.ix = self.iy = self.held = 0
        self.oy = self.u = self.base = 0
        self.until = kernel - 1
        self.b_valid = self.b_emit = self.o_valid = False

    def valid(self, port):
        return self.o_valid

    def ready(self, port, in_valid, out_ready):
        return self.held < self.slots or self.iy > self.ylast

    def step(self, in_fire, out_fire, out_ready):
        k, s = self.k, self.s
        b_move = not self.b_valid or not self.b_emit or not self.o_valid or out_ready[0]
        ys = self.oy * s
        r0, r1 = max(ys - self.p, 0), min(ys - self.p + k - 1, self.h - 1)
        start = self.u == 0
        issue = b_move and (self.held + self.base > r1 if start else True)
        row_done = in_fire[0] and self.ix == self.w - 1 and self.iy <= self.ylast
        rel = 0
        last_u, last_row = self.u == self.steps - 1, self.oy == self.ho - 1
        if self.b_valid and self.b_emit and b_move:
            self.o_valid = True
        elif out_ready[0]:
            self.o_valid = False
        if b_move:
            self.b_valid = issue
            if issue:
                self.b_emit = self.until == 0
        if issue:
            if last_u and last_row:
                rel, self.base = self.ylast + 1 - self.base, 0
            elif start:
                rel, self.base = r0 - self.base, r0
            self.until = k - 1 if last_u else (s - 1 if self.until == 0 else self.until - 1)
            self.u = 0 if last_u else self.u + 1
            if last_u:
                self.oy = 0 if last_row else self.oy + 1
        if in_fire[0]:
            if self.ix == self.w - 1:
                self.ix = 0
                self.iy = 0 if self.iy == self.h - 1 else self.iy + 1
            else:
                self.ix += 1
        self.held += int(row_done) - rel


class MaxPoolOp:
    fields = frozenset({"kernel", "stride", "padding"})

    def parse(self, ctx, lay, srcs, common):
        """Max pooling (v1.1): PyTorch's `max_pool2d` in floor mode, padding outside the map
        never wins; the output keeps the input's width."""
        from ..netfile import Layer

        c, h, w = common["in_shape"]
        k = ctx.int(lay, "kernel", 1, 15)
        s = ctx.int(lay, "stride", 1, 15) if "stride" in lay else 1
        p = ctx.int(lay, "padding", 0, k // 2) if "padding" in lay else 0
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if ho < 1 or wo < 1:
            raise ctx.fail("kernel", f"a {k}x{k} window with padding {p} is larger than the "
                           f"padded {h}x{w} input map")
        return Layer(**common, out_shape=(c, ho, wo), kernel=k, stride=s, padding=p)

    def reference(self, layer, pim, xs, reuse, literal, noise):
        return maxpool(xs[0], layer.kernel, layer.stride, layer.padding)

    def unit(self, net, layer, ctx):
        c, h, w = shape_of(net, layer.inputs[0])
        return MaxPoolParams(**unit_head(layer), channels=c, height=h, width=w, bits=layer.out_bits,
                             kernel=layer.kernel, stride=layer.stride, padding=layer.padding)

    def model(self, net, layer, ctx):
        return MaxPoolModel(shape_of(net, layer.inputs[0]), layer.kernel, layer.stride,
                            layer.padding)
