"""The PIM tile: one conv/linear layer whose cells, tables, input and accumulators all sit in
memories, with a datapath per cycle bounded by the physical crossbar.

Every cycle computes at most `lanes` row chunks of `xbar_rows` rows (one pass) on the crossbar
cells of those rows, whatever the layer's `Cin`, `Cout` or `Ce_in * k * k`. The units:

- ``l_`` loader: an input beat goes into the input memory `ifm` as `in_blocks` words of
  `in_word` channels (`epim.contract.tileplan`), one word a cycle, in one of two banks (one
  image each);
- ``f_`` fill: before a pass, the pass's row registers (a shift register) take one epitome input
  channel a cycle: the IFAT names the input channel, whose word address (`src // in_word`)
  addresses `ifm` through `k*k` read ports, one per window position, and whose place in the word
  (`src % in_word`) picks its value;
- ``x_``/``p_`` crossbar: per column block of `cols` columns and DAC slice (most significant
  first) the pass's rows drive the cells of their row chunk, read from one cell memory per
  lane (a word per pass and column block), ADCs saturate per chunk and polarity, and a Horner
  sum adds the slice into the step's column values;
- ``a_`` OFAT accumulation: after a step, one output group a cycle: its accumulator word (the
  `p_out` channels of the group) is read from the accumulator memory, the column values rotated
  by the group's OFAT base (`log2(Ce_out)` stages) are added, and the word is written back;
- ``q_`` output stage: one output channel a cycle, `(acc + bias) * mult` then the rounding shift
  and the clamp, into the output shift register; ``o_`` the output stream register.

A pixel runs its steps and its output stage one after another (the schedule of
`epim.contract.tileplan.pixel_cycles`), so `epim.sw.chip.cyclemodel` follows it exactly.
`docs/tile.md` has the block diagram and the cycle counts.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..contract import tileplan
from ..contract.images import ProgTarget, ifrt_fields, offsets, prog_fields, ubits
from ..contract.params import TileParams
from .crossbar import ArraySpec, accumulate_passes, cell_memories, column_values
from .fill import fill, row_slices
from .loader import load_input
from .ofat import accumulate
from .ostage import output_stage

__all__ = ["PIMTile", "TileParams", "TileSignature", "base_bits", "prog_layout", "walk_layout",
           "walk_values"]


def walk_values(cfg: TileParams) -> dict[str, int]:
    """The `walk` of a tile that computes pixels `pix_first, pix_first + pix_step, ...`."""
    oy0, ox0 = divmod(cfg.pix_first, cfg.wo)
    oy1, ox1 = divmod(cfg.last_pixel, cfg.wo)
    corner = -(cfg.padding * cfg.w + cfg.padding)
    return {"first_oy": oy0, "first_ox": ox0,
            "first_base": corner + (oy0 * cfg.w + ox0) * cfg.stride,
            "last_oy": oy1, "last_ox": ox1}


def base_bits(cfg: TileParams) -> int:
    """Width of the window's base pixel address `g_base` (signed, bank included)."""
    return ubits(2 * cfg.h * cfg.w + cfg.kernel * cfg.w + cfg.kernel) + 2


def walk_layout(cfg: TileParams) -> data.StructLayout:
    """The `walk` port (`walk_port=True`): first and last pixel of a copy's walk."""
    return data.StructLayout({"first_oy": ubits(cfg.ho), "first_ox": ubits(cfg.wo),
                              "first_base": signed(base_bits(cfg)),
                              "last_oy": ubits(cfg.ho), "last_ox": ubits(cfg.wo)})


def prog_layout(cfg: TileParams) -> data.StructLayout:
    """Payload of the programming port: target memory, word address, word."""
    return data.StructLayout(dict(prog_fields(cfg)))


class TileSignature(wiring.Signature):
    """The ports of a tile of `cfg` (see `PIMTile`): input and output pixel streams, the
    programming port, `idle`, and with `walk_port` the pixel walk's first and last pixel."""

    def __init__(self, cfg: TileParams, walk_port: bool = False):
        super().__init__({
            "i": In(stream.Signature(cfg.cin * cfg.in_bits)),
            "o": Out(stream.Signature(cfg.cout * cfg.out_bits)),
            "prog": In(stream.Signature(prog_layout(cfg))),
            "idle": Out(1),
            **({"walk": In(walk_layout(cfg))} if walk_port else {}),
        })


