"""Whole-network and layer benches on Verilator with summary tables (what `nox -s cosim` runs).

Network benches run the committed MNIST model on real test images (also with the tile copies
the replication search picks under the dense 3-bit budget) and a random residual network
(also with random stalls) through `epim.app.verify.cosim_network`; layer benches run single tiles
through `epim.app.verify.cosim`. Each checks outputs bit-exactly against the integer reference
and cycles against the cycle model, and prints one row: match, measured and predicted cycles
(latency and steady state) and, for layers, the crossbar utilisation
`Ho*Wo*steps*n_t / steady cycles per image`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..sw.chip import data, examples, netfile, replication
from .generate import write_json
from .verify import cosim, cosim_network


def committed_model() -> Path:
    """The committed MNIST network file, from a source checkout."""
    here = Path.cwd() / "examples" / "mnist-epim-cnn-r4" / "net.json"
    if not here.exists():
        raise FileNotFoundError(f"{here}: run from the repository root (the committed model "
                                "is not installed with the package)")
    return here


def network_benches(n_mnist: int) -> list[dict]:
    rows = []
    x, labels = data.load("mnist", "test", n_mnist)
    mnist = netfile.load(committed_model())
    nets = [("MNIST model, real images", mnist, x.astype(np.int64), {}),
            ("MNIST model, tile copies", mnist, x.astype(np.int64),
             {"replicas": replication.choose_replicas(mnist)}),
            ("random residual net", netfile.parse(examples.random_network_net(4),
                                                  source="random_network_net(4)"), None, {}),
            ("random residual, stalls", netfile.parse(examples.random_network_net(4),
                                                      source="random_network_net(4)"), None,
             {"stalls": True, "seed": 3})]
    for label, net, xin, opts in nets:
        if xin is None:
            xin = np.random.default_rng(0).integers(0, 2**net.input_bits, (4,) + net.input_shape)
        _, rep = cosim_network(net, xin, BUILD / "net", **opts)
        rows.append({"bench": label, **rep})
        print(_net_row(rows[-1]), flush=True)
    return rows


NET_HEADER = (f"{'network bench':28} {'images':>6} {'exact':>6} {'latency':>8} {'model':>8} "
              f"{'steady':>8} {'model':>8} {'slowest':>8} {'ratio':>6} {'cycles=model':>12}")


def _net_row(r: dict) -> str:
    slow = r["slowest_tile_cycles_per_image"]
    steady = r["steady_cycles_per_image"]
    return (f"{r['bench']:28} {r['images']:>6} {r['matching_images']:>6} {r['cycles'][0]:>8} "
            f"{r['predicted_cycles'][0]:>8} {steady:>8g} "
            f"{r['predicted_steady_cycles_per_image']:>8g} {slow:>8g} {steady / slow:>6.3f} "
            f"{'yes' if r['cycles_match'] else 'NO':>12}")


BUILD = Path("build/cosim")


def benches() -> list[tuple[str, dict, dict]]:
    """(label, network object, cosim options) of the standard layer benches."""
    rng = np.random.default_rng(7)
    lossy = dict(xbar_rows=16, xbar_cols=32, cell_bits=1, dac_bits=2, adc_bits=4)
    return [
        ("default epitome 3x3", examples.default_layer_net(), {}),
        ("default, programmed + stalls", examples.default_layer_net(),
         {"program": True, "stalls": True}),
        ("default, IFRT reuse off", examples.default_layer_net(), {"reuse": False}),
        ("dense 3x3", examples.conv_layer_net(rng, cin=4, cout=8, h=10, w=10, epitome=None,
                                              name="dense3x3"), {}),
        ("epitome stride 2 wrap", examples.conv_layer_net(
            rng, cin=6, cout=10, h=12, w=12, stride=2, epitome=(4, 6, 3, 4), offsets="random",
            name="epi_s2"), {}),
        ("epitome 1x1 lossy ADC", examples.conv_layer_net(
            rng, cin=24, cout=12, h=6, w=6, kernel=1, padding=0, epitome=(16, 8, 8, 4),
            d_r=3, d_c=1, in_bits=6, weight_bits=5, pim=lossy, name="epi_1x1"), {}),
    ]


def run(build_dir: Path, images: int) -> list[dict]:
    rows = []
    for label, obj, opts in benches():
        net = netfile.parse(obj, source=label)
        x = np.random.default_rng(0).integers(0, 2**net.input_bits, (images,) + net.input_shape)
        _, rep = cosim(net, x, build_dir, **opts)
        rows.append({"bench": label, **rep})
        print(_row(rows[-1]), flush=True)
    return rows


HEADER = (f"{'bench':30} {'layer':14} {'match':>6} {'latency':>8} {'model':>8} "
          f"{'steady':>8} {'model':>8} {'ideal':>7} {'ratio':>6}")


def _row(r: dict) -> str:
    steady = r["steady_cycles_per_image"]
    pred = r["predicted_steady_cycles_per_image"]
    match = "yes" if r["match"] else "NO"
    util = f"{r['utilisation']:.3f}" if r["utilisation"] is not None else "-"  # stalled run
    return (f"{r['bench']:30} {r['layer']:14} {match:>6} {r['cycles'][0]:>8} "
            f"{r['predicted_cycles'][0]:>8} {steady:>8g} {pred:>8g} "
            f"{r['ideal_cycles_per_image']:>7} {util:>6}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default="build/cosim", type=Path)
    ap.add_argument("--images", type=int, default=3, help="images per bench (>= 2)")
    ap.add_argument("--mnist-images", type=int, default=20,
                    help="real test images through the committed MNIST model")
    args = ap.parse_args(argv)
    global BUILD
    BUILD = args.build_dir
    print(NET_HEADER, flush=True)
    net_rows = network_benches(args.mnist_images)
    print("\n" + HEADER, flush=True)
    rows = run(args.build_dir, max(2, args.images))
    write_json(args.build_dir / "summary.json", {"networks": net_rows, "benches": rows})
    bad = [r["bench"] for r in rows
           if not r["match"] or r["cycles_match"] is False]
    bad += [r["bench"] for r in net_rows if not r["match"] or not r["cycles_match"]]
    total = len(rows) + len(net_rows)
    print(f"\n{total - len(bad)}/{total} benches bit-exact with cycles equal to the model "
          f"(stalled layer runs: outputs only; ratio = network steady cycles per image / the "
          f"slowest tile's alone); summary in {args.build_dir / 'summary.json'}")
    if bad:
        print("FAILED: " + ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

