"""A PIM tile: one conv/linear layer on emulated crossbars, with IFRT, IFAT and OFAT units.

Dataflow (signal prefixes name the stage, as in Minerva):

- ``l_`` loader: input beats into a double-buffered input feature buffer (two banks);
- ``g_`` window gather: `k` read ports fetch one window column per cycle for the next pixel;
- ``x_`` crossbar: the IFRT sequencer walks the steps, the IFAT feeds each row from the window,
  bit-serial DAC slices drive bit-sliced differential cells, ADCs saturate per row chunk, and a
  shift-and-add (most significant slice first) builds the step's column values;
- ``r_`` OFAT routing: each output channel takes its (wrapped) column if its group is served;
- ``q_`` output stage of spec section 5; ``o_`` the output stream register.

Pixel *slots* are the schedule unit: while the crossbar computes pixel `p` the gather fetches
pixel `p+1`, across image boundaries too, so the crossbar stays busy. `docs/tile.md` has the beat
order and the exact cycle schedule that `epim.sw.cyclemodel` predicts.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

BIAS_BITS, MULT_BITS, SHIFT_BITS = 32, 31, 6
THRESHOLD_BITS = 4  # a fixed tile computes outputs of at most this many bits by thresholds
TABLE_DEPTH_MAX = 1024  # ... from a block-RAM table when they span at most this many values
PROG_TARGETS = {"xbar": 0, "ifrt": 1, "ifat": 2, "ofat": 3, "ostage": 4}


def ubits(n: int) -> int:
    """Bits to hold the values `0 .. n-1` (at least 1)."""
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class TileConfig:
    """Shape and PIM parameters of a tile (the `params` of an image manifest)."""

    cin: int
    cout: int
    h: int
    w: int
    ho: int
    wo: int
    kernel: int
    stride: int
    padding: int
    in_bits: int
    out_bits: int
    relu: bool
    ce_in: int
    ce_out: int
    patch_out: int
    g_in: int
    g_out: int
    n_slices: int
    n_t: int
    max_steps: int
    acc_bits: int
    src_bits: int
    xbar_rows: int
    cell_bits: int
    dac_bits: int
    adc_bits: int
    lanes: int = 0  # row chunks computed at once (0: all of them)
    # A replica of a replicated layer computes the output pixels `pix_first`,
    # `pix_first + pix_step`, ... of each image (raster order); a lone tile all of them.
    pix_first: int = 0
    pix_step: int = 1

    @classmethod
    def from_params(cls, params: dict) -> TileConfig:
        return cls(**{f.name: params[f.name] for f in fields(cls)
                      if f.name in params or f.default is MISSING})

    @property
    def pixels(self) -> int:
        """Output pixels this tile computes per image."""
        return -(-(self.ho * self.wo - self.pix_first) // self.pix_step)

    @property
    def last_pixel(self) -> int:
        return self.pix_first + (self.pixels - 1) * self.pix_step

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.xbar_rows)

    @property
    def passes(self) -> int:
        """Cycles per DAC slice: the row chunks go through `lanes` adder trees and ADC sets."""
        lanes = min(self.lanes, self.chunks) if self.lanes else self.chunks
        return -(-self.chunks // lanes)

    @property
    def rows(self) -> int:
        """Epitome matrix rows `Ce_in * k * k`."""
        return self.ce_in * self.kernel * self.kernel

    @property
    def widths(self) -> dict[str, int]:
        return {
            "xbar": 2 * self.ce_out * self.n_slices * self.cell_bits,
            "ifrt": 1 + self.g_out + ubits(self.g_in),
            "ifat": self.ce_in * (1 + self.src_bits),
            "ofat": self.g_out * ubits(self.ce_out),
            "ostage": BIAS_BITS + MULT_BITS + SHIFT_BITS,
        }

    @property
    def depths(self) -> dict[str, int]:
        return {"xbar": self.rows, "ifrt": self.max_steps, "ifat": self.max_steps,
                "ofat": self.g_in, "ostage": self.cout}


def walk_layout(cfg: TileConfig) -> data.StructLayout:
    """The `walk` port of a tile whose pixel walk is set from outside (`walk_port=True`): the
    first pixel (`first_oy`, `first_ox` and its window's base address `first_base`) and the last
    one of each image. Copies of a replicated layer share one module and differ only here."""
    return data.StructLayout({"first_oy": ubits(cfg.ho), "first_ox": ubits(cfg.wo),
                              "first_base": signed(base_bits(cfg)),
                              "last_oy": ubits(cfg.ho), "last_ox": ubits(cfg.wo)})


def base_bits(cfg: TileConfig) -> int:
    """Width of the gather's window base address `g_base` (signed)."""
    return ubits(2 * cfg.h * cfg.w + cfg.kernel * cfg.w + cfg.kernel) + 2


def walk_values(cfg: TileConfig) -> dict[str, int]:
    """The `walk` of a tile that computes pixels `pix_first, pix_first + pix_step, ...`."""
    oy0, ox0 = divmod(cfg.pix_first, cfg.wo)
    oy1, ox1 = divmod(cfg.last_pixel, cfg.wo)
    corner = -(cfg.padding * cfg.w + cfg.padding)
    return {"first_oy": oy0, "first_ox": ox0,
            "first_base": corner + (oy0 * cfg.w + ox0) * cfg.stride,
            "last_oy": oy1, "last_ox": ox1}


def prog_layout(cfg: TileConfig) -> data.StructLayout:
    """Payload of the programming port: target memory, word address, word."""
    return data.StructLayout({
        "mem": 3,
        "addr": ubits(max(cfg.depths.values())),
        "data": max(cfg.widths.values()),
    })


def check_init(cfg: TileConfig, init: dict[str, list[int]]) -> None:
    """Refuse memory contents that do not fit the tile's memories."""
    for name, depth in cfg.depths.items():
        if name not in init:
            raise ValueError(f"memory {name!r} has no initial contents")
        if len(init[name]) != depth:
            raise ValueError(f"memory {name!r} needs {depth} words, got {len(init[name])}")
        if any(not 0 <= v < 2 ** cfg.widths[name] for v in init[name]):
            raise ValueError(f"memory {name!r} has a word wider than {cfg.widths[name]} bits")


def ostage_fields(word: int) -> tuple[int, int, int]:
    """`(bias, mult, shift)` of an output-stage word (bias two's complement, lowest bits)."""
    bias = word & (2**BIAS_BITS - 1)
    bias -= (bias >> (BIAS_BITS - 1)) << BIAS_BITS
    return bias, (word >> BIAS_BITS) & (2**MULT_BITS - 1), word >> (BIAS_BITS + MULT_BITS)


def output_value(acc: int, word: int, cfg: TileConfig) -> int:
    """Spec section 5 for one channel: `clamp((acc + bias) * mult + rnd >> shift, lo, hi)`
    from an output-stage word (bias, mult, shift)."""
    bias, mult, shift = ostage_fields(word)
    rnd = (1 << (shift - 1)) if shift else 0
    lo, hi = output_range(cfg)
    return min(hi, max(lo, ((acc + bias) * mult + rnd) >> shift))


def output_range(cfg: TileConfig) -> tuple[int, int]:
    if cfg.relu:
        return 0, 2**cfg.out_bits - 1
    return -(2 ** (cfg.out_bits - 1)), 2 ** (cfg.out_bits - 1) - 1


def thresholds(word: int, cfg: TileConfig) -> list[int | None]:
    """For each output level `v` above the lowest, the least accumulator value whose output
    is at least `v` (None: no accumulator value reaches it). The output stage is
    non-decreasing in the accumulator (`mult >= 1`), so `y = lo + #{v : acc >= T_v}`."""
    lo, hi = output_range(cfg)
    a_lo, a_hi = -(2 ** (cfg.acc_bits - 1)), 2 ** (cfg.acc_bits - 1) - 1
    out = []
    for v in range(lo + 1, hi + 1):
        if output_value(a_hi, word, cfg) < v:
            out.append(None)
            continue
        a, b = a_lo, a_hi  # the answer lies in [a, b]
        while a < b:
            mid = (a + b) // 2
            if output_value(mid, word, cfg) >= v:
                b = mid
            else:
                a = mid + 1
        out.append(a)
    return out


def output_table(word: int, cfg: TileConfig) -> tuple[int, list[int]] | None:
    """The output stage of one channel as a table: `(base, table)` with
    `y = table[clamp(acc - base, 0, len(table) - 1)]` for every accumulator value, or None when
    the thresholds span more than `TABLE_DEPTH_MAX` values. Below its first threshold the
    stage is constant, and above its last one too, so the ends of the table cover the rest."""
    ts = [t for t in thresholds(word, cfg) if t is not None]
    a_lo, a_hi = -(2 ** (cfg.acc_bits - 1)), 2 ** (cfg.acc_bits - 1) - 1
    base, top = (min(ts) - 1, max(ts)) if ts else (0, 1)
    depth = 1 << max(1, (top - base).bit_length())
    if depth > TABLE_DEPTH_MAX:
        return None
    # (entries beyond the accumulator's range hold its end values; words of the table are
    # the output's `out_bits` bits, two's complement when signed)
    return base, [output_value(min(max(base + i, a_lo), a_hi), word, cfg)
                  & (2**cfg.out_bits - 1) for i in range(depth)]


def ge_const(v, c: int, shared=None):
    """`v >= c` for a signed `v` (a signal) and a constant `c`, as plain gates (no carry
    chain), so that synthesis can share logic between the comparisons of one value with many
    constants. The expression is a sum of products of `v`'s bits. `shared`, if given, is a pair
    of signals holding `u` (the offset-binary `v`, below) and `~u`, shared by every comparison
    of `v`, so that the Verilog does not spell out an inverter per use."""
    n = len(v)
    if c <= -(2 ** (n - 1)):
        return Const(1)
    if c > 2 ** (n - 1) - 1:
        return Const(0)
    u, nu = shared or (Cat(v[:-1], ~v[-1]), ~Cat(v[:-1], ~v[-1]))  # offset binary: ordered
    cu = c + 2 ** (n - 1)
    # v >= c: v equals c above bit i and has a 1 where c has a 0, for some i; or v == c
    lits, terms = [], []
    for i in reversed(range(n)):
        if (cu >> i) & 1:
            lits.append(u[i])
        else:
            terms.append(Cat(*lits, u[i]).all())
            lits.append(nu[i])
    terms.append(Cat(*lits).all())
    return Cat(*terms).any()


def threshold_stage(m: Module, acc, word: int, cfg: TileConfig, name: str = "q_ge"):
    """The output stage of one channel (output-stage word `word`) on the accumulator `acc`
    from its thresholds: every comparison at once (gates that synthesis shares between one
    value's comparisons), and the thermometer code they form turned into binary by parities
    (bit `b` of the level is the XOR of the comparisons `k` with `2**b` dividing `k`), so the
    path is a few gate levels deep. Returns `y` (signed, `out_bits + 2` bits)."""
    lo, _ = output_range(cfg)
    u = Signal(len(acc), name=f"{name}_u")  # offset-binary acc and its inverse, shared
    nu = Signal(len(acc), name=f"{name}_nu")
    m.d.comb += [u.eq(Cat(acc[:-1], ~acc[-1])), nu.eq(~u)]
    t = []
    for k, th in enumerate(thresholds(word, cfg), start=1):
        sig = Signal(name=f"{name}_{k}")
        m.d.comb += sig.eq(ge_const(acc, th, (u, nu)) if th is not None else 0)
        t.append(sig)
    n = cfg.out_bits
    bits = [Cat(*[t[k - 1] for k in range(2**b, 2**n, 2**b)]).xor() for b in range(n)]
    return lo + Cat(*bits)


def _fit(v, width: int):
    """`v` (signed) as exactly `width` two's complement bits."""
    v = Value.cast(v)
    if len(v) < width:
        v = Cat(v, v[-1].replicate(width - len(v)))
    return v[:width]


def _reduce_counts(counts: dict[int, int]) -> dict[int, int]:
    """One level of full adders on column heights (what `bit_sum` does to the bits)."""
    nxt: dict[int, int] = {}
    for w, n in counts.items():
        nxt[w] = nxt.get(w, 0) + n // 3 + n % 3
        if n >= 3:
            nxt[w + 1] = nxt.get(w + 1, 0) + n // 3
    return nxt


def bit_sum(m: Module, columns: dict[int, list], width: int, name: str = "cs",
            register=None, late=None):
    """The sum of single bits, `columns[w]` holding the bits of weight `2**w`, as `width` bits:
    full adders reduce every column to at most two bits (carry-save), then one adder. Every
    adder output is a signal of `m` (an expression used twice would be emitted twice).

    `register(bit)`, if given, returns a registered copy of a bit: every bit that is still to
    be added halfway down the tree (by full-adder levels) goes through it, a pipeline register
    inside the tree. Constant bits are not registered. `late`, if given, is a word added
    (modulo `2**width`) into the tree after that register (or at its top without one)."""
    count = [0]

    def wire(expr):
        sig = Signal(name=f"{name}_{count[0]}")
        count[0] += 1
        m.d.comb += sig.eq(expr)
        return sig

    cols = {w: list(bits) for w, bits in columns.items() if bits}
    cut = None
    if register is not None:
        counts, depth = {w: len(b) for w, b in cols.items()}, 0
        while any(n > 2 for n in counts.values()):
            counts, depth = _reduce_counts(counts), depth + 1
        cut = (depth + 1) // 2
    level = 0
    while True:
        if level == cut:
            cols = {w: [b if isinstance(b, Const) else register(b) for b in bits]
                    for w, bits in cols.items()}
        if late is not None and level == (cut or 0):
            for w in range(min(width, len(late))):
                cols.setdefault(w, []).append(late[w])
            late = None
        if not any(len(b) > 2 for b in cols.values()):
            break
        level += 1
        nxt: dict[int, list] = {}
        for w in sorted(cols):
            bits = cols[w]
            while len(bits) >= 3:
                a, b, c = bits.pop(), bits.pop(), bits.pop()
                nxt.setdefault(w, []).append(wire(a ^ b ^ c))
                nxt.setdefault(w + 1, []).append(wire((a & b) | (a & c) | (b & c)))
            nxt.setdefault(w, []).extend(bits)
        cols = nxt
    if not cols:
        return Const(0, width)
    rows = [[], []]
    for w in sorted(cols):
        for k, bit in enumerate(cols[w]):
            rows[k].append((w, bit))

    def word(entries):
        at = {w: bit for w, bit in entries if w < width}
        return Cat(*[at.get(w, Const(0, 1)) for w in range(width)])
    return (word(rows[0]) + word(rows[1]))[:width]


def tree_sum(terms: list, width: int, is_signed: bool = False):
    """Balanced adder tree; every partial sum is kept at `width` bits (the caller's bound)."""
    def fit(v):
        v = Value.cast(v)
        if len(v) < width:
            pad = v[-1].replicate(width - len(v)) if v.shape().signed else Const(0, width - len(v))
            v = Cat(v, pad)
        v = v[:width]
        return v.as_signed() if is_signed else v
    if not terms:
        return Const(0, signed(width) if is_signed else unsigned(width))
    terms = [fit(t) for t in terms]
    while len(terms) > 1:
        pairs = [fit(a + b) for a, b in zip(terms[0::2], terms[1::2], strict=False)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


class PIMTile(wiring.Component):
    """One layer's PIM tile.

    Parameters
    ----------
    cfg : TileConfig
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
        Programming port: writes word `data` at `addr` of memory `mem` (see `PROG_TARGETS`).
        Ready only while the tile is idle, never for a fixed tile.

    A *fixed* tile (``fixed=True``, the network accelerator's tiles, which are never
    programmed) has the same cycle behaviour and outputs, but its crossbar cells are constants
    (zero cells drop out of the adder trees), its tables are ROMs, and an output of at most
    `THRESHOLD_BITS` bits is computed by comparing the accumulator with per-channel thresholds
    precomputed from the output-stage words, instead of a 32x31-bit multiply per channel.
    idle : Out(1)
        No image is buffered, in flight or waiting in the output register.
    """

    def __init__(self, cfg: TileConfig, init: dict[str, list[int]], fixed: bool = False,
                 walk_port: bool = False):
        try:
            check_init(cfg, init)
        except ValueError:
            self._MustUse__silence = True  # a refused tile is not an unused one
            raise
        self._cfg, self._fixed, self._walk_port = cfg, fixed, walk_port
        self._init = {k: list(v) for k, v in init.items()}
        super().__init__({
            "i": In(stream.Signature(cfg.cin * cfg.in_bits)),
            "o": Out(stream.Signature(cfg.cout * cfg.out_bits)),
            "prog": In(stream.Signature(prog_layout(cfg))),
            "idle": Out(1),
            **({"walk": In(walk_layout(cfg))} if walk_port else {}),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def init(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self._init.items()}

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        k, hw = cfg.kernel, cfg.h * cfg.w
        widths = cfg.widths

        # --- Programming port --------------------------------------------------------------
        prog_we = {name: Signal(name=f"prog_we_{name}") for name in PROG_TARGETS}
        prog_fire = self.prog.valid & self.prog.ready
        for name, code in PROG_TARGETS.items():
            m.d.comb += prog_we[name].eq(prog_fire & (self.prog.payload.mem == code))
        prog_addr, prog_data = self.prog.payload.addr, self.prog.payload.data

        def table(name):
            mem = Memory(shape=unsigned(widths[name]), depth=cfg.depths[name],
                         init=self._init[name])
            m.submodules[f"{name}_table"] = mem
            if self._fixed:
                return mem.read_port(domain="comb")
            wp = mem.write_port()
            m.d.comb += [wp.en.eq(prog_we[name] & (prog_addr < cfg.depths[name])),
                         wp.addr.eq(prog_addr),
                         wp.data.eq(prog_data[:widths[name]])]
            return mem.read_port(domain="comb")

        def registers(name, shape, values):
            if self._fixed:
                return [Const(v, shape) for v in values]
            # Like non-volatile crossbar cells, programmed contents survive a reset.
            regs = [Signal(shape, init=v, reset_less=True, name=f"{name}_{n}")
                    for n, v in enumerate(values)]
            for n, reg in enumerate(regs):
                with m.If(prog_we[name] & (prog_addr == n)):
                    m.d.sync += reg.eq(prog_data[:len(reg)])
            return regs

        # Crossbar cells: all rows are read at once, as an analog crossbar does.
        cells = registers("xbar", widths["xbar"], self._init["xbar"])
        ostage = registers("ostage", widths["ostage"], self._init["ostage"])
        ifrt, ifat, ofat = table("ifrt"), table("ifat"), table("ofat")

        # --- Loader: input beats into the double-buffered input feature buffer ---------------
        ifm = Memory(shape=unsigned(cfg.cin * cfg.in_bits), depth=2 * hw, init=[])
        m.submodules.ifm = ifm
        l_wp = ifm.write_port()
        l_bank = Signal()
        l_addr = Signal(range(hw))
        full = Signal(2)
        set_full = Signal(2)
        release = Signal(2)
        m.d.comb += self.i.ready.eq(~full.bit_select(l_bank, 1))
        m.d.comb += [l_wp.addr.eq(l_bank * hw + l_addr), l_wp.data.eq(self.i.payload)]
        with m.If(self.i.valid & self.i.ready):
            m.d.comb += l_wp.en.eq(1)
            with m.If(l_addr == hw - 1):
                m.d.sync += [l_addr.eq(0), l_bank.eq(~l_bank)]
                m.d.comb += set_full.eq(Cat(~l_bank, l_bank))
            with m.Else():
                m.d.sync += l_addr.eq(l_addr + 1)
        m.d.sync += full.eq((full | set_full) & ~release)

        # --- Slot controller -----------------------------------------------------------------
        stall = Signal()
        s_g = Signal()  # this slot gathers pixel (g_bank, g_oy, g_ox)
        s_x = Signal()  # this slot computes the pixel in x_window
        g_phase = Signal(range(k + 1))
        g_bank = Signal()
        # the pixel walk: constants, or the `walk` port's values (loaded in the cycle after
        # reset, long before the first gather, which waits for a whole image)
        wv = walk_values(cfg)
        walk = self.walk if self._walk_port else wv
        g_oy = Signal(range(cfg.ho), init=0 if self._walk_port else wv["first_oy"])
        g_ox = Signal(range(cfg.wo), init=0 if self._walk_port else wv["first_ox"])
        x_step = Signal(range(cfg.max_steps))
        x_t = Signal(range(cfg.n_t), init=cfg.n_t - 1)
        n_pass = cfg.passes
        x_p = Signal(range(n_pass))  # which group of row chunks the lanes compute
        x_pass_last = (x_p == n_pass - 1) if n_pass > 1 else Const(1)

        # The last entry ends the pixel even if a programmed table forgot its `last` bit.
        ifrt_last = ifrt.data[0] | (x_step == cfg.max_steps - 1)
        ifrt_mask = ifrt.data[1:1 + cfg.g_out]
        ifrt_gi = ifrt.data[1 + cfg.g_out:]
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
                        init=0 if self._walk_port else wv["first_base"])
        if self._walk_port:
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
            with m.If(x_step_end & ifrt_last):
                m.d.sync += x_done.eq(1)
            with m.If(s_x & ~x_end):
                with m.If(~x_pass_last):
                    m.d.sync += x_p.eq(x_p + 1)
                with m.Elif(x_t == 0):
                    m.d.sync += [x_t.eq(cfg.n_t - 1), x_step.eq(x_step + 1), x_p.eq(0)]
                with m.Else():
                    m.d.sync += [x_t.eq(x_t - 1), x_p.eq(0)]

        g_last = (g_oy == walk["last_oy"]) & (g_ox == walk["last_ox"])
        # the next pixel is pix_step on in raster order: dy rows and dx columns on, or one row
        # more when the column wraps past the map's edge
        dy, dx = divmod(cfg.pix_step, cfg.wo)
        g_wrap = g_ox >= cfg.wo - dx if dx else Const(0)
        next_bank = Signal()
        m.d.comb += next_bank.eq(Mux(s_g & g_last, ~g_bank, g_bank))
        with m.If(boundary):
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

        # --- Crossbar: IFAT row inputs, DAC slices, cells, ADC, shift-and-add -----------------
        fw = 1 + cfg.src_bits
        x_rows = []
        for e_in in range(cfg.ce_in):
            active = ifat.data[e_in * fw]
            src = ifat.data[e_in * fw + 1:(e_in + 1) * fw]
            # a fixed tile's IFAT is a ROM: each row picks among the (few) sources its steps
            # name, by step, instead of among every input channel
            per_step = [((w >> (e_in * fw)) & 1, (w >> (e_in * fw + 1)) & (2**cfg.src_bits - 1))
                        for w in self._init["ifat"]]
            for kh in range(k):
                for kw in range(k):
                    row = Signal(cfg.in_bits, name=f"x_row_{e_in}_{kh}_{kw}")
                    if self._fixed:
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
        dac = cfg.dac_bits
        x_slices = []  # the DAC input slice of every row this cycle
        for rho, row in enumerate(x_rows):
            sl = Signal(dac, name=f"x_dac_{rho}")
            m.d.comb += sl.eq(Cat(row, Const(0, cfg.n_t * dac - cfg.in_bits))
                              .word_select(x_t, dac))
            x_slices.append(sl)

        # DAC register (`d_`): the rows' DAC slices, the pass and the step's controls, one
        # cycle after the sequencer picked them. The slice and pass selection (a few wires that
        # fan out to every column) and the adder trees are then separate pipeline stages.
        d_slices = []
        for rho, sl in enumerate(x_slices):
            r = Signal(dac, name=f"d_dac_{rho}")
            with m.If(~stall):
                m.d.sync += r.eq(sl)
            d_slices.append(r)
        d_p = Signal(range(n_pass))
        d_valid = Signal()
        d_first_t = Signal()
        d_first_p = Signal()
        d_step_end = Signal()
        d_last = Signal()
        d_mask = Signal(cfg.g_out)
        d_gi = Signal(ubits(cfg.g_in))
        first_p = (x_p == 0) if n_pass > 1 else Const(1)
        with m.If(~stall):
            m.d.sync += [d_p.eq(x_p), d_valid.eq(s_x & ~x_done),
                         d_first_t.eq((x_t == cfg.n_t - 1) & first_p),
                         d_first_p.eq(first_p),
                         d_step_end.eq(x_step_end), d_last.eq(ifrt_last),
                         d_mask.eq(ifrt_mask), d_gi.eq(ifrt_gi)]

        cb, ns = cfg.cell_bits, cfg.n_slices
        adc_max = 2**cfg.adc_bits - 1
        chunks = [range(h0, min(h0 + cfg.xbar_rows, cfg.rows))
                  for h0 in range(0, cfg.rows, cfg.xbar_rows)]
        n_lanes = -(-len(chunks) // n_pass)
        # lane j computes chunk p*n_lanes + j in pass p: its rows' DAC slices and cells are
        # selected by the pass (a plain wire when every chunk has its own lane)
        lane_rows = []  # per lane: per local row, the global row in each pass (None: no row)
        for j in range(n_lanes):
            sel = [chunks[p * n_lanes + j] if p * n_lanes + j < len(chunks) else range(0)
                   for p in range(n_pass)]
            depth = max(len(c) for c in sel)
            lane_rows.append([[c[r] if r < len(c) else None for c in sel] for r in range(depth)])

        def pick(values):
            values = [Const(0) if v is None else v for v in values]
            return values[0] if n_pass == 1 else Array(values)[d_p]

        # With constant cells and no ADC that can saturate (a chunk's largest column sum is
        # within the ADC's range), a column value is a plain signed sum of single bits: the
        # negative cells' bits enter inverted (-b = ~b - 1, the -1s folded into one constant)
        # and every lane, slice and polarity goes into one carry-save tree.
        linear = self._fixed and all(
            len(rows) * (2**dac - 1) * (2**cb - 1) <= adc_max for rows in lane_rows)
        lane_slices = []  # per lane and local row: the DAC slice it gets in this pass
        for j, rows in enumerate([] if linear else lane_rows):
            lane_slices.append([])
            for r, per_pass in enumerate(rows):
                sig = Signal(dac, name=f"x_lane_{j}_{r}")
                m.d.comb += sig.eq(pick([None if g is None else d_slices[g]
                                         for g in per_pass]))
                lane_slices[j].append(sig)
        gates: dict[tuple, Value] = {}

        def pass_gate(on):
            """1 in the passes where a cell bit is set (`on`, per pass): one shared signal per
            pattern, since many cells share one (an expression would be emitted per use)."""
            on = tuple(bool(o) for o in on)
            if all(on):
                return Const(1)
            if on not in gates:
                sig = Signal(name=f"x_gate_{len(gates)}")
                m.d.comb += sig.eq(Cat(*[d_p == p for p, o in enumerate(on) if o]).any())
                gates[on] = sig
            return gates[on]

        slots: dict[tuple, Value] = {}
        inverted: dict[tuple, Value] = {}

        def slot_bit_inverted(sources):
            """`~slot_bit(sources)` as one shared signal (a negative cell's bit enters its
            tree inverted; many trees take the same bit)."""
            if sources not in inverted:
                sig = Signal(name=f"x_neg_{len(inverted)}")
                m.d.comb += sig.eq(~slot_bit(sources))
                inverted[sources] = sig
            return inverted[sources]

        def slot_bit(sources):
            """The DAC slice bit `(row, dbit)` that a tree slot takes in each pass (None: 0),
            as one shared signal per distinct pattern. A slot of several passes is selected
            before the DAC register, by `x_p`, and registered itself (`d_slot_*`)."""
            if len(sources) == 1:
                return Const(0, 1) if sources[0] is None else d_slices[sources[0][0]][
                    sources[0][1]]
            if sources not in slots:
                sig = Signal(name=f"d_slot_{len(slots)}")
                with m.If(~stall):
                    m.d.sync += sig.eq(Array(Const(0, 1) if src is None else
                                             x_slices[src[0]][src[1]] for src in sources)[x_p])
                slots[sources] = sig
            return slots[sources]

        acc_shape = signed(cfg.acc_bits)
        # Horner over DAC slices (shift on a slice's first pass), plain sum over its passes:
        # x_col_next = base + p_v, one cycle after the column sums (`p_` stage)
        x_col = [Signal(acc_shape, name=f"x_col_{e}") for e in range(cfg.ce_out)]
        x_col_next = [Signal(acc_shape, name=f"x_col_next_{e}") for e in range(cfg.ce_out)]
        p_first_t = Signal()
        p_first_p = Signal()
        base = []
        for e in range(cfg.ce_out):
            b = Signal(acc_shape, name=f"p_base_{e}")
            m.d.comb += b.eq(Mux(p_first_t, 0, Mux(p_first_p, x_col[e] << dac, x_col[e])))
            base.append(b)
        x_v = []  # column value of this DAC slice and pass, per epitome output channel
        for e_out in range(cfg.ce_out):
            if linear:
                # Per weight and polarity, pass p has a list of the slice bits whose cells are
                # set; slot k of the tree takes the k-th bit of the current pass (a multiplexer
                # on x_p), so a tree is as wide as its busiest pass, not as the union of all.
                lists: dict[tuple[int, int], list[list]] = {}
                for rows in lane_rows:
                    for q in range(ns):
                        for pol in range(2):
                            field = ((pol * cfg.ce_out + e_out) * ns + q) * cb
                            for per_pass in rows:
                                for p, g in enumerate(per_pass):
                                    if g is None:
                                        continue
                                    v = (self._init["xbar"][g] >> field) & (2**cb - 1)
                                    for cbit in range(cb):
                                        if not (v >> cbit) & 1:
                                            continue
                                        for dbit in range(dac):
                                            w = cbit + dbit + q * cb
                                            per = lists.setdefault((w, pol),
                                                                   [[] for _ in range(n_pass)])
                                            per[p].append((g, dbit))
                cols: dict[int, list] = {}
                offset = 0
                for (w, pol), per in sorted(lists.items()):
                    for k in range(max(len(bits) for bits in per)):
                        sources = tuple(bits[k] if k < len(bits) else None for bits in per)
                        if pol:
                            # -b = ~b - 1; an empty slot (0) adds ~0 - 1 = 0 as well
                            bit, offset = slot_bit_inverted(sources), offset - (1 << w)
                        else:
                            bit = slot_bit(sources)
                        cols.setdefault(w, []).append(bit)
                offset %= 2**cfg.acc_bits
                for w in range(cfg.acc_bits):
                    if (offset >> w) & 1:
                        cols.setdefault(w, []).append(Const(1, 1))
                # the pipeline register `p_` sits halfway down this tree: the rest of the
                # tree and its final adder belong to the Horner stage
                def preg(bit, e=e_out):
                    r = Signal(name=f"p_cs_{e}")
                    with m.If(~stall):
                        m.d.sync += r.eq(bit)
                    return r
                # ... and the Horner sum's `base` joins the rest of the tree: one final adder
                v = Signal(acc_shape, name=f"p_sum_{e_out}")
                m.d.comb += v.eq(bit_sum(m, cols, cfg.acc_bits, f"x_cs_{e_out}", preg,
                                         late=base[e_out]))
                x_v.append(v)
                continue
            terms = []
            for j, rows in enumerate(lane_rows):
                s_bits = (len(rows) * (2**dac - 1) * (2**cb - 1)).bit_length() or 1
                a_bits = min(s_bits, cfg.adc_bits)
                for q in range(ns):
                    adc = []
                    for pol in range(2):
                        field = ((pol * cfg.ce_out + e_out) * ns + q) * cb
                        if self._fixed:
                            # constant cells: the column sum is a sum of single bits, which a
                            # carry-save (Dadda) tree adds with far fewer adders than a tree
                            # of words
                            cols: dict[int, list] = {}
                            for r, per_pass in enumerate(rows):
                                vals = [None if g is None else
                                        (self._init["xbar"][g] >> field) & (2**cb - 1)
                                        for g in per_pass]
                                sl = lane_slices[j][r]
                                for cbit in range(cb):
                                    on = [v is not None and (v >> cbit) & 1 for v in vals]
                                    if not any(on):
                                        continue
                                    gate = pass_gate(on)
                                    for dbit in range(dac):
                                        cols.setdefault(cbit + dbit, []).append(
                                            sl[dbit] & gate)
                            s = bit_sum(m, cols, s_bits, f"x_cs_{j}_{pol}_{e_out}_{q}")
                        else:
                            prods = [lane_slices[j][r] * pick(
                                [None if g is None else cells[g][field:field + cb]
                                 for g in per_pass])
                                for r, per_pass in enumerate(rows)]
                            s = tree_sum(prods, s_bits)
                        a = Signal(a_bits, name=f"x_adc_{j}_{pol}_{e_out}_{q}")
                        m.d.comb += a.eq(Mux(s > adc_max, adc_max, s))
                        adc.append(a)
                    terms.append((adc[0] - adc[1]).as_signed() << (q * cb))
            v = Signal(acc_shape, name=f"x_v_{e_out}")
            m.d.comb += v.eq(tree_sum(terms, cfg.acc_bits, is_signed=True))
            x_v.append(v)

        # Pipeline register after the column sums (`p_`): the slice's column values and the
        # step's controls move on one cycle later, where the Horner sum takes them.
        # (a column summed by one carry-save tree has its register inside the tree already)
        p_v = (x_v if linear else
               [Signal(acc_shape, name=f"p_v_{e}") for e in range(cfg.ce_out)])
        p_valid = Signal()
        p_step_end = Signal()
        p_last = Signal()
        p_mask = Signal(cfg.g_out)
        p_gi = Signal(ubits(cfg.g_in))
        with m.If(~stall):
            m.d.sync += [p_valid.eq(d_valid), p_first_t.eq(d_first_t),
                         p_first_p.eq(d_first_p), p_step_end.eq(d_step_end),
                         p_last.eq(d_last), p_mask.eq(d_mask), p_gi.eq(d_gi)]
            if not linear:
                m.d.sync += [p_v[e].eq(x_v[e]) for e in range(cfg.ce_out)]
        for e in range(cfg.ce_out):
            # (a tree with its register inside has added `base` already)
            m.d.comb += x_col_next[e].eq(p_v[e] if linear else base[e] + p_v[e])
            with m.If(p_valid & ~stall):
                m.d.sync += x_col[e].eq(x_col_next[e])

        # --- OFAT routing with output channel wrapping ---------------------------------------
        r_valid = Signal()
        r_last = Signal()
        r_mask = Signal(cfg.g_out)
        r_gi = Signal(ubits(cfg.g_in))
        r_v = Array(Signal(acc_shape, name=f"r_v_{e}") for e in range(cfg.ce_out))
        with m.If(~stall):
            m.d.sync += r_valid.eq(p_step_end)
            with m.If(p_step_end):
                m.d.sync += [r_last.eq(p_last), r_mask.eq(p_mask), r_gi.eq(p_gi)]
                m.d.sync += [r_v[e].eq(x_col_next[e]) for e in range(cfg.ce_out)]
        m.d.comb += ofat.addr.eq(r_gi)

        cw = ubits(cfg.ce_out)
        # a fixed tile's narrow outputs whose thresholds are close together: block-RAM tables
        tables = {}
        if self._fixed and cfg.out_bits <= THRESHOLD_BITS:
            for o in range(cfg.cout):
                t = output_table(self._init["ostage"][o], cfg)
                if t is not None:
                    tables[o] = t
        table_y = {}
        # two channels' tables share one block RAM, one read port each (a 1024 x 4 table uses
        # a quarter of an ECP5 DP16KD, and with one table per RAM the RAMs ran short: the
        # placer put some tables across the chip from their channels)
        table_ports = {}
        order = sorted(tables)
        for i in range(0, len(order), 2):
            group = order[i:i + 2]
            depth = max(len(tables[o][1]) for o in group)
            init = [w for o in group for w in tables[o][1] + [0] * (depth - len(tables[o][1]))]
            # (synthesis would otherwise turn many of these step functions into logic)
            rom = Memory(shape=cfg.out_bits, depth=depth * len(group), init=init,
                         attrs={"rom_style": "block", "ram_style": "block"})
            m.submodules[f"q_table_{group[0]}"] = rom
            for half, o in enumerate(group):
                table_ports[o] = (rom.read_port(domain="sync"), half, ubits(depth))
        # a channel read from a table accumulates relative to its table's base (it starts at
        # -base), so the table address is a clamp of the sum, with no subtraction after it
        start = {o: -tables[o][0] if o in tables else 0 for o in range(cfg.cout)}
        acc = [Signal(signed(cfg.acc_bits + 2) if o in tables else acc_shape,
                      name=f"r_acc_{o}", init=start[o]) for o in range(cfg.cout)]
        q_acc = [Signal(acc_shape, name=f"q_acc_{o}") for o in range(cfg.cout)]
        q_valid = Signal()
        o_valid = Signal()
        o_payload = Signal(cfg.cout * cfg.out_bits)
        q_move = Signal()
        m.d.comb += [q_move.eq(q_valid & (~o_valid | self.o.ready)),
                     stall.eq(q_valid & ~q_move)]
        for o in range(cfg.cout):
            go, j = divmod(o, cfg.patch_out)
            if self._fixed:
                # a fixed tile's OFAT is a ROM: the channel takes one of the g_in columns its
                # input groups name, by group, instead of any of the Ce_out columns
                cols = []
                for word in self._init["ofat"]:
                    base = (word >> (go * cw)) & (2**cw - 1)
                    cols.append(base + j - cfg.ce_out if base + j >= cfg.ce_out else base + j)
                cols = [c if c < cfg.ce_out else 0 for c in cols]
                value = (r_v[cols[0]] if len(set(cols)) == 1
                         else Array([r_v[c] for c in cols])[r_gi])
            else:
                col = Signal(cw + 1, name=f"r_col_{o}")
                base = ofat.data.word_select(go, cw)
                m.d.comb += col.eq(Mux(base + j >= cfg.ce_out, base + j - cfg.ce_out, base + j))
                value = r_v[col]
            acc_next = Signal(acc[o].shape(), name=f"r_acc_next_{o}")
            m.d.comb += acc_next.eq(acc[o] + Mux(r_mask[go], value, 0))
            with m.If(r_valid & ~stall):
                m.d.sync += acc[o].eq(Mux(r_last, start[o], acc_next))
                if o not in tables:  # (a table's read register takes its place)
                    with m.If(r_last):
                        m.d.sync += q_acc[o].eq(acc_next)
            if o in tables:
                # the table's read register takes the place of q_acc: it is loaded in the same
                # cycle, so the output is ready when the threshold stage's would be
                table = tables[o][1]
                k = ubits(len(table))  # (the depth is a power of two)
                rp, half, abits = table_ports[o]
                d = acc_next  # acc - base
                # clamp to [0, 2**k - 1] from the bits: below 0 by the sign, above by the
                # bits over k (no comparator); the top address bit picks the RAM's half
                over = ~d[-1] & d[k:-1].any()
                index = Signal(abits, name=f"q_index_{o}")
                m.d.comb += [index.eq(Mux(d[-1], 0, Mux(over, len(table) - 1, d[:k]))),
                             rp.addr.eq(Cat(index, Const(half, len(rp.addr) - abits))),
                             rp.en.eq(r_valid & ~stall & r_last)]
                table_y[o] = rp.data

        # --- Output stage (spec section 5) and output register -------------------------------
        lo, hi = output_range(cfg)
        ys = []
        for o in range(cfg.cout):
            if o in table_y:
                ys.append(table_y[o])
                continue
            if self._fixed and cfg.out_bits <= THRESHOLD_BITS:
                y = Signal(signed(cfg.out_bits + 2), name=f"q_y_{o}")
                m.d.comb += y.eq(threshold_stage(m, q_acc[o], self._init["ostage"][o], cfg,
                                                 f"q_ge_{o}"))
                ys.append(y[:cfg.out_bits])
                continue
            if self._fixed:  # constant bias, mult and shift, widths from the value range
                word = self._init["ostage"][o]
                bias, mult, shift = ostage_fields(word)
                rnd = (1 << (shift - 1)) if shift else 0
                a_lo, a_hi = -(2 ** (cfg.acc_bits - 1)), 2 ** (cfg.acc_bits - 1) - 1
                y_lo = ((a_lo + bias) * mult + rnd) >> shift
                y_hi = ((a_hi + bias) * mult + rnd) >> shift
                prod = Signal(signed(max(abs(a_lo + bias), abs(a_hi + bias)).bit_length()
                                     + mult.bit_length() + 2), name=f"q_prod_{o}")
                m.d.comb += prod.eq((q_acc[o] + bias) * mult)
                y = Signal(signed(max(abs(y_lo), abs(y_hi)).bit_length() + 2),
                           name=f"q_y_{o}")
                m.d.comb += y.eq((prod + rnd) >> shift)
                v = y
                if y_lo < lo:
                    v = Mux(y < lo, lo, v)
                if y_hi > hi:
                    v = Mux(y > hi, hi, v)
                ys.append(_fit(v, cfg.out_bits))
                continue
            word = ostage[o]
            bias = word[:BIAS_BITS].as_signed()
            mult = word[BIAS_BITS:BIAS_BITS + MULT_BITS]
            shift = word[BIAS_BITS + MULT_BITS:]
            prod = Signal(signed(cfg.acc_bits + BIAS_BITS + MULT_BITS + 2), name=f"q_prod_{o}")
            m.d.comb += prod.eq((q_acc[o] + bias) * mult)
            # (prod + 2**(shift-1)) >> shift, for shift = 0 too, without a special case:
            y = Signal(signed(len(prod) + 2), name=f"q_y_{o}")
            m.d.comb += y.eq(((prod << 1) + (Const(1, 64) << shift)) >> (shift + 1))
            ys.append(Mux(y < lo, lo, Mux(y > hi, hi, y))[:cfg.out_bits])
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(q_move):
            m.d.sync += [o_valid.eq(1), o_payload.eq(Cat(*ys)), q_valid.eq(0)]
        with m.If(r_valid & ~stall & r_last):
            m.d.sync += q_valid.eq(1)
        m.d.comb += [self.o.valid.eq(o_valid), self.o.payload.eq(o_payload)]

        busy = (full.any() | s_g | s_x | d_valid | d_step_end | p_valid | p_step_end | r_valid
                | q_valid | o_valid | (l_addr != 0))
        m.d.comb += [self.idle.eq(~busy), self.prog.ready.eq(~busy & (not self._fixed))]
        return m