class PIMTile(wiring.Component):
    """One layer's PIM tile, memories throughout (see the module's text).

    Parameters
    ----------
    cfg : TileParams
    init : dict of str to list of int
        Initial words of ``xbar``, ``ifrt``, ``ifat``, ``ofat``, ``ostage``.
    fixed : bool
        The memories are ROMs holding `init` (no programming port writes).
    walk_port : bool
        The pixel walk's first and last pixel come from the `walk` port.
    share_array : bool
        The crossbar array is an instance of the module :attr:`arrays` names (emitted once
        for every tile with the same physical crossbar), not a submodule of its own.

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
    idle : Out(1)
        No image is buffered, in flight or waiting in the output register.
    walk : In(walk_layout(cfg))
        Only with `walk_port=True`: the copies of a replicated layer share one module and
        differ only here.
    """

    def __new__(cls, cfg: TileParams, init: dict[str, list[int]], *args, **kwargs):
        if not isinstance(cfg, TileParams):
            raise TypeError(f"cfg must be TileParams, not {type(cfg).__name__}")
        cfg.check_words(init)
        return super().__new__(cls)

    def __init__(self, cfg: TileParams, init: dict[str, list[int]], fixed: bool = False,
                 walk_port: bool = False, share_array: bool = False):
        self._cfg, self._fixed, self._walk_port = cfg, fixed, walk_port
        self._share_array = share_array
        self._init = {k: list(v) for k, v in init.items()}
        super().__init__(TileSignature(cfg, walk_port))

    @property
    def cfg(self) -> TileParams:
        return self._cfg

    @property
    def arrays(self) -> dict[str, ArraySpec]:
        """`{module name: spec}` of the crossbar array module that this tile instantiates
        (`share_array=True`; `CrossbarArray(spec)` is that module), else empty."""
        if not self._share_array:
            return {}
        spec = ArraySpec.of(self._cfg)
        return {spec.module: spec}

    @property
    def init(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self._init.items()}

    # --- memories ------------------------------------------------------------------------------
    def _table(self, m, name, prog_we):
        """A memory of the tile's images, written by the programming port unless fixed."""
        cfg = self._cfg
        width, depth = cfg.widths[name], cfg.depths[name]
        mem = Memory(shape=unsigned(width), depth=depth, init=self._init[name])
        m.submodules[f"{name}_table"] = mem
        if not self._fixed:
            wp = mem.write_port()
            addr, word = self.prog.payload.addr, self.prog.payload.data
            m.d.comb += [wp.en.eq(prog_we[name] & (addr < depth)), wp.addr.eq(addr),
                         wp.data.eq(word[:width])]
        return mem

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        prog_fire = self.prog.valid & self.prog.ready
        prog_we = {}
        for target in ProgTarget:
            name = target.name.lower()
            prog_we[name] = Signal(name=f"prog_we_{name}")
            m.d.comb += prog_we[name].eq(prog_fire & (self.prog.payload.mem == target))
        # each unit its own module (the Verilog's hierarchy: resources by unit, docs/tile.md)
        u = {name: Module() for name in ("loader", "ifrt", "ifat", "crossbar", "ofat", "ostage")}
        for name, unit in u.items():
            m.submodules[name] = unit
        ifrt, ifat, ofat, ostage_port = (self._table(u[name], name, prog_we).read_port()
                                         for name in ("ifrt", "ifat", "ofat", "ostage"))
        cells = cell_memories(u["crossbar"], cfg, self._init["xbar"], self.prog.payload,
                              prog_we["xbar"], self._fixed)
        ld = load_input(u["loader"], cfg, self.i)
        s = self._state(m)
        fr = offsets(ifrt_fields(cfg))
        s.ifrt_last = ifrt.data[fr["last"][0]] | (s.x_step == cfg.max_steps - 1)
        mask = ifrt.data[fr["mask"][0]:fr["mask"][0] + cfg.g_out]
        m.d.comb += [ifrt.addr.eq(s.x_step), ifat.addr.eq(s.x_step),
                     ofat.addr.eq(ifrt.data[fr["gi"][0]:])]
        f_sr = fill(u["ifat"], cfg, ld.ifm, ifat, s, base_bits(cfg))
        xb = u["crossbar"]
        m.d.comb += cells.addr.eq(Mux(s.x_adv, s.x_a + 1, s.x_a))
        x_v = column_values(xb, cfg, row_slices(xb, cfg, f_sr, s.x_p, s.x_t), cells,
                            self._share_array)
        # the slice's control, a cycle later with its column values (the array's input
        # register, `tileplan.ARRAY_STAGES`)
        r_valid, r_t = Signal(name="r_valid"), Signal.like(s.x_t, name="r_t")
        r_p, r_b = Signal.like(s.x_p, name="r_p"), Signal.like(s.x_b, name="r_b")
        xb.d.sync += [r_valid.eq(s.x_valid), r_t.eq(s.x_t), r_p.eq(s.x_p), r_b.eq(s.x_b)]
        assert tileplan.ARRAY_STAGES == 1
        x_col = accumulate_passes(xb, cfg, x_v, r_valid, r_t, r_p, r_b)
        acc = accumulate(u["ofat"], cfg, x_col, ofat, mask, s.a_issue, s.c, s.clear)
        q_sr = output_stage(u["ostage"], cfg, acc.rp, acc.live, ostage_port, s.q_issue,
                            s.q_go, s.q_j)
        m.d.comb += [ostage_port.addr.eq(s.c), acc.rp.addr.eq(Mux(s.q_issue, s.q_go, acc.a_go))]
        # the output register
        o_valid = Signal()
        o_payload = Signal(len(q_sr))
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(o_payload)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(s.move):
            m.d.sync += [o_payload.eq(q_sr), o_valid.eq(1)]
        s.o_free = ~o_valid | self.o.ready
        s.prog_busy = cells.busy
        waiting = self._sequencer(m, s, ld)
        busy = ld.full.any() | ~waiting | o_valid | ld.busy | cells.busy
        m.d.comb += [self.idle.eq(~busy), self.prog.ready.eq(~busy & (not self._fixed))]
        return m

    def _state(self, m: Module) -> SimpleNamespace:
        """The sequencer's counters and the pixel walk's registers."""
        cfg = self._cfg
        wv = walk_values(cfg)
        port = self._walk_port
        s = SimpleNamespace(
            x_step=Signal(range(cfg.max_steps)), x_p=Signal(range(max(2, cfg.passes))),
            x_t=Signal(range(cfg.n_t), init=cfg.n_t - 1),
            x_b=Signal(range(max(2, tileplan.col_blocks(cfg)))),
            x_a=Signal(range(max(2, cfg.passes * tileplan.col_blocks(cfg)))), x_adv=Signal(),
            f_i=Signal(range(tileplan.fill_depth(cfg) + 1)),
            c=Signal(range(max(cfg.g_out + 2, tileplan.output_cycles(cfg)))),
            q_go=Signal(range(cfg.g_out)), q_j=Signal(range(cfg.patch_out)),
            f_issue=Signal(), x_valid=Signal(), a_issue=Signal(), q_issue=Signal(),
            clear=Signal(), move=Signal(),
            walk=self.walk if port else wv, g_bank=Signal(),
            g_oy=Signal(range(cfg.ho), init=0 if port else wv["first_oy"]),
            g_ox=Signal(range(cfg.wo), init=0 if port else wv["first_ox"]),
            g_base=Signal(signed(base_bits(cfg)), init=0 if port else wv["first_base"]))
        if port:  # the walk's first pixel, loaded in the cycle after reset
            start = Signal(init=1)
            with m.If(start):
                m.d.sync += [start.eq(0), s.g_oy.eq(s.walk.first_oy),
                             s.g_ox.eq(s.walk.first_ox), s.g_base.eq(s.walk.first_base)]
        return s

    def _next_pixel(self, m: Module, s: SimpleNamespace, ld: SimpleNamespace) -> None:
        """The walk moves `pix_step` pixels on in raster order; after the image's last pixel
        its bank is released and the walk starts the next image in the other bank."""
        cfg, walk = self._cfg, s.walk
        dy, dx = divmod(cfg.pix_step, cfg.wo)
        wrap = s.g_ox >= cfg.wo - dx if dx else Const(0)
        with m.If(s.g_last):
            m.d.comb += ld.release.eq(Cat(~s.g_bank, s.g_bank))
            m.d.sync += [s.g_bank.eq(~s.g_bank), s.g_oy.eq(walk["first_oy"]),
                         s.g_ox.eq(walk["first_ox"]),
                         s.g_base.eq(Mux(s.g_bank, 0, cfg.h * cfg.w) + walk["first_base"])]
        with m.Elif(wrap):
            m.d.sync += [s.g_ox.eq(s.g_ox + dx - cfg.wo), s.g_oy.eq(s.g_oy + dy + 1),
                         s.g_base.eq(s.g_base + ((dy + 1) * cfg.w + dx - cfg.wo)
                                     * cfg.stride)]
        with m.Else():
            m.d.sync += [s.g_ox.eq(s.g_ox + dx), s.g_oy.eq(s.g_oy + dy),
                         s.g_base.eq(s.g_base + (dy * cfg.w + dx) * cfg.stride)]

    def _sequencer(self, m: Module, s: SimpleNamespace, ld: SimpleNamespace):
        """The pixel's phases (`epim.contract.tileplan`): per IFRT step a cycle to read its
        tables, per pass the fill and the DAC slices, the OFAT accumulation; then the
        output stage and the move into the output register. Returns "waiting for an image"."""
        cfg = self._cfg
        f_count = Array(Const(n, range(tileplan.fill_depth(cfg) + 1))
                        for _, n in tileplan.fill_plan(cfg))
        s.g_last = (s.g_oy == s.walk["last_oy"]) & (s.g_ox == s.walk["last_ox"])
        with m.FSM(name="seq") as fsm:
            with m.State("WAIT"):
                with m.If(ld.full.bit_select(s.g_bank, 1) & ~s.prog_busy):
                    m.d.sync += s.x_step.eq(0)
                    m.next = "STEP"
            with m.State("STEP"):  # the step's IFRT and IFAT words are read
                m.d.comb += s.clear.eq(s.x_step == 0)
                m.d.sync += [s.x_p.eq(0), s.f_i.eq(0), s.x_a.eq(0)]
                m.next = "FILL"
            with m.State("FILL"):
                with m.If(s.f_i < f_count[s.x_p]):
                    m.d.comb += s.f_issue.eq(1)
                    m.d.sync += s.f_i.eq(s.f_i + 1)
                with m.Else():
                    m.d.sync += [s.x_t.eq(cfg.n_t - 1), s.x_b.eq(0)]
                    m.next = "COMPUTE"
            with m.State("COMPUTE"):
                m.d.comb += s.x_valid.eq(1)
                with m.If(s.x_t != 0):
                    m.d.sync += s.x_t.eq(s.x_t - 1)
                with m.Elif(s.x_b != tileplan.col_blocks(cfg) - 1):
                    m.d.comb += s.x_adv.eq(1)
                    m.d.sync += [s.x_t.eq(cfg.n_t - 1), s.x_b.eq(s.x_b + 1), s.x_a.eq(s.x_a + 1)]
                with m.Elif(s.x_p != cfg.passes - 1):
                    m.d.comb += s.x_adv.eq(1)
                    m.d.sync += [s.x_p.eq(s.x_p + 1), s.f_i.eq(0), s.x_a.eq(s.x_a + 1)]
                    m.next = "FILL"
                with m.Else():
                    m.next = "DRAIN"
            with m.State("DRAIN"):  # the last slice leaves the array's input register
                m.d.sync += s.c.eq(0)
                m.next = "OFAT"
            with m.State("OFAT"):
                m.d.comb += s.a_issue.eq(s.c < cfg.g_out)
                m.d.sync += s.c.eq(s.c + 1)
                with m.If(s.c == tileplan.OFAT_STAGES + cfg.g_out - 1):
                    with m.If(s.ifrt_last):
                        m.d.sync += [s.c.eq(0), s.q_go.eq(0), s.q_j.eq(0)]
                        m.next = "OUTPUT"
                    with m.Else():
                        m.d.sync += s.x_step.eq(s.x_step + 1)
                        m.next = "STEP"
            with m.State("OUTPUT"):
                m.d.comb += s.q_issue.eq(s.c < cfg.cout)
                m.d.sync += s.c.eq(s.c + 1)
                with m.If(s.q_issue):
                    with m.If(s.q_j == cfg.patch_out - 1):
                        m.d.sync += [s.q_j.eq(0), s.q_go.eq(s.q_go + 1)]
                    with m.Else():
                        m.d.sync += s.q_j.eq(s.q_j + 1)
                with m.If(s.c == tileplan.output_cycles(cfg) - 1):
                    m.next = "MOVE"
            with m.State("MOVE"):
                with m.If(s.o_free):
                    m.d.comb += s.move.eq(1)
                    m.d.sync += s.x_step.eq(0)
                    self._next_pixel(m, s, ld)
                    m.next = "STEP"
                    with m.If(s.g_last):
                        m.next = "WAIT"
        return fsm.ongoing("WAIT")
