"""The crossbar emulation of one pass: DAC slices, bit-sliced differential cells, ADCs and the
sums over slices, column blocks and passes.

A cycle computes one column block (`cols` physical columns, `epim.contract.tileplan`) of
one pass (`lanes` row chunks): every row of lane `j` (row chunk `lanes * pass + j`) drives its
DAC slice into the cells of its row that lie in the block, read from the lane's cell memory; a
physical column's sum per lane and polarity goes through its ADC (saturating at
`2**adc_bits - 1`), and positive minus negative, summed over the lanes, is the column's value.
That array (`CrossbarArray`) depends only on the physical crossbar (`ArraySpec`), not on the
layer, so every tile of a network with the same crossbar can instantiate one Verilog module
(`PIMTile(share_array=True)`). The `p_` register takes the values; a Horner sum over the DAC
slices (most significant first) follows, and after a block's last slice every epitome column
adds its cell slices of that block, shifted by the slice, into the step's column values
`x_col` (`accumulate_passes`).

A lane's cell memory has a word per pass and column block holding the block's cells of
every row of the lane (`lane_words`); a row's part of it is by cell bit, then polarity, then
column (`cell_word_order`), so each bit plane is one slice: the column sums are carry-save
adders over whole bit planes (`epim.hw.arith.csa_sums`)."""

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


@dataclass
class CellMemories:
    """The cell memories of a tile (`cell_memories`): per lane its read port (None for a lane
    that no pass has), the address the compute side drives, and `busy` while a programming
    write is in progress."""
    ports: list
    addr: Signal
    busy: Signal


def lane_rows(cfg: TileParams, lane: int) -> range:
    """The rows of a pass that lane `lane` holds cells for."""
    used = min(cfg.rows, tileplan.pass_rows(cfg))
    return range(lane * cfg.xbar_rows, min((lane + 1) * cfg.xbar_rows, used))


def lane_words(cfg: TileParams, image: list[int], lane: int) -> list[int]:
    """Initial words of lane `lane`'s cell memory: word `pass * col_blocks + block` holds,
    for each row `r` of the lane, that row's cells of the block (`ArraySpec.word` bits each,
    row by row)."""
    n, nb, rows = tileplan.pass_rows(cfg), tileplan.col_blocks(cfg), cfg.rows
    bw = ArraySpec.of(cfg).word
    order = cell_word_order(cfg)
    mask = (1 << bw) - 1
    words = []
    for q in range(cfg.passes):
        row_words = [to_cell_word(order, image[q * n + r]) if q * n + r < rows else 0
                     for r in lane_rows(cfg, lane)]
        for b in range(nb):
            words.append(sum(((w >> (b * bw)) & mask) << (i * bw)
                             for i, w in enumerate(row_words)))
    return words


