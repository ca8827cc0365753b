"""The output stage of spec section 5, `y = clamp((acc + bias) * mult + rnd >> shift, lo, hi)`:
the arithmetic (`output_value`, `rounded_shift`) and the tile's stage (`output_stage`), one
output channel a cycle, five pipeline stages deep (`epim.contract.tileplan.OSTAGE_DEPTH`)."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed

from ..contract import tileplan
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


def rounding_add(prod, shift):
    """The first half of `rounded_shift`, `(prod << 1) + (1 << shift)`: on integers, or on
    Amaranth values as the output stage's fourth register stage computes it."""
    return (prod << 1) + (1 << shift)


def rounding_drop(t, shift_plus_1):
    """The second half of `rounded_shift`: `t >> (shift + 1)` (the output stage's fifth
    register stage, with `shift + 1` registered beside `t`)."""
    return t >> shift_plus_1


def rounded_shift(prod: int, shift: int) -> int:
    """`(prod + rnd) >> shift` as the tile computes it, with no case for `shift = 0`:
    `((prod << 1) + (1 << shift)) >> (shift + 1)`, the two halves that the output stage's
    last two register stages compute (`rounding_add`, `rounding_drop`)."""
    return rounding_drop(rounding_add(prod, shift), shift + 1)


def output_stage(m: Module, cfg: TileParams, acc_rp, live, ostage, issue, go, j) -> Signal:
    """Channel `o = go * p_out + j` in a cycle with `issue` (the caller drives the
    accumulator memory's address to `go` and the output-stage memory's to `o` then), one
    register stage a cycle after it:

    1. the memories' words: `acc + bias` (the `p_out` accumulators' `j`-th, 0 if not live);
    2. the products of that sum with `mult`'s low `MULT_SPLIT` bits and with its high bits
       (each a few DSP blocks);
    3. `prod = (acc + bias) * mult`, the two products added;
    4. `(prod << 1) + (1 << shift)`, the rounding added (`rounded_shift`);
    5. that shifted right by `shift + 1` and clamped, shifted into the output shift register,
       which it returns (channel `o` at bits `[o*out_bits, (o+1)*out_bits)` once every channel
       has gone in, in order).

    So the stage's logic between registers is an adder, a product or a shift: no path runs
    through a memory, an adder and a multiplier at once (the ULX3S build's critical path
    before)."""
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
    sum_bits = max(cfg.acc_bits, BIAS_BITS) + 1
    q2_valid, q3_valid, q4_valid = Signal(), Signal(), Signal()
    q2_sum = Signal(signed(sum_bits))
    q2_mult = Signal(MULT_BITS)
    q2_shift, q3_shift, q4_shift = (Signal(len(shift), name=f"q{i}_shift") for i in (2, 3, 4))
    m.d.sync += [q2_valid.eq(q1_valid), q2_sum.eq(acc + bias), q2_mult.eq(mult),
                 q2_shift.eq(shift)]
    q3_lo = Signal(signed(sum_bits + MULT_SPLIT + 1))
    q3_hi = Signal(signed(sum_bits + MULT_BITS - MULT_SPLIT + 1))
    m.d.sync += [q3_valid.eq(q2_valid), q3_shift.eq(q2_shift),
                 q3_lo.eq(q2_sum * q2_mult[:MULT_SPLIT]),
                 q3_hi.eq(q2_sum * q2_mult[MULT_SPLIT:])]
    q4_prod = Signal(signed(sum_bits + MULT_BITS + 2))
    m.d.sync += [q4_valid.eq(q3_valid), q4_shift.eq(q3_shift),
                 q4_prod.eq(q3_lo + (q3_hi << MULT_SPLIT))]
    q5_valid = Signal()
    q5_t = Signal(signed(len(q4_prod) + 2))
    q5_shift = Signal(len(shift) + 1)
    m.d.sync += [q5_valid.eq(q4_valid), q5_t.eq(rounding_add(q4_prod, q4_shift)),
                 q5_shift.eq(q4_shift + 1)]
    lo, hi = output_range(cfg)
    y = Signal(signed(len(q5_t)))
    m.d.comb += y.eq(rounding_drop(q5_t, q5_shift))
    q_y = Mux(y < lo, lo, Mux(y > hi, hi, y))[:ob]
    q_sr = Signal(ob * cfg.cout)
    with m.If(q5_valid):
        m.d.sync += q_sr.eq(Cat(q_sr[ob:], q_y) if cfg.cout > 1 else q_y)
    assert tileplan.OSTAGE_DEPTH == 5  # the five stages above
    return q_sr


MULT_SPLIT = 17  # `mult`'s low bits in the first product: one DSP's unsigned operand width
