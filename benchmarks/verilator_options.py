"""Which Verilator options pay off for the network accelerators: build and simulation times of
one design under several option sets, in one run.

    python benchmarks/verilator_options.py                 # the committed MNIST model
    python benchmarks/verilator_options.py --net NET.json --images 20 --sets before after

For each set: the Verilog -> C++ translation (Verilator's own walltime), the C++ compile, and
the simulation of `--images` MNIST test images through the cocotb testbench, which must be
bit-exact against the reference. Every set builds from an empty folder (the build cache is
keyed by the options, so no set reuses another's build).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from epim.app import generate
from epim.sim import buildcache, cosim
from epim.sw.chip import data, netcycles, netfile, reference

ROOT = Path(__file__).resolve().parent.parent
BASE = ("-Wno-fatal", "-Wno-lint")
# name: (Verilator arguments, C++ optimisation of the per-cycle code, threads)
SETS = {
    "before": (BASE + ("-O2",), "-O1", 1),  # cocotb's --public-flat-rw: every signal public
    "after": (buildcache.VERILATOR_ARGS, "-O1", 1),  # top ports public only
    "after-O3-xassign": (buildcache.VERILATOR_ARGS[:2] + ("-O3", "--x-assign", "fast")
                         + buildcache.VERILATOR_ARGS[3:], "-O1", 1),
    "after-cxx-O0": (buildcache.VERILATOR_ARGS, "-O0", 1),
    "after-cxx-O2": (buildcache.VERILATOR_ARGS, "-O2", 1),
    "after-threads2": (buildcache.VERILATOR_ARGS, "-O1", 2),
}


def run_set(name: str, gen, x: np.ndarray, per: int, pred_cycles: int, root: Path) -> dict:
    args, opt, threads = SETS[name]
    os.environ.pop("MAKEFLAGS", None)
    os.environ["EPIM_VERILATOR_OPT"] = opt
    os.environ["EPIM_VERILATOR_THREADS"] = str(threads)
    buildcache.VERILATOR_ARGS = args
    t0 = time.perf_counter()
    build_dir, built = buildcache.verilator_build([gen.verilog], "epim_net", root)
    t_build = time.perf_counter() - t0
    assert built
    log = (build_dir / "build.log").read_text()
    m = re.search(r"Walltime ([\d.]+) s", log)
    t_verilate = float(m.group(1)) if m else float("nan")
    phase = {"program": [], "inputs": cosim.pack_beats(x, 8), "n_out": len(x) * per}
    t0 = time.perf_counter()
    res = cosim.run_phases(gen, [phase], root, max_cycles=2 * pred_cycles + 10_000,
                           top="epim_net")[0]
    t_sim = time.perf_counter() - t0
    return {"set": name, "verilate_s": t_verilate, "cxx_s": t_build - t_verilate,
            "build_s": t_build, "simulate_s": t_sim, "outputs": res["outputs"],
            "cpp_mb": sum(f.stat().st_size for f in build_dir.glob("*.cpp")) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", type=Path, default=ROOT / "examples/mnist-epim-cnn-r4/net.json")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    net = netfile.load(args.net)
    x, _ = data.load("mnist", "test", args.images)
    x = x.astype(np.int64)
    ref = reference.run_network(net, x)
    per = netcycles.out_beats_per_image(net)
    pred = netcycles.predict(net, len(x))
    work = Path(tempfile.mkdtemp(prefix="epim-vopts-"))
    rows = []
    try:
        gen = generate.generate_network(net, work / "generated")
        mb = gen.verilog.stat().st_size / 1e6
        print(f"{args.net}: {mb:.1f} MB of Verilog, {len(x)} images")
        print(f"{'set':18} {'verilate s':>10} {'C++ s':>8} {'build s':>8} {'sim s':>7} "
              f"{'C++ MB':>7}  bit-exact")
        for name in args.sets:
            r = run_set(name, gen, x, per, pred.run.cycles, work / name)
            y = cosim.unpack_beats(r.pop("outputs"), net.output_layer)
            r["exact"] = bool((y == ref).all())
            rows.append(r)
            print(f"{name:18} {r['verilate_s']:10.1f} {r['cxx_s']:8.1f} {r['build_s']:8.1f} "
                  f"{r['simulate_s']:7.1f} {r['cpp_mb']:7.1f}  {r['exact']}", flush=True)
            shutil.rmtree(work / name, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
