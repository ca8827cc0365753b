"""The output stage of spec section 5: `y = clamp((acc + bias) * mult + rnd >> shift, lo, hi)`.

Pure arithmetic (`output_value`, `thresholds`, `output_table`) beside the three ways a tile
builds it: a multiplier on a programmable output-stage word, constant arithmetic in a fixed
tile, and, for narrow outputs of a fixed tile, block-RAM tables or comparisons with
precomputed thresholds."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib.memory import Memory

from ..contract.images import BIAS_BITS, MULT_BITS, ostage_fields, ubits, unpack
from ..contract.params import TileParams
from .arith import fit_width, ge_const

THRESHOLD_BITS = 4  # a fixed tile computes outputs of at most this many bits by thresholds
TABLE_DEPTH_MAX = 1024  # ... from a block-RAM table when they span at most this many values


def ostage_values(word: int) -> tuple[int, int, int]:
    """`(bias, mult, shift)` of an output-stage word."""
    f = unpack(ostage_fields(), word)
    return f["bias"], f["mult"], f["shift"]


def output_value(acc: int, word: int, cfg: TileParams) -> int:
    """Spec section 5 for one channel: `clamp((acc + bias) * mult + rnd >> shift, lo, hi)`
    from an output-stage word (bias, mult, shift)."""
    bias, mult, shift = ostage_values(word)
    rnd = (1 << (shift - 1)) if shift else 0
    lo, hi = output_range(cfg)
    return min(hi, max(lo, ((acc + bias) * mult + rnd) >> shift))


def output_range(cfg: TileParams) -> tuple[int, int]:
    if cfg.relu:
        return 0, 2**cfg.out_bits - 1
    return -(2 ** (cfg.out_bits - 1)), 2 ** (cfg.out_bits - 1) - 1


def thresholds(word: int, cfg: TileParams) -> list[int | None]:
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


def output_table(word: int, cfg: TileParams) -> tuple[int, list[int]] | None:
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



def threshold_stage(m: Module, acc, word: int, cfg: TileParams, name: str = "q_ge"):
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


def output_tables(m: Module, cfg: TileParams, init: dict, fixed: bool):
    """Block-RAM tables for a fixed tile's narrow outputs: `(tables, ports)`, by channel, with
    `tables[o] = (base, table)` (`output_table`) and `ports[o] = (read port, half, bits)`."""
    # a fixed tile's narrow outputs whose thresholds are close together: block-RAM tables
    tables = {}
    if fixed and cfg.out_bits <= THRESHOLD_BITS:
        for o in range(cfg.cout):
            t = output_table(init["ostage"][o], cfg)
            if t is not None:
                tables[o] = t
    # two channels' tables share one block RAM, one read port each (a 1024 x 4 table uses
    # a quarter of an ECP5 DP16KD, and with one table per RAM the RAMs ran short: the
    # placer put some tables across the chip from their channels)
    table_ports = {}
    order = sorted(tables)
    for i in range(0, len(order), 2):
        group = order[i:i + 2]
        depth = max(len(tables[o][1]) for o in group)
        rom_init = [w for o in group for w in tables[o][1] + [0] * (depth - len(tables[o][1]))]
        # (synthesis would otherwise turn many of these step functions into logic)
        rom = Memory(shape=cfg.out_bits, depth=depth * len(group), init=rom_init,
                     attrs={"rom_style": "block", "ram_style": "block"})
        m.submodules[f"q_table_{group[0]}"] = rom
        for half, o in enumerate(group):
            table_ports[o] = (rom.read_port(domain="sync"), half, ubits(depth))
    return tables, table_ports


def output_values(m: Module, cfg: TileParams, q_acc: list, ostage: list, init: dict,
                  fixed: bool, table_y: dict) -> list:
    """Every channel's output value from its accumulator `q_acc[o]` (a table's read data
    `table_y[o]` where it has one): `out_bits` bits each, two's complement when signed."""
    lo, hi = output_range(cfg)
    ys = []
    for o in range(cfg.cout):
        if o in table_y:
            ys.append(table_y[o])
            continue
        if fixed and cfg.out_bits <= THRESHOLD_BITS:
            y = Signal(signed(cfg.out_bits + 2), name=f"q_y_{o}")
            m.d.comb += y.eq(threshold_stage(m, q_acc[o], init["ostage"][o], cfg,
                                             f"q_ge_{o}"))
            ys.append(y[:cfg.out_bits])
            continue
        if fixed:  # constant bias, mult and shift, widths from the value range
            word = init["ostage"][o]
            bias, mult, shift = ostage_values(word)
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
            ys.append(fit_width(v, cfg.out_bits))
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
    return ys
