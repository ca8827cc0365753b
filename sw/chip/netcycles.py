"""Cycle model of a whole-network accelerator: every unit's handshakes, cycle by cycle, exactly.

The accelerator (`epim.hw.network`, `docs/network.md`) is a graph of PIM tiles (one per conv or
linear layer), residual adders, global pooling and flatten units, forks where a tensor has
several consumers, and skip FIFOs in front of the adders. This module steps a model of each
unit's control registers (never the data: values do not change timing) with the same rules as
the RTL, so for a given input and output pattern it predicts the cycle of every handshake.
It runs event by event (`simulate`): a unit is evaluated only in the cycles where something can
change for it, with the handshakes of stepping every unit every cycle (the plain rule, kept as
the tests' reference), so its time grows with the handshakes, not with units x cycles (the
CIFAR-10 ResNet-20: its skip FIFOs sized in about 7 s; an EPIM-ResNet-50 at 224 x 224, 122
units and 40 million cycles for 6 images: sized in about 45 s and modelled in 27 s).
From that come the latency of each image, the steady-state cycles per image, per-layer figures,
and the skip FIFO depths that `compile_network` writes into the images.

Cycle counting is that of `docs/tile.md`: cycle 0 is the first cycle the testbench offers input,
and a beat's cycle is that of the rising edge that completes its handshake.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ...contract import beats
from ...contract import graph as unit_graph
from ...contract.ops import TILE_OPS, Op
from . import cyclemodel
from .cyclemodel import TileTiming, tile_timing
from .netfile import Layer, Network

# --- Units ------------------------------------------------------------------------------------


class Unit:
    """A unit with input ports `0..n_in-1` and output ports `0..n_out-1`."""

    n_in = 1
    n_out = 1

    def valid(self, port: int) -> bool:
        raise NotImplementedError

    def ready(self, port: int, in_valid: list[bool], out_ready: list[bool]) -> bool:
        raise NotImplementedError

    def step(self, in_fire: list[bool], out_fire: list[bool], out_ready: list[bool]) -> None:
        raise NotImplementedError

    def quiet(self, out_ready: list[bool]) -> float:
        """Cycles from now (this one included) whose steps, with no handshake and these
        output readies, change nothing that `valid` or `ready` read and only count down
        (`skip` takes them at once). The default: unbounded when a step without handshakes
        leaves the unit as it is, else 0."""
        before = _state(self)
        self.step([False] * self.n_in, [False] * self.n_out, out_ready)
        after = _state(self)
        self.__dict__.update(before)
        return float("inf") if after == before else 0

    def skip(self, n: int) -> None:
        """Take `n` quiet cycles at once (`quiet`)."""


def _state(unit: Unit) -> dict:
    return {k: list(v) if isinstance(v, list) else v for k, v in vars(unit).items()}


class TileModel(Unit):
    """`hw/tile.py: PIMTile` control: the loader, the sequencer (waiting for a full bank,
    `pixel_cycles` per pixel, the move into the output register) and the output register."""

    def __init__(self, t: TileTiming):
        self.t = t
        self.l_bank = self.l_pix = self.l_blk = 0
        self.full = [False, False]
        self.state = "wait"
        self.count = 0  # cycles left before the move
        self.g_bank = self.g_pix = 0
        self.o_valid = False
        self.busy_cycles = 0  # crossbar cycles of the pixels moved out so far

    def valid(self, port):
        return self.o_valid

    def ready(self, port, in_valid, out_ready):
        return not self.full[self.l_bank] and self.l_blk == 0

    def quiet(self, out_ready):
        # the loader writing a beat's words counts them up until the beat's last word
        q = self.t.blocks - 1 - self.l_blk if self.l_blk else float("inf")
        if self.state == "run":  # counting down to the move
            return min(q, self.count - 1)
        if self.state == "wait":
            return 0 if self.full[self.g_bank] else q
        return q if self.o_valid and not out_ready[0] else 0  # move: blocked

    def skip(self, n):
        if self.state == "run":
            self.count -= n
        if self.l_blk:
            self.l_blk += n

    def step(self, in_fire, out_fire, out_ready):
        t = self.t
        full_old = list(self.full)
        set_full = [False, False]
        release = [False, False]
        # loader: a beat's first word in the cycle of its handshake, the others after it
        pixel_done = False
        if in_fire[0]:
            if t.blocks == 1:
                pixel_done = True
            else:
                self.l_blk = 1
        elif self.l_blk:
            if self.l_blk == t.blocks - 1:
                pixel_done, self.l_blk = True, 0
            else:
                self.l_blk += 1
        if pixel_done:
            if self.l_pix == t.in_beats - 1:
                set_full[self.l_bank] = True
                self.l_pix, self.l_bank = 0, 1 - self.l_bank
            else:
                self.l_pix += 1
        o_free = not self.o_valid or out_ready[0]
        if out_fire[0]:
            self.o_valid = False
        if self.state == "wait":
            if full_old[self.g_bank]:
                self.state, self.count = "run", t.pixel_cycles - 1
        elif self.state == "run":
            self.count -= 1
            if self.count == 0:
                self.state = "move"
        elif o_free:  # the move
            self.o_valid = True
            self.busy_cycles += t.busy
            if self.g_pix == t.pixels - 1:
                release[self.g_bank] = True
                self.g_bank, self.g_pix, self.state = 1 - self.g_bank, 0, "wait"
            else:
                self.g_pix += 1
                self.state, self.count = "run", t.pixel_cycles - 1
        self.full = [(full_old[b] or set_full[b]) and not release[b] for b in (0, 1)]


class ReplicatedTileModel(Unit):
    """`hw/replicas.py: ReplicatedTile`: copies of a tile behind a broadcast (ready when every
    copy is) and a merge that takes output pixel `p` of an image from copy `p mod R`."""

    def __init__(self, timings: list[TileTiming]):
        self.tiles = [TileModel(t) for t in timings]
        self.pixels = sum(t.pixels for t in timings)
        self.sel = self.pix = 0

    @property
    def busy_cycles(self) -> int:
        return max(t.busy_cycles for t in self.tiles)

    def valid(self, port):
        return self.tiles[self.sel].o_valid

    def ready(self, port, in_valid, out_ready):
        return all(t.ready(0, in_valid, out_ready) for t in self.tiles)

    def quiet(self, out_ready):
        return min(t.quiet([out_ready[0] and r == self.sel]) for r, t in enumerate(self.tiles))

    def skip(self, n):
        for t in self.tiles:
            t.skip(n)

    def step(self, in_fire, out_fire, out_ready):
        for r, t in enumerate(self.tiles):
            mine = r == self.sel
            t.step(in_fire, [out_fire[0] and mine], [out_ready[0] and mine])
        if out_fire[0]:
            if self.pix == self.pixels - 1:
                self.pix = self.sel = 0
            else:
                self.pix += 1
                self.sel = (self.sel + 1) % len(self.tiles)


def tile_model(layer: Layer, pim, reuse: bool, lanes, replicas) -> Unit:
    """The model of a layer's tile, or of its copies when it is replicated."""
    n = cyclemodel.replicas_for(layer, replicas)
    if n == 1:
        return TileModel(tile_timing(layer, pim, reuse, lanes))
    return ReplicatedTileModel([tile_timing(layer, pim, reuse, lanes, (r, n))
                                for r in range(n)])


