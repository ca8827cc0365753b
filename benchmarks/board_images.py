"""Real MNIST test images through the board top on Verilator, the way a host drives a board:
blank programmable tiles written word by word over the UART (``P``), the board's programming
checksum (``C``) compared, then the images (``I``); every answer decoded by the host code and
compared with the integer reference.

    python benchmarks/board_images.py                      # 20 images, lanes 1, the ULX3S model
    python benchmarks/board_images.py --images 5 --lanes balanced --net NET.json

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
    from epim.app.fpga import fit_lanes
    from epim.app.verify import board_cosim
    from epim.sw.chip import data, netfile, reference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default=str(DEFAULT_NET))
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--lanes", default="1", help="1 (default), balanced, all, or a number")
    ap.add_argument("--divisor", type=int, default=8, help="clock cycles per UART bit")
    args = ap.parse_args()
    net = netfile.load(args.net)
    x, labels = data.load("mnist", "test", args.images)
    x = x.astype(np.int64)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="epim-board-") as tmp:
        y, rep = board_cosim(net, x, Path(tmp) / "build", divisor=args.divisor,
                             lanes=fit_lanes(net, args.lanes))
    ref = reference.run_network(net, x)
    rep.pop("cycles_sent_to_answered", None)
    rep.update(argmax_equal=bool((y.argmax(1) == ref.argmax(1)).all()),
               argmax_is_label=int((y.argmax(1) == labels).sum()),
               wall_s=round(time.time() - t0, 1))
    print(json.dumps(rep, indent=1))
    return 0 if rep["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
