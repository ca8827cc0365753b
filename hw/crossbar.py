"""The crossbar emulation of one pass: DAC slices, bit-sliced differential cells, ADCs and the
sums over slices and passes.

In a cycle of the pass, every row of lane `j` (row chunk `lanes * pass + j`) drives its DAC
slice into the cells of its row, read from the row's cell memory; a column's sum per lane,
polarity and cell slice goes through its ADC (saturating at `2**adc_bits - 1`), positive minus
negative, shifted by the slice (`column_values`). The `p_` register takes the values, and a
Horner sum over the DAC slices (most significant first) and a plain sum over the passes build
the step's column values `x_col` (`accumulate_passes`)."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed

from ..contract import geometry, tileplan
from ..contract.images import xbar_field
from ..contract.params import TileParams
from .arith import tree_sum


def column_values(m: Module, cfg: TileParams, slices: list, cells: list) -> list:
    """Each epitome column's value of this DAC slice and pass (signed, `acc_bits`), from the
    rows' slices and their cell memories' read ports (None: no row)."""
    dac, cb = cfg.dac_bits, cfg.cell_bits
    adc_max = geometry.adc_max(cfg.adc_bits)
    n_rows = tileplan.pass_rows(cfg)
    x_v = []
    for e in range(cfg.ce_out):
        terms = []
        for j in range(cfg.lanes):
            rows = [r for r in range(j * cfg.xbar_rows, (j + 1) * cfg.xbar_rows)
                    if r < n_rows and cells[r] is not None]
            if not rows:
                continue
            s_bits = (len(rows) * geometry.dac_max(dac) * (2**cb - 1)).bit_length() or 1
            for q in range(cfg.n_slices):
                adc = []
                for pol in range(2):
                    at = xbar_field(cfg, pol, e, q)
                    s = tree_sum([slices[r] * cells[r].data[at:at + cb] for r in rows], s_bits)
                    a = Signal(min(s_bits, cfg.adc_bits), name=f"x_adc_{j}_{pol}_{e}_{q}")
                    m.d.comb += a.eq(Mux(s > adc_max, adc_max, s))
                    adc.append(a)
                terms.append((adc[0] - adc[1]).as_signed() << (q * cb))
        v = Signal(signed(cfg.acc_bits), name=f"x_v_{e}")
        m.d.comb += v.eq(tree_sum(terms, cfg.acc_bits, is_signed=True) if terms else 0)
        x_v.append(v)
    return x_v


def accumulate_passes(m: Module, cfg: TileParams, x_v: list, x_valid, x_t, x_p) -> list:
    """The `p_` register and, a cycle later, `h = (first slice ? 0 : h << dac_bits) + p_v`;
    after a pass's last slice `x_col = (first pass ? 0 : x_col) + h`. Returns `x_col`, the
    step's column values `V[e]` of contract section 4 one cycle after its last slice."""
    acc_shape = signed(cfg.acc_bits)
    p_valid, p_first, p_last, p_pfirst = Signal(), Signal(), Signal(), Signal()
    p_v = [Signal(acc_shape, name=f"p_v_{e}") for e in range(cfg.ce_out)]
    h = [Signal(acc_shape, name=f"p_h_{e}") for e in range(cfg.ce_out)]
    x_col = [Signal(acc_shape, name=f"x_col_{e}") for e in range(cfg.ce_out)]
    m.d.sync += [p_valid.eq(x_valid), p_first.eq(x_t == cfg.n_t - 1), p_last.eq(x_t == 0),
                 p_pfirst.eq(x_p == 0)]
    m.d.sync += [p_v[e].eq(x_v[e]) for e in range(cfg.ce_out)]
    with m.If(p_valid):
        for e in range(cfg.ce_out):
            h_next = Mux(p_first, 0, h[e] << cfg.dac_bits) + p_v[e]
            m.d.sync += h[e].eq(h_next)
            with m.If(p_last):
                m.d.sync += x_col[e].eq(Mux(p_pfirst, 0, x_col[e]) + h_next)
    return x_col
