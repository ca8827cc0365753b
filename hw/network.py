"""A whole-network accelerator from a folder of network images: one PIM tile per conv/linear
layer, chained by streams, with residual adders (behind skip FIFOs), global pooling, max
pooling (`hw/maxpool.py`), flatten units and forks where a tensor has several consumers.

Every tile keeps its weights stationary in its own crossbars and double-buffers its input, so
the tiles work on successive images at once (frame pipelining): throughput is set by the slowest
tile. `docs/network.md` has the beat order, the unit rules and how the skip FIFOs are sized;
`epim.sw.chip.netcycles` models it cycle by cycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import replace
from pathlib import Path

from amaranth.hdl import Cat, ClockSignal, Instance, Module, ResetSignal, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contract import graph as unit_graph
from ..contract.images import NETWORK_FORMAT, ImageError, network_prog_fields, read_manifest
from ..contract.params import (
    AddParams,
    TileParams,
    TileUnit,
    check_network_io,
    unit_from_dict,
)
from .images import load, zeroed
from .opunits import op_unit
from .replicas import ReplicatedTile
from .tile import PIMTile, prog_layout
from .units import Flatten, Fork, StreamFIFO


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


def shape_module(cfg: TileParams, walk_port: bool = False) -> str:
    """The Verilog module name of a programmable tile of this shape: tiles with equal
    parameters (the layer's name aside) are instances of one module."""
    shape = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "name"}
    shape["walk_port"] = walk_port
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()
    return f"epim_tile_{digest[:12]}"


