"""OFAT routing with output channel wrapping, and the per-channel accumulation.

At the end of each IFRT step the step's column values are registered (`r_`); every output
channel `o` (group `go`, place `j` in its patch) takes column `(OFAT[gi][go] + j) mod Ce_out`
when the step serves its group, and adds it to its accumulator; the pixel's last step hands
the sums to the output stage (`q_acc`)."""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Instance, Module, Mux, Signal, signed

from ..contract.images import ofat_fields, ubits, unpack
from ..contract.params import TileParams
from . import behavioural


def route(m: Module, cfg: TileParams, p: SimpleNamespace, ofat, stall) -> SimpleNamespace:
    """The `r_` register: the step's column values `r_v` and controls, and the OFAT read of
    the step's input group."""
    acc_shape = signed(cfg.acc_bits)
    p_step_end, p_last, p_mask, p_gi, x_col_next = (p.p_step_end, p.p_last, p.p_mask, p.p_gi,
                                                    p.x_col_next)
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
    return SimpleNamespace(r_valid=r_valid, r_last=r_last, r_mask=r_mask, r_gi=r_gi, r_v=r_v)


def columns_of(cfg: TileParams, ofat_words: list, go: int, j: int) -> list:
    """A fixed tile's OFAT as a ROM: the column that channel `j` of output group `go` takes
    for each input group."""
    cols = []
    for word in ofat_words:
        base = unpack(ofat_fields(cfg), word)[f"base{go}"]
        cols.append(base + j - cfg.ce_out if base + j >= cfg.ce_out else base + j)
    return [c if c < cfg.ce_out else 0 for c in cols]


def accumulate(m: Module, cfg: TileParams, r: SimpleNamespace, ofat, init: dict, fixed: bool,
               tables: dict, table_ports: dict, stall,
               modules: dict | None = None) -> SimpleNamespace:
    """Every output channel's accumulator over the pixel's steps: returns `q_acc` (the sums
    of the finished pixel) and `table_y` (for channels read from a table, its read data).
    With `modules` (a dict), a programmable tile's routing and accumulation are the
    behavioural module `epim.hw.behavioural.ofat_module`, whose text is added to it, and
    `q_acc` is one signal (channel `o` at `[o*acc_bits +: acc_bits]`)."""
    acc_shape = signed(cfg.acc_bits)
    r_valid, r_last, r_mask, r_gi, r_v = r.r_valid, r.r_last, r.r_mask, r.r_gi, r.r_v
    cw = ubits(cfg.ce_out)
    if not fixed and modules is not None:
        # every channel's accumulator in one register, routed and added by the module
        name, text = behavioural.ofat_module(cfg)
        modules[name] = text
        acc_all = Signal(cfg.cout * cfg.acc_bits, name="r_acc_all")
        acc_next = Signal(cfg.cout * cfg.acc_bits, name="r_acc_next_all")
        q_all = Signal(cfg.cout * cfg.acc_bits, name="q_acc_all")
        m.submodules.ofat_route = Instance(name, i_v=Cat(*r_v), i_ofat=ofat.data,
                                           i_mask=r_mask, i_acc=acc_all, o_n=acc_next)
        with m.If(r_valid & ~stall):
            m.d.sync += acc_all.eq(Mux(r_last, 0, acc_next))
            with m.If(r_last):
                m.d.sync += q_all.eq(acc_next)
        return SimpleNamespace(q_acc=q_all, table_y={})
    table_y = {}
    # a channel read from a table accumulates relative to its table's base (it starts at
    # -base), so the table address is a clamp of the sum, with no subtraction after it
    start = {o: -tables[o][0] if o in tables else 0 for o in range(cfg.cout)}
    acc = [Signal(signed(cfg.acc_bits + 2) if o in tables else acc_shape,
                  name=f"r_acc_{o}", init=start[o]) for o in range(cfg.cout)]
    q_acc = [Signal(acc_shape, name=f"q_acc_{o}") for o in range(cfg.cout)]
    for o in range(cfg.cout):
        go, j = divmod(o, cfg.patch_out)
        if fixed:
            # a fixed tile's OFAT is a ROM: the channel takes one of the g_in columns its
            # input groups name, by group, instead of any of the Ce_out columns
            cols = columns_of(cfg, init["ofat"], go, j)
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
    return SimpleNamespace(q_acc=q_acc, table_y=table_y)
