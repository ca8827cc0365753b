"""Memory images: format tags, the tile memories, their word layouts and the hex files.

A layer's images are `$readmemh` hex files (one word per line, most significant digit first)
plus `manifest.json` with the layer's parameters (`epim.contract.params.TileParams`) and every
memory's file, width, depth and SHA-256. A network adds `network.json` beside the tile folders.
`docs/memory-images.md` documents the layouts; every word is packed least significant field
first, as the field tables below list them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from pathlib import Path

from .files import load_json, read_regular

NET_FORMAT = "epim-net-v1"  # the network file (docs/contract.md)
MANIFEST_FORMAT = "epim-images-v1"  # a tile's manifest.json
NETWORK_FORMAT = "epim-network-images-v1"  # network.json of a compiled network
MEMORIES = ("xbar", "ifrt", "ifat", "ofat", "ostage")

# the output-stage word: bias (two's complement), multiplier, shift
BIAS_BITS, MULT_BITS, SHIFT_BITS = 32, 31, 6

# a layer's, unit's or input's name: an identifier, so that it is safe as a folder name
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
HEX_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\.hex\Z")
HEX_WORD = re.compile(r"[0-9a-fA-F]+\Z")


class ProgTarget(enum.IntEnum):
    """The `mem` field of a programming word: which memory it writes."""

    XBAR = 0
    IFRT = 1
    IFAT = 2
    OFAT = 3
    OSTAGE = 4


PROG_MEM_BITS = 3


class ImageError(ValueError):
    """A memory image or manifest is missing, corrupted or does not fit the hardware."""


def ubits(n: int) -> int:
    """Bits to hold the values `0 .. n-1` (at least 1)."""
    return max(1, (n - 1).bit_length())


# --- Word layouts ------------------------------------------------------------------------------
# A layout is a list of `(field, bits)`, least significant first. The parameters `p` are a
# `TileParams` (anything with its attributes).

def xbar_fields(p) -> list[tuple[str, int]]:
    """One crossbar row: for each polarity (0 positive, 1 negative), epitome output channel `e`
    and cell slice `q` (least significant first), one cell of `cell_bits`."""
    return [(f"pol{pol}_e{e}_q{q}", p.cell_bits)
            for pol in range(2) for e in range(p.ce_out) for q in range(p.n_slices)]


def xbar_field(p, pol: int, e: int, q: int) -> int:
    """Bit offset of a cell in a crossbar row word (`xbar_fields` order)."""
    return ((pol * p.ce_out + e) * p.n_slices + q) * p.cell_bits


def ifrt_fields(p) -> list[tuple[str, int]]:
    """One IFRT step: `last` step of the pixel, the output groups it serves (`mask`, bit `go`
    for group `go`) and its input group `gi`."""
    return [("last", 1), ("mask", p.g_out), ("gi", ubits(p.g_in))]


def ifat_fields(p) -> list[tuple[str, int]]:
    """One IFAT step: for each epitome input channel, whether its rows are driven (`active`)
    and the input channel that drives them (`src`)."""
    return [f for e in range(p.ce_in) for f in ((f"active{e}", 1), (f"src{e}", p.src_bits))]


def ofat_fields(p) -> list[tuple[str, int]]:
    """One OFAT entry (per input group): each output group's first epitome column."""
    return [(f"base{go}", ubits(p.ce_out)) for go in range(p.g_out)]


def ostage_fields(p=None) -> list[tuple[str, int]]:
    """One output-stage word (per output channel): bias, multiplier, shift."""
    return [("bias", BIAS_BITS), ("mult", MULT_BITS), ("shift", SHIFT_BITS)]


FIELDS = {"xbar": xbar_fields, "ifrt": ifrt_fields, "ifat": ifat_fields, "ofat": ofat_fields,
          "ostage": ostage_fields}


def word_width(memory: str, p) -> int:
    return sum(bits for _, bits in FIELDS[memory](p))


def prog_fields(p) -> list[tuple[str, int]]:
    """The programming word: target memory (`ProgTarget`), word address, word."""
    return [("mem", PROG_MEM_BITS), ("addr", ubits(max(p.depths.values()))),
            ("data", max(p.widths.values()))]


def network_prog_fields(params: list) -> list[tuple[str, int]]:
    """The programming word of a whole network accelerator: the tile (its index among the
    network's tiles, in `network.json` order), then a tile's programming word with the
    widest address and data field of any tile (a narrower tile takes the low bits)."""
    return [("tile", ubits(len(params))), ("mem", PROG_MEM_BITS),
            ("addr", max(ubits(max(p.depths.values())) for p in params)),
            ("data", max(max(p.widths.values()) for p in params))]