def cell_memories(m: Module, cfg: TileParams, image: list[int], prog, prog_we,
                  fixed: bool) -> CellMemories:
    """Cell memories: one per lane, one word per (pass, column block), address
    `pass * col_blocks + block`, that word holding the block's cells of every row of the lane
    (`lane_words`): a cycle reads exactly the cells it computes with, so the word is as wide as
    the physical crossbar's block and block RAM can hold it. Initialised from the crossbar
    `image`; unless `fixed`, the programming port (payload `prog`, `prog_we` its `xbar`
    writes) writes a crossbar row: its word is registered in the memories' bit order
    (`cell_word_order`), then each block of the row is merged into its word by a
    read-modify-write, one block a cycle (`busy` meanwhile: `col_blocks + 1` cycles after the
    handshake)."""
    nb, rows, xr = tileplan.col_blocks(cfg), cfg.rows, cfg.xbar_rows
    bw = ArraySpec.of(cfg).word
    depth = cfg.passes * nb
    addr = Signal(range(max(2, depth)), name="x_cell_addr")
    busy = Signal(name="prog_cells_busy")
    lanes = [lane_rows(cfg, j) for j in range(cfg.lanes)]
    mems = []
    for j, lrows in enumerate(lanes):
        if not lrows:
            mems.append(None)
            continue
        mem = Memory(shape=unsigned(len(lrows) * bw), depth=depth,
                     init=lane_words(cfg, image, j))
        m.submodules[f"cells_{j}"] = mem
        mems.append(mem)
    ports = [mem.read_port() if mem is not None else None for mem in mems]
    if fixed:
        m.d.comb += [p.addr.eq(addr) for p in ports if p is not None]
        return CellMemories(ports, addr, Const(0))
    order = cell_word_order(cfg)
    # the row's word in the memories' order and its place, registered (the permutation is
    # only wiring; the register keeps it in one place): (chunk -> lane, base address of its
    # pass, row of the lane), by comparisons with the chunks' first rows
    p_word = Signal(len(order), name="prog_cells")
    p_base = Signal(range(max(2, depth)), name="prog_base")
    p_lane = Signal(range(max(2, cfg.lanes)), name="prog_lane")
    p_row = Signal(range(max(2, xr)), name="prog_row")
    p_run, p_b = Signal(name="prog_run"), Signal(range(max(2, nb)), name="prog_block")
    w_we, w_b = Signal(name="prog_cells_we"), Signal(range(max(2, nb)), name="prog_wblock")
    addr_in = prog.addr
    with m.If(prog_we & (addr_in < rows)):
        m.d.sync += [p_word.eq(Cat(*[prog.data[src] if src is not None else Const(0, 1)
                                     for src in order])),
                     p_run.eq(1), p_b.eq(0), p_base.eq(0), p_lane.eq(0), p_row.eq(addr_in)]
        for c in range(1, geometry.ceil_div(rows, xr)):
            with m.If(addr_in >= c * xr):
                q, j = divmod(c, cfg.lanes)
                m.d.sync += [p_base.eq(q * nb), p_lane.eq(j), p_row.eq(addr_in - c * xr)]
    # read block p_b; the cycle after, write it back with the row's slice in place
    m.d.sync += [w_we.eq(p_run), w_b.eq(p_b)]
    with m.If(p_run):
        m.d.sync += p_b.eq(p_b + 1)
        with m.If(p_b == nb - 1):
            m.d.sync += p_run.eq(0)
    m.d.comb += busy.eq(p_run | w_we)
    new = p_word.word_select(w_b, bw) if nb > 1 else p_word
    for j, (mem, port) in enumerate(zip(mems, ports, strict=True)):
        if mem is None:
            continue
        m.d.comb += port.addr.eq(Mux(busy, p_base + Mux(p_run, p_b, w_b), addr))
        wp = mem.write_port()
        old = port.data
        merged = Cat(*[Mux(p_row == i, new, old[i * bw:(i + 1) * bw])
                       for i in range(len(lanes[j]))])
        m.d.comb += [wp.en.eq(w_we & (p_lane == j)), wp.addr.eq(p_base + w_b),
                     wp.data.eq(merged)]
    return CellMemories(ports, addr, busy)


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


def column_values(m: Module, cfg: TileParams, slices: list, cells: CellMemories,
                  share: bool) -> list:
    """Each physical column's value (signed) of the cycle before: the rows' DAC slices and
    their cells of the block (the memories' read ports) go through a register into the array,
    an instance of the shared module `ArraySpec.module` (`share`) or a `CrossbarArray` of its
    own. (The register splits the path from the cell memories' outputs through the column
    sums, which set the ULX3S build's clock, in two.)"""
    spec = ArraySpec.of(cfg)
    a_slices = Signal(data.ArrayLayout(unsigned(spec.dac_bits), spec.rows), name="x_slices")
    a_cells = Signal(data.ArrayLayout(unsigned(spec.word), spec.rows), name="x_cells")
    a_values = Signal(data.ArrayLayout(signed(spec.width), spec.cols), name="x_values")
    for j, port in enumerate(cells.ports):
        if port is None:
            continue
        for i, r in enumerate(lane_rows(cfg, j)):
            m.d.sync += [a_slices[r].eq(slices[r]),
                         a_cells[r].eq(port.data[i * spec.word:(i + 1) * spec.word])]
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
