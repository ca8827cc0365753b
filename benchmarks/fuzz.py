"""The long fuzz run (`tests/fuzzing.py`): the first round (mutated network files, tampered
image folders, bad input arrays, corrupted board answers) and the second (special files,
output folders holding a user's files, full disks, deep nesting in every JSON input, argument
values, very long layer chains), with the counts printed and, with `--markdown`, a table.

    python benchmarks/fuzz.py                       # about 11 000 cases
    python benchmarks/fuzz.py --scale 0.05 --seed 3 # a quick look
    python benchmarks/fuzz.py --markdown docs/results/fuzz.md

The full-disk class mounts a 256 KiB tmpfs when it can (root); elsewhere it makes the writer's
fsync fail with ENOSPC instead, and says which it did.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import fuzzing  # noqa: E402

BAD = ("traceback", "escaped", "invalid", "hang", "lost", "half-written")
CLASSES = [  # (name, function, default count, takes a folder)
    ("network files", fuzzing.fuzz_network_files, 5000, True),
    ("image folders", fuzzing.fuzz_image_folders, 500, True),
    ("input arrays", fuzzing.fuzz_input_arrays, 200, True),
    ("board answers", fuzzing.fuzz_board_answers, 2000, False),
    ("special files (FIFOs, devices, folders, sockets)", fuzzing.fuzz_special_files, 600, True),
    ("output folders holding a user's files", fuzzing.fuzz_output_folders, 600, True),
    ("full disks", fuzzing.fuzz_full_disk, 400, True),
    ("deep nesting in every JSON input", fuzzing.fuzz_json_nesting, 800, True),
    ("argument values", fuzzing.fuzz_arguments, 1000, True),
    ("layer chains of 1 000 to 20 000 layers", fuzzing.fuzz_layer_chains, 40, True),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every class's count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    args = ap.parse_args()
    rows, bad, total = [], 0, 0
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="epim-fuzz-") as tmp:
        for k, (name, fn, count, folder) in enumerate(CLASSES):
            n = max(1, round(count * args.scale))
            t0 = time.time()
            work = Path(tmp) / f"c{k}"
            work.mkdir()
            counts = fn(n, work, args.seed) if folder else fn(n, args.seed)
            seconds = time.time() - t0
            print(f"{fuzzing.summary2(name, counts)} ({seconds:.0f} s)", flush=True)
            rows.append((name, counts, seconds))
            bad += sum(counts[b] for b in BAD)
            total += counts["tried"]
    minutes = (time.time() - t_all) / 60
    print(f"{total} cases in {minutes:.1f} min: {bad} bad outcomes")
    if args.markdown:
        args.markdown.write_text(table(rows, total, minutes, args))
    return 1 if bad else 0


def table(rows, total: int, minutes: float, args) -> str:
    lines = [f"# Fuzz run: {total} cases, seed {args.seed}, {minutes:.0f} min on 2 cores", "",
             "`python benchmarks/fuzz.py --seed "
             f"{args.seed}" + (f" --scale {args.scale:g}" if args.scale != 1 else "") + "`",
             "", "| class | tried | refused cleanly | accepted (valid) | tracebacks | escapes "
             "| accepted-but-invalid | hangs > 30 s | user files lost | half-written | "
             "seconds |", "|---|" + "---|" * 10]
    for name, c, seconds in rows:
        extra = ""
        if "real-disk" in c:
            extra = (" (a 256 KiB tmpfs" if c["real-disk"] else " (fsync failing with "
                     "ENOSPC") + f"; {c['hit a full disk']} runs hit the full disk)"
        if "slowest" in c:
            extra = f" (slowest check {c['slowest'] / 1000:.2f} s)"
        lines.append(f"| {name}{extra} | {c['tried']} | {c['refused']} | {c['accepted']} | "
                     + " | ".join(str(c[b]) for b in ("traceback", "escaped", "invalid",
                                                     "hang", "lost", "half-written"))
                     + f" | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
