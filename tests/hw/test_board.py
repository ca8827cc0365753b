"""The board top's parts in Amaranth's simulator: the UART pair, the threshold output stage of
fixed tiles, and the protocol helpers (the whole board top runs on Verilator in
tests/app/test_board.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Cat, Fragment, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.hw import protocol
from epim.hw.board import BoardLink, pll_ecp5, pll_settings
from epim.hw.uart import UARTRx, UARTTx
from epim.hw.units import exact_scale, scale_clamped


@settings(max_examples=60, deadline=None)
@given(mult=st.integers(1, 2**31 - 1), shift=st.integers(0, 40), vmax=st.integers(1, 900),
       out_bits=st.sampled_from([4, 8]))
def test_exact_scale_gives_the_same_outputs_over_the_range(mult, shift, vmax, out_bits):
    hi = 2**out_bits - 1
    m2, s2 = exact_scale(mult, shift, vmax, hi)
    assert m2 <= mult and s2 <= shift
    for v in range(vmax + 1):
        assert scale_clamped(v, m2, s2, hi) == scale_clamped(v, mult, shift, hi)


def test_exact_scale_of_the_mnist_pool():
    # the committed model's global pooling: 49 pixels of 4-bit values, 8-bit output
    assert exact_scale(1195758605, 32, 49 * 15, 255) == (9123, 15)


def _uart_pair(divisor: int):
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    return m, tx, rx


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_uart_transmitter_and_receiver_agree(divisor):
    m, tx, rx = _uart_pair(divisor)
    data = [0x00, 0xFF, 0x55, 0xA3, 0x3F, 0x49] + [random.Random(divisor).randrange(256)
                                                     for _ in range(10)]
    got, errors = [], []
    sim = Simulator(m)
    sim.add_clock(1e-8)

    async def run(ctx):
        queue = list(data)
        cycles = 0
        while (queue or len(got) < len(data)) and cycles < len(data) * 12 * divisor + 200:
            ctx.set(tx.i.valid, bool(queue))
            if queue:
                ctx.set(tx.i.payload, queue[0])
            _, _, ready, valid = await ctx.tick().sample(tx.i.ready, tx.i.valid)
            if queue and ready and valid:
                queue.pop(0)
            if ctx.get(rx.valid):
                got.append(ctx.get(rx.data))
            if ctx.get(rx.frame_error):
                errors.append(cycles)
            cycles += 1

    sim.add_testbench(run)
    sim.run()
    assert got == data
    assert not errors


def test_uart_receiver_flags_a_missing_stop_bit():
    divisor = 8
    m = Module()
    m.submodules.rx = rx = UARTRx(divisor)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    seen = {"valid": 0, "error": 0}

    async def run(ctx):
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(5)
        for level in [0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1]:  # stop bit low: a framing error
            ctx.set(rx.rx, level)
            for _ in range(divisor):
                await ctx.tick()
                seen["valid"] += ctx.get(rx.valid)
                seen["error"] += ctx.get(rx.frame_error)

    sim.add_testbench(run)
    sim.run()
    assert seen == {"valid": 0, "error": 1}


def test_uart_refuses_a_divisor_too_small_to_sample():
    with pytest.raises(ValueError, match="at least 4"):
        UARTRx(3)


def test_pll_settings_are_exact_or_refused():
    assert pll_settings(25, 50) == (1, 2, 12)  # ecppll's answer: VCO 600 MHz
    ref, fb, op = pll_settings(25, 65)
    assert 25 * fb / ref == 65 and 400 <= 65 * op <= 800
    m = Module()
    cd = pll_ecp5(m, Signal(), 25, 50)
    assert cd.name == "sync"
    Fragment.get(m, None)
    with pytest.raises(ValueError, match="no ECP5 PLL setting"):
        pll_settings(25, 51.234)


MANIFEST = {"input": {"channels": 2, "height": 2, "width": 3, "bits": 4},
            "output": {"channels": 3, "bits": 12, "signed": True, "beats_per_image": 2},
            "units_sha256": "ab" * 32}


def test_protocol_round_trip_and_refusals():
    x = np.arange(12).reshape(2, 2, 3) % 16
    msg = protocol.encode_image(x, MANIFEST)
    assert msg[:1] == protocol.IMAGE and len(msg) == 13
    assert list(msg[1:3]) == [x[0, 0, 0], x[1, 0, 0]]  # channels within a pixel
    with pytest.raises(ValueError, match="does not fit the network's 4-bit inputs"):
        protocol.encode_image(x + 16, MANIFEST)
    with pytest.raises(ValueError, match="shape"):
        protocol.encode_image(x[:1], MANIFEST)
    values = [-2048, 2047, -1, 0, 5, -300]
    payload = b"".join((v & 0xFFFF).to_bytes(2, "little") for v in values)
    assert protocol.parse_answers(protocol.frame(0, payload), MANIFEST, 1) == [
        [values[:3], values[3:]]]
    with pytest.raises(protocol.ProtocolError, match="starts with"):
        protocol.parse_answers(b"X" + protocol.frame(0, payload)[1:], MANIFEST, 1)
    with pytest.raises(protocol.ProtocolError, match="expected"):
        protocol.parse_answers(protocol.frame(0, payload)[:-1], MANIFEST, 1)
    protocol.check_ident(protocol.ident_reply(MANIFEST["units_sha256"]),
                         MANIFEST["units_sha256"])
    with pytest.raises(protocol.ProtocolError, match="rebuild the bitstream"):
        protocol.check_ident(protocol.ident_reply("cd" * 32), MANIFEST["units_sha256"])
    with pytest.raises(protocol.ProtocolError, match="not an EPIM board"):
        protocol.check_ident(b"hello world!!", MANIFEST["units_sha256"])


class _EchoAccelerator(wiring.Component):
    """A stand-in accelerator: each input beat (pixel) comes out as one output beat, its
    channels' values widened and negated into `f` signed `bits`-bit values."""

    def __init__(self, c: int, bits_in: int, f: int, bits: int, extra: dict | None = None):
        self._p = (c, bits_in, f, bits)
        super().__init__({"i": In(stream.Signature(c * bits_in)),
                          "o": Out(stream.Signature(f * bits)), "idle": Out(1), **(extra or {})})

    def elaborate(self, platform):
        c, bits_in, f, bits = self._p
        m = Module()
        full = Signal()
        vals = [Signal(signed(bits), name=f"v{k}") for k in range(f)]
        m.d.comb += [self.i.ready.eq(~full | self.o.ready), self.o.valid.eq(full),
                     self.o.payload.eq(Cat(*vals)), self.idle.eq(~full)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += full.eq(1)
            for k in range(f):
                m.d.sync += vals[k].eq(-self.i.payload.word_select(k % c, bits_in) * (k + 1))
        return m


class _ProgAccelerator(_EchoAccelerator):
    """The echo accelerator with a programming port of `prog_bits` bits that takes a word
    every third cycle (the link must hold a word until it is taken)."""

    def __init__(self, c, bits_in, f, bits, prog_bits):
        super().__init__(c, bits_in, f, bits, {"prog": In(stream.Signature(prog_bits))})

    def elaborate(self, platform):
        m = super().elaborate(platform)
        tick = Signal(2)
        m.d.sync += tick.eq(Mux(tick == 2, 0, tick + 1))
        m.d.comb += self.prog.ready.eq(tick == 0)
        return m


def _run_link(link, sends, divisor=4, gap=1000):
    """Bytes the link sends while `sends` go in, each followed by `gap` cycles; also the
    programming words its accelerator took."""
    got, taken = [], []

    async def bench(ctx):
        for data in sends:
            for byte in data:
                for level in [0, *((byte >> b) & 1 for b in range(8)), 1]:
                    ctx.set(link.rx, level)
                    await ctx.tick().repeat(divisor)
            await ctx.tick().repeat(gap)

    async def receiver(ctx):
        while True:
            await ctx.negedge(link.tx)
            await ctx.tick().repeat(divisor // 2)
            value = 0
            for b in range(8):
                await ctx.tick().repeat(divisor)
                value |= ctx.get(link.tx) << b
            await ctx.tick().repeat(divisor)
            got.append(value)

    async def prog_watch(ctx):
        acc = link._acc
        async for _clk, _rst, valid, ready, payload in ctx.tick().sample(
                acc.prog.valid, acc.prog.ready, acc.prog.payload):
            if valid and ready:
                taken.append(payload)

    sim = Simulator(link)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_testbench(receiver, background=True)
    if "prog" in link._acc.signature.members:
        sim.add_testbench(prog_watch, background=True)
    sim.run()
    return bytes(got), taken


def test_board_link_programs_words_and_answers_their_checksum():
    """``P`` words reach the accelerator's programming port whole and in order, ``C`` answers
    the CRC of their bytes since the identify (the host's `check_checksum` accepts it and
    refuses another word list), then an image is still answered."""
    manifest = {"input": {"channels": 1, "height": 1, "width": 1, "bits": 4},
                "output": {"channels": 1, "bits": 8, "signed": True, "beats_per_image": 1},
                "units_sha256": "ef" * 32}
    prog_bits = 19
    words = [0x7_1234, 0x0_0001, 0x4_ABCD, 0x7_FFFF]
    link = BoardLink(_ProgAccelerator(1, 4, 1, 8, prog_bits), manifest, divisor=4,
                     heartbeat_bits=4)
    sends = [protocol.IDENTIFY, protocol.encode_program(words, prog_bits), protocol.CHECK,
             protocol.encode_image(np.array([[[5]]]), manifest)]
    data, taken = _run_link(link, sends)
    assert taken == words
    ident = protocol.IDENT_BYTES
    reply = data[ident:ident + protocol.CHECK_BYTES]
    protocol.check_checksum(reply, words, prog_bits)
    with pytest.raises(protocol.ProtocolError, match="programming checksum"):
        protocol.check_checksum(reply, words[:-1], prog_bits)
    assert protocol.parse_answers(data[ident + protocol.CHECK_BYTES:], manifest, 1) == [[[-5]]]


def test_a_weight_baked_board_refuses_programming_words():
    manifest = {"input": {"channels": 1, "height": 1, "width": 1, "bits": 4},
                "output": {"channels": 1, "bits": 8, "signed": True, "beats_per_image": 1},
                "units_sha256": "ef" * 32}
    link = BoardLink(_EchoAccelerator(1, 4, 1, 8), manifest, divisor=4, heartbeat_bits=4)
    data, _ = _run_link(link, [protocol.PROGRAM], gap=200)
    assert data == protocol.ERROR


def test_board_link_frames_answers_the_host_checks():
    """The board top's answers, in Amaranth's simulator at 4 cycles per bit: identify, then
    two images; the frames (header, sequence numbers, CRC) parse with the host's code and carry
    the accelerator's values; after another identify the numbers restart at 0."""
    c, h, w, f, bits = 2, 1, 2, 3, 12
    manifest = {"input": {"channels": c, "height": h, "width": w, "bits": 4},
                "output": {"channels": f, "bits": bits, "signed": True, "beats_per_image": 2},
                "units_sha256": "ab" * 32}
    acc = _EchoAccelerator(c, 4, f, bits)
    link = BoardLink(acc, manifest, divisor=4, heartbeat_bits=4)
    images = [np.array([[[3, 9]], [[15, 0]]]), np.array([[[1, 2]], [[7, 4]]])]
    sends = ([protocol.IDENTIFY] + [protocol.encode_image(x, manifest) for x in images]
             + [protocol.IDENTIFY, protocol.encode_image(images[1], manifest)])
    got = []

    async def bench(ctx):
        for data in sends:
            for byte in data:
                for level in [0, *((byte >> b) & 1 for b in range(8)), 1]:
                    ctx.set(link.rx, level)
                    await ctx.tick().repeat(4)
            await ctx.tick().repeat(1000)  # the answer goes out before the next command

    async def receiver(ctx):
        while True:
            await ctx.negedge(link.tx)
            await ctx.tick().repeat(2)
            value = 0
            for b in range(8):
                await ctx.tick().repeat(4)
                value |= ctx.get(link.tx) << b
            await ctx.tick().repeat(4)
            got.append(value)

    sim = Simulator(link)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_testbench(receiver, background=True)
    sim.run()
    data = bytes(got)
    size = protocol.answer_bytes(manifest)
    ident = protocol.IDENT_BYTES
    assert len(data) == 2 * ident + 3 * size
    protocol.check_ident(data[:ident], manifest["units_sha256"])
    answers = protocol.parse_answers(data[ident:ident + 2 * size], manifest, 2)
    for x, ans in zip(images, answers, strict=True):
        want = [[-int(x[k % c, 0, px]) * (k + 1) for k in range(f)] for px in range(w)]
        assert ans == want
    rest = data[ident + 2 * size:]
    protocol.check_ident(rest[:ident], manifest["units_sha256"])
    assert protocol.parse_answers(rest[ident:], manifest, 1, first_seq=0)
    with pytest.raises(protocol.ProtocolError, match="sequence number 0, expected 1"):
        protocol.parse_answers(rest[ident:], manifest, 1, first_seq=1)


def test_host_refuses_repeated_and_corrupted_answers():
    manifest = {"input": {"channels": 1, "height": 1, "width": 1, "bits": 8},
                "output": {"channels": 2, "bits": 8, "signed": False, "beats_per_image": 1},
                "units_sha256": "cd" * 32}
    a0, a1 = protocol.frame(0, bytes([5, 6])), protocol.frame(1, bytes([7, 8]))
    assert protocol.parse_answers(a0 + a1, manifest, 2) == [[[5, 6]], [[7, 8]]]
    with pytest.raises(protocol.ProtocolError, match="sequence number 0, expected 1"):
        protocol.parse_answers(a0 + a0, manifest, 2)  # a duplicated answer
    flipped = bytearray(a1)
    flipped[5] ^= 0x10
    with pytest.raises(protocol.ProtocolError, match="answer 1: CRC mismatch"):
        protocol.parse_answers(a0 + bytes(flipped), manifest, 2)
    with pytest.raises(protocol.ProtocolError, match="says 3 payload bytes"):
        protocol.parse_answers(protocol.frame(0, bytes(3))[:-1], manifest, 1)
    assert protocol.crc16(b"123456789") == 0x29B1  # the CRC-16/CCITT-FALSE check value
    from epim.hw.board import CRC16  # the hardware's CRC unit computes the host's CRC
    algo = CRC16.algorithm
    assert (algo.crc_width, algo.polynomial, algo.initial_crc, algo.reflect_input,
            algo.reflect_output, algo.xor_output) == (16, protocol.CRC_POLY,
                                                      protocol.CRC_INIT, False, False, 0)
    for data in (b"", b"123456789", bytes(range(256))):
        assert CRC16.compute(data) == protocol.crc16(data)
    with pytest.raises(ValueError, match="9-bit inputs"):
        protocol.check_board({**manifest, "input": {**manifest["input"], "bits": 9}})
