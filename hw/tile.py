"""A PIM tile: one conv/linear layer on emulated crossbars, with IFRT, IFAT and OFAT units.

Dataflow (signal prefixes name the stage, as in Minerva), each stage a unit in its own module:

- ``l_`` loader and ``g_`` window gather (`epim.hw.gather`): input beats into a
  double-buffered input feature buffer; `k` read ports fetch one window column per cycle for
  the next pixel;
- slot controller, IFRT sequencer and IFAT row selection (`epim.hw.sequencer`);
- ``x_``/``d_``/``p_`` crossbar (`epim.hw.crossbar`): bit-serial DAC slices drive bit-sliced
  differential cells, ADCs saturate per row chunk, and a shift-and-add (most significant slice
  first) builds the step's column values;
- ``r_`` OFAT routing and accumulation (`epim.hw.ofat`): each output channel takes its
  (wrapped) column if its group is served;
- ``q_`` output stage of spec section 5 (`epim.hw.ostage`); ``o_`` the output stream register.

The adder trees live in `epim.hw.arith`; parameters and word layouts in `epim.contract`.

Pixel *slots* are the schedule unit: while the crossbar computes pixel `p` the gather fetches
pixel `p+1`, across image boundaries too, so the crossbar stays busy. `docs/tile.md` has the beat
order and the exact cycle schedule that `epim.sw.chip.cyclemodel` predicts.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract.images import ProgTarget, prog_fields, ubits
from ..contract.params import TileParams
from . import behavioural, crossbar, gather, ofat, ostage, sequencer
from .gather import base_bits
from .sequencer import walk_values

__all__ = ["PIMTile", "TileParams", "base_bits", "prog_layout", "walk_layout", "walk_values"]


def walk_layout(cfg: TileParams) -> data.StructLayout:
    """The `walk` port of a tile whose pixel walk is set from outside (`walk_port=True`): the
    first pixel (`first_oy`, `first_ox` and its window's base address `first_base`) and the last
    one of each image. Copies of a replicated layer share one module and differ only here."""
    return data.StructLayout({"first_oy": ubits(cfg.ho), "first_ox": ubits(cfg.wo),
                              "first_base": signed(base_bits(cfg)),
                              "last_oy": ubits(cfg.ho), "last_ox": ubits(cfg.wo)})


def prog_layout(cfg: TileParams) -> data.StructLayout:
    """Payload of the programming port (`epim.contract.images.prog_fields`): target memory,
    word address, word."""
    return data.StructLayout(dict(prog_fields(cfg)))


class PIMTile(wiring.Component):
    """One layer's PIM tile.

    Parameters
    ----------
    cfg : TileParams
        Layer shape and PIM parameters.
    init : dict of str to list of int
        Initial memory words per target (``xbar``, ``ifrt``, ``ifat``, ``ofat``, ``ostage``),
        laid out as in `docs/memory-images.md`.

    Members
    -------
    i : In(stream.Signature(cin * in_bits))
        Input pixels of each image in raster order (y, then x); channel `c` at bits
        `[c*in_bits, (c+1)*in_bits)`.
    o : Out(stream.Signature(cout * out_bits))
        Output pixels in raster order; channel `o` at bits `[o*out_bits, (o+1)*out_bits)`,
        two's complement when the layer has no ReLU.
    prog : In(stream.Signature(prog_layout(cfg)))
        Programming port: writes word `data` at `addr` of memory `mem` (see `ProgTarget`).
        Ready only while the tile is idle, never for a fixed tile.

    A *fixed* tile (``fixed=True``, the network accelerator's tiles, which are never
    programmed) has the same cycle behaviour and outputs, but its crossbar cells are constants
    (zero cells drop out of the adder trees), its tables are ROMs, and an output of at most
    `THRESHOLD_BITS` bits is computed by comparing the accumulator with per-channel thresholds
    precomputed from the output-stage words, instead of a 32x31-bit multiply per channel.
    idle : Out(1)
        No image is buffered, in flight or waiting in the output register.

    With ``verilog_xbar=True`` (the Verilog generator's programmable tiles) the crossbar's
    column sums are a behavioural Verilog module (:attr:`verilog_modules`) instead of gates:
    the same arithmetic, with text and build time independent of the crossbar's size, but
    Amaranth's simulator cannot run it.
    """


    def __new__(cls, cfg: TileParams, init: dict[str, list[int]], *args, **kwargs):
        # refused before the object exists, so a refused tile does not count as unused
        if not isinstance(cfg, TileParams):
            raise TypeError(f"cfg must be TileParams, not {type(cfg).__name__}")
        cfg.check_words(init)
        return super().__new__(cls)

    def __init__(self, cfg: TileParams, init: dict[str, list[int]], fixed: bool = False,
                 walk_port: bool = False, verilog_xbar: bool = False):
        self._cfg, self._fixed, self._walk_port = cfg, fixed, walk_port
        self._verilog_xbar = verilog_xbar and not fixed
        self._init = {k: list(v) for k, v in init.items()}
        super().__init__({
            "i": In(stream.Signature(cfg.cin * cfg.in_bits)),
            "o": Out(stream.Signature(cfg.cout * cfg.out_bits)),
            "prog": In(stream.Signature(prog_layout(cfg))),
            "idle": Out(1),
            **({"walk": In(walk_layout(cfg))} if walk_port else {}),
        })

    @property
    def cfg(self) -> TileParams:
        return self._cfg

    @property
    def verilog_modules(self) -> dict[str, str]:
        """Verilog modules the tile instantiates, by name (`verilog_xbar=True`: its row
        selection, crossbar, OFAT routing and output stage, `epim.hw.behavioural`); the
        Verilog generator emits them beside it."""
        if not self._verilog_xbar:
            return {}
        cfg = self._cfg
        return dict([behavioural.rows_module(cfg), behavioural.xbar_module(cfg),
                     behavioural.ofat_module(cfg), behavioural.ostage_module(cfg)])

    @property
    def init(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self._init.items()}

    def memories(self, m: Module):
        """The tile's memories with the programming port's writes: crossbar cells and output-
        stage words as registers (every row is read at once, as an analog crossbar does), the
        IFRT, IFAT and OFAT as tables. A fixed tile's are constants and ROMs."""
        cfg, widths, init, fixed = self._cfg, self._cfg.widths, self._init, self._fixed
        prog_we = {}
        prog_fire = self.prog.valid & self.prog.ready
        for target in ProgTarget:
            name = target.name.lower()
            prog_we[name] = Signal(name=f"prog_we_{name}")
            m.d.comb += prog_we[name].eq(prog_fire & (self.prog.payload.mem == target))
        prog_addr, prog_data = self.prog.payload.addr, self.prog.payload.data

        def table(name):
            mem = Memory(shape=unsigned(widths[name]), depth=cfg.depths[name], init=init[name])
            m.submodules[f"{name}_table"] = mem
            if fixed:
                return mem.read_port(domain="comb")
            wp = mem.write_port()
            m.d.comb += [wp.en.eq(prog_we[name] & (prog_addr < cfg.depths[name])),
                         wp.addr.eq(prog_addr),
                         wp.data.eq(prog_data[:widths[name]])]
            return mem.read_port(domain="comb")

        def registers(name):
            """Every word at once (as an analog crossbar reads every row): a memory with one
            read port per word, so `$readmemh` can load it; like non-volatile crossbar
            cells, programmed contents survive a reset."""
            if fixed:
                return [Const(v, widths[name]) for v in init[name]]
            mem = Memory(shape=unsigned(widths[name]), depth=cfg.depths[name], init=init[name])
            m.submodules[f"{name}_table"] = mem
            wp = mem.write_port()
            m.d.comb += [wp.en.eq(prog_we[name] & (prog_addr < cfg.depths[name])),
                         wp.addr.eq(prog_addr), wp.data.eq(prog_data[:widths[name]])]
            words = []
            for n in range(cfg.depths[name]):
                rp = mem.read_port(domain="comb")
                m.d.comb += rp.addr.eq(n)
                words.append(rp.data)
            return words

        cells, words = registers("xbar"), registers("ostage")
        return cells, words, table("ifrt"), table("ifat"), table("ofat")

    def elaborate(self, platform):
        cfg, init, fixed = self._cfg, self._init, self._fixed
        m = Module()
        cells, words, ifrt, ifat, ofat_port = self.memories(m)
        ld = gather.load_input(m, cfg, self.i)
        s = sequencer.slot_control(m, cfg, ifrt, ifat, self.walk if self._walk_port else None)
        g = gather.window_gather(m, cfg, ld.ifm, s, self.walk if self._walk_port else None)
        sequencer.step_sequencer(m, cfg, s)
        sequencer.slot_boundary(m, cfg, s, g, ld)
        # behavioural modules (their text comes from `verilog_modules`), or gates
        modules = {} if self._verilog_xbar else None
        if modules is not None:
            x_rows = behavioural.verilog_rows(m, cfg, ifat, g.x_window, s.x_t, modules)
        else:
            x_rows = sequencer.ifat_rows(m, cfg, ifat, g.x_window, s.x_step, init, fixed)
        xb = crossbar.crossbar(m, cfg, x_rows, s, cells, init, fixed, modules)
        r = ofat.route(m, cfg, xb.p, ofat_port, s.stall)
        tables, table_ports = ostage.output_tables(m, cfg, init, fixed)
        q = ofat.accumulate(m, cfg, r, ofat_port, init, fixed, tables, table_ports, s.stall,
                            modules)

        # Output register: the output stage's values wait here for the stream's consumer;
        # the whole pipeline stalls while a finished pixel cannot move in.
        q_valid = Signal()
        o_valid = Signal()
        o_payload = Signal(cfg.cout * cfg.out_bits)
        q_move = Signal()
        m.d.comb += [q_move.eq(q_valid & (~o_valid | self.o.ready)),
                     s.stall.eq(q_valid & ~q_move)]
        ys = ([behavioural.verilog_outputs(m, cfg, q.q_acc, words, modules)]
              if modules is not None else
              ostage.output_values(m, cfg, q.q_acc, words, init, fixed, q.table_y))
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(q_move):
            m.d.sync += [o_valid.eq(1), o_payload.eq(Cat(*ys)), q_valid.eq(0)]
        with m.If(r.r_valid & ~s.stall & r.r_last):
            m.d.sync += q_valid.eq(1)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(o_payload)]

        busy = (ld.full.any() | s.s_g | s.s_x | xb.d.d_valid | xb.d.d_step_end | xb.p.p_valid
                | xb.p.p_step_end | r.r_valid | q_valid | o_valid | (ld.l_addr != 0))
        m.d.comb += [self.idle.eq(~busy), self.prog.ready.eq(~busy & (not fixed))]
        return m
