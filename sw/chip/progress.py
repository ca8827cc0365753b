"""Progress bars for the long stages (training epochs, reference batches, Verilator builds,
cosim images): rate and time left on a terminal, nothing when the output is not one."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on standard error, shown only when that is a terminal; it disappears when
    done (the stage then prints its own one-line summary)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False,
                dynamic_ncols=True, mininterval=0.5, **kwargs)
