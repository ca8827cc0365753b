"""Stream units that join the tiles of a network: fork, FIFO, residual add, global pooling and
flatten. Every unit's `valid` outputs and its input `ready` come from registers, except the
`add`, whose inputs are taken in the cycle both are valid and its output register is free (its
`ready` depends on its inputs' `valid`, never the other way round).
`sw/chip/netcycles.py` models each of them cycle by cycle; `docs/network.md` gives the rules.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out


def clamp_unsigned(v, hi: int, bits: int):
    """`min(max(v, 0), hi)` of a value (signed or not), as `bits` bits."""
    return Mux(v < 0, 0, Mux(v > hi, hi, v))[:bits]


class Fork(wiring.Component):
    """One stream to `n` consumers: a beat is held until every consumer has taken it.

    `i.ready` is high when no consumer still waits for the held beat, so a beat moves through in
    two cycles at best (one to load, at least one to be taken).
    """

    def __init__(self, width: int, n: int):
        self._n = n
        super().__init__({"i": In(stream.Signature(width)),
                          **{f"o{j}": Out(stream.Signature(width)) for j in range(n)},
                          "idle": Out(1)})

    def outs(self):
        return [getattr(self, f"o{j}") for j in range(self._n)]

    def elaborate(self, platform):
        m = Module()
        pend = Signal(self._n)
        buf = Signal(len(self.i.payload))
        m.d.comb += self.i.ready.eq(pend == 0)
        taken = Cat(*[o.valid & o.ready for o in self.outs()])
        m.d.sync += pend.eq(pend & ~taken)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [buf.eq(self.i.payload), pend.eq(Const(2**self._n - 1, self._n))]
        for j, o in enumerate(self.outs()):
            m.d.comb += [o.valid.eq(pend[j]), o.payload.eq(buf)]
        m.d.comb += self.idle.eq(pend == 0)
        return m


class StreamFIFO(wiring.Component):
    """First-in first-out buffer of `depth` beats (the skip buffer of a residual `add`):
    Amaranth's `SyncFIFO` behind stream ports, with an `idle` output.

    `i.ready` is high while fewer than `depth` beats are held; `o.valid` while any is held. A beat
    written in one cycle can leave in the next (the level is a register; reads are asynchronous,
    so the memory maps to distributed RAM: `SyncFIFOBuffered` would map to block RAM at the cost
    of a cycle of latency, which the cycle model would have to follow).
    """

    def __init__(self, width: int, depth: int):
        if depth < 1:
            raise ValueError("a FIFO needs depth >= 1")
        self._depth = depth
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width)),
                          "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFO(width=len(self.i.payload), depth=self._depth)
        wiring.connect(m, wiring.flipped(self.i), fifo.w_stream)
        wiring.connect(m, fifo.r_stream, wiring.flipped(self.o))
        m.d.comb += self.idle.eq(fifo.level == 0)
        return m


MAX_SHIFT_ADD_TERMS = 3


def naf_digits(c: int) -> list[tuple[int, int]]:
    """The non-adjacent form of `abs(c)`: `(digit, position)` pairs, digits +1 or -1."""
    terms, k, n = [], 0, abs(c)
    while n:
        if n & 1:
            d = 2 - (n & 3)  # +1 or -1
            terms.append((d, k))
            n -= d
        n >>= 1
        k += 1
    return terms


def const_mul(v, c: int):
    """`v * c` for a constant `c`: as shifts and adds (its non-adjacent form) when that takes
    at most `MAX_SHIFT_ADD_TERMS` terms, so that an FPGA build spends a few adders rather than
    a hardware multiplier on a simple constant; as a multiplication (a DSP block) otherwise."""
    v = Value.cast(v)
    if not v.shape().signed:
        v = v.as_unsigned()
    terms = naf_digits(c)
    if not terms:
        return Const(0, 1)
    if len(terms) > MAX_SHIFT_ADD_TERMS:
        return v * c
    acc = None
    for d, k in terms:
        t = v << k if k else v
        acc = t if acc is None and d > 0 else (-t if acc is None else
                                               (acc + t if d > 0 else acc - t))
    return -acc if c < 0 else acc


def csd_terms(c: int) -> int:
    """Non-zero digits of `c` in its non-adjacent form (the adders `const_mul` spends)."""
    return len(naf_digits(c))


def scale_clamped(v: int, mult: int, shift: int, hi: int) -> int:
    """`clamp((v*mult + rnd) >> shift, 0, hi)` with the spec's rounding constant."""
    rnd = (1 << (shift - 1)) if shift > 0 else 0
    return min(hi, max(0, (v * mult + rnd) >> shift))


