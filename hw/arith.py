"""Adder trees and comparisons with constants: the arithmetic the tile's units are built from.

`bit_sum` adds single bits with a carry-save tree (constant crossbar cells make every column
sum one), `tree_sum` adds words in a balanced tree, `ge_const` compares with a constant in
plain gates, `fit_width` sign-extends or truncates."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, Value, signed, unsigned


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



def fit_width(v, width: int):
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
