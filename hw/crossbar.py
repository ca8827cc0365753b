"""The crossbar emulation: DAC slices, bit-sliced differential cells, ADCs and shift-and-add.

Each cycle every row's DAC slice drives the cells of its row chunk; a column's sum per chunk,
slice and polarity goes through its ADC (saturating at `2**adc_bits - 1`), positive minus
negative, shifted by the cell slice. A Horner sum over DAC slices (most significant first)
builds the step's column values. `lanes` adder trees and ADC sets compute the row chunks in
`passes` passes. Pipeline: `x_` selection, `d_` DAC register, `p_` column sums."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed

from ..contract import geometry
from ..contract.images import ubits, xbar_field
from ..contract.params import TileParams
from . import behavioural
from .arith import bit_sum, tree_sum


def dac_stage(m: Module, cfg: TileParams, x_rows: list, s: SimpleNamespace) -> SimpleNamespace:
    """Every row's DAC input slice this cycle (`x_slices`) and the DAC register (`d_`):
    the slices, the pass and the step's controls, one cycle after the sequencer picked them.
    `x_rows` is every row's input value, or (a `Value`) every row's slice already, which
    is registered as one signal (`d_all`).
    The slice and pass selection (a few wires that fan out to every column) and the adder
    trees are then separate pipeline stages."""
    stall, x_t, x_p, s_x, x_done, n_pass = s.stall, s.x_t, s.x_p, s.s_x, s.x_done, s.n_pass
    x_step_end, ifrt_last, ifrt_mask, ifrt_gi = (s.x_step_end, s.ifrt_last, s.ifrt_mask,
                                                 s.ifrt_gi)
    dac = cfg.dac_bits
    x_slices, d_slices, d_all = [], [], None
    if isinstance(x_rows, Value):
        # every row's slice already, as one signal (`behavioural.verilog_rows`): one register
        d_all = Signal(cfg.rows * dac, name="d_dac_all")
        with m.If(~stall):
            m.d.sync += d_all.eq(x_rows)
    for rho, row in enumerate([] if d_all is not None else x_rows):
        sl = Signal(dac, name=f"x_dac_{rho}")  # the DAC input slice of every row this cycle
        m.d.comb += sl.eq(Cat(row, Const(0, cfg.n_t * dac - cfg.in_bits))
                          .word_select(x_t, dac))
        x_slices.append(sl)
    for rho, sl in enumerate(x_slices):
        r = Signal(dac, name=f"d_dac_{rho}")
        with m.If(~stall):
            m.d.sync += r.eq(sl)
        d_slices.append(r)
    d_p = Signal(range(n_pass))
    d_valid = Signal()
    d_first_t = Signal()
    d_first_p = Signal()
    d_step_end = Signal()
    d_last = Signal()
    d_mask = Signal(cfg.g_out)
    d_gi = Signal(ubits(cfg.g_in))
    first_p = (x_p == 0) if n_pass > 1 else Const(1)
    with m.If(~stall):
        m.d.sync += [d_p.eq(x_p), d_valid.eq(s_x & ~x_done),
                     d_first_t.eq((x_t == cfg.n_t - 1) & first_p),
                     d_first_p.eq(first_p),
                     d_step_end.eq(x_step_end), d_last.eq(ifrt_last),
                     d_mask.eq(ifrt_mask), d_gi.eq(ifrt_gi)]
    return SimpleNamespace(x_slices=x_slices, d_slices=d_slices, d_all=d_all, d_p=d_p,
                           d_valid=d_valid,
                           d_first_t=d_first_t, d_first_p=d_first_p, d_step_end=d_step_end,
                           d_last=d_last, d_mask=d_mask, d_gi=d_gi)


def lane_plan(cfg: TileParams) -> list:
    """Per lane, per local row, the global crossbar row it computes in each pass (None: no
    row). Lane `j` computes chunk `p * lanes + j` in pass `p`."""
    n_pass = cfg.passes
    chunks = [range(h0, min(h0 + cfg.xbar_rows, cfg.rows))
              for h0 in range(0, cfg.rows, cfg.xbar_rows)]
    n_lanes = -(-len(chunks) // n_pass)
    # lane j computes chunk p*n_lanes + j in pass p: its rows' DAC slices and cells are
    # selected by the pass (a plain wire when every chunk has its own lane)
    lane_rows = []  # per lane: per local row, the global row in each pass (None: no row)
    for j in range(n_lanes):
        sel = [chunks[p * n_lanes + j] if p * n_lanes + j < len(chunks) else range(0)
               for p in range(n_pass)]
        depth = max(len(c) for c in sel)
        lane_rows.append([[c[r] if r < len(c) else None for c in sel] for r in range(depth)])
    return lane_rows


def is_linear(cfg: TileParams, lane_rows: list, fixed: bool) -> bool:
    """With constant cells and no ADC that can saturate (a chunk's largest column sum is
    within the ADC's range), a column value is a plain signed sum of single bits: the
    negative cells' bits enter inverted (-b = ~b - 1, the -1s folded into one constant)
    and every lane, slice and polarity goes into one carry-save tree."""
    top = geometry.dac_max(cfg.dac_bits) * (2**cfg.cell_bits - 1)
    return fixed and all(len(rows) * top <= geometry.adc_max(cfg.adc_bits)
                         for rows in lane_rows)


class SlotBits:
    """Shared signals of a fixed tile's trees: pass gates and slot bits, one signal per
    distinct pattern (an expression used twice would be emitted twice)."""

    def __init__(self, m: Module, d: SimpleNamespace, s: SimpleNamespace):
        self.m, self.d, self.s = m, d, s
        self.gates: dict[tuple, Value] = {}
        self.slots: dict[tuple, Value] = {}
        self.inverted: dict[tuple, Value] = {}

    def pass_gate(self, on):
        """1 in the passes where a cell bit is set (`on`, per pass)."""
        on = tuple(bool(o) for o in on)
        if all(on):
            return Const(1)
        if on not in self.gates:
            sig = Signal(name=f"x_gate_{len(self.gates)}")
            self.m.d.comb += sig.eq(Cat(*[self.d.d_p == p for p, o in enumerate(on) if o]).any())
            self.gates[on] = sig
        return self.gates[on]

    def slot_bit_inverted(self, sources):
        """`~slot_bit(sources)` (a negative cell's bit enters its tree inverted)."""
        if sources not in self.inverted:
            sig = Signal(name=f"x_neg_{len(self.inverted)}")
            self.m.d.comb += sig.eq(~self.slot_bit(sources))
            self.inverted[sources] = sig
        return self.inverted[sources]

    def slot_bit(self, sources):
        """The DAC slice bit `(row, dbit)` that a tree slot takes in each pass (None: 0). A
        slot of several passes is selected before the DAC register, by `x_p`, and registered
        itself (`d_slot_*`)."""
        if len(sources) == 1:
            return Const(0, 1) if sources[0] is None else self.d.d_slices[sources[0][0]][
                sources[0][1]]
        if sources not in self.slots:
            sig = Signal(name=f"d_slot_{len(self.slots)}")
            with self.m.If(~self.s.stall):
                self.m.d.sync += sig.eq(Array(Const(0, 1) if src is None else
                                              self.d.x_slices[src[0]][src[1]]
                                              for src in sources)[self.s.x_p])
            self.slots[sources] = sig
        return self.slots[sources]


def pick(values: list, d_p, n_pass: int):
    """The value of the current pass (`d_p`) among `values` (None: 0)."""
    values = [Const(0) if v is None else v for v in values]
    return values[0] if n_pass == 1 else Array(values)[d_p]


def lane_inputs(m: Module, cfg: TileParams, lane_rows: list, d: SimpleNamespace) -> list:
    """Per lane and local row: the DAC slice it gets in this pass."""
    lane_slices = []
    for j, rows in enumerate(lane_rows):
        lane_slices.append([])
        for r, per_pass in enumerate(rows):
            sig = Signal(cfg.dac_bits, name=f"x_lane_{j}_{r}")
            m.d.comb += sig.eq(pick([None if g is None else d.d_slices[g] for g in per_pass],
                                    d.d_p, cfg.passes))
            lane_slices[j].append(sig)
    return lane_slices


def horner_base(m: Module, cfg: TileParams) -> SimpleNamespace:
    """The Horner sum over DAC slices (shift on a slice's first pass), a plain sum over its
    passes: `x_col_next = base + p_v`, one cycle after the column sums (`p_` stage)."""
    dac = cfg.dac_bits
    acc_shape = signed(cfg.acc_bits)
    # Horner over DAC slices (shift on a slice's first pass), plain sum over its passes:
    # x_col_next = base + p_v, one cycle after the column sums (`p_` stage)
    x_col = [Signal(acc_shape, name=f"x_col_{e}") for e in range(cfg.ce_out)]
    x_col_next = [Signal(acc_shape, name=f"x_col_next_{e}") for e in range(cfg.ce_out)]
    p_first_t = Signal()
    p_first_p = Signal()
    base = []
    for e in range(cfg.ce_out):
        b = Signal(acc_shape, name=f"p_base_{e}")
        m.d.comb += b.eq(Mux(p_first_t, 0, Mux(p_first_p, x_col[e] << dac, x_col[e])))
        base.append(b)
    return SimpleNamespace(acc_shape=acc_shape, x_col=x_col, x_col_next=x_col_next,
                           p_first_t=p_first_t, p_first_p=p_first_p, base=base)


def linear_column(m: Module, cfg: TileParams, e_out: int, lane_rows: list, init: dict,
                  bits: SlotBits, base, stall):
    """One column's value in a linear fixed tile (`is_linear`): one signed carry-save tree
    over every lane, slice and polarity, with the `p_` register halfway down it and the
    Horner `base` added at its end."""
    cb, ns, dac, n_pass = cfg.cell_bits, cfg.n_slices, cfg.dac_bits, cfg.passes
    acc_shape = signed(cfg.acc_bits)
    slot_bit, slot_bit_inverted = bits.slot_bit, bits.slot_bit_inverted
    # Per weight and polarity, pass p has a list of the slice bits whose cells are
    # set; slot k of the tree takes the k-th bit of the current pass (a multiplexer
    # on x_p), so a tree is as wide as its busiest pass, not as the union of all.
    lists: dict[tuple[int, int], list[list]] = {}
    for rows in lane_rows:
        for q in range(ns):
            for pol in range(2):
                field = xbar_field(cfg, pol, e_out, q)
                for per_pass in rows:
                    for p, g in enumerate(per_pass):
                        if g is None:
                            continue
                        v = (init["xbar"][g] >> field) & (2**cb - 1)
                        for cbit in range(cb):
                            if not (v >> cbit) & 1:
                                continue
                            for dbit in range(dac):
                                w = cbit + dbit + q * cb
                                per = lists.setdefault((w, pol),
                                                       [[] for _ in range(n_pass)])
                                per[p].append((g, dbit))
    cols: dict[int, list] = {}
    offset = 0
    for (w, pol), per in sorted(lists.items()):
        for k in range(max(len(bits) for bits in per)):
            sources = tuple(bits[k] if k < len(bits) else None for bits in per)
            if pol:
                # -b = ~b - 1; an empty slot (0) adds ~0 - 1 = 0 as well
                bit, offset = slot_bit_inverted(sources), offset - (1 << w)
            else:
                bit = slot_bit(sources)
            cols.setdefault(w, []).append(bit)
    offset %= 2**cfg.acc_bits
    for w in range(cfg.acc_bits):
        if (offset >> w) & 1:
            cols.setdefault(w, []).append(Const(1, 1))
    # the pipeline register `p_` sits halfway down this tree: the rest of the
    # tree and its final adder belong to the Horner stage
    def preg(bit, e=e_out):
        r = Signal(name=f"p_cs_{e}")
        with m.If(~stall):
            m.d.sync += r.eq(bit)
        return r
    # ... and the Horner sum's `base` joins the rest of the tree: one final adder
    v = Signal(acc_shape, name=f"p_sum_{e_out}")
    m.d.comb += v.eq(bit_sum(m, cols, cfg.acc_bits, f"x_cs_{e_out}", preg,
                             late=base))
    return v


def adc_column(m: Module, cfg: TileParams, e_out: int, lane_rows: list, lane_slices: list,
               cells: list, init: dict, fixed: bool, bits: SlotBits, d_p):
    """One column's value of this DAC slice and pass: per lane, cell slice and polarity, the
    column sum of the lane's rows through its ADC, positive minus negative, shifted by the
    slice."""
    cb, ns, dac = cfg.cell_bits, cfg.n_slices, cfg.dac_bits
    adc_max = geometry.adc_max(cfg.adc_bits)
    acc_shape = signed(cfg.acc_bits)
    pass_gate = bits.pass_gate

    def pick_pass(values):
        return pick(values, d_p, cfg.passes)
    terms = []
    for j, rows in enumerate(lane_rows):
        s_bits = (len(rows) * (2**dac - 1) * (2**cb - 1)).bit_length() or 1
        a_bits = min(s_bits, cfg.adc_bits)
        for q in range(ns):
            adc = []
            for pol in range(2):
                field = xbar_field(cfg, pol, e_out, q)
                if fixed:
                    # constant cells: the column sum is a sum of single bits, which a
                    # carry-save (Dadda) tree adds with far fewer adders than a tree
                    # of words
                    cols: dict[int, list] = {}
                    for r, per_pass in enumerate(rows):
                        vals = [None if g is None else
                                (init["xbar"][g] >> field) & (2**cb - 1)
                                for g in per_pass]
                        sl = lane_slices[j][r]
                        for cbit in range(cb):
                            on = [v is not None and (v >> cbit) & 1 for v in vals]
                            if not any(on):
                                continue
                            gate = pass_gate(on)
                            for dbit in range(dac):
                                cols.setdefault(cbit + dbit, []).append(
                                    sl[dbit] & gate)
                    s = bit_sum(m, cols, s_bits, f"x_cs_{j}_{pol}_{e_out}_{q}")
                else:
                    prods = [lane_slices[j][r] * pick_pass(
                        [None if g is None else cells[g][field:field + cb]
                         for g in per_pass])
                        for r, per_pass in enumerate(rows)]
                    s = tree_sum(prods, s_bits)
                a = Signal(a_bits, name=f"x_adc_{j}_{pol}_{e_out}_{q}")
                m.d.comb += a.eq(Mux(s > adc_max, adc_max, s))
                adc.append(a)
            terms.append((adc[0] - adc[1]).as_signed() << (q * cb))
    v = Signal(acc_shape, name=f"x_v_{e_out}")
    m.d.comb += v.eq(tree_sum(terms, cfg.acc_bits, is_signed=True))
    return v


def shift_add(m: Module, cfg: TileParams, x_v: list, linear: bool, d: SimpleNamespace,
              h: SimpleNamespace, stall) -> SimpleNamespace:
    """The pipeline register after the column sums (`p_`) and the Horner step: the slice's
    column values and the step's controls move on one cycle later, where the Horner sum
    takes them (a column summed by one carry-save tree has its register inside the tree)."""
    acc_shape, x_col, x_col_next, base = h.acc_shape, h.x_col, h.x_col_next, h.base
    p_first_t, p_first_p = h.p_first_t, h.p_first_p
    d_valid, d_first_t, d_first_p, d_step_end = d.d_valid, d.d_first_t, d.d_first_p, d.d_step_end
    d_last, d_mask, d_gi = d.d_last, d.d_mask, d.d_gi
    p_v = (x_v if linear else
           [Signal(acc_shape, name=f"p_v_{e}") for e in range(cfg.ce_out)])
    p_valid = Signal()
    p_step_end = Signal()
    p_last = Signal()
    p_mask = Signal(cfg.g_out)
    p_gi = Signal(ubits(cfg.g_in))
    with m.If(~stall):
        m.d.sync += [p_valid.eq(d_valid), p_first_t.eq(d_first_t),
                     p_first_p.eq(d_first_p), p_step_end.eq(d_step_end),
                     p_last.eq(d_last), p_mask.eq(d_mask), p_gi.eq(d_gi)]
        if not linear:
            m.d.sync += [p_v[e].eq(x_v[e]) for e in range(cfg.ce_out)]
    for e in range(cfg.ce_out):
        # (a tree with its register inside has added `base` already)
        m.d.comb += x_col_next[e].eq(p_v[e] if linear else base[e] + p_v[e])
        with m.If(p_valid & ~stall):
            m.d.sync += x_col[e].eq(x_col_next[e])
    return SimpleNamespace(x_col_next=x_col_next, p_valid=p_valid, p_step_end=p_step_end,
                           p_last=p_last, p_mask=p_mask, p_gi=p_gi)


def crossbar(m: Module, cfg: TileParams, x_rows: list, s: SimpleNamespace, cells: list,
             init: dict, fixed: bool, modules: dict | None = None) -> SimpleNamespace:
    """The crossbar stage of a tile from its row inputs `x_rows`: returns the `d_`
    register's controls (`d`) and the step's column values with the `p_` controls (`p`).
    `cells` are the crossbar words (constants in a fixed tile). With `modules` (a dict), a
    programmable tile's column sums are a behavioural module (`behavioural`); without,
    gates (`adc_column`, which Amaranth's simulator runs)."""
    d = dac_stage(m, cfg, x_rows, s)
    lane_rows = lane_plan(cfg)
    linear = is_linear(cfg, lane_rows, fixed)
    h = horner_base(m, cfg)
    if not fixed and modules is not None:
        x_v = behavioural.verilog_columns(m, cfg, d, cells, modules)
    else:
        lane_slices = [] if linear else lane_inputs(m, cfg, lane_rows, d)
        bits = SlotBits(m, d, s)
        x_v = [linear_column(m, cfg, e, lane_rows, init, bits, h.base[e], s.stall) if linear
               else adc_column(m, cfg, e, lane_rows, lane_slices, cells, init, fixed, bits,
                               d.d_p)
               for e in range(cfg.ce_out)]
    return SimpleNamespace(d=d, p=shift_add(m, cfg, x_v, linear, d, h, s.stall))
