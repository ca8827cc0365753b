"""The board's UART pair (8N1): a receiver that samples each bit in its middle and a
transmitter, at `divisor` clock cycles per bit."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


def check_divisor(divisor: int) -> None:
    if divisor < 4:
        raise ValueError(f"UART divisor {divisor}: at least 4 clock cycles per bit")


class UARTRx(wiring.Component):
    """8N1 receiver. `rx` is synchronised, each bit sampled in its middle; `valid` pulses for
    one cycle with `data` per byte received with a good stop bit, `frame_error` otherwise."""

    def __new__(cls, divisor: int, **kwargs):
        check_divisor(divisor)  # refused before the object exists: not an unused component
        return super().__new__(cls, **kwargs)

    def __init__(self, divisor: int):
        self._div = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(8), "valid": Out(1),
                          "frame_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        div = self._div
        line = Signal(init=1)  # the line, synchronised to the clock (two flip-flops)
        m.submodules.rx_sync = FFSynchronizer(self.rx, line, init=1)
        busy = Signal()
        cnt = Signal(range(div))
        bit = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += [self.valid.eq(0), self.frame_error.eq(0)]
        with m.If(~busy):
            with m.If(~line):
                m.d.sync += [busy.eq(1), cnt.eq(div // 2 - 1), bit.eq(0)]
        with m.Elif(cnt != 0):
            m.d.sync += cnt.eq(cnt - 1)
        with m.Else():
            m.d.sync += [cnt.eq(div - 1), bit.eq(bit + 1)]
            with m.If(bit == 0):
                with m.If(line):  # a glitch, not a start bit
                    m.d.sync += busy.eq(0)
            with m.Elif(bit <= 8):
                m.d.sync += shreg.eq(Cat(shreg[1:], line))
            with m.Else():
                m.d.sync += [busy.eq(0), self.data.eq(shreg), self.valid.eq(line),
                             self.frame_error.eq(~line)]
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter: takes a byte from `i` when idle."""

    def __new__(cls, divisor: int, **kwargs):
        check_divisor(divisor)
        return super().__new__(cls, **kwargs)

    def __init__(self, divisor: int):
        self._div = divisor
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        div = self._div
        busy = Signal()
        cnt = Signal(range(div))
        left = Signal(range(10))
        shreg = Signal(9)
        m.d.comb += self.i.ready.eq(~busy)
        with m.If(self.i.valid & ~busy):
            m.d.sync += [busy.eq(1), self.tx.eq(0), shreg.eq(Cat(self.i.payload, Const(1, 1))),
                         cnt.eq(div - 1), left.eq(9)]
        with m.Elif(busy):
            with m.If(cnt != 0):
                m.d.sync += cnt.eq(cnt - 1)
            with m.Elif(left == 0):
                m.d.sync += busy.eq(0)
            with m.Else():
                m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg[1:]), left.eq(left - 1),
                             cnt.eq(div - 1)]
        return m