class ForkModel(Unit):
    def __init__(self, n: int):
        self.n_out = n
        self.pend = [False] * n

    def valid(self, port):
        return self.pend[port]

    def ready(self, port, in_valid, out_ready):
        return not any(self.pend)

    def step(self, in_fire, out_fire, out_ready):
        self.pend = [p and not f for p, f in zip(self.pend, out_fire, strict=True)]
        if in_fire[0]:
            self.pend = [True] * self.n_out


class FifoModel(Unit):
    def __init__(self, depth: int | None):
        self.depth = depth  # None: unbounded (to measure the occupancy a FIFO needs)
        self.count = 0
        self.peak = 0

    def valid(self, port):
        return self.count > 0

    def ready(self, port, in_valid, out_ready):
        return self.depth is None or self.count < self.depth

    def step(self, in_fire, out_fire, out_ready):
        self.count += int(in_fire[0]) - int(out_fire[0])
        self.peak = max(self.peak, self.count)


class CollectModel(Unit):
    """`PoolUnit` and `Flatten`: take `beats` input beats, then hold one output beat."""

    def __init__(self, beats: int):
        self.beats = beats
        self.count = 0
        self.o_valid = False

    def valid(self, port):
        return self.o_valid

    def ready(self, port, in_valid, out_ready):
        return not self.o_valid

    def step(self, in_fire, out_fire, out_ready):
        if in_fire[0]:
            if self.count == self.beats - 1:
                self.count = 0
                self.o_valid = True
            else:
                self.count += 1
        if out_fire[0]:
            self.o_valid = False