def exact_scale(mult: int, shift: int, vmax: int, hi: int) -> tuple[int, int]:
    """A cheaper `(mult, shift)` that gives the same `scale_clamped` result for every
    `v` in `0 .. vmax`: the constant with the fewest non-zero digits, then the smallest
    shift (checked for every `v`). The pooling's `mult` comes from a real
    scale rounded to 31 bits; over the few hundred sums a pool can see, a constant of a few
    digits gives the same outputs, and shifts and adds replace a two-DSP multiply."""
    want = [scale_clamped(v, mult, shift, hi) for v in range(vmax + 1)]
    found = []
    for s in range(shift + 1):
        rnd = (1 << (s - 1)) if s > 0 else 0
        lo_m, hi_m = 0, None  # mult must lie in [lo_m, hi_m]
        for v in range(1, vmax + 1):
            y = want[v]
            if y > 0:  # v*m + rnd >= y * 2**s
                lo_m = max(lo_m, -(-(y * (1 << s) - rnd) // v))
            if y < hi:  # v*m + rnd < (y+1) * 2**s
                top = ((y + 1) * (1 << s) - rnd - 1) // v
                hi_m = top if hi_m is None else min(hi_m, top)
        if hi_m is None:
            hi_m = lo_m
        if lo_m > hi_m:
            continue
        # the fewest digits in [lo_m, hi_m]: clear low bits while staying in range
        best = None
        for c in range(lo_m, min(hi_m, lo_m + 4096) + 1):
            if best is None or csd_terms(c) < csd_terms(best):
                best = c
        for b in range(hi_m.bit_length() + 1):
            c = ((hi_m >> b) << b)
            if c >= lo_m and csd_terms(c) < csd_terms(best):
                best = c
        if all(scale_clamped(v, best, s, hi) == want[v] for v in range(vmax + 1)):
            found.append((csd_terms(best), s, best))
    if not found:
        return mult, shift
    _, s, best = min(found)
    return best, s


def _round_shift(v, shift: int):
    """`(v + rnd) >> shift` with the spec's `rnd = 2**(shift-1)` (0 for `shift = 0`)."""
    rnd = (1 << (shift - 1)) if shift > 0 else 0
    return (v + rnd) >> shift


class AddUnit(wiring.Component):
    """Residual `add` (spec section 6), per channel:
    `y = clamp((a*ma + b*mb + rnd) >> shift, 0, 2**out_bits - 1)`; an input with `a_signed`
    (`b_signed`) is read as two's complement (contract v1.1: its producer has no ReLU).

    Both inputs are taken in the same cycle, when both are valid and the output register is free
    or being emptied; the result leaves from the output register the next cycle.
    """

    def __init__(self, channels: int, a_bits: int, b_bits: int, out_bits: int, ma: int, mb: int,
                 shift: int, a_signed: bool = False, b_signed: bool = False):
        self._p = (channels, a_bits, b_bits, out_bits, ma, mb, shift)
        self._signed = (a_signed, b_signed)
        super().__init__({"a": In(stream.Signature(channels * a_bits)),
                          "b": In(stream.Signature(channels * b_bits)),
                          "o": Out(stream.Signature(channels * out_bits)),
                          "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, ab, bb, ob, ma, mb, shift = self._p
        o_valid = Signal()
        fire = Signal()
        m.d.comb += fire.eq(self.a.valid & self.b.valid & (~o_valid | self.o.ready))
        m.d.comb += [self.a.ready.eq(fire), self.b.ready.eq(fire)]
        width = max(ab, bb) + 34
        ys = []
        for ch in range(c):
            av = self.a.payload[ch * ab:(ch + 1) * ab]
            bv = self.b.payload[ch * bb:(ch + 1) * bb]
            av = av.as_signed() if self._signed[0] else av
            bv = bv.as_signed() if self._signed[1] else bv
            s = Signal(signed(width + 2), name=f"add_s_{ch}")
            m.d.comb += s.eq(const_mul(av, ma) + const_mul(bv, mb))
            y = Signal(signed(width + 3), name=f"add_y_{ch}")
            m.d.comb += y.eq(_round_shift(s, shift))
            ys.append(clamp_unsigned(y, 2**ob - 1, ob))
        payload = Signal(c * ob)
        with m.If(fire):
            m.d.sync += [payload.eq(Cat(*ys)), o_valid.eq(1)]
        with m.Elif(self.o.ready):
            m.d.sync += o_valid.eq(0)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(payload),
                     self.idle.eq(~o_valid)]
        return m


class PoolUnit(wiring.Component):
    """Global average pooling (spec section 6): sums `pixels` beats per channel, then
    `y[c] = clamp((sum*mult + rnd) >> shift, 0, 2**out_bits - 1)` as one output beat.

    `i.ready` is low while a result waits in the output register.
    """

    def __init__(self, channels: int, pixels: int, in_bits: int, out_bits: int, mult: int,
                 shift: int):
        self._p = (channels, pixels, in_bits, out_bits, mult, shift)
        super().__init__({"i": In(stream.Signature(channels * in_bits)),
                          "o": Out(stream.Signature(channels * out_bits)),
                          "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, n, ib, ob, mult, shift = self._p
        # the same outputs as (mult, shift) for every sum of `n` inputs, with a smaller constant
        mult, shift = exact_scale(mult, shift, n * (2**ib - 1), 2**ob - 1)
        rnd = (1 << (shift - 1)) if shift > 0 else 0
        # Each channel accumulates x*mult rather than x, starting from the rounding constant:
        # x*mult is a lookup of the few input values (one LUT per bit), and the last beat needs
        # one adder, a constant shift and a clamp, no multiplier.
        pbits = (n * (2**ib - 1) * mult + rnd).bit_length()
        products = Array(Const(v * mult, pbits) for v in range(2**ib))
        count = Signal(range(n))
        sums = [Signal(pbits, init=rnd, name=f"pool_sum_{ch}") for ch in range(c)]
        o_valid = Signal()
        payload = Signal(c * ob)
        m.d.comb += self.i.ready.eq(~o_valid)
        last = count == n - 1
        ys = []
        nexts = []
        hi = 2**ob - 1
        for ch in range(c):
            x = self.i.payload[ch * ib:(ch + 1) * ib]
            xm = Signal(pbits, name=f"pool_xm_{ch}")
            nxt = Signal(pbits, name=f"pool_next_{ch}")
            m.d.comb += [xm.eq(products[x]), nxt.eq(sums[ch] + xm)]
            nexts.append(nxt)
            ys.append(clamp_unsigned(nxt[shift:], hi, ob))
        with m.If(self.i.valid & self.i.ready):
            with m.If(last):
                m.d.sync += [count.eq(0), payload.eq(Cat(*ys)), o_valid.eq(1)]
                m.d.sync += [s.eq(rnd) for s in sums]
            with m.Else():
                m.d.sync += count.eq(count + 1)
                m.d.sync += [s.eq(nx) for s, nx in zip(sums, nexts, strict=True)]
        with m.If(o_valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(payload),
                     self.idle.eq(~o_valid & (count == 0))]
        return m


class Flatten(wiring.Component):
    """Collects an image's `H*W` pixel beats into the one beat a `linear` tile takes: feature
    `f = c*H*W + y*W + x` at bits `[f*bits, (f+1)*bits)` (spec section 6).

    `i.ready` is low while the flattened beat waits in the output register.
    """

    def __init__(self, channels: int, pixels: int, bits: int):
        self._p = (channels, pixels, bits)
        super().__init__({"i": In(stream.Signature(channels * bits)),
                          "o": Out(stream.Signature(channels * pixels * bits)),
                          "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        c, n, b = self._p
        count = Signal(range(n))
        beats = [Signal(c * b, name=f"flat_beat_{p}") for p in range(n)]
        o_valid = Signal()
        m.d.comb += self.i.ready.eq(~o_valid)
        with m.If(self.i.valid & self.i.ready):
            for p in range(n):
                with m.If(count == p):
                    m.d.sync += beats[p].eq(self.i.payload)
            with m.If(count == n - 1):
                m.d.sync += [count.eq(0), o_valid.eq(1)]
            with m.Else():
                m.d.sync += count.eq(count + 1)
        with m.If(o_valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        feats = [beats[p][ch * b:(ch + 1) * b] for ch in range(c) for p in range(n)]
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(Cat(*feats)),
                     self.idle.eq(~o_valid & (count == 0))]
        return m
