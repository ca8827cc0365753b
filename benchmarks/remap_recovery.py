"""How much of the accuracy that stuck cells cost does fault-aware remapping win back?

    python benchmarks/remap_recovery.py                       # the committed MNIST model, 1 %
    python benchmarks/remap_recovery.py --net NET.json --data fashion-mnist --rate 0.01 \\
        --seeds 5 --images 1000 --json build/remap.json

For each seed: a fault map with `rate/2` of the cells stuck at 0 and `rate/2` stuck at max
(`epim faults`), the network remapped around it (`epim remap`), and the test accuracy of the
integer reference on the ideal chip, on the faulty chip, and of the remapped network on the
same faulty chip. Prints one line per seed, then the mean and spread, and the share of the
lost accuracy the remapping recovers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from epim.sw.chip import data, faults, netfile, noise, reference

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NET = ROOT / "examples/mnist-epim-cnn-r4/net.json"


def accuracy(net, x, labels, fmap=None) -> float:
    chip = noise.NoisyChip(net, noise.NoiseConfig(), faults=fmap) if fmap else None
    y = reference.run_network(net, x, noise=chip)
    return float((y.reshape(len(y), -1).argmax(1) == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default=str(DEFAULT_NET))
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.01, help="stuck cells in all (half each)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    obj = json.loads(Path(args.net).read_text())
    net = netfile.parse(obj, args.net)
    x, labels = data.load(args.data, "test", args.images)
    x = x.astype(np.int64)
    t0 = time.time()
    ideal = accuracy(net, x, labels)
    print(f"{args.net} on {len(x)} {args.data} test images: ideal accuracy {ideal:.4f}; "
          f"{100 * args.rate:g} % stuck cells ({100 * args.rate / 2:g} % at 0, "
          f"{100 * args.rate / 2:g} % at max), {args.seeds} seeds", flush=True)
    rows = []
    for seed in range(args.seeds):
        fmap = faults.sample(net, args.rate / 2, args.rate / 2, seed)
        new, report = faults.remap(obj, net, fmap)
        remapped = netfile.parse(new, "remapped")
        row = {"seed": seed, "faulty": accuracy(net, x, labels, fmap),
               "remapped": accuracy(remapped, x, labels, fmap),
               "damage_before": sum(r["damage_before"] for r in report),
               "damage_after": sum(r["damage_after"] for r in report),
               "layers_moved": sum((r["row_rotation"], r["col_rotation"]) != (0, 0)
                                   for r in report)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    f = np.array([r["faulty"] for r in rows])
    m = np.array([r["remapped"] for r in rows])
    lost, back = ideal - f.mean(), m.mean() - f.mean()
    print(f"\n| chip | accuracy (mean +- std over {args.seeds} seeds) |\n|---|---|\n"
          f"| ideal | {ideal:.4f} |\n| faulty | {f.mean():.4f} +- {f.std():.4f} |\n"
          f"| faulty, remapped | {m.mean():.4f} +- {m.std():.4f} |")
    share = back / lost if lost > 0 else float("nan")
    print(f"\nremapping recovers {100 * share:.0f} % of the {100 * lost:.2f} points the faults "
          f"cost ({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"net": args.net, "data": args.data, "images": len(x), "rate": args.rate,
             "ideal": ideal, "seeds": rows, "recovered_share": share}, indent=1) + "\n")


if __name__ == "__main__":
    main()
