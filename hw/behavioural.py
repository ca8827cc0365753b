"""Behavioural Verilog modules of a programmable tile, for the Verilog generator: the IFAT row
selection and DAC slices (`rows_module`), the crossbar's column sums (`xbar_module`), the OFAT
routing and accumulation (`ofat_module`) and the output stage (`ostage_module`). They compute
what `epim.hw.sequencer.ifat_rows`, `epim.hw.crossbar.adc_column`, `epim.hw.ofat.accumulate`
and `epim.hw.ostage.output_values` build gate by gate (which Amaranth's simulator runs), with
loops instead of gates, so a tile's Verilog, and the time Amaranth and Verilator take over it,
do not grow with its rows, columns or channels: per row, a multiplexer over every input
channel (a ResNet-50 `layer4` tile has 1341 rows reading 512 channels) and per channel a
95-bit multiply and variable shifts made Amaranth's bit-level netlist, and its check for
combinational loops, take tens of minutes. Each module is named by a digest of its
constants, so equal shapes share it. The Verilator tests check them against the integer
reference bit for bit.

Every module copies its ports into local registers once per evaluation (read in place,
Verilator rebuilt a wide port's concatenation inside the innermost loop), and every loop body
is a `begin ... end` block (a bare loop whose body starts with a `verilator unroll_disable`
comment was left empty)."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Instance, Module, Signal, signed

from ..contract import geometry
from ..contract.images import BIAS_BITS, MULT_BITS, SHIFT_BITS, ifat_fields, offsets, ubits
from ..contract.params import TileParams


def _named(kind: str, consts: dict) -> str:
    """A module's name: its kind and a digest of its constants (equal shapes share it)."""
    digest = hashlib.sha256(json.dumps(consts, sort_keys=True).encode()).hexdigest()[:12]
    return f"epim_{kind}_{digest}"


def _literal(value: int, width: int) -> str:
    """`value` as a sized signed Verilog literal of `width` bits (an unsized decimal is a
    32-bit integer: `-2147483648` written unsized came out as +2**31)."""
    return f"-{width}'sd{-value}" if value < 0 else f"{width}'sd{value}"


def rows_module(cfg: TileParams) -> tuple[str, str]:
    """`(name, Verilog text)` of a programmable tile's IFAT row selection and DAC slices as a
    behavioural module: crossbar row `(e_in * k + kh) * k + kw` takes input channel `src` of
    window position `(kh, kw)` when the IFAT word marks epitome channel `e_in` active (else
    0), and DAC slice `t` of it (bits `[t*dac_bits, (t+1)*dac_bits)`). A source beyond the
    input channels (only a wrongly programmed table names one) drives 0. Ports: `xw` (the
    window, position `kh * k + kw` at `[pos*cin*in_bits +: cin*in_bits]`), `ifat` (the
    step's IFAT word), `t` (the DAC slice) and `d` (row `g`'s slice at
    `[g*dac_bits +: dac_bits]`)."""
    f = offsets(ifat_fields(cfg))
    stride = 1 + cfg.src_bits
    assert all(f[f"active{e}"] == (e * stride, 1) and f[f"src{e}"] == (e * stride + 1,
                                                                        cfg.src_bits)
               for e in range(cfg.ce_in)), "the IFAT layout is not (active, src) per channel"
    consts = dict(K2=cfg.kernel**2, CIN=cfg.cin, IB=cfg.in_bits, CE=cfg.ce_in,
                  SB=cfg.src_bits, FS=stride, IW=cfg.widths["ifat"], DAC=cfg.dac_bits,
                  TB=ubits(cfg.n_t), ROWS=cfg.rows)
    name, c = _named("rows", consts), consts
    text = f"""
// EPIM IFAT row selection and DAC slices (epim.hw.behavioural.rows_module): {json.dumps(consts)}
module {name}(xw, ifat, t, d);
  input [{c['K2'] * c['CIN'] * c['IB'] - 1}:0] xw;
  input [{c['IW'] - 1}:0] ifat;
  input [{c['TB'] - 1}:0] t;
  output reg [{c['ROWS'] * c['DAC'] - 1}:0] d;
  reg [{c['K2'] * c['CIN'] * c['IB'] - 1}:0] xl;  // local copies of the ports
  reg [{c['IW'] - 1}:0] il;
  integer e, pos, src, v, sh;
  always @* begin
    xl = xw;
    il = ifat;
    sh = {{{32 - c['TB']}'b0, t}} * {c['DAC']};
    d = 0;
    /*verilator unroll_disable*/ for (e = 0; e < {c['CE']}; e = e + 1) begin
      src = {{{32 - c['SB']}'b0, il[e * {c['FS']} + 1 +: {c['SB']}]}};
      if (il[e * {c['FS']}] && src < {c['CIN']}) begin
        /*verilator unroll_disable*/ for (pos = 0; pos < {c['K2']}; pos = pos + 1) begin
          v = {{{32 - c['IB']}'b0, xl[(pos * {c['CIN']} + src) * {c['IB']} +: {c['IB']}]}};
          d[(e * {c['K2']} + pos) * {c['DAC']} +: {c['DAC']}] = v >> sh;
        end
      end
    end
  end
endmodule
"""
    return name, text


