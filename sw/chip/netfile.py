"""Parse and validate `epim-net-v1` network files (spec section 7).

A file that breaks a rule is refused with a :class:`NetFileError` naming the file, the layer and
the field, before anything runs. The parsed network is a :class:`Network` of frozen layer records
with NumPy arrays, shapes already inferred.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...contract.files import load_json
from ...contract.images import NAME_RE
from ...contract.images import NET_FORMAT as FORMAT
from ...contract.ops import NAMES, Op, spec

OPS = NAMES

# Ranges the spec leaves open; chosen for hardware and written in docs/spec-notes.md.
MAX_BITS = 32
BIAS_LIMIT = 2**31  # |bias| < 2**31: a signed 32-bit register per output channel.
MULT_LIMIT = 2**31  # spec: 1 <= mult < 2**31
MAX_SHIFT = 62

# Bounds that keep a hostile file from costing unbounded memory or time (docs/spec-notes.md).
# Names become file and Verilog names: identifiers only.

NAME_RULE = "an identifier: a letter or _, then letters, digits or _, at most 64 characters"
MAX_FILE_BYTES = 256 * 2**20  # a dense ResNet-50 file is about 100 MB
MAX_MAP = 4096  # height and width of any feature map
MAX_CHANNELS = 16384  # channels, out_channels, out_features, epitome channels
MAX_TENSOR = 2**26  # elements of one feature map, C*H*W (a linear layer's in_features too)
MAX_TABLE = 2**20  # entries of an offset table, G_in*G_out


class NetFileError(ValueError):
    """A network file breaks the contract; the message names layer and field."""


@dataclass(frozen=True)
class PIM:
    xbar_rows: int
    xbar_cols: int
    cell_bits: int
    dac_bits: int
    adc_bits: int
    # Not in the network file: the physical columns the hardware converts per cycle (the
    # columns of a crossbar sharing an ADC set read in turn), a choice of the build
    # (`epim generate --cols`, `with_cols`); 0 means all `xbar_cols`.
    cycle_cols: int = 0


@dataclass(frozen=True)
class Epitome:
    """Epitome of a conv or linear layer, spec section 2 (dense layers get a trivial one)."""

    in_channels: int  # Ce_in
    out_channels: int  # Ce_out
    patch_in: int  # p_in
    patch_out: int  # p_out
    row_offset: np.ndarray = field(repr=False)  # (G_in, G_out)
    col_offset: np.ndarray = field(repr=False)  # (G_in, G_out)
    weights: np.ndarray = field(repr=False)  # (Ce_out, Ce_in, k, k)
    dense: bool = False


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    inputs: tuple[str, ...]
    in_shape: tuple[int, ...]  # (C, H, W) of the (first) input tensor
    out_shape: tuple[int, int, int]  # (C, H, W); a linear output is (F, 1, 1)
    in_bits: int  # width of the input tensor (producer's out_bits)
    out_bits: int
    relu: bool = True
    # conv / linear
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    weight_bits: int = 0
    epitome: Epitome | None = None
    bias: np.ndarray | None = field(default=None, repr=False)
    mult: np.ndarray | None = field(default=None, repr=False)
    shift: np.ndarray | None = field(default=None, repr=False)
    # add / avgpool_global (scalars)
    ma: int = 0
    mb: int = 0
    pool_mult: int = 0
    pool_shift: int = 0
    add_shift: int = 0

    @property
    def in_channels(self) -> int:
        """Cin as the crossbar sees it (a linear layer flattens its input)."""
        return int(np.prod(self.in_shape)) if self.op == Op.LINEAR else self.in_shape[0]

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    @property
    def in_hw(self) -> tuple[int, int]:
        return (1, 1) if self.op == Op.LINEAR else (self.in_shape[1], self.in_shape[2])

    @property
    def g_in(self) -> int:
        return math.ceil(self.in_channels / self.epitome.patch_in)

    @property
    def g_out(self) -> int:
        return math.ceil(self.out_channels / self.epitome.patch_out)


@dataclass(frozen=True)
class Network:
    pim: PIM
    input_name: str
    input_shape: tuple[int, int, int]
    input_bits: int
    layers: tuple[Layer, ...]  # in a valid execution order
    output: str
    source: str = "<net>"

    def signed(self, name: str) -> bool:
        """True when tensor `name` holds signed values (a conv/linear with `relu: false`)."""
        return name != self.input_name and not self.layer(name).relu

    def layer(self, name: str) -> Layer:
        return self._by_name[name]

    @functools.cached_property
    def _by_name(self) -> dict[str, Layer]:
        return {layer.name: layer for layer in self.layers}

    @property
    def output_layer(self) -> Layer:
        return self.layer(self.output)


def with_cols(net: Network, cols: int | None) -> Network:
    """`net` built with `cols` physical columns per cycle (`PIM.cycle_cols`; None: as it is).
    ValueError unless `1 <= cols <= xbar_cols`."""
    if cols is None:
        return net
    if not 1 <= cols <= net.pim.xbar_cols:
        raise ValueError(f"--cols {cols}: a tile computes 1 to {net.pim.xbar_cols} columns "
                         "(the crossbar's) a cycle")
    return dataclasses.replace(net, pim=dataclasses.replace(net.pim, cycle_cols=cols))


class _Ctx:
    """Where in the file a check is: formats the error message."""

    def __init__(self, source: str, where: str):
        self.source = source
        self.where = where

    def fail(self, fld: str, msg: str) -> NetFileError:
        return NetFileError(f"{self.source}: {self.where}, field '{fld}': {msg}")

    def get(self, obj: dict, key: str, prefix: str = ""):
        if key not in obj:
            raise self.fail(prefix + key, "missing")
        return obj[key]

    def obj(self, obj: dict, key: str, prefix: str = "") -> dict:
        val = self.get(obj, key, prefix)
        if not isinstance(val, dict):
            raise self.fail(prefix + key, f"must be an object, got {type(val).__name__}")
        return val

    def int(self, obj: dict, key: str, lo: int | None = None, hi: int | None = None,
            prefix: str = "") -> int:
        val = self.get(obj, key, prefix)
        return self.check_int(val, prefix + key, lo, hi)

    def check_int(self, val, fld: str, lo: int | None, hi: int | None) -> int:
        if isinstance(val, bool) or not isinstance(val, int):
            raise self.fail(fld, f"must be an integer, got {json.dumps(val)[:40]}")
        if (lo is not None and val < lo) or (hi is not None and val > hi):
            raise self.fail(fld, f"must be in {_range(lo, hi)}, got {val}")
        return val

    def bool(self, obj: dict, key: str) -> bool:
        val = self.get(obj, key)
        if not isinstance(val, bool):
            raise self.fail(key, f"must be true or false, got {json.dumps(val)[:40]}")
        return val

    def str(self, obj: dict, key: str) -> str:
        val = self.get(obj, key)
        if not isinstance(val, str) or not val:
            raise self.fail(key, f"must be a non-empty string, got {json.dumps(val)[:40]}")
        return val

    def name(self, obj: dict, key: str) -> str:
        val = self.str(obj, key)
        if not NAME_RE.match(val):
            raise self.fail(key, f"must be {NAME_RULE}, got {json.dumps(val)[:40]}")
        return val

    def tensor(self, fld: str, shape: tuple[int, ...]) -> None:
        """Refuse a feature map past `MAX_TENSOR` elements."""
        if math.prod(shape) > MAX_TENSOR:
            raise self.fail(fld, f"a {'x'.join(map(str, shape))} feature map has "
                            f"{math.prod(shape)} values, more than the limit {MAX_TENSOR}")

    def array(self, obj: dict, key: str, shape: tuple[int, ...], lo: int, hi: int,
              prefix: str = "", shape_doc: str = "") -> np.ndarray:
        fld = prefix + key
        val = self.get(obj, key, prefix)
        arr = _int_array(val)
        doc = f" {shape_doc}" if shape_doc else ""
        if arr is None:
            raise self.fail(fld, f"must be a nested list of integers (|v| < 2**62) of shape "
                            f"{list(shape)}{doc}")
        if arr.shape != shape:
            raise self.fail(fld, f"must have shape {list(shape)}{doc}, got {list(arr.shape)}")
        if arr.size and (arr.min() < lo or arr.max() > hi):
            bad = arr[(arr < lo) | (arr > hi)].flat[0]
            idx = tuple(int(i) for i in np.argwhere((arr < lo) | (arr > hi))[0])
            raise self.fail(fld, f"values must be in {_range(lo, hi)}, got {bad} at {list(idx)}")
        return arr

    def keys(self, obj: dict, allowed: set[str], prefix: str = "") -> None:
        extra = sorted(set(obj) - allowed)
        if extra:
            raise self.fail(prefix + extra[0], f"unknown field (expected one of "
                            f"{', '.join(sorted(allowed))})")


def _range(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"{lo}..{hi}"


def _int_array(val) -> np.ndarray | None:
    """A nested list of Python ints as an int64 array, or None if it is anything else."""
    def ok(v):
        if isinstance(v, list):
            return all(ok(x) for x in v)
        return isinstance(v, int) and not isinstance(v, bool) and -(2**62) < v < 2**62
    if not isinstance(val, list) or not ok(val):
        return None
    try:
        arr = np.array(val, dtype=np.int64)
    except ValueError:  # ragged
        return None
    return arr if arr.dtype == np.int64 else None


_COMMON = {"name", "op", "inputs"}  # every layer's keys; each op adds its own
_EPITOME_KEYS = {"in_channels", "out_channels", "patch_in", "patch_out", "row_offset",
                 "col_offset", "weights"}


def load(path: str | Path) -> Network:
    """Read and validate a network file (a regular file of at most `MAX_FILE_BYTES`, UTF-8
    JSON without duplicate keys, nested at most `MAX_JSON_DEPTH` deep)."""
    return parse(read(path), source=str(path))


def read(path: str | Path):
    """A network file's decoded JSON, not yet validated (`load` validates it)."""
    return load_json(path, "a network file", MAX_FILE_BYTES, NetFileError)


