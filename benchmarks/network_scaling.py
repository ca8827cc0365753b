"""Weight-baked ("fixed") against programmable tiles with one module per distinct tile shape, on a
whole-network accelerator, in one run: Verilog size, generation, Verilator build and simulation
of N images, each checked bit-exact against the integer reference and cycle-exact against the
network cycle model.

    python benchmarks/network_scaling.py                      # the committed CIFAR-10 ResNet-20
    python benchmarks/network_scaling.py --net NET.json --images 3 --modes fixed programmable

Each mode generates into, and builds in, a fresh folder (no cache hit). `--json` writes the
figures. The images are seeded random inputs of the network's input shape and width (the
arithmetic does not care where they come from; `epim cosim` takes real ones).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from epim.app import generate, verify
from epim.sim import buildcache
from epim.sw import netfile

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NET = ROOT / "examples/cifar10-epim-resnet20-r3/net.json"


def run_mode(net, x: np.ndarray, mode: str, root: Path) -> dict:
    fixed = mode == "fixed"
    t0 = time.perf_counter()
    gen = generate.generate_network(net, root / ("generated-fixed" if fixed else "generated"),
                                    fixed=fixed)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, built = buildcache.verilator_build([gen.verilog], "epim_net", root)
    t_build = time.perf_counter() - t0
    assert built, "the build folder was not fresh"
    t0 = time.perf_counter()
    y, rep = verify.cosim_network(net, x, root, fixed=fixed)
    t_sim = time.perf_counter() - t0
    modules = gen.verilog.read_text().count("\nmodule ") + 1
    return {"mode": mode, "verilog_mb": round(gen.verilog.stat().st_size / 1e6, 2),
            "verilog_modules": modules, "seconds_generate": round(t_gen, 1),
            "seconds_build": round(t_build, 1), "seconds_simulate": round(t_sim, 1),
            "seconds_total": round(t_gen + t_build + t_sim, 1), "images": int(x.shape[0]),
            "bit_exact": rep["match"], "cycles_match": rep["cycles_match"],
            "steady_cycles_per_image": rep["steady_cycles_per_image"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default=str(DEFAULT_NET))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["fixed", "programmable"],
                    choices=["fixed", "programmable"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    net = netfile.load(args.net)
    c, h, w = net.input_shape
    x = np.random.default_rng(args.seed).integers(0, 2**net.input_bits,
                                                  size=(args.images, c, h, w))
    tiles = [la for la in net.layers if la.op in ("conv", "linear")]
    print(f"{args.net}: {len(tiles)} tiles, {args.images} image(s); modes {args.modes}",
          flush=True)
    rows = []
    for mode in args.modes:
        with tempfile.TemporaryDirectory(prefix=f"epim-scaling-{mode}-") as tmp:
            rows.append(run_mode(net, x, mode, Path(tmp)))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| tiles | Verilog MB | modules | generate s | build s | simulate s | total s | "
          "bit-exact | cycles as model |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['verilog_mb']} | {r['verilog_modules']} | "
              f"{r['seconds_generate']} | {r['seconds_build']} | {r['seconds_simulate']} | "
              f"{r['seconds_total']} | {r['bit_exact']} | {r['cycles_match']} |")
    by = {r["mode"]: r for r in rows}
    if {"fixed", "programmable"} <= set(by):
        f, p = by["fixed"], by["programmable"]
        print(f"\nprogrammable vs fixed: {f['verilog_mb'] / p['verilog_mb']:.1f}x less Verilog, "
              f"{f['seconds_total'] / p['seconds_total']:.1f}x less total wall time "
              f"({f['seconds_build'] / p['seconds_build']:.1f}x build, "
              f"{f['seconds_simulate'] / p['seconds_simulate']:.1f}x simulation)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if not all(r["bit_exact"] and r["cycles_match"] for r in rows):
        raise SystemExit("a mode was not bit-exact or not cycle-exact")


if __name__ == "__main__":
    main()
