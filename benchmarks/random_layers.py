"""Held-out random layers through the public commands: `epim cosim` against `epim reference`.

Each layer comes from `epim.sw.chip.examples.random_layer_net(seed)` (the test suite uses seeds 0-5;
the default here starts at 1000). For each: write the network file and random inputs, run
`epim reference` and `epim cosim --report`, and check the outputs are identical and the measured
cycles (latency per image, steady state) equal the model's. Prints one row per layer.

    python benchmarks/random_layers.py --count 12 --start 1000 [--stalls] [--program]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from epim.sw.chip import examples, netfile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--stalls", action="store_true")
    ap.add_argument("--program", action="store_true")
    ap.add_argument("--build-dir", default="build/random-layers")
    args = ap.parse_args()
    extra = (["--stalls"] if args.stalls else []) + (["--program"] if args.program else [])
    print(f"{'seed':>5} {'kind':8} {'shape':22} {'pim c/d/a/rows':15} {'equal':>6} "
          f"{'latency':>8} {'model':>8} {'steady':>7} {'model':>7}")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in range(args.start, args.start + args.count):
            obj = examples.random_layer_net(seed)
            net_path = tmp / f"net{seed}.json"
            net_path.write_text(json.dumps(obj))
            net = netfile.load(net_path)
            layer, pim = net.layers[0], net.pim
            x = np.random.default_rng(seed).integers(0, 2**net.input_bits,
                                                     (args.images,) + net.input_shape)
            np.save(tmp / "x.npy", x)
            cmd = [sys.executable, "-m", "epim.app.cli"]
            subprocess.run([*cmd, "reference", net_path, "--inputs", tmp / "x.npy",
                            "--outputs", tmp / "ref.npy"], check=True, capture_output=True)
            proc = subprocess.run([*cmd, "cosim", net_path, "--inputs", tmp / "x.npy",
                                   "--outputs", tmp / "y.npy", "--report", tmp / "r.json",
                                   "--build-dir", args.build_dir, *extra],
                                  capture_output=True, text=True)
            if proc.returncode != 0 and not (tmp / "r.json").exists():
                print(f"{seed:>5} cosim failed: {proc.stderr.strip()[-300:]}")
                bad += 1
                continue
            rep = json.loads((tmp / "r.json").read_text())
            equal = np.array_equal(np.load(tmp / "y.npy"), np.load(tmp / "ref.npy"))
            cycles_ok = args.stalls or (rep["cycles"] == rep["predicted_cycles"] and
                                        rep["steady_cycles_per_image"] ==
                                        rep["predicted_steady_cycles_per_image"])
            bad += not (equal and cycles_ok)
            epi = layer.epitome
            kind = "dense" if epi.dense else f"e{epi.out_channels}x{epi.in_channels}"
            shape = (f"{layer.in_channels}->{layer.out_channels} k{layer.kernel}s{layer.stride}"
                     f"p{layer.padding} {layer.in_shape[1]}x{layer.in_shape[2]}")
            pims = f"{pim.cell_bits}/{pim.dac_bits}/{pim.adc_bits}/{pim.xbar_rows}"
            print(f"{seed:>5} {kind:8} {shape:22} {pims:15} {'yes' if equal else 'NO':>6} "
                  f"{rep['cycles'][0]:>8} {rep['predicted_cycles'][0]:>8} "
                  f"{rep['steady_cycles_per_image']:>7g} "
                  f"{rep['predicted_steady_cycles_per_image']:>7g}", flush=True)
    print(f"\n{args.count - bad}/{args.count} layers: cosim outputs equal to epim reference"
          + ("" if args.stalls else ", cycles equal to the model"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