class Source(Unit):
    """The testbench's driver (`sim/tb_tile.py: StreamDriver`), replaying its random gaps."""

    n_in = 0

    def __init__(self, beats: int, rng: random.Random | None = None, p_idle: float = 0.3):
        self.beats, self.rng, self.p_idle = beats, rng, p_idle
        self.next = 0
        self.offered = False

    def drive(self):
        if not self.offered and self.next < self.beats:
            self.offered = self.rng is None or self.rng.random() >= self.p_idle

    def valid(self, port):
        return self.offered

    def quiet(self, out_ready):
        # (a random gap draws every cycle: no skipping past the draws)
        return float("inf") if self.offered or self.next >= self.beats else 0

    def step(self, in_fire, out_fire, out_ready):
        if out_fire[0]:
            self.next += 1
            self.offered = False


class Sink(Unit):
    """The testbench's monitor (`StreamMonitor`), replaying its random back-pressure."""

    n_out = 0

    def __init__(self, rng: random.Random | None = None, p_busy: float = 0.4):
        self.rng, self.p_busy = rng, p_busy
        self.accepting = True

    def drive(self):
        self.accepting = self.rng is None or self.rng.random() >= self.p_busy

    def ready(self, port, in_valid, out_ready):
        return self.accepting

    def quiet(self, out_ready):
        return float("inf") if self.rng is None else 0

    def step(self, in_fire, out_fire, out_ready):
        pass


# --- The graph --------------------------------------------------------------------------------


@dataclass
class Node:
    """One unit of the accelerator and where its inputs come from: `(unit name, out port)`."""

    name: str
    kind: str  # source | tile | fork | fifo | add | pool | maxpool | flatten | sink
    unit: Unit
    inputs: list[tuple[str, int]] = field(default_factory=list)
    layer: str | None = None  # the network layer it implements


def _beats(layer_shape: tuple[int, int, int]) -> int:
    return layer_shape[1] * layer_shape[2]


@dataclass
class Graph:
    """The accelerator's units in dataflow order, as `epim.hw.network` builds them."""

    nodes: list[Node]



def shape_of(net: Network, name: str) -> tuple[int, int, int]:
    if name == net.input_name:
        return tuple(net.input_shape)
    return net.layer(name).out_shape


def needs_flatten(net: Network, layer: Layer) -> bool:
    """A linear layer reading a map larger than 1x1 takes its input through a Flatten unit."""
    return unit_graph.needs_flatten(layer.op, shape_of(net, layer.inputs[0]))


def unit_plan(net: Network, fifo_depths: dict[str, list[int | None]] | None
              ) -> list[unit_graph.Node]:
    """The accelerator's units (`epim.contract.graph.plan`) for a network."""
    layers = [(lay.name, lay.op, lay.inputs) for lay in net.layers]
    flatten = {lay.name for lay in net.layers if needs_flatten(net, lay)}
    return unit_graph.plan(net.input_name, layers, net.output, flatten, fifo_depths or {})