def ostage_module(cfg: TileParams) -> tuple[str, str]:
    """`(name, Verilog text)` of a programmable tile's output stage as a behavioural module:
    per channel, `clamp((acc + bias) * mult + rnd >> shift, lo, hi)` (spec section 5) from its
    output-stage word, exactly as `epim.hw.ostage.output_values` computes it, on `PW`-bit
    signed values: `acc + bias` has `max(acc_bits, 32) + 1` bits, the product 31 more, and
    `2 * prod + 2**shift` (shift up to 63) at most 2 more, so nothing overflows. Ports: `q`
    (channel `o`'s accumulator at `[o*acc_bits +: acc_bits]`, two's complement), `w` (its
    output-stage word at `[o*W +: W]`) and `y` (its output at `[o*out_bits +: out_bits]`)."""
    lo, hi = ((0, 2**cfg.out_bits - 1) if cfg.relu else
              (-(2 ** (cfg.out_bits - 1)), 2 ** (cfg.out_bits - 1) - 1))
    consts = dict(COUT=cfg.cout, ACC=cfg.acc_bits, OW=cfg.widths["ostage"], OB=cfg.out_bits,
                  BB=BIAS_BITS, MB=MULT_BITS, SB=SHIFT_BITS, LO=lo, HI=hi,
                  PW=max(max(cfg.acc_bits, BIAS_BITS) + MULT_BITS + 4, 2**SHIFT_BITS + 2))
    name, c = _named("ostage", consts), consts
    text = f"""
// EPIM output stage (epim.hw.behavioural.ostage_module): {json.dumps(consts)}
module {name}(q, w, y);
  input [{c['COUT'] * c['ACC'] - 1}:0] q;
  input [{c['COUT'] * c['OW'] - 1}:0] w;
  output reg [{c['COUT'] * c['OB'] - 1}:0] y;
  reg [{c['COUT'] * c['ACC'] - 1}:0] ql;  // local copies of the ports
  reg [{c['COUT'] * c['OW'] - 1}:0] wl;
  reg signed [{c['ACC'] - 1}:0] a;
  reg signed [{c['BB'] - 1}:0] b;
  reg signed [{c['PW'] - 1}:0] pa, pb, pm, prod, one, yv, lo, hi;
  integer o, sh;
  always @* begin
    ql = q;
    wl = w;
    one = 1;
    lo = {_literal(c['LO'], c['PW'])};  // sized: an unsized 2147483648 is not an integer
    hi = {_literal(c['HI'], c['PW'])};
    y = 0;
    /*verilator unroll_disable*/ for (o = 0; o < {c['COUT']}; o = o + 1) begin
      a = ql[o * {c['ACC']} +: {c['ACC']}];
      b = wl[o * {c['OW']} +: {c['BB']}];
      pa = a;
      pb = b;
      pm = {{{{{c['PW'] - c['MB']}{{1'b0}}}}, wl[o * {c['OW']} + {c['BB']} +: {c['MB']}]}};
      sh = {{{32 - c['SB']}'b0, wl[o * {c['OW']} + {c['BB'] + c['MB']} +: {c['SB']}]}};
      prod = (pa + pb) * pm;
      // (prod + 2**(shift-1)) >> shift, for shift = 0 too
      yv = ((prod <<< 1) + (one <<< sh)) >>> (sh + 1);
      if (yv < lo) yv = lo;
      if (yv > hi) yv = hi;
      y[o * {c['OB']} +: {c['OB']}] = yv[{c['OB'] - 1}:0];
    end
  end
endmodule
"""
    return name, text


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
                  LANES=n_lanes, ADC_MAX=geometry.adc_max(cfg.adc_bits), ACC=cfg.acc_bits,
                  PB=max(1, (cfg.passes - 1).bit_length()))
    name, c = _named("xbar", consts), consts
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
    """`(name, Verilog text)` of a programmable tile's OFAT routing and accumulation as a
    behavioural module: output channel `o` (group `go`, place `j`) takes column
    `(base_go + j) mod Ce_out` of the step's values, `base_go` from the OFAT word, and adds it
    to its accumulator when the step serves its group (`mask` bit `go`), wrapping at
    `acc_bits` bits. Loops instead of a `Ce_out`-way multiplexer and an adder per channel, so
    the text does not grow with `Cout x Ce_out`. Ports: `v` (column `e` at
    `[e*acc_bits +: acc_bits]`), `ofat` (the OFAT word), `mask` (the step's output groups),
    `acc` (channel `o`'s accumulator at `[o*acc_bits +: acc_bits]`) and `n` (its next value,
    the same layout)."""
    cw = ubits(cfg.ce_out)
    consts = dict(CE=cfg.ce_out, ACC=cfg.acc_bits, COUT=cfg.cout, PO=cfg.patch_out, CW=cw,
                  OW=cfg.widths["ofat"], GO=cfg.g_out)
    name, c = _named("ofat", consts), consts
    text = f"""
// EPIM OFAT routing and accumulation (epim.hw.behavioural.ofat_module): {json.dumps(consts)}
module {name}(v, ofat, mask, acc, n);
  input [{c['CE'] * c['ACC'] - 1}:0] v;
  input [{c['OW'] - 1}:0] ofat;
  input [{c['GO'] - 1}:0] mask;
  input [{c['COUT'] * c['ACC'] - 1}:0] acc;
  output reg [{c['COUT'] * c['ACC'] - 1}:0] n;
  reg [{c['CE'] * c['ACC'] - 1}:0] vl;  // local copies of the ports
  reg [{c['OW'] - 1}:0] ol;
  reg [{c['GO'] - 1}:0] ml;
  reg [{c['COUT'] * c['ACC'] - 1}:0] al;
  reg [{c['ACC'] - 1}:0] x;
  integer k, col;
  always @* begin
    vl = v;
    ol = ofat;
    ml = mask;
    al = acc;
    n = al;
    /*verilator unroll_disable*/ for (k = 0; k < {c['COUT']}; k = k + 1) begin
      if (ml[k / {c['PO']}]) begin
        col = {{{32 - c['CW']}'b0, ol[(k / {c['PO']}) * {c['CW']} +: {c['CW']}]}} + k % {c['PO']};
        if (col >= {c['CE']}) col = col - {c['CE']};
        x = col < {c['CE']} ? vl[col * {c['ACC']} +: {c['ACC']}] : {c['ACC']}'d0;
        n[k * {c['ACC']} +: {c['ACC']}] = al[k * {c['ACC']} +: {c['ACC']}] + x;
      end
    end
  end
endmodule
"""
    return name, text


