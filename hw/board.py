"""Board tops: the network accelerator behind a UART (the boards' USB serial), with status LEDs.

`BoardLink` is the platform-independent part (UART receiver and transmitter, the protocol of
`epim.hw.protocol`, the accelerator); `BoardTop` puts it on an Amaranth board platform with its
clock (a PLL on the ULX3S) and pins. The cocotb board test drives `BoardLink`'s `rx`/`tx` pins.

LEDs: 0 heartbeat (about 1.5 Hz), 1 the accelerator is busy, 2 toggles per image received,
3 error (a byte that is no command, a bad stop bit, an input byte lost to back-pressure, or a
programming word that came before the one before it was taken).

A programmable accelerator (one with a `prog` port) is written word by word by ``P``
commands; a weight-baked one answers ``P`` as a byte that is no command.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from amaranth.build import ResourceError
from amaranth.hdl import (
    Array,
    Cat,
    ClockDomain,
    Const,
    Elaboratable,
    Instance,
    Module,
    Mux,
    Signal,
    Value,
)
from amaranth.lib import crc, enum, io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from . import protocol
from .uart import UARTRx, UARTTx, check_divisor


class Sending(enum.Enum, shape=3):
    """What the board is sending to the host."""

    IDLE = 0
    IDENTITY = 1  # the identity reply
    OUTPUT = 2  # an output beat ('O' first when it starts an image's answer)
    ERROR = 3  # the error mark
    CHECK = 4  # the programming checksum


class BoardLink(wiring.Component):
    """The accelerator `acc` (streams `i`, `o`, and `idle`) behind the protocol of
    `epim.hw.protocol`, on UART pins at `divisor` clock cycles per bit.

    `manifest` is the network images' `network.json` (shapes, output format, `units_sha256`).
    A network the protocol cannot carry (`protocol.check_board`) is refused.
    """

    def __new__(cls, acc, manifest: dict, divisor: int, **kwargs):
        protocol.check_board(manifest)
        check_divisor(divisor)
        return super().__new__(cls)

    def __init__(self, acc, manifest: dict, divisor: int, heartbeat_bits: int = 24):
        self._acc, self._man, self._div = acc, manifest, divisor
        self._hb = heartbeat_bits
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(4)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.acc = acc = self._acc
        m.submodules.rx = rx = UARTRx(self._div)
        m.submodules.tx = tx = UARTTx(self._div)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        error = Signal()
        received = Signal()
        req = self.receive(m, rx, acc, error, received)
        self.send(m, tx, acc, req)
        hb = Signal(self._hb)
        m.d.sync += hb.eq(hb + 1)
        # (registered: the accelerator's idle gathers every tile's, far apart on a chip)
        m.d.sync += self.leds.eq(Cat(hb[-1], ~acc.idle, received, error))
        return m

    def receive(self, m: Module, rx, acc, error, received):
        """Host to board: commands, image bytes into pixel beats, programming bytes into
        programming words. Returns the pending identify, bad-command and checksum requests
        and the programming checksum."""
        inp = self._man["input"]
        c, pixels, bits = inp["channels"], inp["height"] * inp["width"], inp["bits"]
        in_image = Signal()
        ch = Signal(range(c))
        pix = Signal(range(pixels))
        lanes = [Signal(bits, name=f"in_value_{k}") for k in range(c)]
        beat_valid = Signal()
        ident_req = Signal()
        bad_req = Signal()
        check_req = Signal()
        m.d.comb += [acc.i.payload.eq(Cat(*lanes)), acc.i.valid.eq(beat_valid)]
        with m.If(acc.i.valid & acc.i.ready):
            m.d.sync += beat_valid.eq(0)
        with m.If(rx.frame_error):
            m.d.sync += error.eq(1)
        # programming words: bytes into `p_word` (least significant first), then the word
        # into `p_out`, held on the port until the tiles take it; `prog_crc` follows them
        has_prog = "prog" in acc.signature.members
        m.submodules.prog_crc = pcrc = CRC16.create()
        in_prog = Signal()
        if has_prog:
            pw = len(Value.cast(acc.prog.payload))
            nb = protocol.prog_bytes(pw)
            p_idx = Signal(range(nb))
            p_word = Signal(nb * 8)
            p_out = Signal(pw)
            p_valid = Signal()
            m.d.comb += [acc.prog.valid.eq(p_valid), acc.prog.payload.eq(p_out)]
            with m.If(acc.prog.valid & acc.prog.ready):
                m.d.sync += p_valid.eq(0)
        with m.If(rx.valid & in_prog):
            m.d.comb += [pcrc.data.eq(rx.data), pcrc.valid.eq(1)]
            if has_prog:
                word = Cat(p_word[8:], rx.data)
                m.d.sync += p_word.eq(word)
                with m.If(p_idx == nb - 1):
                    m.d.sync += [in_prog.eq(0), p_out.eq(word[:pw]), p_valid.eq(1)]
                    with m.If(p_valid & ~acc.prog.ready):  # the word before still waits
                        m.d.sync += error.eq(1)
                with m.Else():
                    m.d.sync += p_idx.eq(p_idx + 1)
        with m.Elif(rx.valid):
            with m.If(in_image):
                for k in range(c):
                    with m.If(ch == k):
                        m.d.sync += lanes[k].eq(rx.data[:bits])
                with m.If(ch == c - 1):
                    m.d.sync += [ch.eq(0), beat_valid.eq(1)]
                    with m.If(beat_valid & ~acc.i.ready):  # the previous beat still waits
                        m.d.sync += error.eq(1)
                    with m.If(pix == pixels - 1):
                        m.d.sync += [pix.eq(0), in_image.eq(0), received.eq(~received)]
                    with m.Else():
                        m.d.sync += pix.eq(pix + 1)
                with m.Else():
                    m.d.sync += ch.eq(ch + 1)
            with m.Elif(rx.data == protocol.IMAGE[0]):
                m.d.sync += [in_image.eq(1), ch.eq(0), pix.eq(0)]
            with m.Elif(rx.data == protocol.IDENTIFY[0]):
                m.d.sync += ident_req.eq(1)
                m.d.comb += pcrc.start.eq(1)
            with m.Elif(rx.data == protocol.CHECK[0]):
                m.d.sync += check_req.eq(1)
            with m.Elif((rx.data == protocol.PROGRAM[0]) & has_prog):
                m.d.sync += in_prog.eq(1)
                if has_prog:
                    m.d.sync += p_idx.eq(0)
            with m.Else():
                m.d.sync += [bad_req.eq(1), error.eq(1)]
        return SimpleNamespace(ident=ident_req, bad=bad_req, check=check_req, crc=pcrc.crc)

    def send(self, m: Module, tx, acc, req):
        """Board to host: the identity, the error mark, the programming checksum, and each
        image's answer frame (header with the first beat, CRC after the last; the CRC register
        follows every byte sent between them)."""
        ident_req, bad_req = req.ident, req.bad
        man, out = self._man, self._man["output"]
        ident = protocol.ident_reply(man["units_sha256"])
        nb = protocol.value_bytes(out["bits"])
        f, per = out["channels"], out["beats_per_image"]
        beat = Signal(len(acc.o.payload))
        out_bytes = []
        for v in range(f):
            word = beat[v * out["bits"]:(v + 1) * out["bits"]]
            word = Cat(word, word[-1].replicate(nb * 8 - out["bits"]) if out["signed"]
                       else Const(0, nb * 8 - out["bits"]))
            out_bytes += [word[8 * b:8 * b + 8] for b in range(nb)]
        pre, n_out, n_crc = protocol.HEADER_BYTES, len(out_bytes), protocol.CRC_BYTES
        n_send = max(len(ident), pre + n_out + n_crc)
        sending = Signal(Sending)
        idx = Signal(range(n_send + 1))
        head = Signal()  # this beat starts an image's answer: the header first
        tail = Signal()  # ... and this one ends it: the CRC last
        beat_no = Signal(range(per))
        seq = Signal(8)
        m.submodules.crc = crc_unit = CRC16.create()
        crc = crc_unit.crc
        length = protocol.output_bytes(man)
        header = Array([Const(protocol.OUTPUT[0], 8), seq, Const(length & 0xFF, 8),
                        Const(length >> 8, 8)])
        ident_arr = Array(Const(b, 8) for b in ident)
        out_arr = Array(out_bytes)
        byte = Signal(8)
        last = Signal()
        at = Signal(range(n_send + 1))  # index into the beat's payload bytes
        in_head = Signal()
        in_crc = Signal()
        m.d.comb += [at.eq(idx - Mux(head, pre, 0)), in_head.eq(head & (idx < pre)),
                     in_crc.eq(tail & ~in_head & (at >= n_out))]
        with m.Switch(sending):
            with m.Case(Sending.IDENTITY):
                m.d.comb += [byte.eq(ident_arr[idx]), last.eq(idx == len(ident) - 1)]
            with m.Case(Sending.OUTPUT):
                with m.If(in_head):
                    m.d.comb += byte.eq(header[idx])
                with m.Elif(in_crc):
                    m.d.comb += byte.eq(Mux(at == n_out, crc[:8], crc[8:]))
                with m.Else():
                    m.d.comb += byte.eq(out_arr[at])
                m.d.comb += last.eq(at == n_out - 1 + Mux(tail, n_crc, 0))
            with m.Case(Sending.ERROR):
                m.d.comb += [byte.eq(protocol.ERROR[0]), last.eq(1)]
            with m.Case(Sending.CHECK):
                check = Array([Const(protocol.CHECK[0], 8), req.crc[:8], req.crc[8:]])
                m.d.comb += [byte.eq(check[idx]), last.eq(idx == protocol.CHECK_BYTES - 1)]
        m.d.comb += [tx.i.payload.eq(byte), tx.i.valid.eq(sending != Sending.IDLE)]
        with m.If(tx.i.valid & tx.i.ready):
            with m.If(last):
                m.d.sync += [sending.eq(Sending.IDLE), idx.eq(0)]
            with m.Else():
                m.d.sync += idx.eq(idx + 1)
            with m.If(sending == Sending.OUTPUT):
                with m.If(head & (idx == 0)):  # (the type byte is outside the CRC)
                    m.d.comb += crc_unit.start.eq(1)
                with m.Elif(~in_crc):
                    m.d.comb += [crc_unit.data.eq(byte), crc_unit.valid.eq(1)]
                with m.If(tail & last):
                    m.d.sync += seq.eq(seq + 1)
        with m.If(sending == Sending.IDLE):
            with m.If(bad_req):
                m.d.sync += [sending.eq(Sending.ERROR), bad_req.eq(0)]
            with m.Elif(ident_req):
                m.d.sync += [sending.eq(Sending.IDENTITY), ident_req.eq(0), idx.eq(0),
                             seq.eq(0)]
            with m.Elif(req.check):
                m.d.sync += [sending.eq(Sending.CHECK), req.check.eq(0), idx.eq(0)]
            with m.Elif(acc.o.valid):
                m.d.comb += acc.o.ready.eq(1)
                m.d.sync += [sending.eq(Sending.OUTPUT), idx.eq(0), beat.eq(acc.o.payload),
                             head.eq(beat_no == 0), tail.eq(beat_no == per - 1),
                             beat_no.eq(0 if per == 1 else Mux(beat_no == per - 1, 0,
                                                                beat_no + 1))]


# The answer frame's CRC (`protocol.crc16`: CRC-16/CCITT-FALSE, catalogued as IBM-3740) as
# Amaranth's CRC unit, a byte per cycle.
CRC16 = crc.catalog.CRC16_IBM_3740(data_width=8)


def pll_settings(f_in_mhz: float, f_out_mhz: float) -> tuple[int, int, int]:
    """`(CLKI_DIV, CLKFB_DIV, CLKOP_DIV)` of an ECP5 EHXPLLL turning `f_in_mhz` into exactly
    `f_out_mhz`, with the VCO in 400..800 MHz (nearest 600) and the phase detector at 3.125 MHz
    or more."""
    for ref in range(1, 129):
        for fb in range(1, 81):
            if abs(f_in_mhz * fb / ref - f_out_mhz) > 1e-6 or f_in_mhz / ref < 3.125:
                continue
            ops = [op for op in range(1, 129) if 400 <= f_out_mhz * op <= 800]
            if ops:  # the VCO nearest the middle of its range, as ecppll picks it
                return ref, fb, min(ops, key=lambda op: abs(f_out_mhz * op - 600))
    raise ValueError(f"no ECP5 PLL setting turns {f_in_mhz:g} MHz into exactly "
                     f"{f_out_mhz:g} MHz")


def pll_ecp5(m: Module, clk_in, f_in_mhz: float, f_out_mhz: float, domain: str = "sync"):
    """An EHXPLLL from `clk_in` to `f_out_mhz` (`pll_settings`) driving `domain`, held in
    reset until the PLL locks."""
    ref, fb, op = pll_settings(f_in_mhz, f_out_mhz)
    lock = Signal()
    cd = ClockDomain(domain)
    m.domains += cd
    m.submodules.pll = Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=str(f_in_mhz), a_FREQUENCY_PIN_CLKOP=str(f_out_mhz),
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKI_DIV=ref,
        p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=op, p_CLKOP_CPHASE=max(0, op // 2 - 1),
        p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=fb,
        i_RST=0, i_STDBY=0, i_CLKI=clk_in, o_CLKOP=cd.clk, i_CLKFB=cd.clk,
        i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
        i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=lock)
    m.submodules.reset_sync = ResetSynchronizer(~lock, domain=domain)
    return cd


class BoardTop(Elaboratable):
    """`BoardLink` on a board platform: its UART, four LEDs (or as many as it has), the clock
    from the board's oscillator, through a PLL to `clock_mhz` on ECP5 boards."""

    def __init__(self, acc, manifest: dict, baud: int = 115200, clock_mhz: float | None = None):
        self._acc, self._man, self._baud, self._mhz = acc, manifest, baud, clock_mhz

    def clock_mhz(self, platform) -> float:
        return self._mhz or platform.default_clk_frequency / 1e6

    def elaborate(self, platform):
        m = Module()
        f_in = platform.default_clk_frequency / 1e6
        f = self.clock_mhz(platform)
        if platform.family == "ecp5" and f != f_in:
            clk = platform.request(platform.default_clk, dir="-")
            m.submodules.clk_buf = buf = io.Buffer("i", clk)
            # nextpnr derives the PLL output's constraint from the oscillator's and the
            # dividers ("Derived frequency constraint of 50.0 MHz" in its log)
            pll_ecp5(m, buf.i, f_in, f)
        elif f != f_in:
            raise ValueError(f"{type(platform).__name__}: runs at its {f_in:g} MHz oscillator; "
                             f"a {f:g} MHz clock needs a PLL this flow does not set up")
        divisor = round(f * 1e6 / self._baud)
        if abs(f * 1e6 / divisor - self._baud) / self._baud > 0.02:
            raise ValueError(f"{self._baud} baud is not within 2% at {f:g} MHz")
        hb = max(4, math.ceil(math.log2(f * 1e6 / 1.5)))
        m.submodules.link = link = BoardLink(self._acc, self._man, divisor, heartbeat_bits=hb)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx_buf.i), tx_buf.o.eq(link.tx)]
        for n in range(4):
            try:
                led = platform.request("led", n, dir="-")
            except ResourceError:  # fewer LEDs on this board
                break
            m.submodules[f"led_{n}"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(link.leds[n])
        return m

