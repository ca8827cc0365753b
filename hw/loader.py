"""The tile's loader: input beats into the input memory, as words of `in_word` channels.

The input memory `ifm` holds two banks of `H*W` pixels, an image each, every pixel as
`in_blocks` words of `in_word` channels (`epim.contract.tileplan`), so that an input channel
is a word address and a place in the word. A beat's first word is written in the cycle of its
handshake, the others in the cycles after it (`i.ready` is low meanwhile); after an image's
last word its bank reads full, and the loader goes on into the other bank."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib.memory import Memory

from ..contract import tileplan
from ..contract.params import TileParams


def load_input(m: Module, cfg: TileParams, i) -> SimpleNamespace:
    """The loader of the stream `i`: returns `ifm` (the memory), `full` (per bank),
    `release` (driven by the sequencer when a bank's image is done) and the loader's state
    (`busy`: part of an image is in)."""
    hw, ib = cfg.h * cfg.w, cfg.in_bits
    wc, nb = tileplan.in_word(cfg.cin), tileplan.in_blocks(cfg.cin)
    ifm = Memory(shape=unsigned(wc * ib), depth=2 * hw * nb, init=[])
    m.submodules.ifm = ifm
    wp = ifm.write_port()
    l_bank = Signal()
    l_pix = Signal(range(hw))
    l_blk = Signal(range(nb))
    l_addr = Signal(range(2 * hw * nb))
    l_hold = Signal(max(1, (nb - 1) * wc * ib))  # the beat's words still to write
    full = Signal(2)
    set_full = Signal(2)
    release = Signal(2)
    fire = i.valid & i.ready
    padded = Cat(i.payload, Const(0, nb * wc * ib - cfg.cin * ib))
    m.d.comb += [i.ready.eq(~full.bit_select(l_bank, 1) & (l_blk == 0)), wp.addr.eq(l_addr)]
    we = Signal()
    pixel_done = Signal()
    with m.If(fire):
        m.d.comb += [we.eq(1), wp.data.eq(padded[:wc * ib]), pixel_done.eq(nb == 1)]
        if nb > 1:
            m.d.sync += [l_hold.eq(padded[wc * ib:]), l_blk.eq(1)]
    with m.Elif(l_blk != 0):
        m.d.comb += [we.eq(1), wp.data.eq(l_hold[:wc * ib]), pixel_done.eq(l_blk == nb - 1)]
        m.d.sync += [l_hold.eq(l_hold >> (wc * ib)),
                     l_blk.eq(Mux(l_blk == nb - 1, 0, l_blk + 1))]
    m.d.comb += wp.en.eq(we)
    with m.If(we):
        m.d.sync += l_addr.eq(Mux(l_addr == 2 * hw * nb - 1, 0, l_addr + 1))
    with m.If(pixel_done):
        with m.If(l_pix == hw - 1):
            m.d.sync += [l_pix.eq(0), l_bank.eq(~l_bank)]
            m.d.comb += set_full.eq(Cat(~l_bank, l_bank))
        with m.Else():
            m.d.sync += l_pix.eq(l_pix + 1)
    m.d.sync += full.eq((full | set_full) & ~release)
    return SimpleNamespace(ifm=ifm, full=full, release=release,
                           busy=(l_pix != 0) | (l_blk != 0))