class NetworkAccelerator(wiring.Component):
    """The accelerator of one network.

    Programmable tiles by default: crossbar cells and tables in memories, blank in the shared
    modules of `shared=True` (the testbench writes them through the network's programming
    port), else initialised from the images. `fixed=True` gives weight-baked tiles (every
    memory a ROM holding its images) and no port.

    With `shared=True` tiles of equal shape are instances of one module
    (:attr:`shared_modules`), emitted once, so the Verilog grows with the number of distinct
    layer shapes, and so does the Verilator build: no instance has a parameter of its own
    (Verilator compiles a module once per distinct parameter value). The copies of a
    replicated layer share one module too. Otherwise each tile is elaborated in
    place (Amaranth's simulator needs that).

    Members
    -------
    i : In(stream.Signature(C * bits))
        Input pixels of each image in raster order (y, then x); channel `c` at bits
        `[c*bits, (c+1)*bits)`.
    o : Out(stream.Signature(F * out_bits))
        The output layer's beats: one per output pixel in raster order, or one per image for a
        `linear` or pooled output; value `f` at bits `[f*out_bits, ...)` (two's complement for
        a layer without ReLU).
    prog : In(stream.Signature(prog_layout))
        Programmable tiles only: writes word `data` at `addr` of memory `mem` of tile `tile`
        (`epim.contract.images.network_prog_fields`; tiles numbered in `network.json` order).
        Ready while the addressed tile is idle; a word for a tile number beyond the last is
        taken and dropped.
    idle : Out(1)
        Every unit is empty.
    """

    def __init__(self, loaded: dict, shared: bool = False, fixed: bool = False):
        man = loaded["manifest"]
        self._man, self._fixed = man, fixed
        self._units = loaded["units"]
        tile_units = [u for u in self._units if isinstance(u, TileUnit)]
        self._tile_index = {u.name: k for k, u in enumerate(tile_units)}
        replicas = {u.name: u.replicas for u in tile_units}
        # a layer with `replicas` > 1 gets that many copies of its tile (`ReplicatedTile`)
        self._tiles, self._modules = {}, {}
        for name, img in loaded["tiles"].items():
            cfg, n = img.params, replicas[name]
            if n > 1:
                module = None
                if shared:
                    module = (f"epim_{name}_copy" if fixed else
                              shape_module(replace(cfg, pix_first=0, pix_step=n), True))
                tile = ReplicatedTile(cfg, img.words, n, fixed=fixed, module=module)
                if tile.shared:
                    self._modules.setdefault(*tile.shared)
            elif shared and not fixed:
                module = shape_module(cfg)
                if module not in self._modules:
                    self._modules[module] = PIMTile(replace(cfg, name="tile"), zeroed(img.words),
                                                    share_array=True)
                tile = (module, cfg)
            else:
                tile = PIMTile(cfg, img.words, fixed=fixed)
            self._tiles[name] = tile
        inp, out = man["input"], man["output"]
        ports = {"i": In(stream.Signature(inp["channels"] * inp["bits"])),
                 "o": Out(stream.Signature(out["channels"] * out["bits"])),
                 "idle": Out(1)}
        # (a network of pools alone has nothing to program, and no port)
        self._programmable = not fixed and bool(loaded["tiles"])
        if self._programmable:
            self._prog_fields = network_prog_fields([img.params
                                                     for img in loaded["tiles"].values()])
            ports["prog"] = In(stream.Signature(data.StructLayout(dict(self._prog_fields))))
        super().__init__(ports)

    @property
    def fixed(self) -> bool:
        return self._fixed

    @property
    def programmable(self) -> bool:
        """The accelerator has a programming port (programmable tiles, at least one)."""
        return self._programmable

    @property
    def tiles(self) -> dict:
        """Each layer's tile: a `PIMTile`, a `ReplicatedTile`, or `(module, params)` for an
        instance of a shared module."""
        return dict(self._tiles)

    @property
    def shared_modules(self) -> dict[str, PIMTile]:
        """Tiles that instances name by module (`shared=True`): the Verilog generator emits
        each once beside the accelerator (a programmable one with its image loader)."""
        return dict(self._modules)

    def _tile_unit(self, m: Module, name: str):
        """The tile of layer `name` as a submodule: `(unit, input, output, prog)`, `prog`
        being its programming stream (None for a fixed tile)."""
        tile = self._tiles[name]
        if isinstance(tile, tuple):  # an instance of a shared module
            module, cfg = tile
            ports = TilePorts(cfg, name)
            m.submodules[f"{name}_tile"] = Instance(
                module,
                i_clk=ClockSignal(), i_rst=ResetSignal(),
                i_i__payload=ports.i.payload, i_i__valid=ports.i.valid, o_i__ready=ports.i.ready,
                o_o__payload=ports.o.payload, o_o__valid=ports.o.valid, i_o__ready=ports.o.ready,
                i_prog__payload=ports.prog.payload, i_prog__valid=ports.prog.valid,
                o_prog__ready=ports.prog.ready, o_idle=ports.idle)
            return ports, wiring.flipped(ports.i), ports.o, ports.prog
        m.submodules[f"{name}_tile"] = tile
        prog = None if self._fixed else tile.prog
        if self._fixed and isinstance(tile, PIMTile):
            m.d.comb += tile.prog.valid.eq(0)
        return tile, tile.i, tile.o, prog

    def _program(self, m: Module, progs: dict) -> None:
        """The network's programming port: each word to the tile it names. A word whose
        tile or address is beyond what exists is taken and dropped (an address is never cut
        down to a tile's narrower field, which would write another word)."""
        p = self.prog.payload
        taken, sels = [], []
        for name, port in progs.items():
            addr, data_ = port.payload.addr, port.payload.data
            sel = Signal(name=f"prog_sel_{name}")
            m.d.comb += sel.eq((p.tile == self._tile_index[name])
                               & ((p.addr >> len(addr)) == 0))
            m.d.comb += [port.valid.eq(self.prog.valid & sel), port.payload.mem.eq(p.mem),
                         port.payload.addr.eq(p.addr[:len(addr)]),
                         port.payload.data.eq(p.data[:len(data_)])]
            taken.append(sel & port.ready)
            sels.append(sel)
        dropped = ~Cat(*sels).any()
        m.d.comb += self.prog.ready.eq(Cat(*taken).any() | dropped)

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
        progs = {}  # each programmable tile's programming stream
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
                unit, tin, tout, prog = self._tile_unit(m, u.name)
                if prog is not None:
                    progs[u.name] = prog
                wiring.connect(m, srcs[0], tin)
                idles.append(unit.idle)
                outs[node.name] = [tout]
                continue
            elif node.kind == "fifo":
                width = (u.a_bits if node.port == 0 else u.b_bits) * u.channels
                unit = StreamFIFO(width, u.fifo[node.port])
                sub, ins, out = f"{u.name}_fifo{'ab'[node.port]}", [unit.i], [unit.o]
            else:  # the unit of an op (`epim.hw.opunits`)
                unit, sub, ins, out = op_unit(u)
            m.submodules[sub] = unit
            for src, port in zip(srcs, ins, strict=True):
                wiring.connect(m, src, port)
            idles.append(unit.idle)
            outs[node.name] = out
        if self._programmable:
            self._program(m, progs)
        m.d.comb += self.idle.eq(Cat(*idles).all())
        return m


class TilePorts:
    """The streams and idle signal of an instance of a shared tile module, as a tile has
    them (`i` and `prog` from the producer's side)."""

    def __init__(self, cfg: TileParams, name: str):
        self.i = stream.Signature(cfg.cin * cfg.in_bits).create(path=(name, "i"))
        self.o = stream.Signature(cfg.cout * cfg.out_bits).create(path=(name, "o"))
        self.prog = stream.Signature(prog_layout(cfg)).create(path=(name, "prog"))
        self.idle = Signal(name=f"{name}_idle")
