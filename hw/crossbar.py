"""The crossbar emulation of one pass: DAC slices, bit-sliced differential cells, ADCs and the
sums over slices, column blocks and passes.

A cycle computes one column block (`xbar_cols` physical columns, `epim.contract.tileplan`) of
one pass (`lanes` row chunks): every row of lane `j` (row chunk `lanes * pass + j`) drives its
DAC slice into the cells of its row that lie in the block, read from the row's cell memory; a
physical column's sum per lane and polarity goes through its ADC (saturating at
`2**adc_bits - 1`), and positive minus negative, summed over the lanes, is the column's value.
That array (`CrossbarArray`) depends only on the physical crossbar (`ArraySpec`), not on the
layer, so every tile of a network with the same crossbar can instantiate one Verilog module
(`PIMTile(share_array=True)`). The `p_` register takes the values; a Horner sum over the DAC
slices (most significant first) follows, and after a block's last slice every epitome column
adds its cell slices of that block, shifted by the slice, into the step's column values
`x_col` (`accumulate_passes`).

The cell memories hold a row's cells by block, then cell bit, then polarity, then column
(`cell_word_order`), so a block's word is one slice of the memory word and each bit plane of
it one slice again: the column sums are carry-save adders over whole bit planes
(`epim.hw.arith.csa_sums`)."""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract import geometry, tileplan
from ..contract.images import xbar_field
from ..contract.params import TileParams
from .arith import csa_sums, tree_sum


@dataclass(frozen=True)
class ArraySpec:
    """The physical crossbar array that one cycle computes: `lanes` row chunks of `xbar_rows`
    rows, of which the first `used_rows` have cells (fewer than all for a layer smaller than
    a pass), `cols` columns per polarity, `dac_bits`-bit DAC slices, `cell_bits`-bit cells
    and `adc_bits`-bit ADCs."""
    xbar_rows: int
    lanes: int
    used_rows: int
    cols: int
    dac_bits: int
    cell_bits: int
    adc_bits: int

    @classmethod
    def of(cls, cfg: TileParams) -> ArraySpec:
        return cls(cfg.xbar_rows, cfg.lanes, min(cfg.rows, tileplan.pass_rows(cfg)),
                   tileplan.block_cols(cfg), cfg.dac_bits, cfg.cell_bits, cfg.adc_bits)

    @property
    def rows(self) -> int:
        return self.lanes * self.xbar_rows

    @property
    def word(self) -> int:
        """Bits of a row's cells in one block: cell bit, then polarity, then column."""
        return self.cell_bits * 2 * self.cols

    @property
    def width(self) -> int:
        """Bits of a column's value (signed): the lanes' ADC differences added."""
        return (self.lanes * geometry.adc_max(self.adc_bits)).bit_length() + 1

    @property
    def module(self) -> str:
        """The Verilog module name that tiles sharing this array instantiate."""
        used = "" if self.used_rows == self.rows else f"u{self.used_rows}"
        return (f"epim_array_{self.lanes}x{self.xbar_rows}{used}x{self.cols}_d{self.dac_bits}"
                f"c{self.cell_bits}a{self.adc_bits}")


def cell_word_order(cfg: TileParams) -> list[int | None]:
    """Per bit of a cell memory's word, the bit of the crossbar image's row word that it holds
    (`epim.contract.images.xbar_field`), or None for a column past the epitome's: block `b`,
    cell bit `j`, polarity `pol`, column `c` at `((b * cell_bits + j) * 2 + pol) * cols + c`,
    column `c` of block `b` being physical column `b * cols + c`, epitome column `e` slice
    `q` for `divmod(b * cols + c, n_slices)`."""
    n_cols, total = tileplan.block_cols(cfg), cfg.ce_out * cfg.n_slices
    order: list[int | None] = []
    for b in range(tileplan.col_blocks(cfg)):
        for j in range(cfg.cell_bits):
            for pol in range(2):
                for c in range(n_cols):
                    phys = b * n_cols + c
                    order.append(xbar_field(cfg, pol, *divmod(phys, cfg.n_slices)) + j
                                 if phys < total else None)
    return order


def to_cell_word(order: list[int | None], word: int) -> int:
    """A crossbar image's row word in the cell memories' order."""
    if not word:
        return 0
    return sum(((word >> src) & 1) << i for i, src in enumerate(order) if src is not None)


