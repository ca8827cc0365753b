"""cocotb testbench for a tile's or a network's emitted Verilog: program (tiles), stream images,
record every handshake.

Run through :mod:`epim.sim.cosim`, which writes the job file named by `EPIM_COSIM_JOB`:
`phases` (each optional programming beats, then input beats and the expected output beat count;
beats as hex strings, in the result too),
`stalls` (random input gaps and output back-pressure), `seed`, `max_cycles` and `result_path`.
The testbench only drives and observes; all checking against the reference happens in the
bridge. Inputs are driven after the falling edge; handshakes are sampled in the read-only phase
before the rising edge that completes them, and timestamped with that cycle's index.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly


class StreamDriver:
    """Presents beats on a valid/ready port, holding each until it is taken."""

    def __init__(self, valid, ready, payload, beats, rng: random.Random | None, p_idle: float):
        self.valid, self.ready, self.payload = valid, ready, payload
        self.beats = beats
        self.rng, self.p_idle = rng, p_idle
        self.next = 0
        self.offered = False
        self.taken: list[int] = []

    @property
    def done(self) -> bool:
        return self.next >= len(self.beats)

    def drive(self):
        if not self.offered and not self.done:
            self.offered = self.rng is None or self.rng.random() >= self.p_idle
            if self.offered:
                self.payload.value = self.beats[self.next]
        self.valid.value = int(self.offered)

    def sample(self, cycle: int):
        if self.offered and int(self.ready.value):
            self.taken.append(cycle)
            self.next += 1
            self.offered = False


class StreamMonitor:
    """Takes beats from a valid/ready port, with optional random back-pressure."""

    def __init__(self, valid, ready, payload, rng: random.Random | None, p_busy: float):
        self.valid, self.ready, self.payload = valid, ready, payload
        self.rng, self.p_busy = rng, p_busy
        self.accepting = False
        self.beats: list[int] = []
        self.cycles: list[int] = []

    def drive(self):
        self.accepting = self.rng is None or self.rng.random() >= self.p_busy
        self.ready.value = int(self.accepting)

    def sample(self, cycle: int):
        if self.accepting and int(self.valid.value):
            self.beats.append(self.payload.value.to_unsigned())
            self.cycles.append(cycle)


PROGRESS_EVERY = 4096  # cycles between writes of the progress file


async def run_ports(dut, drivers, monitor, n_out: int, max_cycles: int,
                    prog_port: bool = True, progress: Path | None = None) -> None:
    cycle = 0
    while not all(d.done for d in drivers) or (monitor and len(monitor.beats) < n_out):
        await FallingEdge(dut.clk)
        for d in drivers:
            d.drive()
        if monitor:
            monitor.drive()
        await ReadOnly()
        for d in drivers:
            d.sample(cycle)
        if monitor:
            monitor.sample(cycle)
        cycle += 1
        if progress is not None and monitor and cycle % PROGRESS_EVERY == 0:
            progress.write_text(str(len(monitor.beats)))
        if cycle > max_cycles:
            got = len(monitor.beats) if monitor else 0
            raise AssertionError(f"no progress: {got}/{n_out} output beats after {cycle} cycles")
    await FallingEdge(dut.clk)
    dut.i__valid.value = 0
    if prog_port:
        dut.prog__valid.value = 0
    dut.o__ready.value = 0


@cocotb.test()
async def tile_job(dut):
    job = json.loads(Path(os.environ["EPIM_COSIM_JOB"]).read_text())
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    prog_port = job.get("prog_port", True)  # a network accelerator has no programming port
    if prog_port:
        dut.prog__valid.value = 0
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    rng = random.Random(job["seed"]) if job["stalls"] else None
    prog_rng = random.Random(job["seed"] + 1) if job["stalls"] else None
    results = []
    for phase in job["phases"]:
        # (the programming words draw their gaps from a generator of their own, so the
        # images' gaps and back-pressure are the ones the network cycle model replays)
        prog = StreamDriver(dut.prog__valid if prog_port else None,
                            dut.prog__ready if prog_port else None,
                            dut.prog__payload if prog_port else None,
                            [int(w, 16) for w in phase["program"]], prog_rng, 0.3)
        await run_ports(dut, [prog], None, 0, job["max_cycles"], prog_port)
        if prog.taken:  # the last programming write lands before the input phase's cycle 0
            for _ in range(job["max_cycles"]):
                await ReadOnly()
                if int(dut.idle.value):
                    break
                await FallingEdge(dut.clk)
            else:
                raise AssertionError("the design never became idle after programming")
        drv = StreamDriver(dut.i__valid, dut.i__ready, dut.i__payload,
                           [int(w, 16) for w in phase["inputs"]], rng, 0.3)
        mon = StreamMonitor(dut.o__valid, dut.o__ready, dut.o__payload, rng, 0.4)
        progress = Path(job["progress_path"]) if job.get("progress_path") else None
        await run_ports(dut, [drv], mon, phase["n_out"], job["max_cycles"], prog_port,
                        progress)
        for _ in range(4):  # nothing extra may come out
            await FallingEdge(dut.clk)
            await ReadOnly()
            assert not int(dut.o__valid.value), "an output beat beyond the expected count"
        results.append({"outputs": [format(b, "x") for b in mon.beats], "in_cycles": drv.taken,
                        "out_cycles": mon.cycles, "prog_beats": len(prog.taken)})
    Path(job["result_path"]).write_text(json.dumps({"phases": results}))