def build_graph(net: Network, n_images: int, fifo_depths: dict[str, list[int | None]] | None,
                reuse: bool = True, rng: random.Random | None = None,
                lanes: int | dict | None = None, replicas: int | dict | None = None) -> Graph:
    """The unit graph for `n_images` images. `fifo_depths[add] = [depth_a, depth_b]`
    (0: no FIFO on that input; None: unbounded); default: unbounded on both inputs. `lanes`:
    row-chunk lanes of the tiles (`epim.sw.chip.cyclemodel.lanes_for`); `replicas`: copies of each
    tile (`epim.sw.chip.cyclemodel.replicas_for`)."""
    from .ops import chip_op, context

    _, h, w = net.input_shape
    ctx = context(reuse=reuse, lanes=lanes, replicas=replicas)
    nodes: list[Node] = []
    for plan in unit_plan(net, fifo_depths):
        layer = net.layer(plan.layer) if plan.kind not in ("source", "fork", "sink") else None
        if plan.kind == "source":
            unit = Source(n_images * h * w, rng)
        elif plan.kind == "sink":
            unit = Sink(rng)
        elif plan.kind == "fork":
            unit = ForkModel(plan.ways)
        elif plan.kind == "flatten":
            unit = CollectModel(_beats(shape_of(net, layer.inputs[0])))
        elif plan.kind == "fifo":
            unit = FifoModel((fifo_depths or {}).get(layer.name, [None, None])[plan.port])
        else:  # the unit of an op (`epim.sw.chip.ops`)
            unit = chip_op(layer.op).model(net, layer, ctx)
        nodes.append(Node(plan.name, plan.kind, unit, list(plan.inputs), plan.layer))
    return Graph(nodes)


@dataclass
class Run:
    """Handshake cycles of a simulated batch."""

    in_cycles: list[int]
    out_cycles: list[int]
    beats: dict[str, list[int]]  # output-beat cycles of every unit, by unit name
    busy: dict[str, int]  # crossbar-busy cycles per tile
    peaks: dict[str, int]  # peak occupancy per FIFO
    cycles: int  # cycles simulated


class Deadlock(RuntimeError):
    pass


def simulate(graph: Graph, out_beats: int, max_cycles: int = 50_000_000,
             skip_quiet: bool = True) -> Run:
    """Step the graph until the sink has `out_beats` beats (and the source is drained).

    `skip_quiet` (the default) runs it event by event (`_simulate_events`): a unit is only
    evaluated in the cycles where something can change for it, which gives every handshake of
    stepping each unit every cycle (`skip_quiet=False`, the plain rule, kept as the reference
    that the tests compare against), in a small part of the time."""
    if skip_quiet:
        return _simulate_events(graph, out_beats, max_cycles)
    nodes = graph.nodes
    edges, in_edges, out_edges = _wiring(nodes)
    # readies in reverse dataflow order, so a combinational ready sees its consumers' readies
    order = list(range(len(nodes)))[::-1]
    source = nodes[0].unit
    sink = nodes[-1].unit
    units = [n.unit for n in nodes]
    beats: dict[str, list[int]] = {n.name: [] for n in nodes}
    in_cycles: list[int] = []
    out_cycles: list[int] = []
    valid = [False] * len(edges)
    ready = [False] * len(edges)
    cycle = 0
    last_progress = 0
    while len(out_cycles) < out_beats or source.next < source.beats:
        source.drive()
        sink.drive()
        for e, (p, pp, _, _) in enumerate(edges):
            valid[e] = units[p].valid(pp)
        for ci in order:
            u = units[ci]
            if u.n_in == 0:
                continue
            iv = [valid[e] for e in in_edges[ci]]
            orr = [ready[e] for e in out_edges[ci]]
            for k, e in enumerate(in_edges[ci]):
                ready[e] = u.ready(k, iv, orr)
        fire = [v and r for v, r in zip(valid, ready, strict=True)]
        for i, u in enumerate(units):
            inf = [fire[e] for e in in_edges[i]]
            outf = [fire[e] for e in out_edges[i]]
            orr = [ready[e] for e in out_edges[i]]
            if any(outf):
                beats[nodes[i].name].append(cycle)
            u.step(inf, outf, orr)
        if any(fire):
            last_progress = cycle
        if fire[in_edges[len(nodes) - 1][0]]:
            out_cycles.append(cycle)
        if fire[out_edges[0][0]]:
            in_cycles.append(cycle)
        cycle += 1
        if cycle - last_progress > 1_000_000 or cycle > max_cycles:
            raise Deadlock(f"no handshake for {cycle - last_progress} cycles at cycle {cycle} "
                           f"({len(out_cycles)}/{out_beats} output beats)")
    return _run(nodes, in_cycles, out_cycles, beats, cycle)


