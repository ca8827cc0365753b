"""Real MNIST test images through the board top on Verilator, the way a host drives a board:
blank programmable tiles written word by word over the UART (``P``), the board's programming
checksum (``C``) compared, then the images (``I``); every answer decoded by the host code and
compared with the integer reference.

    python benchmarks/board_images.py                      # 20 images, the ULX3S build
    python benchmarks/board_images.py --images 5 --lanes 1 --cols 32 --net NET.json

Prints the report (words programmed, bytes, bit-exact images, argmax against the labels, build
and simulation seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NET = ROOT / "examples/mnist-epim-cnn-r4-nowrap/net.json"


def main() -> int:
    from epim.app.fpga import board_build, fit_lanes
    from epim.app.verify import board_cosim
    from epim.sw.chip import data, netfile, reference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default=str(DEFAULT_NET))
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--lanes", help="balanced, all, or a number (default: the ULX3S build's)")
    ap.add_argument("--cols", type=int, help="columns per cycle (default: the ULX3S build's)")
    ap.add_argument("--divisor", type=int, default=8, help="clock cycles per UART bit")
    args = ap.parse_args()
    lanes, cols = board_build("ulx3s-85f", args.lanes, args.cols)
    net = netfile.with_cols(netfile.load(args.net), cols)
    x, labels = data.load("mnist", "test", args.images)
    x = x.astype(np.int64)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="epim-board-") as tmp:
        y, rep = board_cosim(net, x, Path(tmp) / "build", divisor=args.divisor,
                             lanes=fit_lanes(net, lanes))
    ref = reference.run_network(net, x)
    rep.pop("cycles_sent_to_answered", None)
    rep.update(argmax_equal=bool((y.argmax(1) == ref.argmax(1)).all()),
               argmax_is_label=int((y.argmax(1) == labels).sum()),
               wall_s=round(time.time() - t0, 1))
    rep.update(lanes=lanes, cols=net.pim.cycle_cols or net.pim.xbar_cols)
    print(json.dumps(rep, indent=1))
    return 0 if rep["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
