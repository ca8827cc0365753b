"""Tile replication: how many copies of each layer's tile balance the pipeline under a crossbar
budget.

A frame-pipelined accelerator runs at the rate of its slowest tile. PIM accelerators balance
the pipeline by replicating the weights of their bottleneck layers (ISAAC, PUMA, PIMCOMP); an
epitome network has crossbars to spare for that, since its epitomes need far fewer than the
dense layers would. A layer replicated `R` times holds `R` copies of its crossbars and computes
every `R`-th output pixel of an image on each copy (`hw/replicas.py`).

:func:`choose_replicas` is the search: it gives one more copy to the slowest tile for as long as
the budget allows (the default budget is what the same network needs with dense 3-bit weights),
then takes back copies that no longer set the pace. Minimising the slowest stage this way is
optimal: no assignment within the budget can be faster without replicating the slowest tile.
"""

from __future__ import annotations

from ...contract.ops import TILE_OPS
from .cyclemodel import schedule, tile_timing
from .epitome import crossbar_count
from .netfile import Layer, Network


def tiles(net: Network) -> list[Layer]:
    return [la for la in net.layers if la.op in TILE_OPS]


def layer_crossbars(layer: Layer, net: Network, weight_bits: int | None = None,
                    dense: bool = False) -> int:
    pim = net.pim
    return crossbar_count(layer, pim.cell_bits, pim.xbar_rows, pim.xbar_cols, dense=dense,
                          weight_bits=weight_bits)


def dense_budget(net: Network, weight_bits: int = 3) -> int:
    """Crossbars of the same network with dense `weight_bits` weights (the default budget)."""
    return sum(layer_crossbars(la, net, weight_bits, dense=True) for la in tiles(net))


def crossbars(net: Network, replicas: dict[str, int] | None = None) -> int:
    """Crossbars of the network with each tile's copies."""
    replicas = replicas or {}
    return sum(layer_crossbars(la, net) * replicas.get(la.name, 1) for la in tiles(net))


def alone_cycles(layer: Layer, net: Network, copies: int, reuse: bool = True,
                 lanes: int | dict | None = None) -> float:
    """Steady cycles per image of a layer's tile with `copies` copies, fed back to back: the
    busiest copy's schedule, and at least one cycle per output beat for the merge."""
    t = tile_timing(layer, net.pim, reuse, lanes, (0, copies))
    steady = schedule(t, 8).steady
    _, ho, wo = layer.out_shape
    return max(steady, ho * wo) if copies > 1 else steady


def choose_replicas(net: Network, budget: int | None = None, reuse: bool = True,
                    lanes: int | dict | None = None) -> dict[str, int]:
    """Copies per tile that make the slowest tile as fast as `budget` crossbars allow
    (default: :func:`dense_budget`). Never exceeds the budget; tiles that cannot gain (one
    output pixel, or a rate set by loading their input) keep one copy."""
    if budget is None:
        budget = dense_budget(net)
    layers = tiles(net)
    cost = {la.name: layer_crossbars(la, net) for la in layers}
    reps = {la.name: 1 for la in layers}
    used = sum(cost.values())

    def cycles(la: Layer, n: int) -> float:
        return alone_cycles(la, net, n, reuse, lanes)

    now = {la.name: cycles(la, 1) for la in layers}
    while True:
        slow = max(layers, key=lambda la: now[la.name])
        _, ho, wo = slow.out_shape
        n = reps[slow.name] + 1
        if n > ho * wo or used + cost[slow.name] > budget:
            break
        faster = cycles(slow, n)
        if faster >= now[slow.name]:
            break  # its rate is set by loading its input: more copies cannot help
        reps[slow.name], now[slow.name] = n, faster
        used += cost[slow.name]
    # take back copies a tile does not need to stay within the pace
    pace = max(now.values())
    for la in layers:
        while reps[la.name] > 1 and cycles(la, reps[la.name] - 1) <= pace:
            reps[la.name] -= 1
    return reps


def describe(net: Network, replicas: dict[str, int]) -> str:
    """`c1 x4, c2 x2` for the replicated tiles, or `none`."""
    parts = [f"{k} x{v}" for k, v in replicas.items() if v > 1]
    return ", ".join(parts) if parts else "none"


def check_replicas(net: Network, replicas: dict[str, int]) -> None:
    """Refuse copies for unknown layers, or more copies than a layer has output pixels."""
    names = {la.name: la for la in tiles(net)}
    for name, n in replicas.items():
        if name not in names:
            raise ValueError(f"replicas: {name!r} is not a conv or linear layer of "
                             f"{net.source} (those are: {', '.join(names)})")
        _, ho, wo = names[name].out_shape
        if not isinstance(n, int) or not 1 <= n <= ho * wo:
            raise ValueError(f"replicas: layer {name!r} takes 1..{ho * wo} copies (its output "
                             f"pixels per image), not {n!r}")

