"""The memory tile's static plan: how input words, crossbar rows and passes line up.

The tile (`epim.hw.tile`, `docs/tile.md`) computes one pass of `lanes` row chunks at a
time. Before a pass it *fills* the pass's row registers one epitome input channel per cycle:
the IFAT names the input channel, which addresses the input memory, and the `k*k` window
positions of that channel arrive at once (one read port per position). These rules fix the
fill of every pass and its duration; the hardware, its cycle model and the cost model read
them from here. Standard library only.
"""

from __future__ import annotations

from . import geometry

IN_WORD_MAX = 8  # input channels per input-memory word at most


def in_word(cin: int) -> int:
    """Input channels per input-memory word: a power of two (the IFAT's source splits into a
    word address and a place in the word without a divider), at most `IN_WORD_MAX`, and no
    wider than the input needs."""
    w = 1
    while w < min(cin, IN_WORD_MAX):
        w *= 2
    return w


def in_blocks(cin: int) -> int:
    """Input-memory words per input pixel (the loader writes one per cycle)."""
    return geometry.ceil_div(cin, in_word(cin))


def col_blocks(p) -> int:
    """Column blocks of the epitome's `Ce_out * n_s` physical columns, computed one after
    another, `cols` columns a cycle (`cols = xbar_cols`: the crossbars side by side of
    contract section 3, each a cycle; fewer: each crossbar's columns read out in turn, as
    when columns share an ADC through a multiplexer)."""
    return geometry.column_blocks(p.ce_out, p.n_slices, p.cols)


def block_cols(p) -> int:
    """Physical columns computed in a cycle: `cols`, or fewer when the epitome has fewer."""
    return min(p.cols, p.ce_out * p.n_slices)


def column_place(p, e: int, q: int) -> tuple[int, int]:
    """`(block, slot)` of epitome column `e`'s cell slice `q`: physical column `e*n_s + q`."""
    return divmod(e * p.n_slices + q, block_cols(p))


def pass_rows(p) -> int:
    """Crossbar rows computed in one pass: `lanes` row chunks of `xbar_rows`."""
    return p.lanes * p.xbar_rows


def fill_plan(p) -> list[tuple[int, int]]:
    """Per pass: `(first epitome input channel, channels filled)`. Pass `q` computes rows
    `[q * pass_rows, min((q + 1) * pass_rows, rows))`; a channel whose `k*k` rows straddle
    two passes is filled in both."""
    k2 = p.kernel * p.kernel
    rows, n = geometry.epitome_rows(p.ce_in, p.kernel), pass_rows(p)
    plan = []
    for q in range(geometry.ceil_div(rows, n)):
        lo, hi = q * n, min((q + 1) * n, rows)
        first, last = lo // k2, (hi - 1) // k2
        plan.append((first, last - first + 1))
    return plan


def fill_depth(p) -> int:
    """Channels the fill shift register holds: the most any pass fills."""
    return max(count for _, count in fill_plan(p))


def row_source(p, q: int, r: int) -> int | None:
    """Where local row `r` of pass `q` sits in the fill shift register (in values, position 0
    the last one shifted in), or None for a row past the epitome's last row. The fill shifts
    the `k*k` values of each channel in at the bottom, so after the pass's `count` channels
    the `i`-th of them sits `count - 1 - i` channels up."""
    k2 = p.kernel * p.kernel
    rho = q * pass_rows(p) + r
    if rho >= geometry.epitome_rows(p.ce_in, p.kernel):
        return None
    first, count = fill_plan(p)[q]
    i, pos = divmod(rho, k2)
    return (count - 1 - (i - first)) * k2 + pos


ARRAY_STAGES = 1  # registers between a slice's cycle and its column values (the array's input)
OFAT_STAGES = 2  # cycles from a group's issue to its write-back (rotation register, add)


def step_cycles(p) -> int:
    """Cycles of one IFRT step: one to read the step's tables, then per pass its fill
    (`count + 1`: one channel a cycle and the read latency) and, per column block, its `n_t`
    DAC slices, then `ARRAY_STAGES` for the last slice to leave the array's input register,
    then the OFAT accumulation (`g_out + OFAT_STAGES`: one output group a cycle, its rotation
    registered while its word is read, then the add and the write)."""
    return (1 + sum(count + 1 + col_blocks(p) * p.n_t for _, count in fill_plan(p))
            + ARRAY_STAGES + p.g_out + OFAT_STAGES)


OSTAGE_DEPTH = 5  # pipeline stages of the output stage after a channel's memory reads


def output_cycles(p) -> int:
    """Cycles of a pixel's output stage: one channel a cycle, `OSTAGE_DEPTH` stages deep."""
    return p.cout + OSTAGE_DEPTH


def pixel_cycles(n_steps: int, step: int, output: int) -> int:
    """Cycles from a pixel's first step to its output register's load: `n_steps` IFRT steps
    of `step` cycles (`step_cycles`), the output stage (`output_cycles`) and the cycle that
    moves the result to the output register."""
    return n_steps * step + output + 1