def cell_memories(m: Module, cfg: TileParams, image: list[int], prog, prog_we,
                  fixed: bool) -> list:
    """Cell memories: one per row of a pass (`lanes * xbar_rows`), one word per pass; row
    `rho` is word `rho // n` of memory `rho % n`, its bits in the order of `cell_word_order`,
    initialised from the crossbar `image` and written by the programming port (payload
    `prog`, `prog_we` its `xbar` writes) unless `fixed`. Returns their read ports (None for a
    row that no pass has)."""
    n, rows, n_pass = tileplan.pass_rows(cfg), cfg.rows, cfg.passes
    order = cell_word_order(cfg)
    width = len(order)
    addr, word = prog.addr, prog.data
    # the programming word in the memories' order and its address as (pass, row of the
    # pass), by comparisons, registered: the write lands a cycle after the handshake (the
    # tile takes words only while idle). (The register keeps the permutation, which is only
    # wiring, in one place: else the Verilog repeats it at every memory's write port.)
    p_word = Signal(width, name="prog_cells")
    pq = Signal(range(max(2, n_pass)), name="prog_pass")
    pr = Signal(range(max(2, n + 1)) if n_pass > 1 else len(addr), name="prog_row")
    p_we = Signal(name="prog_cells_we")
    if not fixed:
        m.d.sync += [p_word.eq(Cat(*[word[src] if src is not None else Const(0, 1)
                                     for src in order])),
                     p_we.eq(prog_we & (addr < rows)), pq.eq(0), pr.eq(addr)]
        for q in range(1, n_pass):
            with m.If(addr >= q * n):
                m.d.sync += [pq.eq(q), pr.eq(addr - q * n)]
    ports = []
    for r in range(n):
        if r >= rows:
            ports.append(None)
            continue
        words = [to_cell_word(order, image[q * n + r]) if q * n + r < rows else 0
                 for q in range(n_pass)]
        mem = Memory(shape=unsigned(width), depth=n_pass, init=words)
        m.submodules[f"cells_{r}"] = mem
        if not fixed:
            wp = mem.write_port()
            m.d.comb += [wp.en.eq(p_we & (pr == r)), wp.addr.eq(pq), wp.data.eq(p_word)]
        ports.append(mem.read_port())
    return ports


class CrossbarArray(wiring.Component):
    """One cycle of the physical crossbar (combinational): each row's DAC slice into its cells
    of the block, per lane and polarity a column's sum through its ADC, positive minus
    negative, summed over the lanes.

    Members
    -------
    slices : In(ArrayLayout(unsigned(dac_bits), rows))
        Each row's DAC slice (0 for a row that the pass does not have).
    cells : In(ArrayLayout(unsigned(word), rows))
        Each row's cells of the block, by cell bit, then polarity, then column.
    values : Out(ArrayLayout(signed(width), cols))
        Each column's value.
    """

    def __init__(self, spec: ArraySpec):
        self.spec = spec
        super().__init__({
            "slices": In(data.ArrayLayout(unsigned(spec.dac_bits), spec.rows)),
            "cells": In(data.ArrayLayout(unsigned(spec.word), spec.rows)),
            "values": Out(data.ArrayLayout(signed(spec.width), spec.cols)),
        })

    def elaborate(self, platform):
        m = Module()
        sp = self.spec
        k, cb, dac = sp.cols, sp.cell_bits, sp.dac_bits
        adc_max = geometry.adc_max(sp.adc_bits)
        terms: list[list] = [[] for _ in range(k)]
        for lane in range(sp.lanes):
            rows = range(lane * sp.xbar_rows, min((lane + 1) * sp.xbar_rows, sp.used_rows))
            if not rows:
                continue
            # the partial products as bit planes, both polarities and every column side by side
            s_bits = (len(rows) * geometry.dac_max(dac) * (2**cb - 1)).bit_length()
            words: dict[int, list] = {}
            for r in rows:
                cells, sl = self.cells[r], self.slices[r]
                for i in range(dac):
                    bit = sl[i]
                    for j in range(cb):
                        words.setdefault(i + j, []).append(
                            Mux(bit, cells[j * 2 * k:(j + 1) * 2 * k], 0))
            sums = csa_sums(m, words, 2 * k, s_bits, f"x_s{lane}")
            adc = []
            for n, s in enumerate(sums):
                if s_bits > sp.adc_bits:
                    a = Signal(sp.adc_bits, name=f"x_adc{lane}_{n}")
                    m.d.comb += a.eq(Mux(s > adc_max, adc_max, s))
                    s = a
                adc.append(s)
            for c in range(k):
                terms[c].append((adc[c] - adc[k + c]).as_signed())
        for c in range(k):
            m.d.comb += self.values[c].eq(tree_sum(terms[c], sp.width, is_signed=True))
        return m