def verilog_rows(m: Module, cfg: TileParams, ifat, x_window: list, x_t, modules: dict):
    """Every crossbar row's DAC slice this cycle, as one signal (row `g` at
    `[g*dac_bits +: dac_bits]`), from the behavioural `rows_module` (its text goes into
    `modules`)."""
    name, text = rows_module(cfg)
    modules[name] = text
    x = Signal(cfg.rows * cfg.dac_bits, name="x_dac_all")
    m.submodules.rows = Instance(name, i_xw=Cat(*[w for row in x_window for w in row]),
                                 i_ifat=ifat.data, i_t=x_t, o_d=x)
    return x


def verilog_columns(m: Module, cfg: TileParams, d: SimpleNamespace, cells: list,
                    modules: dict) -> list:
    """Every column's value of this DAC slice and pass from the behavioural crossbar module
    (`xbar_module`; its text goes into `modules`, for the Verilog generator)."""
    name, text = xbar_module(cfg)
    modules[name] = text
    v = Signal(cfg.ce_out * cfg.acc_bits, name="x_v_all")
    m.submodules.xbar = Instance(name, i_d=d.d_all,
                                 i_p=d.d_p if cfg.passes > 1 else Const(0, 1),
                                 i_cells=Cat(*cells), o_v=v)
    out = []
    for e in range(cfg.ce_out):
        x = Signal(signed(cfg.acc_bits), name=f"x_v_{e}")
        m.d.comb += x.eq(v[e * cfg.acc_bits:(e + 1) * cfg.acc_bits])
        out.append(x)
    return out


def verilog_outputs(m: Module, cfg: TileParams, q_acc, words: list, modules: dict):
    """Every channel's output (channel `o` at `[o*out_bits +: out_bits]`) from the
    accumulators `q_acc` (one signal, channel `o` at `[o*acc_bits +: acc_bits]`) and the
    output-stage words, by the behavioural `ostage_module` (its text goes into `modules`)."""
    name, text = ostage_module(cfg)
    modules[name] = text
    y = Signal(cfg.cout * cfg.out_bits, name="q_y_all")
    m.submodules.ostage = Instance(name, i_q=q_acc, i_w=Cat(*words), o_y=y)
    return y