def parse(obj, source: str = "<net>") -> Network:
    """Validate a network given as a decoded JSON object."""
    from .ops import chip_op  # (each op's own keys and rules)

    top = _Ctx(source, "network")
    if not isinstance(obj, dict):
        raise top.fail("format", "the file must hold one JSON object")
    top.keys(obj, {"format", "pim", "input", "layers", "output"})
    fmt = top.get(obj, "format")
    if fmt != FORMAT:
        raise top.fail("format", f"must be {FORMAT!r}, got {json.dumps(fmt)[:40]}")

    pim_obj = top.obj(obj, "pim")
    top.keys(pim_obj, {"xbar_rows", "xbar_cols", "cell_bits", "dac_bits", "adc_bits"}, "pim.")
    pim = PIM(
        xbar_rows=top.int(pim_obj, "xbar_rows", 1, 4096, "pim."),
        xbar_cols=top.int(pim_obj, "xbar_cols", 1, 4096, "pim."),
        cell_bits=top.int(pim_obj, "cell_bits", 1, 8, "pim."),
        dac_bits=top.int(pim_obj, "dac_bits", 1, 16, "pim."),
        adc_bits=top.int(pim_obj, "adc_bits", 1, MAX_BITS, "pim."),
    )

    ictx = _Ctx(source, "input")
    inp = top.obj(obj, "input")
    ictx.keys(inp, {"name", "channels", "height", "width", "bits"})
    input_name = ictx.name(inp, "name")
    input_shape = (ictx.int(inp, "channels", 1, MAX_CHANNELS),
                   ictx.int(inp, "height", 1, MAX_MAP), ictx.int(inp, "width", 1, MAX_MAP))
    ictx.tensor("height", input_shape)
    input_bits = ictx.int(inp, "bits", 1, 16)

    raw_layers = top.get(obj, "layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise top.fail("layers", "must be a non-empty list of layer objects")
    output = top.get(obj, "output")
    if not isinstance(output, str):
        raise top.fail("output", "must be a layer name")

    by_name: dict[str, dict] = {}
    for idx, lay in enumerate(raw_layers):
        ctx = _Ctx(source, f"layer #{idx}")
        if not isinstance(lay, dict):
            raise ctx.fail("name", "each layer must be a JSON object")
        name = ctx.name(lay, "name")
        ctx = _Ctx(source, f"layer '{name}'")
        if name in by_name or name == input_name:
            raise ctx.fail("name", "duplicate name")
        op = ctx.get(lay, "op")
        if op not in OPS:
            raise ctx.fail("op", f"unknown op {json.dumps(op)[:40]} (expected one of "
                           f"{', '.join(OPS)})")
        ctx.keys(lay, _COMMON | chip_op(op).fields)
        ins = ctx.get(lay, "inputs")
        want = spec(op).inputs
        if (not isinstance(ins, list) or len(ins) != want
                or not all(isinstance(i, str) for i in ins)):
            raise ctx.fail("inputs", f"must be a list of {want} tensor name(s)")
        by_name[name] = lay
    if output not in by_name:
        raise top.fail("output", f"names no layer: {output!r}")

    order = _topo_order(by_name, input_name, source)
    shapes: dict[str, tuple[tuple[int, int, int], int, bool]] = {
        input_name: (input_shape, input_bits, True)}
    layers = []
    for name in order:
        lay = by_name[name]
        ctx = _Ctx(source, f"layer '{name}'")
        srcs = [shapes[i] for i in lay["inputs"]]
        for i, (_, _, unsigned) in zip(lay["inputs"], srcs, strict=True):
            if not unsigned and not spec(lay["op"]).reads_signed:
                raise ctx.fail("inputs", f"input {i!r} is signed (its producer has relu: "
                               f"false); only add layers may read a signed tensor, a "
                               f"{lay['op']} reads unsigned values")
        layer = _parse_layer(ctx, lay, srcs, pim)
        shapes[name] = (layer.out_shape, layer.out_bits, layer.relu)
        layers.append(layer)
    return Network(pim, input_name, input_shape, input_bits, tuple(layers), output, source)


def _topo_order(by_name: dict[str, dict], input_name: str, source: str) -> list[str]:
    """The execution order: by level (a layer's is one more than its deepest input's), then
    file order; found with Kahn's algorithm, so linear in layers and edges. Unknown inputs and
    cycles are refused."""
    readers: dict[str, list[str]] = {input_name: [], **{n: [] for n in by_name}}
    waiting: dict[str, int] = {}
    for name, lay in by_name.items():
        for i in lay["inputs"]:
            if i not in readers:
                raise _Ctx(source, f"layer '{name}'").fail("inputs", f"unknown input {i!r}")
            readers[i].append(name)
        waiting[name] = len(lay["inputs"])
    level = {input_name: 0}
    ready = [input_name]
    placed = -1  # (the input is not a layer)
    while ready:
        done = ready.pop()
        placed += 1
        for n in readers[done]:
            level[n] = max(level.get(n, 0), level[done] + 1)
            waiting[n] -= 1
            if waiting[n] == 0:
                ready.append(n)
    if placed < len(by_name):
        stuck = [n for n in by_name if waiting[n] > 0]
        shown = " -> ".join(stuck[:8]) + (f" (and {len(stuck) - 8} more)" if len(stuck) > 8
                                          else "")
        raise _Ctx(source, f"layer '{stuck[0]}'").fail(
            "inputs", f"the layers form a cycle, or read one: {shown}")
    index = {n: k for k, n in enumerate(by_name)}
    return sorted(by_name, key=lambda n: (level[n], index[n]))


def _parse_layer(ctx: _Ctx, lay: dict, srcs, pim: PIM) -> Layer:
    """A layer's fields, common ones here, the op's own by its entry (`epim.sw.chip.ops`:
    its keys, ranges and shape rule)."""
    from .ops import chip_op

    op = lay["op"]
    (shape, in_bits, _) = srcs[0]
    out_bits = in_bits if spec(op).keeps_bits else ctx.int(lay, "out_bits", 1, MAX_BITS)
    common = dict(name=lay["name"], op=op, inputs=tuple(lay["inputs"]), in_shape=shape,
                  in_bits=in_bits, out_bits=out_bits)
    return chip_op(op).parse(ctx, lay, srcs, common)


def parse_tile(ctx: _Ctx, lay: dict, common: dict) -> Layer:
    """A conv or linear layer's own fields: its shape, weights (an epitome, or dense) and
    output stage."""
    op, shape = common["op"], common["in_shape"]
    if op == Op.CONV:
        cin, h, w = shape
        cout = ctx.int(lay, "out_channels", 1, MAX_CHANNELS)
        k = ctx.int(lay, "kernel", 1, 15)
        s = ctx.int(lay, "stride", 1, 15)
        p = ctx.int(lay, "padding", 0, k - 1)
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if ho < 1 or wo < 1:
            raise ctx.fail("kernel", f"kernel {k} with padding {p} does not fit the "
                           f"{h}x{w} input map")
        out_shape = (cout, ho, wo)
        ctx.tensor("out_channels", out_shape)
    else:
        cin, k, s, p = int(np.prod(shape)), 1, 1, 0
        cout = ctx.int(lay, "out_features", 1, MAX_CHANNELS)
        out_shape = (cout, 1, 1)
    wb = ctx.int(lay, "weight_bits", 2, 16)
    wmax = 2 ** (wb - 1) - 1
    has_e, has_w = "epitome" in lay, "weights" in lay
    if has_e == has_w:
        raise ctx.fail("epitome", "give exactly one of 'epitome' (epitome layer) and "
                       "'weights' (dense layer)")
    if has_w:
        weights = ctx.array(lay, "weights", (cout, cin, k, k), -wmax, wmax,
                            shape_doc="(Cout, Cin, k, k)")
        epi = Epitome(cin, cout, cin, cout, np.zeros((1, 1), np.int64),
                      np.zeros((1, 1), np.int64), weights, dense=True)
    else:
        epi = _parse_epitome(ctx, ctx.obj(lay, "epitome"), cin, cout, k, wmax)
    bias = ctx.array(lay, "bias", (cout,), -BIAS_LIMIT + 1, BIAS_LIMIT - 1)
    mult = ctx.array(lay, "mult", (cout,), 1, MULT_LIMIT - 1)
    shift = ctx.array(lay, "shift", (cout,), 0, MAX_SHIFT)
    relu = ctx.bool(lay, "relu")
    return Layer(**common, out_shape=out_shape, relu=relu, kernel=k, stride=s, padding=p,
                 weight_bits=wb, epitome=epi, bias=bias, mult=mult, shift=shift)


def _parse_epitome(ctx: _Ctx, e: dict, cin: int, cout: int, k: int, wmax: int) -> Epitome:
    pre = "epitome."
    ctx.keys(e, _EPITOME_KEYS, pre)
    ce_in = ctx.int(e, "in_channels", 1, max(cin, MAX_CHANNELS), pre)
    ce_out = ctx.int(e, "out_channels", 1, MAX_CHANNELS, pre)
    p_in = ctx.int(e, "patch_in", 1, ce_in, pre)
    p_out = ctx.int(e, "patch_out", 1, ce_out, pre)
    g_in, g_out = math.ceil(cin / p_in), math.ceil(cout / p_out)
    if g_in * g_out > MAX_TABLE:
        raise ctx.fail(pre + "patch_in", f"the offset tables would have {g_in}x{g_out} "
                       f"entries, more than the limit {MAX_TABLE}: larger patches")
    row = ctx.array(e, "row_offset", (g_in, g_out), 0, ce_in - 1, pre, "(G_in, G_out)")
    col = ctx.array(e, "col_offset", (g_in, g_out), 0, ce_out - 1, pre, "(G_in, G_out)")
    weights = ctx.array(e, "weights", (ce_out, ce_in, k, k), -wmax, wmax, pre,
                        "(Ce_out, Ce_in, k, k)")
    return Epitome(ce_in, ce_out, p_in, p_out, row, col, weights)


