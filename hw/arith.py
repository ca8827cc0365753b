"""Adder trees: `tree_sum` adds words in a balanced tree; `csa_sum` adds bits of given weights
in carry-save layers and one carry chain (the crossbar's column sums)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, Value, signed, unsigned


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


def csa_sums(m, words: dict[int, list], k: int, width: int, name: str) -> list[Signal]:
    """`k` unsigned sums at once, mod `2**width`: every word in `words[w]` is `k` bits, bit
    `c` of it a bit of sum `c` worth `2**w`. Layers of full adders take three words of a
    weight into a sum word and a carry word one weight up, all `k` sums side by side, until
    at most two words are left per weight; then each sum is one adder. A layer is one signal
    per weight (`{name}_l{n}_{w}`), so no expression is copied into the next layer and the
    Verilog grows with the layers, not with `k`. For a crossbar's column sums this is about
    half the logic of a tree of word adders per column (`tree_sum`).

    Each layer, and the adders, is a submodule of `m` (`{name}_l{n}`, `{name}_add`):
    Amaranth's simulator runs a module's combinational statements together until they
    settle, so a chain of layers in one module would run the whole chain once per layer.
    (Synthesis flattens them.)"""
    cols: dict[int, Value] = {}
    for w, ws in words.items():
        if w < width and ws:
            cols[w] = Cat(*ws)
    layer = 0
    while any(len(v) > 2 * k for v in cols.values()):
        nxt: dict[int, list] = {}
        for w in sorted(cols):
            v = cols[w]
            full = len(v) // (3 * k) * k
            if full:
                a, b, c = v[:full], v[full:2 * full], v[2 * full:3 * full]
                nxt.setdefault(w, []).append(a ^ b ^ c)
                nxt.setdefault(w + 1, []).append((a & b) | (a & c) | (b & c))
            if len(v) > 3 * full:
                nxt.setdefault(w, []).append(v[3 * full:])
        cols = {}
        lm = m.submodules[f"{name}_l{layer}"] = Module()
        for w, parts in nxt.items():
            if w >= width:
                continue
            joined = Cat(*parts)
            sig = Signal(len(joined), name=f"{name}_l{layer}_{w}")
            lm.d.comb += sig.eq(joined)
            cols[w] = sig
        layer += 1
    am = m.submodules[f"{name}_add"] = Module()
    out = []
    for c in range(k):
        a = Cat(*[cols[w][c] if w in cols else Const(0, 1) for w in range(width)])
        b = Cat(*[cols[w][k + c] if w in cols and len(cols[w]) > k else Const(0, 1)
                  for w in range(width)])
        s = Signal(width, name=f"{name}_{c}")
        am.d.comb += s.eq(a + b)
        out.append(s)
    return out