def column_values(m: Module, cfg: TileParams, slices: list, cells: list, x_b,
                  share: bool) -> list:
    """Each physical column's value in block `x_b` of this DAC slice and pass (signed), from
    the rows' slices and their cell memories' read ports (None: no row): the block's word of
    each row into the array, an instance of the shared module `ArraySpec.module` (`share`) or
    a `CrossbarArray` of its own."""
    spec = ArraySpec.of(cfg)
    n_blocks = tileplan.col_blocks(cfg)
    a_slices = Signal(data.ArrayLayout(unsigned(spec.dac_bits), spec.rows), name="x_slices")
    a_cells = Signal(data.ArrayLayout(unsigned(spec.word), spec.rows), name="x_cells")
    a_values = Signal(data.ArrayLayout(signed(spec.width), spec.cols), name="x_values")
    for r, port in enumerate(cells):
        if port is None:
            continue
        word = port.data if n_blocks == 1 else port.data.word_select(x_b, spec.word)
        m.d.comb += [a_slices[r].eq(slices[r]), a_cells[r].eq(word)]
    if share:
        m.submodules.array = Instance(spec.module, i_slices=a_slices.as_value(),
                                      i_cells=a_cells.as_value(), o_values=a_values.as_value())
    else:
        m.submodules.array = array = CrossbarArray(spec)
        m.d.comb += [array.slices.eq(a_slices), array.cells.eq(a_cells),
                     a_values.eq(array.values)]
    return [a_values[c] for c in range(spec.cols)]


def accumulate_passes(m: Module, cfg: TileParams, x_v: list, x_valid, x_t, x_p, x_b) -> list:
    """The `p_` register and, a cycle later, per physical column `h = (first slice ? 0 :
    h << dac_bits) + p_v`; after a block's last slice, epitome column `e` adds
    `h_c << (q * cell_bits)` for each of its slices `q` in the block (slot `c`), into
    `x_col[e]`, which the step's first pass restarts. Returns `x_col`, the step's column values
    `V[e]` of contract section 4, one cycle after the step's last slice."""
    acc_shape = signed(cfg.acc_bits)
    n_cols = tileplan.block_cols(cfg)
    p_valid, p_first, p_last, p_pfirst = Signal(), Signal(), Signal(), Signal()
    p_b = Signal(len(x_b), name="p_b")
    p_v = [Signal(acc_shape, name=f"p_v_{c}") for c in range(n_cols)]
    h = [Signal(acc_shape, name=f"p_h_{c}") for c in range(n_cols)]
    x_col = [Signal(acc_shape, name=f"x_col_{e}") for e in range(cfg.ce_out)]
    m.d.sync += [p_valid.eq(x_valid), p_first.eq(x_t == cfg.n_t - 1), p_last.eq(x_t == 0),
                 p_pfirst.eq(x_p == 0), p_b.eq(x_b)]
    m.d.sync += [p_v[c].eq(x_v[c]) for c in range(n_cols)]
    h_next = []
    for c in range(n_cols):
        nxt = Signal(acc_shape, name=f"p_h_next_{c}")
        m.d.comb += nxt.eq(Mux(p_first, 0, h[c] << cfg.dac_bits) + p_v[c])
        h_next.append(nxt)
    with m.If(p_valid):
        m.d.sync += [h[c].eq(h_next[c]) for c in range(n_cols)]
        with m.If(p_last):
            for e in range(cfg.ce_out):
                by_block: dict[int, list] = {}
                for q in range(cfg.n_slices):
                    b, c = tileplan.column_place(cfg, e, q)
                    by_block.setdefault(b, []).append(h_next[c] << (q * cfg.cell_bits))
                first = min(by_block)
                for b, parts in by_block.items():
                    with m.If(p_b == b):
                        base = Mux(p_pfirst, 0, x_col[e]) if b == first else x_col[e]
                        m.d.sync += x_col[e].eq(base + tree_sum(parts, cfg.acc_bits,
                                                                is_signed=True))
    return x_col
