"""Shared by the hardware tests: drive a stream component in Amaranth's simulator."""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from epim.contract import beats


def simulate(tile, beats, n_out, program=(), ready=lambda cycle: True, max_cycles=100_000):
    """Drive beats (after programming beats) and collect output beats with their cycles.

    After the expected `n_out` beats the bench keeps reading for a while: any extra beat fails.
    """
    got, out_cycles, in_cycles = [], [], []

    async def bench(ctx):
        if program:
            for word in program:
                ctx.set(tile.prog.payload.as_value(), word)
                ctx.set(tile.prog.valid, 1)
                while not (await ctx.tick().sample(tile.prog.ready))[2]:
                    pass
            ctx.set(tile.prog.valid, 0)
            while not (await ctx.tick().sample(tile.idle))[2]:  # the last write lands
                pass
        cycle, nxt = 0, 0
        while len(got) < n_out and cycle < max_cycles:
            if nxt < len(beats):
                ctx.set(tile.i.payload, beats[nxt])
            ctx.set(tile.i.valid, nxt < len(beats))
            ctx.set(tile.o.ready, ready(cycle))
            _, _, iv, ir, ov, orr, op = await ctx.tick().sample(
                tile.i.valid, tile.i.ready, tile.o.valid, tile.o.ready, tile.o.payload)
            if iv and ir:
                in_cycles.append(cycle)
                nxt += 1
            if ov and orr:
                got.append(op)
                out_cycles.append(cycle)
            cycle += 1
        ctx.set(tile.i.valid, 0)  # (no beat beyond the given ones)
        ctx.set(tile.o.ready, 1)
        for _ in range(64):
            _, _, ov = await ctx.tick().sample(tile.o.valid)
            assert not ov, "an output beat beyond the expected count"

    sim = Simulator(tile)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, in_cycles, out_cycles


def decode(words, cfg):
    mask = 2**cfg.out_bits - 1
    y = np.array([[(w >> (o * cfg.out_bits)) & mask for o in range(cfg.cout)] for w in words])
    if not cfg.relu:
        y = np.where(y >= 2 ** (cfg.out_bits - 1), y - 2**cfg.out_bits, y)
    return y.reshape(-1, cfg.ho, cfg.wo, cfg.cout).transpose(0, 3, 1, 2)


def beats_of(x, bits):
    n, c = x.shape[:2]
    return beats.pack(x.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c).tolist(), bits)