def _wiring(nodes: list[Node]) -> tuple[list[tuple[int, int, int, int]], list, list]:
    """The graph's edges `(producer, out port, consumer, in port)` (unit indices) and, per
    unit, the edge of each input and output port."""
    index = {n.name: i for i, n in enumerate(nodes)}
    edges = [(index[src], port, ci, k) for ci, n in enumerate(nodes)
             for k, (src, port) in enumerate(n.inputs)]
    in_edges = [[0] * n.unit.n_in for n in nodes]
    out_edges = [[0] * n.unit.n_out for n in nodes]
    for e, (p, pp, c, cp) in enumerate(edges):
        out_edges[p][pp] = e
        in_edges[c][cp] = e
    return edges, in_edges, out_edges


def _run(nodes, in_cycles, out_cycles, beats, cycle) -> Run:
    busy = {n.name: n.unit.busy_cycles for n in nodes if n.kind == "tile"}
    peaks = {n.name: n.unit.peak for n in nodes if n.kind == "fifo"}
    return Run(in_cycles, out_cycles, beats, busy, peaks, cycle)


def _simulate_events(graph: Graph, out_beats: int, max_cycles: int) -> Run:
    """`simulate`, evaluating a unit only in the cycles where something can change for it.

    Every unit's state is kept current up to its own cycle `synced`. A unit is evaluated in a
    cycle when it was stepped the cycle before, when its wake-up time comes, or when the valid
    or ready of one of its ports changes in that cycle (which also re-evaluates, in reverse
    dataflow order, the producers whose combinational ready reads it). An evaluated unit with
    no handshake that can only count down for `q` cycles (`Unit.quiet`, with its output
    readies of the moment) is put to sleep until `q` cycles on, and caught up by `skip` when it
    is next evaluated; any other evaluated unit is stepped. Cycles in which no unit is
    evaluated are jumped over. The testbench's random gaps (source and sink sharing one random
    stream) draw in the same cycles and order as in the plain rule."""
    import heapq

    nodes = graph.nodes
    n_units = len(nodes)
    edges, in_edges, out_edges = _wiring(nodes)
    units = [n.unit for n in nodes]
    names = [n.name for n in nodes]
    src_i, sink_i = 0, n_units - 1
    source, sink = units[src_i], units[sink_i]
    first_edge, last_edge = out_edges[src_i][0], in_edges[sink_i][0]
    beats: dict[str, list[int]] = {name: [] for name in names}
    in_cycles: list[int] = []
    out_cycles: list[int] = []
    valid = [False] * len(edges)
    ready = [False] * len(edges)
    hot: set[int] = set()  # edges with valid and ready: they fire
    synced = [0] * n_units  # each unit's state is that at the start of this cycle
    wake = [0] * n_units  # the cycle it is evaluated next (inf: only on a port change)
    heap = [(0, i) for i in range(n_units)]
    cycle = 0
    last_progress = 0
    inf = float("inf")

    def sync(i: int) -> None:
        if synced[i] < cycle:
            units[i].skip(cycle - synced[i])
            synced[i] = cycle

    while len(out_cycles) < out_beats or source.next < source.beats:
        active = set()
        while heap and heap[0][0] <= cycle:
            w, i = heapq.heappop(heap)
            if wake[i] == w:
                active.add(i)
        for i in active:
            sync(i)
        if src_i in active:
            source.drive()
        if sink_i in active:
            sink.drive()
        todo = [-i for i in active]  # readies to evaluate, consumers first
        queued = set(active)
        for i in active:
            u = units[i]
            for pp, e in enumerate(out_edges[i]):
                v = u.valid(pp)
                if v != valid[e]:
                    valid[e] = v
                    c = edges[e][2]
                    if c not in queued:
                        queued.add(c)
                        todo.append(-c)
                    if v and ready[e]:
                        hot.add(e)
                    else:
                        hot.discard(e)
        heapq.heapify(todo)
        while todo:
            ci = -heapq.heappop(todo)
            u = units[ci]
            if not u.n_in:
                continue
            sync(ci)
            ie = in_edges[ci]
            iv = [valid[e] for e in ie]
            orr = [ready[e] for e in out_edges[ci]]
            for k, e in enumerate(ie):
                r = u.ready(k, iv, orr)
                if r != ready[e]:
                    ready[e] = r
                    if r and valid[e]:
                        hot.add(e)
                    else:
                        hot.discard(e)
                    p = edges[e][0]
                    if p not in queued:
                        queued.add(p)
                        heapq.heappush(todo, -p)
        for e in hot:  # (the units of a handshake step, whatever else they did this cycle)
            p, _, c, _ = edges[e]
            queued.add(p)
            queued.add(c)
        for i in queued:
            sync(i)
            u = units[i]
            infire = [e in hot for e in in_edges[i]]
            outf = [e in hot for e in out_edges[i]]
            orr = [ready[e] for e in out_edges[i]]
            if not any(infire) and not any(outf):
                q = u.quiet(orr)
                if q >= 1:
                    w = inf if q == inf else cycle + int(q)
                    wake[i] = w
                    if w != inf:
                        heapq.heappush(heap, (w, i))
                    continue
            if any(outf):
                beats[names[i]].append(cycle)
            u.step(infire, outf, orr)
            synced[i] = cycle + 1
            wake[i] = cycle + 1
            heapq.heappush(heap, (cycle + 1, i))
        if hot:
            last_progress = cycle
        if last_edge in hot:
            out_cycles.append(cycle)
        if first_edge in hot:
            in_cycles.append(cycle)
        if len(out_cycles) >= out_beats and source.next >= source.beats:
            cycle += 1
            break
        nxt = heap[0][0] if heap else inf
        if nxt == inf or nxt - last_progress > 1_000_000 or nxt > max_cycles:
            stop = min(nxt, last_progress + 1_000_001, max_cycles + 1)
            raise Deadlock(f"no handshake for {stop - last_progress} cycles at cycle {stop} "
                           f"({len(out_cycles)}/{out_beats} output beats)")
        cycle = max(cycle + 1, nxt)
    for i in range(n_units):
        sync(i)
    return _run(nodes, in_cycles, out_cycles, beats, cycle)


