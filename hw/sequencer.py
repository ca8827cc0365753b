"""The tile's slot controller and IFRT sequencer, with IFAT row selection.

Pixel *slots* are the schedule unit: in one slot the gather fetches pixel `p+1` while the
crossbar computes pixel `p`. Within a pixel the IFRT sequencer walks the steps (`x_step`), each
in `n_t` DAC slices (`x_t`, most significant first) of `passes` passes (`x_p`); the IFAT
selects, per step, which input channel drives each crossbar row."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal

from ..contract.images import ifat_fields, ifrt_fields, offsets, unpack
from ..contract.params import TileParams


def walk_values(cfg: TileParams) -> dict[str, int]:
    """The `walk` of a tile that computes pixels `pix_first, pix_first + pix_step, ...`."""
    oy0, ox0 = divmod(cfg.pix_first, cfg.wo)
    oy1, ox1 = divmod(cfg.last_pixel, cfg.wo)
    corner = -(cfg.padding * cfg.w + cfg.padding)
    return {"first_oy": oy0, "first_ox": ox0,
            "first_base": corner + (oy0 * cfg.w + ox0) * cfg.stride,
            "last_oy": oy1, "last_ox": ox1}


def slot_control(m: Module, cfg: TileParams, ifrt, ifat, walk_port) -> SimpleNamespace:
    """The slot and step counters and the IFRT word of the current step (`ifrt_last`,
    `ifrt_mask`, `ifrt_gi`); `stall` is driven by the output register. `walk_port` is the
    tile's `walk` port, or None for a constant pixel walk."""
    k = cfg.kernel
    f = offsets(ifrt_fields(cfg))
    stall = Signal()
    s_g = Signal()  # this slot gathers pixel (g_bank, g_oy, g_ox)
    s_x = Signal()  # this slot computes the pixel in x_window
    g_phase = Signal(range(k + 1))
    g_bank = Signal()
    # the pixel walk: constants, or the `walk` port's values (loaded in the cycle after
    # reset, long before the first gather, which waits for a whole image)
    wv = walk_values(cfg)
    walk = walk_port if walk_port is not None else wv
    g_oy = Signal(range(cfg.ho), init=0 if (walk_port is not None) else wv["first_oy"])
    g_ox = Signal(range(cfg.wo), init=0 if (walk_port is not None) else wv["first_ox"])
    x_step = Signal(range(cfg.max_steps))
    x_t = Signal(range(cfg.n_t), init=cfg.n_t - 1)
    n_pass = cfg.passes
    x_p = Signal(range(n_pass))  # which group of row chunks the lanes compute
    x_pass_last = (x_p == n_pass - 1) if n_pass > 1 else Const(1)

    # The last entry ends the pixel even if a programmed table forgot its `last` bit.
    ifrt_last = ifrt.data[f["last"][0]] | (x_step == cfg.max_steps - 1)
    ifrt_mask = ifrt.data[f["mask"][0]:f["mask"][0] + cfg.g_out]
    ifrt_gi = ifrt.data[f["gi"][0]:]
    m.d.comb += [ifrt.addr.eq(x_step), ifat.addr.eq(x_step)]

    x_done = Signal()  # this slot's pixel has finished its last step
    x_step_end = Signal()
    x_end = Signal()
    g_end = Signal()
    boundary = Signal()
    m.d.comb += [
        x_step_end.eq(s_x & ~x_done & (x_t == 0) & x_pass_last),
        x_end.eq(~s_x | x_done | (x_step_end & ifrt_last)),
        g_end.eq(~s_g | (g_phase == k)),
        boundary.eq((s_x | s_g) & x_end & g_end & ~stall),
    ]
    return SimpleNamespace(
        stall=stall, s_g=s_g, s_x=s_x, g_phase=g_phase, g_bank=g_bank, g_oy=g_oy, g_ox=g_ox,
        walk=walk, wv=wv, x_step=x_step, x_t=x_t, x_p=x_p, n_pass=n_pass,
        x_pass_last=x_pass_last, ifrt_last=ifrt_last, ifrt_mask=ifrt_mask, ifrt_gi=ifrt_gi,
        x_done=x_done, x_step_end=x_step_end, x_end=x_end, g_end=g_end, boundary=boundary)


def step_sequencer(m: Module, cfg: TileParams, s: SimpleNamespace) -> None:
    """Within a pixel: the next pass, else the next DAC slice, else the next IFRT step."""
    x_step, x_t, x_p, x_done = s.x_step, s.x_t, s.x_p, s.x_done
    x_step_end, ifrt_last, s_x, x_end, x_pass_last = (s.x_step_end, s.ifrt_last, s.s_x,
                                                      s.x_end, s.x_pass_last)
    with m.If(~s.stall):
        with m.If(x_step_end & ifrt_last):
            m.d.sync += x_done.eq(1)
        with m.If(s_x & ~x_end):
            with m.If(~x_pass_last):
                m.d.sync += x_p.eq(x_p + 1)
            with m.Elif(x_t == 0):
                m.d.sync += [x_t.eq(cfg.n_t - 1), x_step.eq(x_step + 1), x_p.eq(0)]
            with m.Else():
                m.d.sync += [x_t.eq(x_t - 1), x_p.eq(0)]


