"""The memory tile: one conv/linear layer whose cells, tables, input and accumulators all sit in
memories, with a datapath per cycle bounded by the physical crossbar.

Every cycle computes at most `lanes` row chunks of `xbar_rows` rows (one pass) on the crossbar
cells of those rows, whatever the layer's `Cin`, `Cout` or `Ce_in * k * k`. The units:

- ``l_`` loader: an input beat goes into the input memory `ifm` as `in_blocks` words of
  `in_word` channels (`epim.contract.tileplan`), one word a cycle, in one of two banks (one
  image each);
- ``f_`` fill: before a pass, the pass's row registers (a shift register) take one epitome input
  channel a cycle: the IFAT names the input channel, whose word address (`src // in_word`)
  addresses `ifm` through `k*k` read ports, one per window position, and whose place in the word
  (`src % in_word`) picks its value;
- ``x_``/``p_`` crossbar: per DAC slice (most significant first) the pass's rows drive the cells
  of their row chunk, read from `lanes * xbar_rows` cell memories (one per row of a pass, one
  word per pass), ADCs saturate per chunk and polarity, and a Horner sum adds the slice into the
  step's column values;
- ``a_`` OFAT accumulation: after a step, one output group a cycle: its accumulator word (the
  `p_out` channels of the group) is read from the accumulator memory, the column values rotated
  by the group's OFAT base (`log2(Ce_out)` stages) are added, and the word is written back;
- ``q_`` output stage: one output channel a cycle, `(acc + bias) * mult` then the rounding shift
  and the clamp, into the output shift register; ``o_`` the output stream register.

A pixel runs its steps and its output stage one after another (the schedule of
`epim.contract.tileplan.pixel_cycles`), so `epim.sw.chip.cyclemodel` follows it exactly.
`docs/tile.md` has the block diagram and the cycle counts.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract import geometry, tileplan
from ..contract.images import (BIAS_BITS, MULT_BITS, ProgTarget, ifat_fields, ifrt_fields,
                               offsets, prog_fields, ubits, xbar_field)
from ..contract.params import TileParams
from .arith import tree_sum
from .sequencer import walk_values

__all__ = ["MemoryTile", "walk_layout", "prog_layout"]


def base_bits(cfg: TileParams) -> int:
    """Width of the window's base pixel address `g_base` (signed, bank included)."""
    return ubits(2 * cfg.h * cfg.w + cfg.kernel * cfg.w + cfg.kernel) + 2


def walk_layout(cfg: TileParams) -> data.StructLayout:
    """The `walk` port (`walk_port=True`): first and last pixel of a copy's walk."""
    return data.StructLayout({"first_oy": ubits(cfg.ho), "first_ox": ubits(cfg.wo),
                              "first_base": signed(base_bits(cfg)),
                              "last_oy": ubits(cfg.ho), "last_ox": ubits(cfg.wo)})


def prog_layout(cfg: TileParams) -> data.StructLayout:
    """Payload of the programming port: target memory, word address, word."""
    return data.StructLayout(dict(prog_fields(cfg)))


def rotate(values: list, amount, n: int) -> list:
    """`values` (length `n`) rotated down by `amount` (`out[i] = values[(i + amount) % n]`),
    for `amount < n`, in `ubits(n)` stages of two-way multiplexers."""
    out = list(values)
    for s in range(len(amount)):
        a = 1 << s
        if a >= n:
            break
        out = [Mux(amount[s], out[(i + a) % n], out[i]) for i in range(n)]
    return out


