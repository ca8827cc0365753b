"""Read memory images written by the software side: `manifest.json` and `$readmemh` hex files.

Every file is checked against the manifest (width, depth, SHA-256) and the parameters against
`TileParams` before anything is generated from them, so a corrupted or mismatched image is
refused with a message that names the file. The formats themselves are `epim.contract`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contract.images import (
    MANIFEST_FORMAT,
    MEMORIES,
    ImageError,
    inside,
    params_digest,
    read_hex,
    read_manifest,
)
from ..contract.params import TileParams

__all__ = ["ImageError", "Images", "load", "read_manifest"]


@dataclass(frozen=True)
class Images:
    """A layer's tile parameters and memory contents, as read from an image folder."""

    params: TileParams
    words: dict[str, list[int]]
    folder: Path


def zeroed(words: dict[str, list[int]]) -> dict[str, list[int]]:
    """Memory contents of the same depths, every word 0: an unprogrammed chip's."""
    return {name: [0] * len(ws) for name, ws in words.items()}


def load(folder: str | Path) -> Images:
    """Load and verify the images in `folder` (the one holding `manifest.json`)."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    manifest = read_manifest(mpath, MANIFEST_FORMAT)
    raw = manifest.get("params")
    mems = manifest.get("memories")
    if not isinstance(raw, dict) or not isinstance(mems, dict):
        raise ImageError(f"{mpath}: 'params' and 'memories' must be objects")
    if params_digest(raw) != manifest.get("params_sha256"):
        raise ImageError(f"{mpath}: 'params' do not match 'params_sha256': the manifest was "
                         "edited or corrupted after it was packed (re-run 'epim generate')")
    params = TileParams.from_dict(raw, f"{mpath}: params")
    words = {}
    for name in MEMORIES:
        try:
            entry = mems[name]
            want = params.widths[name]
            if entry["width"] != want:
                raise ImageError(f"{mpath}: memory {name!r} width {entry['width']} does not "
                                 f"match the tile's {want}")
            if entry["depth"] != params.depths[name]:
                raise ImageError(f"{mpath}: memory {name!r} depth {entry['depth']} does not "
                                 f"match the tile's {params.depths[name]}")
            words[name] = read_hex(inside(folder, entry["file"], mpath, f"memory {name!r}"),
                                   entry["width"], entry["depth"], entry["sha256"])
        except (KeyError, TypeError) as exc:
            raise ImageError(f"{mpath}: memory {name!r}: entry {exc} missing or "
                             "malformed") from None
    return Images(params, words, folder)
