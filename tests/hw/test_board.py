"""The board top's parts in Amaranth's simulator: the UART pair, the threshold output stage of
fixed tiles, and the protocol helpers (the whole board top runs on Verilator in
tests/sim/test_board.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, Signal, signed
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from epim.hw import protocol
from epim.hw.board import UARTRx, UARTTx, pll_ecp5, pll_settings
from epim.hw.tile import (
    BIAS_BITS,
    MULT_BITS,
    TileConfig,
    output_range,
    output_table,
    output_value,
    threshold_stage,
    thresholds,
)
from epim.hw.units import exact_scale, scale_clamped


def _cfg(relu: bool, out_bits: int, acc_bits: int) -> TileConfig:
    return TileConfig(cin=1, cout=1, h=1, w=1, ho=1, wo=1, kernel=1, stride=1, padding=0,
                      in_bits=4, out_bits=out_bits, relu=relu, ce_in=1, ce_out=1, patch_out=1,
                      g_in=1, g_out=1, n_slices=1, n_t=4, max_steps=1, acc_bits=acc_bits,
                      src_bits=1, xbar_rows=32, cell_bits=2, dac_bits=1, adc_bits=8)


@settings(max_examples=60, deadline=None)
@given(relu=st.booleans(), out_bits=st.integers(1, 4), acc_bits=st.integers(4, 10),
       bias=st.integers(-2**20, 2**20), mult=st.integers(1, 2**MULT_BITS - 1),
       shift=st.integers(0, 62))
def test_thresholds_reproduce_the_output_stage_for_every_accumulator(relu, out_bits, acc_bits,
                                                                     bias, mult, shift):
    cfg = _cfg(relu, out_bits, acc_bits)
    word = (bias & (2**BIAS_BITS - 1)) | (mult << BIAS_BITS) | (shift << (BIAS_BITS + MULT_BITS))
    ts = thresholds(word, cfg)
    lo, hi = output_range(cfg)
    assert len(ts) == hi - lo
    for acc in range(-2 ** (acc_bits - 1), 2 ** (acc_bits - 1)):
        by_thresholds = lo + sum(t is not None and acc >= t for t in ts)
        assert by_thresholds == output_value(acc, word, cfg)


@settings(max_examples=60, deadline=None)
@given(relu=st.booleans(), out_bits=st.integers(1, 4), acc_bits=st.integers(4, 11),
       bias=st.integers(-2**12, 2**12), mult=st.integers(1, 2**16), shift=st.integers(0, 20))
def test_output_tables_reproduce_the_output_stage_for_every_accumulator(relu, out_bits,
                                                                        acc_bits, bias, mult,
                                                                        shift):
    cfg = _cfg(relu, out_bits, acc_bits)
    word = (bias & (2**BIAS_BITS - 1)) | (mult << BIAS_BITS) | (shift << (BIAS_BITS + MULT_BITS))
    t = output_table(word, cfg)
    if t is None:
        ts = [x for x in thresholds(word, cfg) if x is not None]
        assert max(ts) - min(ts) + 2 > 1024
        return
    base, table = t
    for acc in range(-2 ** (acc_bits - 1), 2 ** (acc_bits - 1)):
        got = table[min(max(acc - base, 0), len(table) - 1)]
        assert got == output_value(acc, word, cfg) & (2**out_bits - 1)


def test_threshold_stage_hardware_for_every_accumulator():
    """The binary-search threshold stage of fixed tiles, in the simulator, against the spec's
    output stage for every accumulator value of random words (signed and ReLU outputs)."""
    rnd = random.Random(7)
    for relu, out_bits in [(True, 4), (False, 4), (True, 2), (False, 3), (True, 1)]:
        cfg = _cfg(relu, out_bits, 9)
        for _ in range(3):
            bias, mult = rnd.randrange(-300, 300), rnd.randrange(1, 2**12)
            shift = rnd.randrange(0, 14)
            word = ((bias & (2**BIAS_BITS - 1)) | (mult << BIAS_BITS)
                    | (shift << (BIAS_BITS + MULT_BITS)))
            m = Module()
            acc = Signal(signed(9))
            y = Signal(signed(out_bits + 2))
            m.d.comb += y.eq(threshold_stage(m, acc, word, cfg))

            async def bench(ctx, word=word, cfg=cfg, acc=acc, y=y):
                for a in range(-256, 256):
                    ctx.set(acc, a)
                    assert ctx.get(y) == output_value(a, word, cfg), (a, word)

            sim = Simulator(m)
            sim.add_testbench(bench)
            sim.run()


@settings(max_examples=200, deadline=None)
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
