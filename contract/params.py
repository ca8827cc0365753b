"""Typed tile parameters: the `params` of a tile's image manifest.

`TileParams` is frozen and validated: `from_dict` refuses a missing, unknown or ill-typed key
and any derived value (`passes`, `widths`) that does not match the others, so a manifest cannot
describe a tile the generator would build differently. `to_dict` gives the manifest's `params`
back, key for key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import geometry
from .images import FIELDS, MEMORIES, NAME_RE, ImageError, ubits
from .ops import TILE_OPS, Op

# bounds on any size in a manifest (far above a ResNet-50's, far below what exhausts memory)
MAX_DIM = 2**16
MAX_BITS = 64


@dataclass(frozen=True)
class TileParams:
    """Shape and PIM parameters of one conv/linear layer's tile."""

    name: str
    op: str  # a tile's op: `Op.CONV` or `Op.LINEAR`
    cin: int
    cout: int
    h: int  # input feature map
    w: int
    ho: int  # output feature map
    wo: int
    kernel: int
    stride: int
    padding: int
    in_bits: int
    out_bits: int
    relu: bool
    weight_bits: int
    ce_in: int  # epitome channels
    ce_out: int
    patch_in: int
    patch_out: int
    g_in: int  # input and output channel groups
    g_out: int
    n_slices: int  # cell slices per weight
    n_t: int  # DAC cycles per input value
    max_steps: int  # IFRT/IFAT depth
    acc_bits: int
    src_bits: int  # IFAT source field
    xbar_rows: int
    xbar_cols: int
    cell_bits: int
    dac_bits: int
    adc_bits: int
    lanes: int  # row chunks computed at once
    cols: int  # physical columns computed at once (at most xbar_cols)
    n_steps: int  # IFRT steps in use
    reuse: bool  # IFRT reuse on (spec section 4)
    # Not in the manifest: a copy of a replicated layer computes the output pixels
    # `pix_first, pix_first + pix_step, ...` of each image (raster order); a lone tile all.
    pix_first: int = 0
    pix_step: int = 1

    # --- derived ----------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Epitome matrix rows `Ce_in * k * k`."""
        return geometry.epitome_rows(self.ce_in, self.kernel)

    @property
    def chunks(self) -> int:
        """Row chunks of `xbar_rows` (one ADC set each)."""
        return geometry.row_chunks(self.rows, self.xbar_rows)

    @property
    def passes(self) -> int:
        """Cycles per DAC slice: the row chunks go through `lanes` adder trees and ADC sets."""
        return geometry.ceil_div(self.chunks, self.lanes)

    @property
    def pixels(self) -> int:
        """Output pixels this tile computes per image."""
        return -(-(self.ho * self.wo - self.pix_first) // self.pix_step)

    @property
    def last_pixel(self) -> int:
        return self.pix_first + (self.pixels - 1) * self.pix_step

    @property
    def widths(self) -> dict[str, int]:
        """Word width of every memory (the sum of its field table)."""
        return {m: sum(b for _, b in FIELDS[m](self)) for m in MEMORIES}

    @property
    def depths(self) -> dict[str, int]:
        return {"xbar": self.rows, "ifrt": self.max_steps, "ifat": self.max_steps,
                "ofat": self.g_in, "ostage": self.cout}

    # --- manifest ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The manifest's `params` (derived `passes` and `widths` included, for readers)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in _LOCAL:
                continue
            if f.name == "n_steps":
                out["passes"] = self.passes
                out["widths"] = self.widths
            out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, d, where: str = "params") -> TileParams:
        """Parameters from a manifest's `params`, checked; ImageError names `where`."""
        if not isinstance(d, dict):
            raise ImageError(f"{where}: must be an object")
        names = [f.name for f in dataclasses.fields(cls) if f.name not in _LOCAL]
        unknown = sorted(set(d) - set(names) - {"passes", "widths"})
        if unknown:
            raise ImageError(f"{where}: unknown key {unknown[0]!r}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in _LOCAL:
                continue
            if f.name not in d:
                raise ImageError(f"{where}: {f.name!r} is missing")
            v = d[f.name]
            if f.type == "bool":
                if not isinstance(v, bool):
                    raise ImageError(f"{where}: {f.name!r} must be true or false")
            elif f.type == "str":
                if not isinstance(v, str):
                    raise ImageError(f"{where}: {f.name!r} must be a string")
            elif isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_DIM:
                raise ImageError(f"{where}: {f.name!r} must be an integer in 0..{MAX_DIM}, "
                                 f"not {str(v)[:40]}")
            values[f.name] = v
        try:
            p = cls(**values)
        except ValueError as exc:
            raise ImageError(f"{where}: {exc}") from None
        for key in ("passes", "widths"):
            if key in d and d[key] != getattr(p, key):
                raise ImageError(f"{where}: {key!r} is {d[key]!r}, the other parameters give "
                                 f"{getattr(p, key)!r}")
        return p

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r} is not an identifier")
        if self.op not in TILE_OPS:
            raise ValueError(f"op {self.op!r} has no crossbar tile")
        positive = ("cin", "cout", "h", "w", "ho", "wo", "kernel", "stride", "in_bits",
                    "out_bits", "weight_bits", "ce_in", "ce_out", "patch_in", "patch_out",
                    "g_in", "g_out", "n_slices", "n_t", "max_steps", "acc_bits", "src_bits",
                    "xbar_rows", "xbar_cols", "cell_bits", "dac_bits", "adc_bits", "lanes", "cols",
                    "pix_step")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key!r} must be at least 1")
        for key in ("in_bits", "out_bits", "weight_bits", "cell_bits", "dac_bits", "adc_bits",
                    "acc_bits"):
            if getattr(self, key) > MAX_BITS:
                raise ValueError(f"{key!r} must be at most {MAX_BITS}")
        if self.src_bits < ubits(self.cin):
            raise ValueError(f"'src_bits' {self.src_bits} cannot name {self.cin} channels")
        if self.cols > self.xbar_cols:
            raise ValueError(f"'cols' {self.cols} exceeds the crossbar's {self.xbar_cols} "
                             "columns")
        if self.lanes > self.chunks:
            raise ValueError(f"'lanes' {self.lanes} exceeds the {self.chunks} row chunks")
        if self.n_steps > self.max_steps:
            raise ValueError(f"'n_steps' {self.n_steps} exceeds 'max_steps' {self.max_steps}")
        if self.n_t * self.dac_bits < self.in_bits:
            raise ValueError(f"'n_t' {self.n_t} DAC slices of {self.dac_bits} bits cannot "
                             f"carry {self.in_bits}-bit inputs")
        if self.pix_first >= self.ho * self.wo:
            raise ValueError("'pix_first' is past the last output pixel")

    def check_words(self, words: dict[str, list[int]]) -> None:
        """Refuse memory contents that do not fit the tile's memories (ValueError)."""
        for name, depth in self.depths.items():
            if name not in words:
                raise ValueError(f"memory {name!r} has no initial contents")
            if len(words[name]) != depth:
                raise ValueError(f"memory {name!r} needs {depth} words, got {len(words[name])}")
            if any(not 0 <= v < 2 ** self.widths[name] for v in words[name]):
                raise ValueError(f"memory {name!r} has a word wider than "
                                 f"{self.widths[name]} bits")

    def replica(self, first: int, step: int) -> TileParams:
        """The parameters of the copy that computes pixels `first, first + step, ...`."""
        return dataclasses.replace(self, pix_first=first, pix_step=step)


