"""The output stage of spec section 5, `y = clamp((acc + bias) * mult + rnd >> shift, lo, hi)`:
the arithmetic (`output_value`, `rounded_shift`) and the tile's stage (`output_stage`), one
output channel a cycle, two pipeline stages deep."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed

from ..contract.images import BIAS_BITS, MULT_BITS, ostage_fields, unpack
from ..contract.params import TileParams


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


def rounded_shift(prod: int, shift: int) -> int:
    """`(prod + rnd) >> shift` as the tile computes it, with no case for `shift = 0`:
    `((prod << 1) + (1 << shift)) >> (shift + 1)`."""
    return ((prod << 1) + (1 << shift)) >> (shift + 1)


def output_stage(m: Module, cfg: TileParams, acc_rp, live, ostage, issue, go, j) -> Signal:
    """Channel `o = go * p_out + j` in a cycle with `issue` (the caller drives the
    accumulator memory's address to `go` and the output-stage memory's to `o` then): a cycle
    later `(acc + bias) * mult` into a register, a cycle after that the rounding shift and the
    clamp, shifted into the output shift register, which it returns (channel `o` at bits
    `[o*out_bits, (o+1)*out_bits)` once every channel has gone in, in order)."""
    ob = cfg.out_bits
    q1_valid, q1_live = Signal(), Signal()
    q1_j = Signal(range(cfg.patch_out))
    m.d.sync += q1_valid.eq(issue)
    with m.If(issue):
        m.d.sync += [q1_j.eq(j), q1_live.eq(live.bit_select(go, 1))]
    word = ostage.data
    bias = word[:BIAS_BITS].as_signed()
    mult = word[BIAS_BITS:BIAS_BITS + MULT_BITS]
    shift = word[BIAS_BITS + MULT_BITS:]
    acc = Mux(q1_live, acc_rp.data.word_select(q1_j, cfg.acc_bits), 0).as_signed()
    q2_valid = Signal()
    q2_prod = Signal(signed(cfg.acc_bits + BIAS_BITS + MULT_BITS + 2))
    q2_shift = Signal(len(shift))
    m.d.sync += [q2_valid.eq(q1_valid), q2_prod.eq((acc + bias) * mult), q2_shift.eq(shift)]
    lo, hi = output_range(cfg)
    y = Signal(signed(len(q2_prod) + 2))
    m.d.comb += y.eq(rounded_shift(q2_prod, q2_shift))
    q_y = Mux(y < lo, lo, Mux(y > hi, hi, y))[:ob]
    q_sr = Signal(ob * cfg.cout)
    with m.If(q2_valid):
        m.d.sync += q_sr.eq(Cat(q_sr[ob:], q_y) if cfg.cout > 1 else q_y)
    return q_sr
