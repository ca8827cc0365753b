"""The import tutorial end to end (docs/import.md), for both of its models.

For `small_vgg` and `small_resnet` (examples/import/models.py): train the float model
(`train_float.py`), `epim import` it with ratio-2 epitomes and quantization-aware fine-tuning on
MNIST, `epim check`, and `epim cosim` on 5 real MNIST test images; then one table: float and EPIM
accuracy, crossbars, compression, bit-exact outputs and cycles against the model.

    python examples/import/run_tutorial.py [--epochs 2] [--finetune 1] [--out build/tutorial]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "epim.app.cli"]


def sh(cmd: list, what: str) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    print(f"  {what}: {time.perf_counter() - t0:.0f} s", flush=True)
    if proc.returncode:
        sys.exit(f"{what} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="float training epochs")
    ap.add_argument("--finetune", type=int, default=1, help="EPIM fine-tuning epochs")
    ap.add_argument("--ratio", type=float, default=2)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("build/tutorial"))
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    x, y = out / "x.npy", out / "y.npy"
    sh([*CLI, "data", "mnist", "--split", "test", "--limit", args.images, "--images", x,
        "--labels", y], "test images")
    rows = []
    for name in ("small_vgg", "small_resnet"):
        print(name, flush=True)
        pt = out / f"{name}.pt"
        if not pt.exists():
            sh([sys.executable, HERE / "train_float.py", name, "--epochs", args.epochs,
                "--out", pt], f"float training, {args.epochs} epochs")
        sh([*CLI, "import", f"{HERE / 'models.py'}:{name}", "--state-dict", pt, "--data",
            "mnist", "--ratio", args.ratio, "--epochs", args.finetune, "--out", out / name],
           f"epim import, {args.finetune} epoch(s) of fine-tuning")
        sh([*CLI, "check", out / name / "net.json"], "epim check")
        sh([*CLI, "cosim", out / name / "net.json", "--inputs", x, "--outputs",
            out / f"{name}-y.npy", "--report", out / f"{name}-cosim.json", "--build-dir",
            out / "cosim" / name], f"epim cosim, {args.images} images")
        rep = json.loads((out / name / "import.json").read_text())
        cos = json.loads((out / f"{name}-cosim.json").read_text())
        ops = json.loads((out / name / "net.json").read_text())["layers"]
        rows.append({"model": name, "ops": " ".join(sorted({o["op"] for o in ops})),
                     "float": rep["float_test_accuracy"], "epim": rep["test_accuracy"],
                     "crossbars": rep["crossbars"],
                     "compression": rep["compression_vs_dense8"],
                     "bit_exact": f"{cos['matching_images']}/{cos['images']}",
                     "cycles_match": cos["cycles_match"]})
    lines = ["| model | ops | float accuracy | EPIM 3-bit accuracy | crossbars | vs dense 8-bit "
             "| Verilator bit-exact | cycles = model |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ops']} | {100 * r['float']:.2f}% | "
                     f"{100 * r['epim']:.2f}% | {r['crossbars']} | {r['compression']:.2f}x | "
                     f"{r['bit_exact']} | {'yes' if r['cycles_match'] else 'NO'} |")
    table = "\n".join(lines) + "\n"
    (out / "tutorial.md").write_text(table)
    print("\n" + table)
    ok = all(r["cycles_match"] and r["bit_exact"].split("/")[0] == r["bit_exact"].split("/")[1]
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
