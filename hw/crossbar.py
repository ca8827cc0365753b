"""The crossbar emulation of one pass: DAC slices, bit-sliced differential cells, ADCs and the
sums over slices, column blocks and passes.

A cycle computes one column block (`xbar_cols` physical columns, `epim.contract.tileplan`) of
one pass (`lanes` row chunks): every row of lane `j` (row chunk `lanes * pass + j`) drives its
DAC slice into the cells of its row that lie in the block, read from the row's cell memory; a
physical column's sum per lane and polarity goes through its ADC (saturating at
`2**adc_bits - 1`), and positive minus negative, summed over the lanes, is the column's value
(`column_values`). The `p_` register takes the values; a Horner sum over the DAC slices (most
significant first) follows, and after a block's last slice every epitome column adds its cell
slices of that block, shifted by the slice, into the step's column values `x_col`
(`accumulate_passes`)."""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed

from ..contract import geometry, tileplan
from ..contract.images import xbar_field
from ..contract.params import TileParams
from .arith import tree_sum


def column_values(m: Module, cfg: TileParams, slices: list, cells: list, x_b) -> list:
    """Each physical column's value in block `x_b` of this DAC slice and pass (signed),
    from the rows' slices and their cell memories' read ports (None: no row)."""
    dac, cb = cfg.dac_bits, cfg.cell_bits
    adc_max = geometry.adc_max(cfg.adc_bits)
    n_rows, n_cols = tileplan.pass_rows(cfg), tileplan.block_cols(cfg)
    n_blocks, total = tileplan.col_blocks(cfg), cfg.ce_out * cfg.n_slices
    width = (cfg.lanes * adc_max).bit_length() + 1
    # per row, the cells of the cycle's block in one word (polarity, then slot): one
    # multiplexer per row on `x_b`, rather than one per row, column and polarity
    def field(r, pol, b, c):
        j = b * n_cols + c
        return cells[r].data[xbar_field(cfg, pol, *divmod(j, cfg.n_slices)):][:cb] \
            if j < total else Const(0, cb)

    block = {}
    for r, port in enumerate(cells):
        if port is None:
            continue
        words = [Cat(*[field(r, pol, b, c) for pol in range(2) for c in range(n_cols)])
                 for b in range(n_blocks)]
        w = Signal(2 * n_cols * cb, name=f"x_cells_{r}")
        m.d.comb += w.eq(words[0] if n_blocks == 1 else Array(words)[x_b])
        block[r] = w
    x_v = []
    for c in range(n_cols):
        terms = []
        for j in range(cfg.lanes):
            rows = [r for r in range(j * cfg.xbar_rows, (j + 1) * cfg.xbar_rows)
                    if r < n_rows and r in block]
            if not rows:
                continue
            s_bits = (len(rows) * geometry.dac_max(dac) * (2**cb - 1)).bit_length() or 1
            adc = []
            for pol in range(2):
                at = (pol * n_cols + c) * cb
                s = tree_sum([slices[r] * block[r][at:at + cb] for r in rows], s_bits)
                a = Signal(min(s_bits, cfg.adc_bits), name=f"x_adc_{j}_{pol}_{c}")
                m.d.comb += a.eq(Mux(s > adc_max, adc_max, s))
                adc.append(a)
            terms.append((adc[0] - adc[1]).as_signed())
        v = Signal(signed(width), name=f"x_v_{c}")
        m.d.comb += v.eq(tree_sum(terms, width, is_signed=True) if terms else 0)
        x_v.append(v)
    return x_v


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