def slot_boundary(m: Module, cfg: TileParams, s: SimpleNamespace, g: SimpleNamespace,
                  ld: SimpleNamespace) -> None:
    """At a slot boundary the gathered window moves to the crossbar and the gather moves on
    `pix_step` pixels in raster order (to the next bank after an image's last pixel)."""
    k, hw = cfg.kernel, cfg.h * cfg.w
    walk, g_oy, g_ox, g_bank, s_g, s_x = s.walk, s.g_oy, s.g_ox, s.g_bank, s.s_g, s.s_x
    g_phase, x_step, x_t, x_done, x_p = s.g_phase, s.x_step, s.x_t, s.x_done, s.x_p
    full, release = ld.full, ld.release
    x_window, g_window_next, g_base = g.x_window, g.g_window_next, g.g_base
    g_last = (g_oy == walk["last_oy"]) & (g_ox == walk["last_ox"])
    # the next pixel is pix_step on in raster order: dy rows and dx columns on, or one row
    # more when the column wraps past the map's edge
    dy, dx = divmod(cfg.pix_step, cfg.wo)
    g_wrap = g_ox >= cfg.wo - dx if dx else Const(0)
    next_bank = Signal()
    m.d.comb += next_bank.eq(Mux(s_g & g_last, ~g_bank, g_bank))
    with m.If(s.boundary):
        m.d.sync += [s_x.eq(s_g), g_phase.eq(0), x_step.eq(0), x_t.eq(cfg.n_t - 1),
                     x_done.eq(0), x_p.eq(0),
                     s_g.eq(full.bit_select(next_bank, 1))]
        m.d.sync += [x_window[kh][kw].eq(g_window_next[kh][kw])
                     for kh in range(k) for kw in range(k)]
        with m.If(s_g):
            with m.If(g_last):
                m.d.comb += release.eq(Cat(~g_bank, g_bank))
                m.d.sync += [g_bank.eq(~g_bank), g_oy.eq(walk["first_oy"]),
                             g_ox.eq(walk["first_ox"]),
                             g_base.eq(Mux(g_bank, 0, hw) + walk["first_base"])]
            with m.Elif(g_wrap):
                m.d.sync += [g_ox.eq(g_ox + dx - cfg.wo), g_oy.eq(g_oy + dy + 1),
                             g_base.eq(g_base + ((dy + 1) * cfg.w + dx - cfg.wo)
                                       * cfg.stride)]
            with m.Else():
                m.d.sync += [g_ox.eq(g_ox + dx), g_oy.eq(g_oy + dy),
                             g_base.eq(g_base + (dy * cfg.w + dx) * cfg.stride)]
    with m.Elif(~s_x & ~s_g):
        m.d.sync += [s_g.eq(full.bit_select(g_bank, 1)), g_phase.eq(0)]


def ifat_rows(m: Module, cfg: TileParams, ifat, x_window, x_step, init: dict,
              fixed: bool) -> list:
    """The input value of every crossbar row (epitome input channel, kernel row, kernel
    column) in this step: the input channel the IFAT names, or 0 for an inactive row."""
    k = cfg.kernel
    layout = ifat_fields(cfg)
    f = offsets(layout)
    words = [unpack(layout, w) for w in init["ifat"]]
    x_rows = []
    for e_in in range(cfg.ce_in):
        (a_at, _), (s_at, s_bits) = f[f"active{e_in}"], f[f"src{e_in}"]
        active = ifat.data[a_at]
        src = ifat.data[s_at:s_at + s_bits]
        # a fixed tile's IFAT is a ROM: each row picks among the (few) sources its steps
        # name, by step, instead of among every input channel
        per_step = [(w[f"active{e_in}"], w[f"src{e_in}"]) for w in words]
        for kh in range(k):
            for kw in range(k):
                row = Signal(cfg.in_bits, name=f"x_row_{e_in}_{kh}_{kw}")
                if fixed:
                    win = x_window[kh][kw]
                    cands = [win[c * cfg.in_bits:(c + 1) * cfg.in_bits]
                             if a and c < cfg.cin else Const(0, cfg.in_bits)
                             for a, c in per_step]
                    pick = (cands[0] if len(set(per_step)) == 1
                            else Array(cands)[x_step])
                    m.d.comb += row.eq(pick)
                else:
                    pixel = x_window[kh][kw].word_select(src, cfg.in_bits)
                    m.d.comb += row.eq(Mux(active, pixel, 0))
                x_rows.append(row)
    return x_rows
