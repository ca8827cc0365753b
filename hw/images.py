"""Read memory images written by the software side: `manifest.json` and `$readmemh` hex files.

Every file is checked against the manifest (width, depth, SHA-256) before anything is generated
from it, so a corrupted or mismatched image is refused with a message that names the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST_FORMAT = "epim-images-v1"
MEMORIES = ("xbar", "ifrt", "ifat", "ofat", "ostage")


class ImageError(ValueError):
    """A memory image or manifest is missing, corrupted or does not fit the hardware."""


HEX_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\.hex\Z")
HEX_WORD = re.compile(r"[0-9a-fA-F]+\Z")


def inside(folder: Path, name, mpath: Path, what: str) -> Path:
    """`folder / name` for a plain file name from a manifest: no folders, no `..`, no
    absolute path (a manifest is data a user may have edited)."""
    if not isinstance(name, str) or not HEX_FILE.match(name):
        raise ImageError(f"{mpath}: {what}: {json.dumps(name)[:60]} is not a hex file name "
                         "in the manifest's folder")
    return folder / name


@dataclass(frozen=True)
class Images:
    """A layer's tile parameters and memory contents, as read from an image folder."""

    params: dict
    words: dict[str, list[int]]
    folder: Path


def read_manifest(mpath: Path, fmt: str) -> dict:
    """A JSON manifest of format `fmt`, or an ImageError naming the file."""
    try:
        manifest = json.loads(mpath.read_text())
    except OSError as exc:
        raise ImageError(f"{mpath}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ImageError(f"{mpath}: not valid JSON: {exc.msg}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ImageError(f"{mpath}: not an {fmt} manifest")
    return manifest


def load(folder: str | Path) -> Images:
    """Load and verify the images in `folder` (the one holding `manifest.json`)."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    manifest = read_manifest(mpath, MANIFEST_FORMAT)
    params = manifest.get("params")
    mems = manifest.get("memories")
    if not isinstance(params, dict) or not isinstance(mems, dict):
        raise ImageError(f"{mpath}: 'params' and 'memories' must be objects")
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    if hashlib.sha256(canonical).hexdigest() != manifest.get("params_sha256"):
        raise ImageError(f"{mpath}: 'params' do not match 'params_sha256': the manifest was "
                         "edited or corrupted after it was packed (re-run 'epim generate')")
    words = {}
    for name in MEMORIES:
        try:
            entry = mems[name]
            want = params["widths"][name]
            if entry["width"] != want:
                raise ImageError(f"{mpath}: memory {name!r} width {entry['width']} does not "
                                 f"match the tile's {want}")
            words[name] = read_hex(inside(folder, entry["file"], mpath, f"memory {name!r}"),
                                   entry["width"], entry["depth"], entry["sha256"])
        except (KeyError, TypeError) as exc:
            raise ImageError(f"{mpath}: memory {name!r}: entry {exc} missing or "
                             "malformed") from None
    return Images(params, words, folder)


def read_hex(path: Path, width: int, depth: int, sha256: str | None = None) -> list[int]:
    """Read a `$readmemh` file of `depth` words of `width` bits, checking its SHA-256."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
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
