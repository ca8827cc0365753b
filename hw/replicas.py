"""A replicated layer: `R` copies of a PIM tile share one layer's work, as PIM accelerators
balance their pipelines (ISAAC, PUMA, PIMCOMP replicate the weights of bottleneck layers).

Copy `r` holds the same crossbar cells and tables and computes the output pixels
`r, r + R, r + 2R, ...` of every image. Every copy takes every input beat (a broadcast whose
`ready` is the AND of the copies' `ready`, each a register, so all copies load the same beat in
the same cycle), and a merge takes output pixel `p` of an image from copy `p mod R`, so the
outputs leave in raster order, as one tile's would. `docs/network.md` has the timing;
`epim.sw.chip.netcycles.ReplicatedTileModel` models it cycle by cycle.
"""

from __future__ import annotations

from dataclasses import replace

from amaranth.hdl import Array, Cat, ClockSignal, Instance, Module, Mux, ResetSignal, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract.params import TileParams
from .images import zeroed
from .tile import PIMTile, TileSignature, prog_layout, walk_layout, walk_values


class ReplicatedTile(wiring.Component):
    """`replicas` copies of a tile behind one input and one output stream.

    Parameters
    ----------
    cfg : TileParams
        The layer's tile (every pixel); each copy walks `pix_first = r`, `pix_step = replicas`.
    init : dict of str to list of int
        Memory words, shared by every copy (`PIMTile`).
    replicas : int
        Copies, at least 2 and at most the layer's output pixels per image.
    fixed : bool
        Fixed tiles (`PIMTile`).
    module : str or None
        With a name, the copies are instances of one Verilog module of that name, a tile whose
        pixel walk comes from its `walk` port (:attr:`shared`, which the Verilog generator
        emits once), so the Verilog and its build grow with the layer, not with the copies.
        Without, each copy is elaborated here (Amaranth's simulator needs that).

    Members
    -------
    i : In(stream.Signature(cin * in_bits))
        Input pixels in raster order, as a tile's.
    o : Out(stream.Signature(cout * out_bits))
        Output pixels in raster order, as a tile's.
    prog : In(stream.Signature(prog_layout(cfg)))
        Programmable copies only (`fixed=False`): a word goes to every copy at once.
    idle : Out(1)
        Every copy is idle.
    """

    def __new__(cls, cfg: TileParams, init: dict[str, list[int]], replicas: int,
                fixed: bool = True, module: str | None = None, **kwargs):
        # (refused before the object exists: an elaboratable that was made is one to use)
        pixels = cfg.ho * cfg.wo
        if isinstance(replicas, bool) or not isinstance(replicas, int) \
                or not 2 <= replicas <= pixels:
            raise ValueError(f"replicas must be in 2..{pixels} (the layer's output pixels per "
                             f"image), not {replicas!r}")
        return super().__new__(cls, **kwargs)

    def __init__(self, cfg: TileParams, init: dict[str, list[int]], replicas: int,
                 fixed: bool = True, module: str | None = None):
        self._cfg, self._replicas, self._module = cfg, replicas, module
        self._fixed = fixed
        walks = [replace(cfg, pix_first=r, pix_step=replicas) for r in range(replicas)]
        self._walks = walks
        if module:
            # (a shared programmable module starts blank: the programming port writes it)
            words = init if fixed else zeroed(init)
            self._shared = PIMTile(replace(walks[0], name="tile") if not fixed else walks[0],
                                   words, fixed, walk_port=True, share_array=True)
            self._copies = []
        else:
            self._shared = None
            self._copies = [PIMTile(w, init, fixed) for w in walks]
        super().__init__({"i": In(stream.Signature(cfg.cin * cfg.in_bits)),
                          "o": Out(stream.Signature(cfg.cout * cfg.out_bits)),
                          **({} if fixed else {"prog": In(stream.Signature(prog_layout(cfg)))}),
                          "idle": Out(1)})

    @property
    def copies(self) -> list[PIMTile]:
        """The elaborated copies (none when they are instances of :attr:`shared`)."""
        return list(self._copies)

    @property
    def shared(self) -> tuple[str, PIMTile] | None:
        """`(module name, tile)` of the module every copy instantiates, or None."""
        return (self._module, self._shared) if self._module else None

    def _copy(self, m: Module, r: int):
        """Copy `r`'s ports as seen from here (a flipped `TileSignature`): an instance of the
        shared module, or a tile of its own connected to them."""
        ports = TileSignature(self._cfg).flip().create(path=(f"copy{r}",))
        if self._module:
            cfg = self._walks[r]
            walk = walk_layout(cfg).const(walk_values(cfg)).as_value()
            m.submodules[f"copy{r}"] = Instance(
                self._module, i_clk=ClockSignal(), i_rst=ResetSignal(),
                i_i__payload=ports.i.payload, i_i__valid=ports.i.valid,
                o_i__ready=ports.i.ready, o_o__payload=ports.o.payload,
                o_o__valid=ports.o.valid, i_o__ready=ports.o.ready,
                i_prog__payload=ports.prog.payload, i_prog__valid=ports.prog.valid,
                o_prog__ready=ports.prog.ready, o_idle=ports.idle, i_walk=walk)
            return ports
        tile = self._copies[r]
        m.submodules[f"copy{r}"] = tile
        wiring.connect(m, ports, tile)
        return ports

    def elaborate(self, platform):
        m = Module()
        n, pixels = self._replicas, self._cfg.ho * self._cfg.wo
        copies = [self._copy(m, r) for r in range(n)]
        # broadcast: a beat goes into every copy at once
        ready = Cat(*[c.i.ready for c in copies]).all()
        m.d.comb += self.i.ready.eq(ready)
        for c in copies:
            m.d.comb += [c.i.valid.eq(self.i.valid & ready), c.i.payload.eq(self.i.payload)]
        # merge: pixel p of an image from copy p mod R
        m_sel = Signal(range(n))
        m_pix = Signal(range(pixels))
        valids = Array(c.o.valid for c in copies)
        payloads = Array(c.o.payload for c in copies)
        m.d.comb += [self.o.valid.eq(valids[m_sel]), self.o.payload.eq(payloads[m_sel])]
        for r, c in enumerate(copies):
            m.d.comb += c.o.ready.eq(self.o.ready & (m_sel == r))
        with m.If(self.o.valid & self.o.ready):
            with m.If(m_pix == pixels - 1):
                m.d.sync += [m_pix.eq(0), m_sel.eq(0)]
            with m.Else():
                m.d.sync += [m_pix.eq(m_pix + 1),
                             m_sel.eq(Mux(m_sel == n - 1, 0, m_sel + 1))]
        # programming: a word into every copy at once (the copies hold the same words)
        if self._fixed:
            m.d.comb += [c.prog.valid.eq(0) for c in copies]
        else:
            p_ready = Cat(*[c.prog.ready for c in copies]).all()
            m.d.comb += self.prog.ready.eq(p_ready)
            for c in copies:
                m.d.comb += [c.prog.valid.eq(self.prog.valid & p_ready),
                             c.prog.payload.eq(self.prog.payload)]
        m.d.comb += self.idle.eq(Cat(*[c.idle for c in copies]).all())
        return m
