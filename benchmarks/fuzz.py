"""The long fuzz run: mutated network files, tampered image folders, bad input arrays and
corrupted board answers (`tests/fuzzing.py`), with the counts printed.

    python benchmarks/fuzz.py          # 5000 files, 500 folders, 200 arrays, 2000 answers
    python benchmarks/fuzz.py --files 200 --folders 50 --seed 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import fuzzing  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--folders", type=int, default=500)
    ap.add_argument("--arrays", type=int, default=200)
    ap.add_argument("--answers", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="epim-fuzz-") as tmp:
        work = Path(tmp)
        for sub in "fdx":
            (work / sub).mkdir()
        runs = [("network files", lambda: fuzzing.fuzz_network_files(args.files, work / "f",
                                                                      args.seed)),
                ("image folders", lambda: fuzzing.fuzz_image_folders(args.folders, work / "d",
                                                                     args.seed)),
                ("input arrays", lambda: fuzzing.fuzz_input_arrays(args.arrays, work / "x",
                                                                   args.seed)),
                ("board answers", lambda: fuzzing.fuzz_board_answers(args.answers, args.seed))]
        for name, run in runs:
            t0 = time.time()
            counts = run()
            print(f"{fuzzing.summary(name, counts)} ({time.time() - t0:.0f} s)", flush=True)
            bad += sum(counts[k] for k in ("traceback", "escaped", "invalid"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