def offsets(layout: list[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    """`{field: (offset, bits)}` of a layout."""
    out, at = {}, 0
    for name, bits in layout:
        out[name] = (at, bits)
        at += bits
    return out


def pack(layout: list[tuple[str, int]], values: dict[str, int]) -> int:
    """A word from field values (missing fields are 0); a value that does not fit its field is
    refused. A signed field takes its two's complement (only `bias` is signed)."""
    word = 0
    for name, (at, bits) in offsets(layout).items():
        v = int(values.get(name, 0))
        if name == "bias":
            if not -(2 ** (bits - 1)) <= v < 2 ** (bits - 1):
                raise ValueError(f"field {name}={v} does not fit {bits} signed bits")
            v &= 2**bits - 1
        elif not 0 <= v < 2**bits:
            raise ValueError(f"field {name}={v} does not fit {bits} bits")
        word |= v << at
    return word


def unpack(layout: list[tuple[str, int]], word: int) -> dict[str, int]:
    """Field values of a word (`bias` as a signed value)."""
    out = {}
    for name, (at, bits) in offsets(layout).items():
        v = (word >> at) & (2**bits - 1)
        if name == "bias":
            v -= (v >> (bits - 1)) << bits
        out[name] = v
    return out


def pack_fields(values, width: int) -> int:
    """Equal-width non-negative values, the first at the least significant end (a layout of
    `len(values)` fields of `width` bits, packed without building it)."""
    word = 0
    for i, v in enumerate(values):
        v = int(v)
        if not 0 <= v < 2**width:
            raise ValueError(f"field value {v} does not fit {width} bits")
        word |= v << (i * width)
    return word


# --- Files -------------------------------------------------------------------------------------

def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(obj) -> str:
    """JSON in the canonical form the checksums are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def params_digest(params: dict) -> str:
    """SHA-256 of tile parameters in canonical JSON: guards a manifest against edits."""
    return sha256_text(canonical(params))


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a network manifest in canonical JSON, without its own `sha256` field."""
    return sha256_text(canonical({k: v for k, v in manifest.items() if k != "sha256"}))


def hex_text(words: list[int], width: int) -> str:
    """The `$readmemh` text of `words`: one word per line, `ceil(width/4)` hex digits."""
    digits = max(1, math.ceil(width / 4))
    return "".join(f"{w:0{digits}x}\n" for w in words)


def inside(folder: Path, name, mpath: Path, what: str) -> Path:
    """`folder / name` for a plain file name from a manifest: no folders, no `..`, no
    absolute path (a manifest is data a user may have edited)."""
    if not isinstance(name, str) or not HEX_FILE.match(name):
        raise ImageError(f"{mpath}: {what}: {json.dumps(name)[:60]} is not a hex file name "
                         "in the manifest's folder")
    return folder / name


MAX_MANIFEST_BYTES = 64 * 2**20  # a network manifest lists every unit; a tile's is small
MAX_HEX_BYTES = 2**30  # one memory image


def read_manifest(mpath: Path, fmt: str) -> dict:
    """A JSON manifest of format `fmt`, or an ImageError naming the file."""
    manifest = load_json(mpath, "a manifest", MAX_MANIFEST_BYTES, ImageError)
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ImageError(f"{mpath}: not an {fmt} manifest")
    return manifest


def read_hex(path: Path, width: int, depth: int, sha256: str | None = None) -> list[int]:
    """Read a `$readmemh` file of `depth` words of `width` bits, checking its SHA-256."""
    raw = read_regular(path, "a memory image", MAX_HEX_BYTES, ImageError)
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ImageError(f"{path}: checksum mismatch: the file was changed or corrupted after "
                         "it was packed (re-run 'epim generate')")
    words = []
    for n, line in enumerate(raw.decode(errors="replace").splitlines(), 1):
        line = line.split("//")[0].strip()
        if not line:
            continue
        if not HEX_WORD.match(line):
            raise ImageError(f"{path}:{n}: not a hex word: {line[:20]!r}")
        v = int(line, 16)
        if v >= 2**width:
            raise ImageError(f"{path}:{n}: word wider than {width} bits")
        words.append(v)
    if len(words) != depth:
        raise ImageError(f"{path}: {len(words)} words, the manifest says {depth}")
    return words
