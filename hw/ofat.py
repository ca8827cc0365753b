"""OFAT accumulation with output channel wrapping, one output group a cycle.

The accumulators sit in a memory of `g_out` words, one per output group (its `p_out` channels
of `acc_bits`). After a step, group `go` takes a cycle: in its issue cycle its `base`, the
OFAT field `go` of the step's input group, is registered; the cycle after, the step's column
values are rotated by `base` (`rotate`, `ubits(Ce_out)` stages of two-way multiplexers) and
the first `p_out` of them registered while the group's word is read; and the cycle after
that, if the step serves the group (IFRT `mask` bit `go`), channel `j` adds its rotated
column `(base + j) mod Ce_out` and the word is written back. (The registers keep the
rotation, whose select bits fan out to every accumulator bit, apart from the OFAT memory and
from the adders: the ULX3S build's critical path before.) A `live` bit per group says its
word holds this pixel's sums (else it reads as 0), so nothing has to clear the memory between
pixels."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib.memory import Memory

from ..contract.images import ubits
from ..contract.params import TileParams


def rotate(m: Module, values: list, amount, n: int) -> list:
    """`values` (length `n`) rotated down by `amount` (`out[i] = values[(i + amount) % n]`),
    for `amount < n`, in `ubits(n)` stages of two-way multiplexers, each stage a row of
    signals (as one expression, every stage would copy the one before it twice)."""
    out = list(values)
    for s in range(len(amount)):
        a = 1 << s
        if a >= n:
            break
        nxt = []
        for i in range(n):
            sig = Signal.like(values[i], name=f"a_rot{s}_{i}")
            m.d.comb += sig.eq(Mux(amount[s], out[(i + a) % n], out[i]))
            nxt.append(sig)
        out = nxt
    return out


def accumulate(m: Module, cfg: TileParams, x_col: list, ofat, mask, issue, go,
               clear) -> SimpleNamespace:
    """The accumulator memory and its OFAT update: for group `go` of a cycle with `issue`,
    the cycle after its rotated column values are registered and its word is read (at
    `a_go`), and the cycle after that they are added and the word written back; `clear` (the
    pixel's first step) empties every group. Returns `rp` (the memory's read port, whose
    address the caller drives: `a_go` here, the output stage's group later), `a_go` and
    `live`."""
    acc = Memory(shape=unsigned(cfg.patch_out * cfg.acc_bits), depth=cfg.g_out, init=[])
    m.submodules.acc = acc
    rp, wp = acc.read_port(), acc.write_port()
    live = Signal(cfg.g_out)
    a_go = Signal(range(cfg.g_out))
    a_valid = Signal()
    m.d.sync += a_valid.eq(issue)
    a_base = Signal(ubits(cfg.ce_out))
    with m.If(issue):
        m.d.sync += [a_go.eq(go), a_base.eq(ofat.data.word_select(go, ubits(cfg.ce_out)))]
    rotated = rotate(m, x_col, a_base, cfg.ce_out)
    b_rot = [Signal.like(rotated[j], name=f"b_rot_{j}") for j in range(cfg.patch_out)]
    b_go, b_valid = Signal(range(cfg.g_out)), Signal()
    m.d.sync += [b_rot[j].eq(rotated[j]) for j in range(cfg.patch_out)]
    m.d.sync += [b_go.eq(a_go), b_valid.eq(a_valid)]
    old = Signal(cfg.patch_out * cfg.acc_bits)
    m.d.comb += old.eq(Mux(live.bit_select(b_go, 1), rp.data, 0))
    new = Cat(*[(old.word_select(j, cfg.acc_bits).as_signed() + b_rot[j])[:cfg.acc_bits]
                for j in range(cfg.patch_out)])
    serve = b_valid & mask.bit_select(b_go, 1)
    m.d.comb += [wp.addr.eq(b_go), wp.data.eq(new), wp.en.eq(serve)]
    live_set = Signal(cfg.g_out)
    m.d.comb += live_set.eq(Mux(serve, 1 << b_go, 0))
    m.d.sync += live.eq(Mux(clear, 0, live | live_set))
    return SimpleNamespace(rp=rp, live=live, a_go=a_go)
