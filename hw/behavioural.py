"""Behavioural Verilog modules of a programmable tile, for the Verilog generator: the crossbar's
column sums (`xbar_module`) and the OFAT routing (`ofat_module`). They compute what
`epim.hw.crossbar.adc_column` and `epim.hw.ofat.accumulate` build gate by gate (which Amaranth's
simulator runs), with loops instead of gates, so a tile's Verilog does not grow with its rows x
columns or its channels x columns. Each module is named by a digest of its constants, so equal
shapes share it. The Verilator tests check them against the integer reference bit for bit."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Instance, Module, Signal, signed

from ..contract.images import ubits
from ..contract.params import TileParams


def lane_count(cfg: TileParams) -> int:
    """Row chunks computed at once (`epim.hw.crossbar.lane_plan`'s lanes)."""
    return -(-cfg.chunks // cfg.passes)


def xbar_module(cfg: TileParams) -> tuple[str, str]:
    """`(name, Verilog text)` of a programmable tile's crossbar as a behavioural module: for
    the current pass, every active row chunk's column sums over its rows (DAC slice times
    cell, per polarity and cell slice), its ADCs saturating, positive minus negative, shifted
    by the slice, summed over the chunks: the spec's crossbar arithmetic, as `adc_column`
    builds it gate by gate (rows outermost, so a row whose DAC slice is 0 is skipped, and
    the ports copied into local registers once per evaluation: read in place, Verilator put
    the concatenation of every row's word inside the innermost loop, over 100x slower on a
    ResNet-50 tile). Written with loops, which Verilator is told not to unroll
    (unrolled, a ResNet-20 tile's C++ was 5x larger and took 10x longer to translate), its
    text is the same size for any crossbar, and Verilator compiles the loops once: a
    ResNet-50 tile's crossbar of 1341 rows and 160 columns is a few dozen lines, where the
    gate-level form took Amaranth over 15 minutes to emit. Ports: `d` (every row's DAC
    slice, row `g` at `[g*dac_bits +: dac_bits]`), `p` (the pass), `cells` (every row's
    crossbar word, `epim.contract.images.xbar_fields` layout, row `g` at `[g*W +: W]`) and
    `v` (column `e`'s value at `[e*acc_bits +: acc_bits]`, two's complement)."""
    n_lanes = lane_count(cfg)
    consts = dict(ROWS=cfg.rows, DAC=cfg.dac_bits, W=cfg.widths["xbar"], CE=cfg.ce_out,
                  NS=cfg.n_slices, CB=cfg.cell_bits, XR=cfg.xbar_rows, CHUNKS=cfg.chunks,
                  LANES=n_lanes, ADC_MAX=2**cfg.adc_bits - 1, ACC=cfg.acc_bits,
                  PB=max(1, (cfg.passes - 1).bit_length()))
    digest = hashlib.sha256(json.dumps(consts, sort_keys=True).encode()).hexdigest()[:12]
    name = f"epim_xbar_{digest}"
    c = consts
    text = f"""
// EPIM crossbar emulation (epim.hw.crossbar.xbar_module): {json.dumps(consts)}
module {name}(d, p, cells, v);
  input [{c['ROWS'] * c['DAC'] - 1}:0] d;
  input [{c['PB'] - 1}:0] p;
  input [{c['ROWS'] * c['W'] - 1}:0] cells;
  output reg [{c['CE'] * c['ACC'] - 1}:0] v;
  // Local copies of the ports: read in place, Verilator rebuilt the port's concatenation of
  // every crossbar word inside the innermost loop. Every loop body is a begin-end block: a
  // bare loop whose body starts with a `verilator unroll_disable` comment was left empty.
  reg [{c['ROWS'] * c['DAC'] - 1}:0] dl;
  reg [{c['ROWS'] * c['W'] - 1}:0] cl;
  reg [{c['W'] - 1}:0] rw;
  integer e, j, ch, q, k, g, gend, dv, a0, a1;
  integer s [0:{2 * c['CE'] * c['NS'] - 1}];
  reg signed [63:0] acc [0:{c['CE'] - 1}];
  always @* begin
    dl = d;
    cl = cells;
    /*verilator unroll_disable*/ for (e = 0; e < {c['CE']}; e = e + 1) begin
      acc[e] = 0;
    end
    /*verilator unroll_disable*/ for (j = 0; j < {c['LANES']}; j = j + 1) begin
      ch = p * {c['LANES']} + j;
      gend = (ch + 1) * {c['XR']} < {c['ROWS']} ? (ch + 1) * {c['XR']} : {c['ROWS']};
      if (ch < {c['CHUNKS']}) begin
        /*verilator unroll_disable*/ for (k = 0; k < {2 * c['CE'] * c['NS']}; k = k + 1) begin
          s[k] = 0;
        end
        // rows outer: a row whose DAC slice is 0 adds nothing to any column
        /*verilator unroll_disable*/ for (g = ch * {c['XR']}; g < gend; g = g + 1) begin
          dv = {{{32 - c['DAC']}'b0, dl[g * {c['DAC']} +: {c['DAC']}]}};
          if (dv != 0) begin
            rw = cl[g * {c['W']} +: {c['W']}];
            // cell field k = (polarity * Ce_out + column) * slices + slice
            /*verilator unroll_disable*/ for (k = 0; k < {2 * c['CE'] * c['NS']}; k = k + 1) begin
              s[k] = s[k] + dv * {{{32 - c['CB']}'b0, rw[k * {c['CB']} +: {c['CB']}]}};
            end
          end
        end
        /*verilator unroll_disable*/ for (e = 0; e < {c['CE']}; e = e + 1) begin
          /*verilator unroll_disable*/ for (q = 0; q < {c['NS']}; q = q + 1) begin
            a0 = s[e * {c['NS']} + q];
            a1 = s[({c['CE']} + e) * {c['NS']} + q];
            if (a0 > {c['ADC_MAX']}) a0 = {c['ADC_MAX']};
            if (a1 > {c['ADC_MAX']}) a1 = {c['ADC_MAX']};
            acc[e] = acc[e] + ((a0 - a1) <<< (q * {c['CB']}));
          end
        end
      end
    end
    v = 0;
    /*verilator unroll_disable*/ for (e = 0; e < {c['CE']}; e = e + 1) begin
      v[e * {c['ACC']} +: {c['ACC']}] = acc[e][{c['ACC'] - 1}:0];
    end
  end
endmodule
"""
    return name, text


def ofat_module(cfg: TileParams) -> tuple[str, str]:
    """`(name, Verilog text)` of a programmable tile's OFAT routing as a behavioural module:
    output channel `o` (group `go`, place `j`) takes column `(base_go + j) mod Ce_out` of the
    step's values, `base_go` from the OFAT word. Loops instead of a `Ce_out`-way multiplexer
    per channel, so the text does not grow with `Cout x Ce_out`. Ports: `v` (column `e` at
    `[e*acc_bits +: acc_bits]`), `ofat` (the OFAT word) and `o` (channel `o`'s column value at
    `[o*acc_bits +: acc_bits]`)."""
    cw = ubits(cfg.ce_out)
    consts = dict(CE=cfg.ce_out, ACC=cfg.acc_bits, COUT=cfg.cout, PO=cfg.patch_out, CW=cw,
                  OW=cfg.widths["ofat"])
    digest = hashlib.sha256(json.dumps(consts, sort_keys=True).encode()).hexdigest()[:12]
    name = f"epim_ofat_{digest}"
    c = consts
    text = f"""
// EPIM OFAT routing (epim.hw.ofat.ofat_module): {json.dumps(consts)}
module {name}(v, ofat, o);
  input [{c['CE'] * c['ACC'] - 1}:0] v;
  input [{c['OW'] - 1}:0] ofat;
  output reg [{c['COUT'] * c['ACC'] - 1}:0] o;
  reg [{c['CE'] * c['ACC'] - 1}:0] vl;  // local copies (see the crossbar module)
  reg [{c['OW'] - 1}:0] ol;
  integer k, col;
  always @* begin
    vl = v;
    ol = ofat;
    o = 0;
    /*verilator unroll_disable*/ for (k = 0; k < {c['COUT']}; k = k + 1) begin
      col = ol[(k / {c['PO']}) * {c['CW']} +: {c['CW']}] + k % {c['PO']};
      if (col >= {c['CE']}) col = col - {c['CE']};
      if (col < {c['CE']}) o[k * {c['ACC']} +: {c['ACC']}] = vl[col * {c['ACC']} +: {c['ACC']}];
    end
  end
endmodule
"""
    return name, text


def verilog_columns(m: Module, cfg: TileParams, d: SimpleNamespace, cells: list,
                    modules: dict) -> list:
    """Every column's value of this DAC slice and pass from the behavioural crossbar module
    (`xbar_module`; its text goes into `modules`, for the Verilog generator)."""
    name, text = xbar_module(cfg)
    modules[name] = text
    v = Signal(cfg.ce_out * cfg.acc_bits, name="x_v_all")
    m.submodules.xbar = Instance(name, i_d=Cat(*d.d_slices),
                                 i_p=d.d_p if cfg.passes > 1 else Const(0, 1),
                                 i_cells=Cat(*cells), o_v=v)
    out = []
    for e in range(cfg.ce_out):
        x = Signal(signed(cfg.acc_bits), name=f"x_v_{e}")
        m.d.comb += x.eq(v[e * cfg.acc_bits:(e + 1) * cfg.acc_bits])
        out.append(x)
    return out
