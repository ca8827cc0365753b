"""The rules that turn a layer graph into the accelerator's units, written once.

The network cycle model (`epim.sw.chip.netcycles`), the image compiler
(`epim.sw.chip.images`) and the accelerator (`epim.hw.network`) all build the same unit graph
from these rules:

- every conv/linear layer is a `tile`, every `add` an `add`, every `avgpool_global` a `pool`,
  every `maxpool` a `maxpool` (a streaming unit with line buffers, `hw/maxpool.py`);
- a linear layer that reads a map of more than one pixel reads it through a `flatten` unit
  (it collects the map's beats into one);
- a tensor with more than one reader (the network output counts as one) goes through a
  `fork` with one output per reader, in the order the readers appear;
- an input of an `add` goes through a skip `fifo` unless its depth is 0 (a depth of None is
  an unbounded FIFO, which only the cycle model uses, to measure the depths).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .ops import REGISTRY, Op, spec

OUTPUT = "<output>"  # the reader that stands for the network output


@dataclass(frozen=True)
class Node:
    """One unit of the accelerator. `inputs` are `(producer node, its output port)`;
    `layer` is the layer (for a fork: the tensor) the unit belongs to."""

    name: str
    kind: str  # source | fork | flatten | tile | fifo | add | pool | maxpool | sink
    inputs: tuple[tuple[str, int], ...]
    layer: str | None = None
    ways: int = 1  # a fork's outputs
    port: int = 0  # a fifo's add input (0: a, 1: b)


KINDS = {name: s.unit for name, s in REGISTRY.items()}  # the unit that carries each op


def needs_flatten(op: str, in_shape: Sequence[int]) -> bool:
    """A linear layer reading a map of more than one pixel `(C, H, W)` needs a flatten unit."""
    return op == Op.LINEAR and in_shape[1] * in_shape[2] > 1


def readers(input_name: str, layers: Sequence[tuple[str, str, Sequence[str]]],
            output: str) -> dict[str, list[tuple[str, int]]]:
    """For each tensor: the (layer, input index) that read it, in layer order; the network
    output reads the output tensor as `(OUTPUT, 0)`."""
    out: dict[str, list[tuple[str, int]]] = {input_name: []}
    for name, _, _ in layers:
        out[name] = []
    for name, _, inputs in layers:
        for i, src in enumerate(inputs):
            out[src].append((name, i))
    out[output].append((OUTPUT, 0))
    return out


def plan(input_name: str, layers: Sequence[tuple[str, str, Sequence[str]]], output: str,
         flatten: set[str], fifos: dict[str, Sequence[int | None]]) -> list[Node]:
    """The units of a network in dataflow order, from `source` (named "input") to `sink`
    (named "output"). `layers` are `(name, op, inputs)` in the network's order; `flatten` the
    linear layers that need a flatten unit (`needs_flatten`); `fifos[add] = [depth_a,
    depth_b]` (missing: unbounded)."""
    cons = readers(input_name, layers, output)
    nodes = [Node("input", "source", ())]
    feeds: dict[tuple[str, int], tuple[str, int]] = {}

    def publish(tensor: str, unit: str) -> None:
        rs = cons[tensor]
        if len(rs) == 1:
            feeds[rs[0]] = (unit, 0)
            return
        fork = f"{tensor}.fork"
        nodes.append(Node(fork, "fork", ((unit, 0),), tensor, ways=len(rs)))
        for j, r in enumerate(rs):
            feeds[r] = (fork, j)

    publish(input_name, "input")
    for name, op, _ in layers:
        kind = KINDS.get(op)
        if kind is None:
            raise ValueError(f"layer {name!r}: no hardware unit for op {op!r}")
        if kind == "tile":
            src = feeds[(name, 0)]
            if name in flatten:
                nodes.append(Node(f"{name}.flatten", "flatten", (src,), name))
                src = (f"{name}.flatten", 0)
            nodes.append(Node(name, "tile", (src,), name))
        elif kind == "add":
            srcs = []
            depths = fifos.get(name, [None, None])
            for i in range(2):
                src = feeds[(name, i)]
                if depths[i] != 0:
                    fifo = f"{name}.fifo{'ab'[i]}"
                    nodes.append(Node(fifo, "fifo", (src,), name, port=i))
                    src = (fifo, 0)
                srcs.append(src)
            nodes.append(Node(name, "add", tuple(srcs), name))
        else:
            nodes.append(Node(name, kind, (feeds[(name, 0)],), name))
        publish(name, name)
    nodes.append(Node("output", "sink", (feeds[(OUTPUT, 0)],)))
    return nodes


def check_units(manifest: dict, units: list, tiles: dict, where: str) -> None:
    """Refuse a network manifest whose units do not fit together (ValueError naming `where`
    and the unit): every input names an earlier unit or the network input, and each stream's
    width (bits per beat) and beats per image are what its reader takes. `units` are typed
    (`epim.contract.params`), `tiles` the tiles' `TileParams` by name."""
    inp, out = manifest["input"], manifest["output"]
    width = {inp["name"]: inp["channels"] * inp["bits"]}
    beats = {inp["name"]: inp["height"] * inp["width"]}

    def need(name: str, src: str, w: int, b: int, what: str) -> None:
        if src not in width:
            raise ValueError(f"{where}: unit {name!r} reads {src!r}, which no earlier unit "
                             "makes")
        if (width[src], beats[src]) != (w, b):
            raise ValueError(f"{where}: unit {name!r} takes {w}-bit beats, {b} per image, "
                             f"{what}; {src!r} makes {width[src]}-bit beats, {beats[src]}")

    for u in units:
        if u.name in width:
            raise ValueError(f"{where}: unit {u.name!r} appears twice")
        n = spec(u.op).inputs
        if len(u.inputs) != n:
            count = "one input" if n == 1 else f"{n} inputs"
            raise ValueError(f"{where}: unit {u.name!r} has {count}")
        if KINDS[u.op] == "tile":
            p = tiles[u.name]
            if u.flatten is not None:
                f = u.flatten
                need(u.name, u.inputs[0], f.channels * f.bits, f.pixels, "through its flatten")
                if f.channels * f.pixels * f.bits != p.cin * p.in_bits or p.h * p.w != 1:
                    raise ValueError(f"{where}: unit {u.name!r}: its flatten unit does not "
                                     "make the tile's input beat")
            else:
                need(u.name, u.inputs[0], p.cin * p.in_bits, p.h * p.w, "as input")
            width[u.name], beats[u.name] = p.cout * p.out_bits, p.ho * p.wo
            if u.replicas > p.ho * p.wo:
                raise ValueError(f"{where}: unit {u.name!r} has {u.replicas} copies for "
                                 f"{p.ho * p.wo} output pixels per image")
        else:  # a unit's own stream rule (`epim.contract.params`: `streams`)
            ins, (width[u.name], beats[u.name]) = u.streams(lambda t: beats.get(t, 0))
            for src, (w, b, what) in zip(u.inputs, ins, strict=True):
                need(u.name, src, w, b, what)
    if out["name"] not in width or width[out["name"]] != out["channels"] * out["bits"] \
            or beats[out["name"]] != out["beats_per_image"]:
        raise ValueError(f"{where}: 'output' does not describe unit {out['name']!r}'s stream")
