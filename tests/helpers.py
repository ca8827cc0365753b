"""Helpers shared by the test modules (tests import these, never each other)."""

from __future__ import annotations

from epim.contract.params import TileParams


def tile_params(**over) -> TileParams:
    """A small valid tile (one 3x3 conv of 2 channels on a 4x4 map), with `over` replacing
    any parameter."""
    p = dict(name="t", op="conv", cin=2, cout=2, h=4, w=4, ho=4, wo=4, kernel=3, stride=1,
             padding=1, in_bits=4, out_bits=4, relu=True, weight_bits=3, ce_in=2, ce_out=2,
             patch_in=2, patch_out=2, g_in=1, g_out=1, n_slices=2, n_t=4, max_steps=1,
             acc_bits=16, src_bits=1, xbar_rows=32, xbar_cols=32, cell_bits=2, dac_bits=1,
             adc_bits=8, lanes=1, n_steps=1, reuse=True)
    p.update(over)
    return TileParams(**p)
