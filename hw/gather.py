"""The tile's loader and window gather.

The loader writes input beats into a double-buffered input feature buffer (two banks of H*W
pixels); the gather reads one window column per cycle through `k` read ports (one per kernel
row) into the window registers of the next pixel, while the crossbar computes the current one."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory

from ..contract.images import ubits
from ..contract.params import TileParams


def base_bits(cfg: TileParams) -> int:
    """Width of the gather's window base address `g_base` (signed)."""
    return ubits(2 * cfg.h * cfg.w + cfg.kernel * cfg.w + cfg.kernel) + 2


def load_input(m: Module, cfg: TileParams, i) -> SimpleNamespace:
    """Input beats from the stream `i` into the input buffer: `ifm` (the memory), `full`
    (per bank), `release` (driven by the slot controller when a bank's image is done) and
    `l_addr`."""
    hw = cfg.h * cfg.w
    ifm = Memory(shape=unsigned(cfg.cin * cfg.in_bits), depth=2 * hw, init=[])
    m.submodules.ifm = ifm
    l_wp = ifm.write_port()
    l_bank = Signal()
    l_addr = Signal(range(hw))
    full = Signal(2)
    set_full = Signal(2)
    release = Signal(2)
    m.d.comb += i.ready.eq(~full.bit_select(l_bank, 1))
    m.d.comb += [l_wp.addr.eq(l_bank * hw + l_addr), l_wp.data.eq(i.payload)]
    with m.If(i.valid & i.ready):
        m.d.comb += l_wp.en.eq(1)
        with m.If(l_addr == hw - 1):
            m.d.sync += [l_addr.eq(0), l_bank.eq(~l_bank)]
            m.d.comb += set_full.eq(Cat(~l_bank, l_bank))
        with m.Else():
            m.d.sync += l_addr.eq(l_addr + 1)
    m.d.sync += full.eq((full | set_full) & ~release)
    return SimpleNamespace(ifm=ifm, full=full, release=release, l_addr=l_addr)


def window_gather(m: Module, cfg: TileParams, ifm, s: SimpleNamespace, walk) -> SimpleNamespace:
    """The window gather of the pixel `(s.g_oy, s.g_ox)` in phases `s.g_phase`: returns the
    computed pixel's window `x_window` (loaded at a slot boundary), the next one
    `g_window_next` and the base address register `g_base`. `walk` is the tile's `walk`
    port, or None for a tile whose pixel walk is constant."""
    k = cfg.kernel
    stall, s_g, g_phase, g_oy, g_ox, g_end = s.stall, s.s_g, s.g_phase, s.g_oy, s.g_ox, s.g_end
    wv = s.wv
    # Window gather: phase c < k reads column c; phase c+1 captures it.
    g_rps = [ifm.read_port() for _ in range(k)]
    g_inb = Signal(k)  # the column issued last cycle was inside the map, per kernel row
    g_issued = Signal()  # a column was issued last cycle: capture it now
    x_window = [[Signal(cfg.cin * cfg.in_bits, name=f"x_window_{kh}_{kw}")
                 for kw in range(k)] for kh in range(k)]
    g_window = [[Signal(cfg.cin * cfg.in_bits, name=f"g_window_{kh}_{kw}")
                 for kw in range(k)] for kh in range(k)]
    g_window_next = [[Signal(cfg.cin * cfg.in_bits, name=f"g_window_next_{kh}_{kw}")
                      for kw in range(k)] for kh in range(k)]
    ix = Signal(signed(ubits(cfg.w * 2 + k * 2 + cfg.wo * cfg.stride) + 2))
    m.d.comb += ix.eq(g_ox * cfg.stride + g_phase - cfg.padding)
    # Kernel row kh reads g_base + kh*W + g_phase, where the register g_base =
    # g_bank*H*W + (g_oy*s - p)*W + g_ox*s - p follows g_bank, g_oy and g_ox (updated
    # with them below): no multiplier between the counters and the read address.
    g_base = Signal(signed(base_bits(cfg)),
                    init=0 if (walk is not None) else wv["first_base"])
    if (walk is not None):
        g_start = Signal(init=1)
        with m.If(g_start):
            m.d.sync += [g_start.eq(0), g_oy.eq(walk.first_oy), g_ox.eq(walk.first_ox),
                         g_base.eq(walk.first_base)]
    for kh, rp in enumerate(g_rps):
        iy = Signal(signed(ubits(cfg.h * 2 + k * 2 + cfg.ho * cfg.stride) + 2),
                    name=f"g_iy_{kh}")
        inside = (iy >= 0) & (iy < cfg.h) & (ix >= 0) & (ix < cfg.w) & (g_phase < k)
        m.d.comb += [iy.eq(g_oy * cfg.stride + kh - cfg.padding),
                     rp.addr.eq((g_base + (kh * cfg.w) + g_phase).as_unsigned()),
                     rp.en.eq(~stall)]
        with m.If(~stall):
            m.d.sync += g_inb[kh].eq(s_g & inside)
        for kw in range(k):
            capture = g_issued & (g_phase == kw + 1)
            m.d.comb += g_window_next[kh][kw].eq(
                Mux(capture, Mux(g_inb[kh], rp.data, 0), g_window[kh][kw]))
    with m.If(~stall):
        m.d.sync += g_issued.eq(s_g & (g_phase < k))
        m.d.sync += [g_window[kh][kw].eq(g_window_next[kh][kw])
                     for kh in range(k) for kw in range(k)]
        with m.If(s_g & ~g_end):
            m.d.sync += g_phase.eq(g_phase + 1)
    return SimpleNamespace(x_window=x_window, g_window_next=g_window_next, g_base=g_base)
