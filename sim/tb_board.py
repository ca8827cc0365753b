"""cocotb testbench of the board top (`epim.hw.board.BoardLink`): it drives the UART pins only,
bit by bit, as the board's USB-serial chip would. Run through `epim.app.board`, not by pytest.

The job file lists byte strings to send; the bench sends each in turn, then waits until the
expected number of bytes came back on `tx` (or a cycle limit passes), and writes every byte it
received with the cycle its stop bit ended.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge


@cocotb.test()
async def board_job(dut):
    job = json.loads(Path(os.environ["EPIM_BOARD_JOB"]).read_text())
    div = job["divisor"]
    Clock(dut.clk, 10, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    cycle = [0]

    async def count():
        while True:
            await FallingEdge(dut.clk)
            cycle[0] += 1

    got: list[list[int]] = []  # [byte, cycle]
    errors: list[str] = []

    async def receive():
        while True:
            await FallingEdge(dut.tx)
            await ClockCycles(dut.clk, div // 2)
            if int(dut.tx.value) != 0:
                errors.append(f"a start bit shorter than half a bit at cycle {cycle[0]}")
                continue
            value = 0
            for b in range(8):
                await ClockCycles(dut.clk, div)
                value |= int(dut.tx.value) << b
            await ClockCycles(dut.clk, div)
            if int(dut.tx.value) != 1:
                errors.append(f"no stop bit after byte {value:#04x} at cycle {cycle[0]}")
            got.append([value, cycle[0]])

    async def send(byte: int):
        for level in [0, *((byte >> b) & 1 for b in range(8)), 1]:
            dut.rx.value = level
            await ClockCycles(dut.clk, div)

    cocotb.start_soon(count())
    cocotb.start_soon(receive())
    sent_at = []
    for chunk in job["send"]:
        data = bytes.fromhex(chunk)
        await FallingEdge(dut.clk)
        for byte in data:
            await send(byte)
        sent_at.append(cycle[0])
        if job.get("gap_cycles"):
            await ClockCycles(dut.clk, job["gap_cycles"])
    limit = job["max_cycles"]
    while len(got) < job["expect_bytes"] and cycle[0] < limit:
        await ClockCycles(dut.clk, 1000)
    await ClockCycles(dut.clk, 30 * div)  # nothing more may come
    Path(job["result_path"]).write_text(json.dumps({
        "received": got, "sent_at": sent_at, "errors": errors, "cycles": cycle[0],
        "leds": int(dut.leds.value)}))