# --- Figures ----------------------------------------------------------------------------------


def out_beats_per_image(net: Network) -> int:
    return layer_beats(net, net.output)


def layer_beats(net: Network, name: str) -> int:
    layer = net.layer(name)
    return beats.beats_per_image(layer.op, layer.out_shape)


def fifo_depths(net: Network, reuse: bool = True, images: int = 6,
                lanes: int | dict | None = None,
                replicas: int | dict | None = None) -> dict[str, list[int]]:
    """Skip FIFO depths of every `add`: `[depth_a, depth_b]`, 0 for no FIFO.

    First the network is simulated with unbounded FIFOs on both inputs of every adder, `images`
    images streamed back to back; each FIFO gets the peak occupancy it reached (none if that
    was at most 1 beat: the beat only passed through). A FIFO that deep never back-pressures in
    that flow, so the accelerator keeps the throughput of unbounded buffers. The result is
    simulated again to confirm it; should it deadlock or lose throughput (not seen so far),
    every FIFO falls back to its peak plus one image of beats.
    """
    adds = [la for la in net.layers if la.op == Op.ADD]
    if not adds:
        return {}
    per = out_beats_per_image(net)
    free = simulate(build_graph(net, images, None, reuse, lanes=lanes, replicas=replicas),
                    images * per)
    depths = {la.name: [p if p > 1 else 0 for p in
                        (free.peaks[f"{la.name}.fifo{'ab'[i]}"] for i in range(2))]
              for la in adds}
    def steady(run: Run) -> float:
        last = run.out_cycles[per - 1::per]
        return (last[-1] - last[0]) / (len(last) - 1)

    try:
        run = simulate(build_graph(net, images, depths, reuse, lanes=lanes, replicas=replicas),
                       images * per)
        if steady(run) <= steady(free):
            return depths
    except Deadlock:
        pass
    return {la.name: [free.peaks[f"{la.name}.fifo{'ab'[i]}"] + _beats(shape_of(net, src))
                      for i, src in enumerate(la.inputs)] for la in adds}


