"""Emit Verilog for a tile from a folder of memory images (the hardware side's only input)."""

from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog

from .images import Images, load
from .tile import PIMTile

TOP = "epim_tile"


def tile_from_images(images: Images | str | Path, blank: bool = False) -> PIMTile:
    """A tile initialised from the images; `blank=True` starts with every memory zeroed, as an
    unprogrammed chip does, to be written through the programming port."""
    if not isinstance(images, Images):
        images = load(images)
    cfg = images.params
    words = images.words
    if blank:
        words = {name: [0] * len(ws) for name, ws in words.items()}
    return PIMTile(cfg, words, verilog_xbar=True)


def emit_verilog(tile: PIMTile, name: str = TOP) -> str:
    """The tile as Verilog text; the top module is `name` with ports `clk`, `rst` and the
    flattened streams (`i__payload`, `i__valid`, `i__ready`, ...), followed by the modules it
    instantiates (its behavioural crossbar)."""
    return verilog.convert(tile, name=name, emit_src=False) + "".join(
        tile.verilog_modules.values())


NETWORK_TOP = "epim_net"


def network_from_images(folder: str | Path, shared: bool = True, fixed: bool = False):
    """The accelerator of the network images in `folder` (`network.json` and `tiles/`):
    programmable tiles, one module per distinct tile shape (`shared`), unless `fixed=True`
    asks for weight-baked tiles."""
    from .network import NetworkAccelerator, load_network

    return NetworkAccelerator(load_network(folder), shared=shared, fixed=fixed)


IMAGE_PLUSARG = "epim_images"
MEMORY_NAMES = ("xbar", "ifrt", "ifat", "ofat", "ostage")


def memories_of(text: str) -> list[str]:
    """The image memories a module's Verilog declares (`<mem>_table`)."""
    return [name for name in MEMORY_NAMES if f" {name}_table [" in text]


def network_loader(text: str, top: str, loads: list[tuple[str, list[str], str]]) -> str:
    """The accelerator's Verilog with its image loader in the top module `top`: when the
    simulation is started with `+epim_images=DIR`, at the first rising clock edge (after
    every module's own initialisation, while the testbench holds reset) it reads
    `DIR/<folder>/<mem>.hex` into memory `<mem>_table` of each instance, for each
    `(instance path, memories, folder)` of `loads`. The instance path is a hierarchical
    reference below the top, so the tile modules have no parameter of their own and
    Verilator builds each shared module once. Without the plusarg the memories start at
    zero, as an unprogrammed chip, for the programming port."""
    head = text.find(f"module {top}(")
    end = text.find("endmodule", head)
    if head < 0 or end < 0:
        raise ValueError(f"no module {top!r} in the text")
    if not loads:
        return text
    reads = "".join(
        f'        $readmemh({{epim_dir, "/{folder}/{mem}.hex"}}, {path}.{mem}_table);\n'
        for path, mems, folder in loads for mem in mems)
    hook = ("  // EPIM image loader (epim.hw.generate.network_loader)\n"
            "  reg epim_images_loaded = 1'b0;\n"
            "  always @(posedge clk) begin : epim_load_images\n"
            "    string epim_dir;\n"
            "    if (!epim_images_loaded) begin\n"
            "      epim_images_loaded <= 1'b1;\n"
            f'      if ($value$plusargs("{IMAGE_PLUSARG}=%s", epim_dir)) begin\n'
            + reads + "      end\n    end\n  end\n")
    return text[:end] + hook + text[end:]


def emit_network_verilog(acc, name: str = NETWORK_TOP) -> str:
    """The accelerator as Verilog; top `name` with `clk`, `rst`, `i__*`, `o__*`, `prog__*`
    (programmable tiles) and `idle`, followed by the modules that tiles of a shared shape
    and copies of replicated layers instantiate; the top module of a programmable one has
    the image loader (`network_loader`)."""
    text = verilog.convert(acc, name=name, emit_src=False)
    extra, mems = {}, {}
    for module, tile in acc.shared_modules.items():
        part = verilog.convert(tile, name=module, emit_src=False)
        text += part
        mems[module] = memories_of(part)
        extra.update(tile.verilog_modules)
    if not acc.fixed:
        text = network_loader(text, name, [(path, mems[module], folder)
                                           for path, folder, module in acc.image_loads])
    return text + "".join(extra.values())


BOARD_TOP = "epim_board"


def board_from_images(folder: str | Path, divisor: int):
    """`BoardLink` (UART, protocol, LEDs) around the accelerator of the images in `folder`,
    at `divisor` clock cycles per UART bit: the board top without a platform, for simulation."""
    from .board import BoardLink
    from .network import NetworkAccelerator, load_network

    loaded = load_network(folder)
    return BoardLink(NetworkAccelerator(loaded, fixed=True), loaded["manifest"], divisor)


def emit_board_verilog(link, name: str = BOARD_TOP) -> str:
    """The board top as Verilog; top `name` with `clk`, `rst`, `rx`, `tx`, `leds`."""
    return verilog.convert(link, name=name, emit_src=False)