class MemoryTile(wiring.Component):
    """One layer's PIM tile, memories throughout (see the module's text).

    Parameters
    ----------
    cfg : TileParams
    init : dict of str to list of int
        Initial words of ``xbar``, ``ifrt``, ``ifat``, ``ofat``, ``ostage``.
    fixed : bool
        The memories are ROMs holding `init` (no programming port writes).
    walk_port : bool
        The pixel walk's first and last pixel come from the `walk` port.

    Ports as `epim.hw.tile.PIMTile`: `i`, `o`, `prog`, `idle` (and `walk`).
    """

    def __new__(cls, cfg: TileParams, init: dict[str, list[int]], *args, **kwargs):
        if not isinstance(cfg, TileParams):
            raise TypeError(f"cfg must be TileParams, not {type(cfg).__name__}")
        cfg.check_words(init)
        return super().__new__(cls)

    def __init__(self, cfg: TileParams, init: dict[str, list[int]], fixed: bool = False,
                 walk_port: bool = False):
        self._cfg, self._fixed, self._walk_port = cfg, fixed, walk_port
        self._init = {k: list(v) for k, v in init.items()}
        super().__init__({
            "i": In(stream.Signature(cfg.cin * cfg.in_bits)),
            "o": Out(stream.Signature(cfg.cout * cfg.out_bits)),
            "prog": In(stream.Signature(prog_layout(cfg))),
            "idle": Out(1),
            **({"walk": In(walk_layout(cfg))} if walk_port else {}),
        })

    @property
    def cfg(self) -> TileParams:
        return self._cfg

    @property
    def init(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self._init.items()}

    # --- memories ------------------------------------------------------------------------------
    def _table(self, m, name, prog_we, depth=None, init=None):
        """A memory of the tile's images, written by the programming port unless fixed."""
        cfg = self._cfg
        width = cfg.widths[name]
        depth = cfg.depths[name] if depth is None else depth
        mem = Memory(shape=unsigned(width), depth=depth,
                     init=self._init[name] if init is None else init)
        m.submodules[f"{name}_table"] = mem
        if not self._fixed:
            wp = mem.write_port()
            addr, word = self.prog.payload.addr, self.prog.payload.data
            m.d.comb += [wp.en.eq(prog_we[name] & (addr < depth)), wp.addr.eq(addr),
                         wp.data.eq(word[:width])]
        return mem

    def _cells(self, m, prog_we):
        """Cell memories: one per row of a pass (`lanes * xbar_rows`), one word per pass;
        row `rho` is word `rho // n` of memory `rho % n`. Returns their read ports (None for
        a row that no pass has)."""
        cfg = self._cfg
        n, rows, n_pass = tileplan.pass_rows(cfg), cfg.rows, cfg.passes
        width = cfg.widths["xbar"]
        addr, word = self.prog.payload.addr, self.prog.payload.data
        # the programming address as (pass, row of the pass), by comparisons
        pq = Signal(range(max(2, n_pass)), name="prog_pass")
        pr = Signal(range(max(2, n + 1)) if n_pass > 1 else len(addr), name="prog_row")
        m.d.comb += [pq.eq(0), pr.eq(addr)]
        for q in range(1, n_pass):
            with m.If(addr >= q * n):
                m.d.comb += [pq.eq(q), pr.eq(addr - q * n)]
        ports = []
        for r in range(n):
            valid = [q for q in range(n_pass) if q * n + r < rows]
            if not valid:
                ports.append(None)
                continue
            words = [self._init["xbar"][q * n + r] if q * n + r < rows else 0
                     for q in range(n_pass)]
            mem = Memory(shape=unsigned(width), depth=n_pass, init=words)
            m.submodules[f"cells_{r}"] = mem
            if not self._fixed:
                wp = mem.write_port()
                m.d.comb += [wp.en.eq(prog_we["xbar"] & (pr == r) & (addr < rows)),
                             wp.addr.eq(pq), wp.data.eq(word[:width])]
            ports.append(mem.read_port())
        return ports

    def elaborate(self, platform):
        cfg, fixed = self._cfg, self._fixed
        m = Module()
        k, hw = cfg.kernel, cfg.h * cfg.w
        k2 = k * k
        ib, dac, cb, ns = cfg.in_bits, cfg.dac_bits, cfg.cell_bits, cfg.n_slices
        wc, nb = tileplan.in_word(cfg.cin), tileplan.in_blocks(cfg.cin)
        plan = tileplan.fill_plan(cfg)
        n_pass, n_rows = len(plan), tileplan.pass_rows(cfg)
        assert n_pass == cfg.passes
        acc_shape = signed(cfg.acc_bits)

        # --- programming port ----------------------------------------------------------------
        prog_fire = self.prog.valid & self.prog.ready
        prog_we = {}
        for target in ProgTarget:
            name = target.name.lower()
            prog_we[name] = Signal(name=f"prog_we_{name}")
            m.d.comb += prog_we[name].eq(prog_fire & (self.prog.payload.mem == target))
        ifrt = self._table(m, "ifrt", prog_we).read_port()
        ifat = self._table(m, "ifat", prog_we).read_port()
        ofat = self._table(m, "ofat", prog_we).read_port()
        ostage = self._table(m, "ostage", prog_we).read_port()
        cells = self._cells(m, prog_we)

        # --- loader --------------------------------------------------------------------------
        ifm = Memory(shape=unsigned(wc * ib), depth=2 * hw * nb, init=[])
        m.submodules.ifm = ifm
        l_wp = ifm.write_port()
        l_bank = Signal()
        l_pix = Signal(range(hw))
        l_blk = Signal(range(nb))
        l_addr = Signal(range(2 * hw * nb))
        l_hold = Signal(max(1, (nb - 1) * wc * ib))  # the beat's words still to write
        full = Signal(2)
        set_full = Signal(2)
        release = Signal(2)
        l_fire = self.i.valid & self.i.ready
        padded = Cat(self.i.payload, Const(0, nb * wc * ib - cfg.cin * ib))
        m.d.comb += [self.i.ready.eq(~full.bit_select(l_bank, 1) & (l_blk == 0)),
                     l_wp.addr.eq(l_addr)]
        l_we = Signal()
        l_pixel_done = Signal()
        with m.If(l_fire):
            m.d.comb += [l_we.eq(1), l_wp.data.eq(padded[:wc * ib]),
                         l_pixel_done.eq(nb == 1)]
            if nb > 1:
                m.d.sync += [l_hold.eq(padded[wc * ib:]), l_blk.eq(1)]
        with m.Elif(l_blk != 0):
            m.d.comb += [l_we.eq(1), l_wp.data.eq(l_hold[:wc * ib]),
                         l_pixel_done.eq(l_blk == nb - 1)]
            m.d.sync += [l_hold.eq(l_hold >> (wc * ib)),
                         l_blk.eq(Mux(l_blk == nb - 1, 0, l_blk + 1))]
        m.d.comb += l_wp.en.eq(l_we)
        with m.If(l_we):
            m.d.sync += l_addr.eq(Mux(l_addr == 2 * hw * nb - 1, 0, l_addr + 1))
        with m.If(l_pixel_done):
            with m.If(l_pix == hw - 1):
                m.d.sync += [l_pix.eq(0), l_bank.eq(~l_bank)]
                m.d.comb += set_full.eq(Cat(~l_bank, l_bank))
            with m.Else():
                m.d.sync += l_pix.eq(l_pix + 1)
        m.d.sync += full.eq((full | set_full) & ~release)

        # --- pixel walk ----------------------------------------------------------------------
        wv = walk_values(cfg)
        walk = self.walk if self._walk_port else wv
        g_bank = Signal()
        g_oy = Signal(range(cfg.ho), init=0 if self._walk_port else wv["first_oy"])
        g_ox = Signal(range(cfg.wo), init=0 if self._walk_port else wv["first_ox"])
        g_base = Signal(signed(base_bits(cfg)), init=0 if self._walk_port else wv["first_base"])
        if self._walk_port:
            g_start = Signal(init=1)
            with m.If(g_start):
                m.d.sync += [g_start.eq(0), g_oy.eq(walk.first_oy), g_ox.eq(walk.first_ox),
                             g_base.eq(walk.first_base)]
        g_last = (g_oy == walk["last_oy"]) & (g_ox == walk["last_ox"])
        dy, dx = divmod(cfg.pix_step, cfg.wo)
        g_wrap = g_ox >= cfg.wo - dx if dx else Const(0)

        # --- sequencer state -----------------------------------------------------------------
        x_step = Signal(range(cfg.max_steps))
        x_p = Signal(range(max(2, n_pass)))
        x_t = Signal(range(cfg.n_t), init=cfg.n_t - 1)
        f_i = Signal(range(tileplan.fill_depth(cfg) + 1))
        c = Signal(range(max(cfg.g_out, cfg.cout) + 2))
        fr = offsets(ifrt_fields(cfg))
        ifrt_last = ifrt.data[fr["last"][0]] | (x_step == cfg.max_steps - 1)
        ifrt_mask = ifrt.data[fr["mask"][0]:fr["mask"][0] + cfg.g_out]
        ifrt_gi = ifrt.data[fr["gi"][0]:]
        m.d.comb += [ifrt.addr.eq(x_step), ifat.addr.eq(x_step), ofat.addr.eq(ifrt_gi)]
        for port in cells:
            if port is not None:
                m.d.comb += port.addr.eq(x_p)

        # --- fill: one epitome input channel a cycle into the row shift register ---------------
        fa = offsets(ifat_fields(cfg))
        stride = 1 + cfg.src_bits
        assert all(fa[f"active{e}"] == (e * stride, 1) for e in range(cfg.ce_in))
        f_first = Array(Const(first, range(cfg.ce_in)) for first, _ in plan)
        f_count = Array(Const(count, range(tileplan.fill_depth(cfg) + 1)) for _, count in plan)
        f_e = Signal(range(cfg.ce_in + tileplan.fill_depth(cfg)))
        m.d.comb += f_e.eq(f_first[x_p] + f_i)
        field = ifat.data.word_select(f_e, stride)
        f_src = field[1:]
        f_active = field[0] & (f_src < cfg.cin)
        f_issue = Signal()
        f_cap = Signal()  # the reads issued last cycle arrive now
        f_sel = Signal(range(wc)) if wc > 1 else None
        f_in = Signal(k2)  # per window position: inside the map and active
        word_of = f_src >> (wc.bit_length() - 1)
        rps = []
        for kh in range(k):
            iy = Signal(signed(ubits(cfg.h + k + cfg.ho * cfg.stride) + 2), name=f"f_iy_{kh}")
            m.d.comb += iy.eq(g_oy * cfg.stride + kh - cfg.padding)
            for kw in range(k):
                ix = Signal(signed(ubits(cfg.w + k + cfg.wo * cfg.stride) + 2),
                            name=f"f_ix_{kh}_{kw}")
                m.d.comb += ix.eq(g_ox * cfg.stride + kw - cfg.padding)
                rp = ifm.read_port()
                pixel = Signal(signed(base_bits(cfg) + 1), name=f"f_pixel_{kh}_{kw}")
                m.d.comb += [pixel.eq(g_base + kh * cfg.w + kw),
                             rp.addr.eq((pixel * nb + word_of).as_unsigned()),
                             rp.en.eq(f_issue)]
                inside = (iy >= 0) & (iy < cfg.h) & (ix >= 0) & (ix < cfg.w)
                with m.If(f_issue):
                    m.d.sync += f_in[kh * k + kw].eq(inside & f_active)
                rps.append(rp)
        m.d.sync += f_cap.eq(f_issue)
        if f_sel is not None:
            with m.If(f_issue):
                m.d.sync += f_sel.eq(f_src[:len(f_sel)])
        values = []
        for pos, rp in enumerate(rps):
            v = rp.data.word_select(f_sel, ib) if f_sel is not None else rp.data[:ib]
            values.append(Mux(f_in[pos], v, 0))
        sr_len = tileplan.fill_depth(cfg) * k2
        f_sr = Signal(sr_len * ib)
        with m.If(f_cap):
            m.d.sync += f_sr.eq(Cat(*values, f_sr[:(sr_len - k2) * ib]))

        # --- crossbar: one pass of `lanes` chunks, one DAC slice a cycle ----------------------
        x_valid = Signal()
        slices = []  # per row of the pass: its DAC slice this cycle
        for r in range(n_rows):
            srcs = [tileplan.row_source(cfg, q, r) for q in range(n_pass)]
            vals = [Const(0, ib) if s is None else f_sr[s * ib:(s + 1) * ib] for s in srcs]
            row = vals[0] if n_pass == 1 else Array(vals)[x_p]
            sl = Signal(dac, name=f"x_dac_{r}")
            m.d.comb += sl.eq(Cat(row, Const(0, cfg.n_t * dac - ib)).word_select(x_t, dac))
            slices.append(sl)
        adc_max = geometry.adc_max(cfg.adc_bits)
        x_v = []
        for e in range(cfg.ce_out):
            terms = []
            for j in range(cfg.lanes):
                rows = [r for r in range(j * cfg.xbar_rows, (j + 1) * cfg.xbar_rows)
                        if r < n_rows and cells[r] is not None]
                if not rows:
                    continue
                s_bits = (len(rows) * geometry.dac_max(dac) * (2**cb - 1)).bit_length() or 1
                for q in range(ns):
                    adc = []
                    for pol in range(2):
                        at = xbar_field(cfg, pol, e, q)
                        s = tree_sum([slices[r] * cells[r].data[at:at + cb] for r in rows],
                                     s_bits)
                        a = Signal(min(s_bits, cfg.adc_bits), name=f"x_adc_{j}_{pol}_{e}_{q}")
                        m.d.comb += a.eq(Mux(s > adc_max, adc_max, s))
                        adc.append(a)
                    terms.append((adc[0] - adc[1]).as_signed() << (q * cb))
            v = Signal(acc_shape, name=f"x_v_{e}")
            m.d.comb += v.eq(tree_sum(terms, cfg.acc_bits, is_signed=True) if terms else 0)
            x_v.append(v)
        # `p_` register, then the Horner sum over slices and the sum over passes
        p_valid, p_first, p_last, p_pfirst = Signal(), Signal(), Signal(), Signal()
        p_v = [Signal(acc_shape, name=f"p_v_{e}") for e in range(cfg.ce_out)]
        h = [Signal(acc_shape, name=f"h_{e}") for e in range(cfg.ce_out)]
        x_col = [Signal(acc_shape, name=f"x_col_{e}") for e in range(cfg.ce_out)]
        m.d.sync += [p_valid.eq(x_valid), p_first.eq(x_t == cfg.n_t - 1), p_last.eq(x_t == 0),
                     p_pfirst.eq(x_p == 0)]
        m.d.sync += [p_v[e].eq(x_v[e]) for e in range(cfg.ce_out)]
        with m.If(p_valid):
            for e in range(cfg.ce_out):
                h_next = Mux(p_first, 0, h[e] << dac) + p_v[e]
                m.d.sync += h[e].eq(h_next)
                with m.If(p_last):
                    m.d.sync += x_col[e].eq(Mux(p_pfirst, 0, x_col[e]) + h_next)

        # --- OFAT accumulation: one output group a cycle ---------------------------------------
        acc = Memory(shape=unsigned(cfg.patch_out * cfg.acc_bits), depth=cfg.g_out, init=[])
        m.submodules.acc = acc
        a_rp, a_wp = acc.read_port(), acc.write_port()
        live = Signal(cfg.g_out)  # the group's accumulator word holds this pixel's sums
        live_clear = Signal()
        a_issue = Signal()
        a_go = Signal(range(cfg.g_out))
        a_valid = Signal()
        m.d.sync += a_valid.eq(a_issue)
        with m.If(a_issue):
            m.d.sync += a_go.eq(c)
        cw = ubits(cfg.ce_out)
        base = ofat.data.word_select(a_go, cw)
        rotated = rotate(x_col, base, cfg.ce_out)
        a_old = Signal(cfg.patch_out * cfg.acc_bits)
        m.d.comb += a_old.eq(Mux(live.bit_select(a_go, 1), a_rp.data, 0))
        new = Cat(*[(a_old.word_select(j, cfg.acc_bits).as_signed() + rotated[j])
                    [:cfg.acc_bits] for j in range(cfg.patch_out)])
        serve = a_valid & ifrt_mask.bit_select(a_go, 1)
        m.d.comb += [a_wp.addr.eq(a_go), a_wp.data.eq(new), a_wp.en.eq(serve)]
        live_set = Signal(cfg.g_out)
        m.d.comb += live_set.eq(Mux(serve, 1 << a_go, 0))
        m.d.sync += live.eq(Mux(live_clear, 0, live | live_set))

        # --- output stage: one channel a cycle ------------------------------------------------
        q_issue = Signal()
        q_go = Signal(range(cfg.g_out))
        q_j = Signal(range(cfg.patch_out))
        q1_valid, q1_live = Signal(), Signal()
        q1_j = Signal(range(cfg.patch_out))
        m.d.sync += q1_valid.eq(q_issue)
        with m.If(q_issue):
            m.d.sync += [q1_j.eq(q_j), q1_live.eq(live.bit_select(q_go, 1))]
        word = ostage.data
        bias = word[:BIAS_BITS].as_signed()
        mult = word[BIAS_BITS:BIAS_BITS + MULT_BITS]
        shift = word[BIAS_BITS + MULT_BITS:]
        q_acc = Mux(q1_live, a_rp.data.word_select(q1_j, cfg.acc_bits), 0).as_signed()
        q2_valid = Signal()
        q2_prod = Signal(signed(cfg.acc_bits + BIAS_BITS + MULT_BITS + 2))
        q2_shift = Signal(len(shift))
        m.d.sync += [q2_valid.eq(q1_valid), q2_prod.eq((q_acc + bias) * mult),
                     q2_shift.eq(shift)]
        lo, hi = ((0, 2**cfg.out_bits - 1) if cfg.relu
                  else (-(2 ** (cfg.out_bits - 1)), 2 ** (cfg.out_bits - 1) - 1))
        y = Signal(signed(len(q2_prod) + 2))
        m.d.comb += y.eq(((q2_prod << 1) + (Const(1, 64) << q2_shift)) >> (q2_shift + 1))
        q_y = Mux(y < lo, lo, Mux(y > hi, hi, y))[:cfg.out_bits]
        ob = cfg.out_bits * cfg.cout
        q_sr = Signal(ob)
        with m.If(q2_valid):
            m.d.sync += q_sr.eq(Cat(q_sr[cfg.out_bits:], q_y) if cfg.cout > 1 else q_y)
        m.d.comb += ostage.addr.eq(c)
        m.d.comb += a_rp.addr.eq(Mux(q_issue, q_go, c))

        # --- output register -----------------------------------------------------------------
        o_valid = Signal()
        o_payload = Signal(ob)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(o_payload)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        o_free = ~o_valid | self.o.ready

        # --- the sequencer -------------------------------------------------------------------
        with m.FSM(name="seq") as fsm:
            with m.State("WAIT"):
                with m.If(full.bit_select(g_bank, 1)):
                    m.d.sync += x_step.eq(0)
                    m.next = "STEP"
            with m.State("STEP"):  # the step's IFRT and IFAT words are read
                with m.If(x_step == 0):
                    m.d.comb += live_clear.eq(1)
                m.d.sync += [x_p.eq(0), f_i.eq(0)]
                m.next = "FILL"
            with m.State("FILL"):
                with m.If(f_i < f_count[x_p]):
                    m.d.comb += f_issue.eq(1)
                    m.d.sync += f_i.eq(f_i + 1)
                with m.Else():
                    m.d.sync += x_t.eq(cfg.n_t - 1)
                    m.next = "COMPUTE"
            with m.State("COMPUTE"):
                m.d.comb += x_valid.eq(1)
                with m.If(x_t != 0):
                    m.d.sync += x_t.eq(x_t - 1)
                with m.Elif(x_p != n_pass - 1):
                    m.d.sync += [x_p.eq(x_p + 1), f_i.eq(0)]
                    m.next = "FILL"
                with m.Else():
                    m.d.sync += c.eq(0)
                    m.next = "OFAT"
            with m.State("OFAT"):
                m.d.comb += a_issue.eq(c < cfg.g_out)
                m.d.sync += c.eq(c + 1)
                with m.If(c == cfg.g_out):
                    with m.If(ifrt_last):
                        m.d.sync += [c.eq(0), q_go.eq(0), q_j.eq(0)]
                        m.next = "OUTPUT"
                    with m.Else():
                        m.d.sync += x_step.eq(x_step + 1)
                        m.next = "STEP"
            with m.State("OUTPUT"):
                m.d.comb += q_issue.eq(c < cfg.cout)
                m.d.sync += c.eq(c + 1)
                with m.If(q_issue):
                    with m.If(q_j == cfg.patch_out - 1):
                        m.d.sync += [q_j.eq(0), q_go.eq(q_go + 1)]
                    with m.Else():
                        m.d.sync += q_j.eq(q_j + 1)
                with m.If(c == cfg.cout + 1):
                    m.next = "MOVE"
            with m.State("MOVE"):
                with m.If(o_free):
                    m.d.sync += [o_payload.eq(q_sr), o_valid.eq(1), x_step.eq(0)]
                    with m.If(g_last):
                        m.d.comb += release.eq(Cat(~g_bank, g_bank))
                        m.d.sync += [g_bank.eq(~g_bank), g_oy.eq(walk["first_oy"]),
                                     g_ox.eq(walk["first_ox"]),
                                     g_base.eq(Mux(g_bank, 0, hw) + walk["first_base"])]
                        m.next = "WAIT"
                    with m.Else():
                        with m.If(g_wrap):
                            m.d.sync += [g_ox.eq(g_ox + dx - cfg.wo), g_oy.eq(g_oy + dy + 1),
                                         g_base.eq(g_base + ((dy + 1) * cfg.w + dx - cfg.wo)
                                                   * cfg.stride)]
                        with m.Else():
                            m.d.sync += [g_ox.eq(g_ox + dx), g_oy.eq(g_oy + dy),
                                         g_base.eq(g_base + (dy * cfg.w + dx) * cfg.stride)]
                        m.next = "STEP"

        busy = (full.any() | ~fsm.ongoing("WAIT") | o_valid | (l_pix != 0) | (l_blk != 0))
        m.d.comb += [self.idle.eq(~busy), self.prog.ready.eq(~busy & (not fixed))]
        return m