@dataclass
class NetTiming:
    """Predicted cycles of a batch (see :func:`predict`)."""

    latency: list[int]  # per image: first input beat to last output beat
    steady: float | None  # mean cycles between successive images' last output beats
    layers: dict[str, dict]  # per layer: cycles per image, crossbar busy fraction and
    # utilisation (crossbar-busy cycles per image / the network's steady cycles per image)
    run: Run


def predict(net: Network, n_images: int, depths: dict[str, list[int]] | None = None,
            reuse: bool = True, stalls_seed: int | None = None,
            lanes: int | dict | None = None, replicas: int | dict | None = None) -> NetTiming:
    """Simulate `n_images` streamed back to back (or with the testbench's random gaps and
    back-pressure for `stalls_seed`) through the accelerator with the given FIFO depths."""
    if depths is None:
        depths = fifo_depths(net, reuse, lanes=lanes, replicas=replicas)
    rng = random.Random(stalls_seed) if stalls_seed is not None else None
    per = out_beats_per_image(net)
    run = simulate(build_graph(net, n_images, depths, reuse, rng, lanes, replicas),
                   n_images * per)
    _, h, w = net.input_shape
    first_in = run.in_cycles[::h * w][:n_images]
    last_out = run.out_cycles[per - 1::per][:n_images]
    latency = [o - i for i, o in zip(first_in, last_out, strict=True)]
    steady = ((last_out[-1] - last_out[0]) / (n_images - 1)) if n_images > 1 else None
    layers = {}
    for la in net.layers:
        b = layer_beats(net, la.name)
        outs = run.beats[la.name][b - 1::b][:n_images]
        row = {"op": la.op,
               "steady_cycles_per_image": ((outs[-1] - outs[0]) / (n_images - 1))
               if n_images > 1 and len(outs) == n_images else None}
        if la.op in TILE_OPS:
            n = cyclemodel.replicas_for(la, replicas)
            t = tile_timing(la, net.pim, reuse, lanes, (0, n))  # (the busiest copy)
            row.update(ideal_cycles_per_image=t.ideal, pixel_cycles=t.pixel_cycles,
                       steps_per_pixel=t.n_steps, n_t=t.n_t, passes=t.passes, replicas=n,
                       busy_fraction=run.busy[la.name] / max(1, run.cycles),
                       utilisation=(t.ideal / steady) if steady else None)
        layers[la.name] = row
    return NetTiming(latency, steady, layers, run)


def balanced_lanes(net: Network, reuse: bool = True) -> dict[str, int]:
    """Per tile, the fewest chunk lanes that keep its cycles per image (fed alone, back to
    back) within the slowest tile's with every lane: the network's throughput with every row
    chunk computed at once, on the fewest adder trees and ADCs."""
    def alone(layer, lanes):
        return cyclemodel.schedule(cyclemodel.tile_timing(layer, net.pim, reuse, lanes),
                                   8).steady

    tiles = [la for la in net.layers if la.op in TILE_OPS]
    every = {la.name: cyclemodel.row_chunks(la, net.pim) for la in tiles}
    bound = max(alone(la, every) for la in tiles)
    out = {}
    for la in tiles:
        out[la.name] = next(n for n in range(1, every[la.name] + 1)
                            if alone(la, {la.name: n}) <= bound)
    # tiles near the bound can still slow the chain a little: give the busiest tile that lost
    # lanes one back until the network's steady rate is the every-lane one
    target = predict(net, 6, reuse=reuse, lanes=every).steady
    while predict(net, 6, reuse=reuse, lanes=out).steady > target:
        cut = [la for la in tiles if out[la.name] < every[la.name]]
        worst = max(cut, key=lambda la: alone(la, out))
        out[worst.name] += 1
    return out
