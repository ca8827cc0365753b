"""A replicated layer: `R` copies of a PIM tile share one layer's work, as PIM accelerators
balance their pipelines (ISAAC, PUMA, PIMCOMP replicate the weights of bottleneck layers).

Copy `r` holds the same crossbar cells and tables and computes the output pixels
`r, r + R, r + 2R, ...` of every image. Every copy takes every input beat (a broadcast whose
`ready` is the AND of the copies' `ready`, each a register, so all copies load the same beat in
the same cycle), and a merge takes output pixel `p` of an image from copy `p mod R`, so the
outputs leave in raster order, as one tile's would. `docs/network.md` has the timing;
`epim.sw.netcycles.ReplicatedTileModel` models it cycle by cycle.
"""

from __future__ import annotations

from dataclasses import replace

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .tile import PIMTile, TileConfig


class ReplicatedTile(wiring.Component):
    """`replicas` copies of a tile behind one input and one output stream.

    Parameters
    ----------
    cfg : TileConfig
        The layer's tile (every pixel); each copy gets `pix_first = r`, `pix_step = replicas`.
    init : dict of str to list of int
        Memory words, shared by every copy (`PIMTile`).
    replicas : int
        Copies, at least 2 and at most the layer's output pixels per image.
    fixed : bool
        Fixed tiles (`PIMTile`).

    Members
    -------
    i : In(stream.Signature(cin * in_bits))
        Input pixels in raster order, as a tile's.
    o : Out(stream.Signature(cout * out_bits))
        Output pixels in raster order, as a tile's.
    idle : Out(1)
        Every copy is idle.
    """

    def __new__(cls, cfg: TileConfig, init: dict[str, list[int]], replicas: int,
                fixed: bool = True, **kwargs):
        # (refused before the object exists: an elaboratable that was made is one to use)
        pixels = cfg.ho * cfg.wo
        if isinstance(replicas, bool) or not isinstance(replicas, int) \
                or not 2 <= replicas <= pixels:
            raise ValueError(f"replicas must be in 2..{pixels} (the layer's output pixels per "
                             f"image), not {replicas!r}")
        return super().__new__(cls, **kwargs)

    def __init__(self, cfg: TileConfig, init: dict[str, list[int]], replicas: int,
                 fixed: bool = True):
        self._cfg, self._replicas = cfg, replicas
        self._copies = [PIMTile(replace(cfg, pix_first=r, pix_step=replicas), init, fixed)
                        for r in range(replicas)]
        super().__init__({"i": In(stream.Signature(cfg.cin * cfg.in_bits)),
                          "o": Out(stream.Signature(cfg.cout * cfg.out_bits)),
                          "idle": Out(1)})

    @property
    def copies(self) -> list[PIMTile]:
        return list(self._copies)

    def elaborate(self, platform):
        m = Module()
        n, pixels = self._replicas, self._cfg.ho * self._cfg.wo
        for r, tile in enumerate(self._copies):
            m.submodules[f"copy{r}"] = tile
            m.d.comb += tile.prog.valid.eq(0)
        # broadcast: a beat goes into every copy at once
        ready = Cat(*[t.i.ready for t in self._copies]).all()
        m.d.comb += self.i.ready.eq(ready)
        for tile in self._copies:
            m.d.comb += [tile.i.valid.eq(self.i.valid & ready),
                         tile.i.payload.eq(self.i.payload)]
        # merge: pixel p of an image from copy p mod R
        m_sel = Signal(range(n))
        m_pix = Signal(range(pixels))
        valids = Array(t.o.valid for t in self._copies)
        payloads = Array(t.o.payload for t in self._copies)
        m.d.comb += [self.o.valid.eq(valids[m_sel]), self.o.payload.eq(payloads[m_sel])]
        for r, tile in enumerate(self._copies):
            m.d.comb += tile.o.ready.eq(self.o.ready & (m_sel == r))
        with m.If(self.o.valid & self.o.ready):
            with m.If(m_pix == pixels - 1):
                m.d.sync += [m_pix.eq(0), m_sel.eq(0)]
            with m.Else():
                m.d.sync += [m_pix.eq(m_pix + 1),
                             m_sel.eq(Mux(m_sel == n - 1, 0, m_sel + 1))]
        m.d.comb += self.idle.eq(Cat(*[t.idle for t in self._copies]).all())
        return m