_LOCAL = ("pix_first", "pix_step")


# --- Network units (the `units` of network.json) -----------------------------------------------

@dataclass(frozen=True)
class FlattenParams:
    """A flatten unit in front of a linear tile: collects `pixels` beats of `channels` values
    of `bits` bits into one beat."""

    channels: int
    pixels: int
    bits: int


@dataclass(frozen=True)
class TileUnit:
    """A conv/linear layer's tile: its images in `folder` (`tiles/<name>`), checked against
    `manifest_sha256`; `replicas` copies (`epim.sw.chip.replication`)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    folder: str
    flatten: FlattenParams | None
    replicas: int
    manifest_sha256: str = ""


@dataclass(frozen=True)
class AddParams:
    """A residual adder: `clamp((a * ma + b * mb + rnd) >> shift)`; `fifo` the skip FIFO depths
    in front of inputs a and b (0: none)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    channels: int
    a_bits: int
    b_bits: int
    out_bits: int
    ma: int
    mb: int
    shift: int
    fifo: tuple[int, int]
    # contract v1.1: an input read as two's complement (its producer has no ReLU); written
    # into network.json only when true, so a v1 network's manifest is unchanged
    a_signed: bool = False
    b_signed: bool = False

    def streams(self, beats_of) -> tuple[list[tuple[int, int, str]], tuple[int, int]]:
        """Its streams: per input `(bits per beat, beats per image, what)` it takes, and
        `(bits per beat, beats per image)` it makes; `beats_of(name)` gives a tensor's
        beats per image (an adder passes its inputs' pixels through)."""
        b = beats_of(self.inputs[0])
        return ([(self.channels * self.a_bits, b, "on input a"),
                 (self.channels * self.b_bits, b, "on input b")],
                (self.channels * self.out_bits, b))


