"""A whole-network accelerator from a folder of network images: one PIM tile per conv/linear
layer, chained by streams, with residual adders (behind skip FIFOs), global pooling, max
pooling (`hw/maxpool.py`), flatten units and forks where a tensor has several consumers.

Every tile keeps its weights stationary in its own crossbars and double-buffers its input, so
the tiles work on successive images at once (frame pipelining): throughput is set by the slowest
tile. `docs/network.md` has the beat order, the unit rules and how the skip FIFOs are sized;
`epim.sw.netcycles` models it cycle by cycle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from amaranth.hdl import Cat, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract import graph as unit_graph
from ..contract.images import NETWORK_FORMAT, ImageError, read_manifest
from ..contract.params import AddParams, TileUnit, check_network_io, unit_from_dict
from .images import load
from .maxpool import MaxPoolUnit
from .replicas import ReplicatedTile
from .tile import PIMTile
from .units import AddUnit, Flatten, Fork, PoolUnit, StreamFIFO


def load_network(folder: str | Path) -> dict:
    """Read and verify `network.json` and every tile folder it names."""
    folder = Path(folder)
    mpath = folder / "network.json"
    manifest = read_manifest(mpath, NETWORK_FORMAT)
    units = manifest.get("units")
    if not isinstance(units, list):
        raise ImageError(f"{mpath}: 'units' must be a list")
    canonical = json.dumps(units, sort_keys=True, separators=(",", ":")).encode()
    if hashlib.sha256(canonical).hexdigest() != manifest.get("units_sha256"):
        raise ImageError(f"{mpath}: 'units' do not match 'units_sha256': the manifest was "
                         "edited or corrupted after it was packed (re-run 'epim generate')")
    rest = {k: v for k, v in manifest.items() if k != "sha256"}
    whole = json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()
    if hashlib.sha256(whole).hexdigest() != manifest.get("sha256"):
        raise ImageError(f"{mpath}: the manifest does not match its 'sha256': it was edited "
                         "or corrupted after it was packed (re-run 'epim generate')")
    check_network_io(manifest, str(mpath))
    tiles, typed = {}, []
    for k, raw in enumerate(units):
        unit = unit_from_dict(raw, f"{mpath}: unit #{k}")
        typed.append(unit)
        if not isinstance(unit, TileUnit):
            continue
        tpath = folder / unit.folder / "manifest.json"
        try:
            raw_manifest = tpath.read_bytes()
        except OSError as exc:
            raise ImageError(f"{tpath}: cannot read: {exc.strerror}") from None
        if hashlib.sha256(raw_manifest).hexdigest() != unit.manifest_sha256:
            raise ImageError(f"{tpath}: does not match the checksum in {mpath}: the tile "
                             f"images of layer {unit.name!r} come from another compile or "
                             "were changed (re-run 'epim generate')")
        tiles[unit.name] = load(folder / unit.folder)
    try:
        unit_graph.check_units(manifest, typed, {n: t.params for n, t in tiles.items()},
                               str(mpath))
    except ValueError as exc:
        raise ImageError(str(exc)) from None
    return {"manifest": manifest, "units": typed, "tiles": tiles, "folder": folder}


class NetworkAccelerator(wiring.Component):
    """The accelerator of one network.

    With `shared=True` the copies of a replicated layer are instances of one module
    (:attr:`shared_modules`), emitted once; otherwise each copy is elaborated in place.

    Members
    -------
    i : In(stream.Signature(C * bits))
        Input pixels of each image in raster order (y, then x); channel `c` at bits
        `[c*bits, (c+1)*bits)`.
    o : Out(stream.Signature(F * out_bits))
        The output layer's beats: one per output pixel in raster order, or one per image for a
        `linear` or pooled output; value `f` at bits `[f*out_bits, ...)` (two's complement for
        a layer without ReLU).
    idle : Out(1)
        Every unit is empty.
    """

    def __init__(self, loaded: dict, shared: bool = False):
        man = loaded["manifest"]
        self._man = man
        # never programmed: fixed tiles (constant cells, ROM tables, threshold output stages);
        # a layer with `replicas` > 1 gets that many copies of its tile (`ReplicatedTile`)
        self._units = loaded["units"]
        replicas = {u.name: u.replicas for u in self._units if isinstance(u, TileUnit)}
        self._tiles = {}
        for name, img in loaded["tiles"].items():
            cfg = img.params
            n = replicas[name]
            self._tiles[name] = (
                ReplicatedTile(cfg, img.words, n, module=f"epim_{name}_copy" if shared else None)
                if n > 1 else PIMTile(cfg, img.words, fixed=True))
        inp, out = man["input"], man["output"]
        super().__init__({"i": In(stream.Signature(inp["channels"] * inp["bits"])),
                          "o": Out(stream.Signature(out["channels"] * out["bits"])),
                          "idle": Out(1)})

    @property
    def tiles(self) -> dict[str, PIMTile | ReplicatedTile]:
        return dict(self._tiles)

    @property
    def shared_modules(self) -> dict[str, PIMTile]:
        """Tiles that copies instantiate by module name (`shared=True`): the Verilog generator
        emits each once beside the accelerator."""
        return dict(t.shared for t in self._tiles.values()
                    if isinstance(t, ReplicatedTile) and t.shared)

    def elaborate(self, platform):
        m = Module()
        man = self._man
        units = {u.name: u for u in self._units}
        nodes = unit_graph.plan(
            man["input"]["name"], [(u.name, u.op, u.inputs) for u in self._units],
            man["output"]["name"], {u.name for u in self._units
                                    if isinstance(u, TileUnit) and u.flatten},
            {u.name: u.fifo for u in self._units if isinstance(u, AddParams)})
        outs: dict[str, list] = {}  # each node's output streams, by port
        idles = []
        for node in nodes:
            srcs = [outs[name][port] for name, port in node.inputs]
            u = units.get(node.layer)
            if node.kind == "source":
                outs[node.name] = [wiring.flipped(self.i)]
                continue
            if node.kind == "sink":
                wiring.connect(m, srcs[0], wiring.flipped(self.o))
                continue
            if node.kind == "fork":
                unit = Fork(len(srcs[0].payload), node.ways)
                sub, ins, out = f"{node.layer}_fork", [unit.i], unit.outs()
            elif node.kind == "flatten":
                f = u.flatten
                unit = Flatten(f.channels, f.pixels, f.bits)
                sub, ins, out = f"{u.name}_flatten", [unit.i], [unit.o]
            elif node.kind == "tile":
                unit = self._tiles[u.name]
                sub, ins, out = f"{u.name}_tile", [unit.i], [unit.o]
                if isinstance(unit, PIMTile):
                    m.d.comb += unit.prog.valid.eq(0)
            elif node.kind == "fifo":
                width = (u.a_bits if node.port == 0 else u.b_bits) * u.channels
                unit = StreamFIFO(width, u.fifo[node.port])
                sub, ins, out = f"{u.name}_fifo{'ab'[node.port]}", [unit.i], [unit.o]
            elif node.kind == "add":
                unit = AddUnit(u.channels, u.a_bits, u.b_bits, u.out_bits, u.ma, u.mb, u.shift,
                               u.a_signed, u.b_signed)
                sub, ins, out = f"{u.name}_add", [unit.a, unit.b], [unit.o]
            elif node.kind == "maxpool":
                unit = MaxPoolUnit(u)
                sub, ins, out = f"{u.name}_maxpool", [unit.i], [unit.o]
            else:
                unit = PoolUnit(u.channels, u.pixels, u.in_bits, u.out_bits, u.mult, u.shift)
                sub, ins, out = f"{u.name}_pool", [unit.i], [unit.o]
            m.submodules[sub] = unit
            for src, port in zip(srcs, ins, strict=True):
                wiring.connect(m, src, port)
            idles.append(unit.idle)
            outs[node.name] = out
        m.d.comb += self.idle.eq(Cat(*idles).all())
        return m
