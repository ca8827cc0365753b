"""The board top's parts in Amaranth's simulator: the UART pair, the threshold output stage of
fixed tiles, and the protocol helpers (the whole board top runs on Verilator in
tests/sim/test_board.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, Signal
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.hw import protocol
from epim.hw.board import UARTRx, UARTTx, pll_ecp5, pll_settings
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
    assert protocol.parse_answers(protocol.OUTPUT + payload, MANIFEST, 1) == [
        [values[:3], values[3:]]]
    with pytest.raises(protocol.ProtocolError, match="starts with"):
        protocol.parse_answers(b"X" + payload, MANIFEST, 1)
    with pytest.raises(protocol.ProtocolError, match="expected"):
        protocol.parse_answers(protocol.OUTPUT + payload[:-1], MANIFEST, 1)
    protocol.check_ident(protocol.ident_reply(MANIFEST["units_sha256"]),
                         MANIFEST["units_sha256"])
    with pytest.raises(protocol.ProtocolError, match="rebuild the bitstream"):
        protocol.check_ident(protocol.ident_reply("cd" * 32), MANIFEST["units_sha256"])
    with pytest.raises(protocol.ProtocolError, match="not an EPIM board"):
        protocol.check_ident(b"hello world!!", MANIFEST["units_sha256"])
