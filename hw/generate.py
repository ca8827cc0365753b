"""Emit Verilog for a tile from a folder of memory images (the hardware side's only input)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from amaranth.back import rtlil, verilog

from .crossbar import CrossbarArray
from .images import Images, load, zeroed
from .tile import PIMTile

TOP = "epim_tile"

# A memory's initial words in Amaranth's RTLIL: one `$meminit_v2` cell per memory.
_MEMINIT = re.compile(r"^  cell \$meminit_v2 .*?^  end\n", re.M | re.S)
_ZERO_DATA = re.compile(r"^    connect \\DATA \d+'0+$", re.M)


def to_verilog(elaboratable, name: str) -> str:
    """`amaranth.back.verilog.convert` without the initial blocks of memories whose initial
    words are all zero: a blank tile's memories are written before they are read (the input
    memory by the loader, the accumulators behind their `live` bits, cells and tables through
    the programming port), so a zero start is no part of the design, and Yosys would print it
    as one line per word (a seventh of a blank network's Verilog). Memories with images keep
    their initial words."""
    text = rtlil.convert(elaboratable, name=name, emit_src=False)
    text = _MEMINIT.sub(lambda m: "" if _ZERO_DATA.search(m.group(0)) else m.group(0), text)
    return verilog._convert_rtlil_text(text)  # what `verilog.convert` runs on its RTLIL


def tile_from_images(images: Images | str | Path, blank: bool = False) -> PIMTile:
    """A tile initialised from the images; `blank=True` starts with every memory zeroed, as an
    unprogrammed chip does, to be written through the programming port."""
    if not isinstance(images, Images):
        images = load(images)
    cfg = images.params
    words = images.words
    if blank:
        words = zeroed(words)
    return PIMTile(cfg, words)


def emit_verilog(tile: PIMTile, name: str = TOP) -> str:
    """The tile as Verilog text; the top module is `name` with ports `clk`, `rst` and the
    flattened streams (`i__payload`, `i__valid`, `i__ready`, ...)."""
    return to_verilog(tile, name)


NETWORK_TOP = "epim_net"


def network_from_images(folder: str | Path, shared: bool = True, fixed: bool = False):
    """The accelerator of the network images in `folder` (`network.json` and `tiles/`):
    programmable tiles, one module per distinct tile shape (`shared`), unless `fixed=True`
    asks for weight-baked tiles."""
    from .network import NetworkAccelerator, load_network

    return NetworkAccelerator(load_network(folder), shared=shared, fixed=fixed)


def emit_network_verilog(acc, name: str = NETWORK_TOP) -> str:
    """The accelerator as Verilog; top `name` with `clk`, `rst`, `i__*`, `o__*`, `prog__*`
    (programmable tiles) and `idle`, followed by the modules that tiles of a shared shape
    and copies of replicated layers instantiate, and the crossbar arrays that those tiles
    share (one module per physical crossbar). Programmable tiles start blank, as an
    unprogrammed chip does: the testbench writes their images through the programming port."""
    text = to_verilog(acc, name)
    arrays = {}
    for module, tile in acc.shared_modules.items():
        text += to_verilog(tile, module)
        arrays.update(tile.arrays)
    for module, spec in sorted(arrays.items()):
        text += to_verilog(CrossbarArray(spec), module)
    return text


BOARD_TOP = "epim_board"


def board_from_images(folder: str | Path, divisor: int, fixed: bool = False,
                      blank: bool = False):
    """`BoardLink` (UART, protocol, LEDs) around the accelerator of the images in `folder`,
    at `divisor` clock cycles per UART bit: the board top without a platform, for simulation.
    Programmable tiles (cells and tables in writable memories, written by the link's ``P``
    commands) initialised from the images, or blank (`blank=True`, as an unprogrammed chip,
    for a test that programs them through the link); `fixed=True` for weight-baked tiles."""
    from .board import BoardLink
    from .network import NetworkAccelerator, load_network

    loaded = load_network(folder)
    return BoardLink(NetworkAccelerator(blanked(loaded) if blank else loaded, fixed=fixed),
                     loaded["manifest"], divisor)


def blanked(loaded: dict) -> dict:
    """`load_network`'s result with every tile memory zeroed."""
    tiles = {name: replace(img, words=zeroed(img.words))
             for name, img in loaded["tiles"].items()}
    return {**loaded, "tiles": tiles}


def emit_board_verilog(link, name: str = BOARD_TOP) -> str:
    """The board top as Verilog; top `name` with `clk`, `rst`, `rx`, `tx`, `leds`."""
    return verilog.convert(link, name=name, emit_src=False)
