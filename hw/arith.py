"""Adder trees: `tree_sum` adds words in a balanced tree (the crossbar's column sums)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Value, signed, unsigned


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
