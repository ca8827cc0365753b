"""Streaming max pooling (contract v1.1) with line buffers: `MaxPoolUnit`.

Input: one beat per input pixel (all `C` channels), raster order; output: one beat per output
pixel, raster order; images back to back with no frame signal. Only `L = kernel + stride` input
rows are kept, each in a memory of `W` words (a ResNet-50 stem's 112x112x64 map at 4 bits with
a 3x3/2 window holds 5 rows of 112 words of 256 bits), never the whole map.

Two sides share the row memories:

- the **loader** writes pixel `(y, x)` of a used row into word `x` of the row slot after the
  `held` complete rows (rows after the last window's are taken and dropped); `i.ready` is high
  while `held < L` or the row is dropped;
- the **scanner** makes output row `oy` once the input rows `r0..r1` of its windows are held
  (`r0 = max(oy*s - p, 0)`, `r1 = min(oy*s - p + k - 1, H - 1)`), first releasing the rows
  before `r0`: it steps the padded columns `u = 0 .. (Wo-1)*s + k - 1` one per cycle, reading
  column `x = u - p` of every row slot (synchronous read ports); the next stage takes the
  channel-wise maximum over the window's rows (zero outside the map: the inputs are unsigned and
  every window holds a pixel of the map, so padding never wins), shifts it into the last `k-1`
  column maxima and, at `u = k - 1 + ox*s`, puts the maximum of the last `k` columns into the
  output register. The last output row of an image also releases the rows still held.

Every `valid` and `i.ready` come from registers. `docs/network.md` states the timing rule and
`epim.sw.chip.ops.maxpool.MaxPoolModel` steps the same registers.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract.params import MaxPoolParams


def pool_shape(p: MaxPoolParams) -> dict[str, int]:
    """The unit's derived sizes: row slots `L`, scan steps per output row `U`, the last input
    row any window reads `ylast`."""
    ho, wo = p.out_height, p.out_width
    return {"ho": ho, "wo": wo, "slots": p.kernel + p.stride,
            "steps": (wo - 1) * p.stride + p.kernel,
            "ylast": min((ho - 1) * p.stride - p.padding + p.kernel - 1, p.height - 1)}


def _max(m: Module, a, b, name: str) -> Signal:
    """`max(a, b)` as a signal of its own (each operand is used twice: as expressions, a chain
    of maxima would grow its netlist exponentially)."""
    v = Signal(len(a), name=name)
    m.d.comb += v.eq(Mux(a > b, a, b))
    return v


class MaxPoolUnit(wiring.Component):
    """Max pooling over a `channels` x `height` x `width` map of `bits`-bit values (module
    docstring: line buffers, loader and scanner)."""

    def __init__(self, p: MaxPoolParams):
        self._p = p
        self._s = pool_shape(p)
        width = p.channels * p.bits
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width)),
                          "idle": Out(1)})

    def _channels(self, v):
        b = self._p.bits
        return [v[c * b:(c + 1) * b] for c in range(self._p.channels)]

    def elaborate(self, platform):
        m = Module()
        p, sh = self._p, self._s
        k, s, pad, h, w = p.kernel, p.stride, p.padding, p.height, p.width
        n_slots, n_steps, ylast = sh["slots"], sh["steps"], sh["ylast"]
        # loader
        ix, iy = Signal(range(w)), Signal(range(h))
        wslot = Signal(range(n_slots))
        held = Signal(range(n_slots + 1))  # complete rows held, from row `base` on
        stored = iy <= ylast
        m.d.comb += self.i.ready.eq((held < n_slots) | ~stored)
        in_fire = self.i.valid & self.i.ready
        row_done = Signal()
        m.d.comb += row_done.eq(in_fire & (ix == w - 1) & stored)
        with m.If(in_fire):
            m.d.sync += ix.eq(Mux(ix == w - 1, 0, ix + 1))
            with m.If(ix == w - 1):
                m.d.sync += iy.eq(Mux(iy == h - 1, 0, iy + 1))
        with m.If(row_done):
            m.d.sync += wslot.eq(Mux(wslot == n_slots - 1, 0, wslot + 1))
        # scanner (stage A): output row `oy`, padded column step `u`
        oy, u = Signal(range(sh["ho"])), Signal(range(n_steps))
        ys = Signal(range((sh["ho"] - 1) * s + 1))  # oy * s
        until = Signal(range(max(k, s)), init=k - 1)  # steps to the next output column
        base = Signal(range(h))  # the image row held in slot `base_slot`
        base_slot = Signal(range(n_slots))
        r0, r1 = Signal(range(h)), Signal(range(h))
        m.d.comb += [r0.eq(Mux(ys >= pad, ys - pad, 0)),
                     r1.eq(Mux(ys + (k - 1 - pad) > h - 1, h - 1, ys + (k - 1 - pad)))]
        start, last_u, last_row = u == 0, u == n_steps - 1, oy == sh["ho"] - 1
        want = Mux(start, held + base > r1, 1)
        # stage B: the row memories' read data, the column's row mask
        b_valid, b_emit, b_in = Signal(), Signal(), Signal()
        b_slot0, b_nrows = Signal(range(n_slots)), Signal(range(k + 1))
        o_valid = Signal()
        b_move = Signal()
        m.d.comb += b_move.eq(~b_valid | ~b_emit | ~o_valid | self.o.ready)
        issue = Signal()
        m.d.comb += issue.eq(want & b_move)
        # releases: the rows above r0 when a row starts, all rows left after an image
        rel = Signal(range(h + 1))
        with m.If(issue & last_u & last_row):
            m.d.comb += rel.eq(ylast + 1 - base)
            m.d.sync += base.eq(0)
        with m.Elif(issue & start):
            m.d.comb += rel.eq(r0 - base)
            m.d.sync += base.eq(r0)
        m.d.sync += held.eq(held + row_done - rel)
        m.d.sync += base_slot.eq(_wrap(base_slot + rel, n_slots))
        with m.If(issue):
            m.d.sync += until.eq(Mux(last_u, k - 1, Mux(until == 0, s - 1, until - 1)))
            m.d.sync += u.eq(Mux(last_u, 0, u + 1))
            with m.If(last_u):
                m.d.sync += [oy.eq(Mux(last_row, 0, oy + 1)), ys.eq(Mux(last_row, 0, ys + s))]
        with m.If(b_move):
            m.d.sync += b_valid.eq(issue)
            with m.If(issue):
                m.d.sync += [b_emit.eq(until == 0), b_in.eq((u >= pad) & (u < pad + w))]
                with m.If(start):
                    m.d.sync += [b_slot0.eq(_wrap(base_slot + r0 - base, n_slots)),
                                 b_nrows.eq(r1 - r0 + 1)]
        # the row memories
        addr = Mux((u >= pad) & (u < pad + w), u - pad, 0)
        datas = []
        for j in range(n_slots):
            mem = Memory(shape=p.channels * p.bits, depth=w, init=[])
            m.submodules[f"row{j}"] = mem
            wp = mem.write_port()
            m.d.comb += [wp.en.eq(in_fire & stored & (wslot == j)), wp.addr.eq(ix),
                         wp.data.eq(self.i.payload)]
            rp = mem.read_port(domain="sync", transparent_for=())
            m.d.comb += [rp.en.eq(b_move), rp.addr.eq(addr)]
            sel = Signal(name=f"sel{j}")
            m.d.comb += sel.eq(b_in & (Mux(b_slot0 <= j, j - b_slot0, j + n_slots - b_slot0)
                                       < b_nrows))
            datas.append((sel, rp.data))
        self._stage_b(m, datas, b_valid, b_emit, b_move, o_valid)
        m.d.comb += self.idle.eq(~o_valid & ~b_valid & (held == 0) & (ix == 0) & (iy == 0)
                                 & (u == 0) & (oy == 0))
        return m

    def _stage_b(self, m, datas, b_valid, b_emit, b_move, o_valid):
        """Column maxima over the window's rows, the last `k-1` of them, the output register."""
        p = self._p
        cm = []
        for c in range(p.channels):
            v = None
            for j, (sel, data) in enumerate(datas):
                x = Mux(sel, self._channels(data)[c], 0)
                v = x if v is None else _max(m, v, x, f"colmax{j}_{c}")
            cm.append(v)
        hist = [[Signal(p.bits, name=f"hist{i}_{c}") for c in range(p.channels)]
                for i in range(p.kernel - 1)]
        win = []
        for c in range(p.channels):
            v = cm[c]
            for i, row in enumerate(hist):
                v = _max(m, v, row[c], f"winmax{i}_{c}")
            win.append(v[:p.bits])
        with m.If(b_valid & b_move):
            for i, row in enumerate(hist):
                src = cm if i == 0 else hist[i - 1]
                m.d.sync += [r.eq(x) for r, x in zip(row, src, strict=True)]
        payload = Signal(p.channels * p.bits)
        with m.If(b_valid & b_emit & b_move):
            m.d.sync += [payload.eq(Cat(*win)), o_valid.eq(1)]
        with m.Elif(self.o.ready):
            m.d.sync += o_valid.eq(0)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(payload)]


def _wrap(v, n: int):
    """`v mod n` for `0 <= v < 2n`."""
    return Mux(v >= n, v - n, v)
