"""The derived geometry of a layer on crossbars, and the ADC, each defined once.

Every figure here follows from a layer's shape and the PIM parameters (`docs/contract.md`,
sections 3 and 4); the tile parameters, the cycle and cost models, the integer reference, the
noise and fault models all read them from here, so a rule changes in one place:

- the epitome matrix has `Ce_in * k * k` rows, cut into `row_chunks` of `xbar_rows` (one ADC
  set each);
- a weight magnitude of `weight_bits - 1` bits lies in `cell_slices` cells of `cell_bits`;
- an activation of `in_bits` enters in `dac_slices` DAC slices of `dac_bits`;
- a layer takes `row_chunks x column blocks x 2` crossbars (`crossbars`: the two polarities);
- an ADC turns a column's sum into a code `0 .. adc_max` (`saturate`).

Standard library only: `sw/` and `hw/` use it alike.
"""

from __future__ import annotations

# The crossbar geometry that models are shaped for and exported with by default (`epim train`,
# `epim import`): 32 x 32 crossbars of 2-bit cells, 1-bit DACs, 8-bit ADCs.
DEFAULT_PIM = {"xbar_rows": 32, "xbar_cols": 32, "cell_bits": 2, "dac_bits": 1, "adc_bits": 8}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def epitome_rows(ce_in: int, kernel: int) -> int:
    """Rows of the epitome matrix (and of the crossbars it fills): `Ce_in * k * k`."""
    return ce_in * kernel * kernel


def row_chunks(rows: int, xbar_rows: int) -> int:
    """Row chunks of `xbar_rows` rows: `ceil(rows / xbar_rows)`."""
    return ceil_div(rows, xbar_rows)


def cell_slices(weight_bits: int, cell_bits: int) -> int:
    """Cells per weight magnitude (`weight_bits - 1` bits): `ceil((weight_bits - 1) /
    cell_bits)`."""
    return ceil_div(weight_bits - 1, cell_bits)


def dac_slices(in_bits: int, dac_bits: int) -> int:
    """DAC slices of an activation (`n_t`): `ceil(in_bits / dac_bits)`."""
    return ceil_div(in_bits, dac_bits)


def column_blocks(cols: int, n_s: int, xbar_cols: int) -> int:
    """Crossbars side by side for `cols` weights of `n_s` cells each: `ceil(cols * n_s /
    xbar_cols)`."""
    return ceil_div(cols * n_s, xbar_cols)


def crossbars(rows: int, cols: int, weight_bits: int, cell_bits: int, xbar_rows: int,
              xbar_cols: int) -> int:
    """Crossbars of one `rows x cols` weight matrix (contract section 3): row chunks x column
    blocks x 2 polarities."""
    n_s = cell_slices(weight_bits, cell_bits)
    return row_chunks(rows, xbar_rows) * column_blocks(cols, n_s, xbar_cols) * 2


def adc_max(adc_bits: int) -> int:
    """The ADC's largest code: a column sum above it reads as it (contract section 4)."""
    return 2**adc_bits - 1


def dac_max(dac_bits: int) -> int:
    """The largest value a DAC slice drives."""
    return 2**dac_bits - 1


def saturate(v, adc_bits: int):
    """The ADC on a column sum (or a NumPy array or torch tensor of them, through their
    `clip`): codes `0 .. adc_max(adc_bits)`, the sum itself in between. An ideal sum is never
    negative (cells and DAC slices are not); a noisy one can be, and reads as 0."""
    top = adc_max(adc_bits)
    return max(0, min(v, top)) if isinstance(v, int) else v.clip(min=0, max=top)
