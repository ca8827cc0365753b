"""The fill: a pass's row registers, one epitome input channel a cycle.

For epitome input channel `e` of the pass (`epim.contract.tileplan.fill_plan`) the step's IFAT
word gives `(active, src)`; `src // in_word` addresses the input memory, one read port per
window position `(kh, kw)` at pixel `g_base + kh*W + kw`, and `src % in_word` picks the value
in the word the cycle after (0 outside the map, for an inactive channel or a source beyond the
input channels). The `k*k` values shift into the fill shift register `f_sr`, where every row of
the pass finds its value (`tileplan.row_source`)."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed

from ..contract import tileplan
from ..contract.images import ifat_fields, offsets, ubits
from ..contract.params import TileParams


def fill(m: Module, cfg: TileParams, ifm, ifat, s: SimpleNamespace, base_bits: int) -> Signal:
    """The fill of pass `s.x_p`, channel `s.f_i` of it in a cycle with `s.f_issue`; returns
    the shift register `f_sr` (value `j` at bits `[j*in_bits, (j+1)*in_bits)`)."""
    k, ib = cfg.kernel, cfg.in_bits
    k2 = k * k
    wc, nb = tileplan.in_word(cfg.cin), tileplan.in_blocks(cfg.cin)
    plan, depth = tileplan.fill_plan(cfg), tileplan.fill_depth(cfg)
    fa = offsets(ifat_fields(cfg))
    stride = 1 + cfg.src_bits
    assert all(fa[f"active{e}"] == (e * stride, 1) for e in range(cfg.ce_in)), \
        "the IFAT layout is not (active, src) per channel"
    f_first = Array(Const(first, range(cfg.ce_in)) for first, _ in plan)
    f_e = Signal(range(cfg.ce_in + depth))
    m.d.comb += f_e.eq(f_first[s.x_p] + s.f_i)
    field = ifat.data.word_select(f_e, stride)
    src = field[1:]
    active = field[0] & (src < cfg.cin)
    cap = Signal()  # the reads issued last cycle arrive now
    sel = Signal(ubits(wc)) if wc > 1 else None
    inside_active = Signal(k2)  # per window position: inside the map and active
    word = src >> (wc.bit_length() - 1)
    ports = []
    for kh in range(k):
        iy = Signal(signed(ubits(cfg.h + k + cfg.ho * cfg.stride) + 2), name=f"f_iy_{kh}")
        m.d.comb += iy.eq(s.g_oy * cfg.stride + kh - cfg.padding)
        for kw in range(k):
            ix = Signal(signed(ubits(cfg.w + k + cfg.wo * cfg.stride) + 2),
                        name=f"f_ix_{kh}_{kw}")
            m.d.comb += ix.eq(s.g_ox * cfg.stride + kw - cfg.padding)
            rp = ifm.read_port()
            pixel = Signal(signed(base_bits + 1), name=f"f_pixel_{kh}_{kw}")
            m.d.comb += [pixel.eq(s.g_base + kh * cfg.w + kw),
                         rp.addr.eq((pixel * nb + word).as_unsigned()),
                         rp.en.eq(s.f_issue)]
            inside = (iy >= 0) & (iy < cfg.h) & (ix >= 0) & (ix < cfg.w)
            with m.If(s.f_issue):
                m.d.sync += inside_active[kh * k + kw].eq(inside & active)
            ports.append(rp)
    m.d.sync += cap.eq(s.f_issue)
    if sel is not None:
        with m.If(s.f_issue):
            m.d.sync += sel.eq(src[:len(sel)])
    values = [Mux(inside_active[pos],
                  rp.data.word_select(sel, ib) if sel is not None else rp.data[:ib], 0)
              for pos, rp in enumerate(ports)]
    n = depth * k2
    f_sr = Signal(n * ib)
    with m.If(cap):
        m.d.sync += f_sr.eq(Cat(*values, f_sr[:(n - k2) * ib]) if n > k2 else Cat(*values))
    return f_sr


def row_slices(m: Module, cfg: TileParams, f_sr: Signal, x_p, x_t) -> list:
    """Every row of the pass: its DAC slice `x_t` (most significant first), from the fill
    shift register (0 for a row past the epitome's last)."""
    ib, dac, n_pass = cfg.in_bits, cfg.dac_bits, cfg.passes
    out = []
    for r in range(tileplan.pass_rows(cfg)):
        srcs = [tileplan.row_source(cfg, q, r) for q in range(n_pass)]
        vals = [Const(0, ib) if j is None else f_sr[j * ib:(j + 1) * ib] for j in srcs]
        row = vals[0] if n_pass == 1 else Array(vals)[x_p]
        sl = Signal(dac, name=f"x_dac_{r}")
        m.d.comb += sl.eq(Cat(row, Const(0, cfg.n_t * dac - ib)).word_select(x_t, dac))
        out.append(sl)
    return out