@dataclass(frozen=True)
class PoolParams:
    """Global average pooling: `clamp((sum * mult + rnd) >> shift)` over `pixels` beats."""

    name: str
    op: str
    inputs: tuple[str, ...]
    channels: int
    pixels: int
    in_bits: int
    out_bits: int
    mult: int
    shift: int

    def streams(self, beats_of) -> tuple[list[tuple[int, int, str]], tuple[int, int]]:
        """As `AddParams.streams`: a pixel a beat in, one beat an image out."""
        return ([(self.channels * self.in_bits, self.pixels, "as input")],
                (self.channels * self.out_bits, 1))


MAX_POOL_WINDOW = 15  # largest max-pool kernel and stride (the network file's bound)


@dataclass(frozen=True)
class MaxPoolParams:
    """Max pooling (contract v1.1): `kernel` x `kernel` windows every `stride` pixels over a
    `channels` x `height` x `width` map of `bits`-bit unsigned values, `padding` pixels of
    padding that never win (PyTorch's `max_pool2d`, floor mode)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    channels: int
    height: int
    width: int
    bits: int
    kernel: int
    stride: int
    padding: int

    def streams(self, beats_of) -> tuple[list[tuple[int, int, str]], tuple[int, int]]:
        """As `AddParams.streams`: a pixel a beat in and out, the width kept."""
        return ([(self.channels * self.bits, self.height * self.width, "as input")],
                (self.channels * self.bits, self.out_height * self.out_width))

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding - self.kernel) // self.stride + 1

    def __post_init__(self):
        for key in ("channels", "height", "width", "bits", "kernel", "stride"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key!r} must be at least 1")
        if self.bits > MAX_BITS:
            raise ValueError(f"'bits' must be at most {MAX_BITS}")
        for key in ("channels", "height", "width"):
            if getattr(self, key) > MAX_DIM:
                raise ValueError(f"{key!r} must be at most {MAX_DIM}")
        for key in ("kernel", "stride"):
            if getattr(self, key) > MAX_POOL_WINDOW:
                raise ValueError(f"{key!r} must be at most {MAX_POOL_WINDOW}")
        if self.padding > self.kernel // 2:
            raise ValueError(f"'padding' {self.padding} exceeds kernel // 2")
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError("the window is larger than the padded map")


UNIT_TYPES = {Op.CONV: TileUnit, Op.LINEAR: TileUnit, Op.ADD: AddParams,
              Op.AVGPOOL_GLOBAL: PoolParams, Op.MAXPOOL: MaxPoolParams}
Unit = TileUnit | AddParams | PoolParams | MaxPoolParams
MAX_INT = 2**62  # multipliers and shifts of the network file are far below
MAX_MULT = 2**31
SIGNED = ("ma", "mb")  # an adder's input multipliers may be negative
OPTIONAL_FLAGS = ("a_signed", "b_signed")  # written only when true


def unit_to_dict(unit: Unit) -> dict:
    """A unit as the manifest writes it (tuples as lists; no empty checksum, no false
    signedness flag)."""
    out = {}
    for f in dataclasses.fields(unit):
        v = getattr(unit, f.name)
        if f.name in ("manifest_sha256", *OPTIONAL_FLAGS) and not v:
            continue
        if isinstance(v, FlattenParams):
            v = dataclasses.asdict(v)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def unit_from_dict(d, where: str) -> Unit:
    """A unit of `network.json`, checked: every key present and nothing else, names are
    identifiers, integers in range; ImageError names `where`."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) \
            or not NAME_RE.match(d["name"]):
        raise ImageError(f"{where} must be an object whose 'name' is an identifier")
    where = f"{where} ({d['name']!r})"
    cls = UNIT_TYPES.get(d["op"]) if isinstance(d.get("op"), str) else None
    if cls is None:
        raise ImageError(f"{where}: unknown op {str(d.get('op'))[:40]!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ImageError(f"{where}: unknown key {unknown[0]!r}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is not dataclasses.MISSING:
                continue
            raise ImageError(f"{where}: {f.name!r} is missing")
        v = d[f.name]
        if f.name == "inputs":
            if not isinstance(v, list) or not all(isinstance(s, str) and NAME_RE.match(s)
                                                  for s in v):
                raise ImageError(f"{where}: 'inputs' must be a list of names")
            v = tuple(v)
        elif f.name == "fifo":
            if not isinstance(v, list) or len(v) != 2 or not all(_count(x, MAX_DIM * MAX_DIM)
                                                                 for x in v):
                raise ImageError(f"{where}: 'fifo' must be two depths")
            v = tuple(v)
        elif f.name == "flatten":
            if v is not None:
                if not isinstance(v, dict) or set(v) != {"channels", "pixels", "bits"} \
                        or not all(_count(x, MAX_DIM * MAX_DIM) for x in v.values()):
                    raise ImageError(f"{where}: 'flatten' must be null or channels, pixels "
                                     "and bits")
                v = FlattenParams(**v)
        elif f.type == "str":
            if not isinstance(v, str):
                raise ImageError(f"{where}: {f.name!r} must be a string")
        elif f.type == "bool":
            if not isinstance(v, bool):
                raise ImageError(f"{where}: {f.name!r} must be true or false")
        elif f.name in SIGNED:
            if isinstance(v, bool) or not isinstance(v, int) or not abs(v) < MAX_MULT:
                raise ImageError(f"{where}: {f.name!r} must be an integer of magnitude below "
                                 f"2**31")
        elif not _count(v, MAX_INT):
            raise ImageError(f"{where}: {f.name!r} must be a non-negative integer")
        values[f.name] = v
    if cls is TileUnit and values["folder"] != f"tiles/{values['name']}":
        raise ImageError(f"{where}: 'folder' must be 'tiles/{values['name']}'")
    if cls is TileUnit and values["replicas"] < 1:
        raise ImageError(f"{where}: 'replicas' must be a positive integer")
    try:
        return cls(**values)
    except ValueError as exc:
        raise ImageError(f"{where}: {exc}") from None


def _count(v, top: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= top


IO_KEYS = {"input": {"name": str, "channels": int, "height": int, "width": int, "bits": int},
           "output": {"name": str, "channels": int, "bits": int, "signed": bool,
                      "beats_per_image": int}}


def check_network_io(manifest: dict, where: str) -> None:
    """Refuse a network manifest whose `input`, `output`, `reuse` or `lanes` is malformed
    (ImageError naming `where` and the field): the accelerator's ports are built from them."""
    for part, keys in IO_KEYS.items():
        d = manifest.get(part)
        if not isinstance(d, dict) or set(d) != set(keys):
            raise ImageError(f"{where}: {part!r} must be an object with {', '.join(keys)}")
        for key, typ in keys.items():
            v = d[key]
            if typ is str:
                ok = isinstance(v, str) and NAME_RE.match(v)
            elif typ is bool:
                ok = isinstance(v, bool)
            else:
                ok = _count(v, MAX_DIM * MAX_DIM) and v >= 1
            if not ok:
                raise ImageError(f"{where}: '{part}.{key}' is {str(v)[:40]!r}, not a valid "
                                 f"{'name' if typ is str else typ.__name__}")
    if not isinstance(manifest.get("reuse"), bool):
        raise ImageError(f"{where}: 'reuse' must be true or false")
    lanes = manifest.get("lanes")
    if not (lanes is None or _count(lanes, MAX_DIM) or (
            isinstance(lanes, dict) and all(_count(v, MAX_DIM) for v in lanes.values()))):
        raise ImageError(f"{where}: 'lanes' must be null, a count or counts by layer")
