"""The paper's EPIM-ResNet50 as a real network file: import, check, cost, reference, agreement.

ResNet-50 with torchvision's structure (`epim.sw.ml.resnets`, seeded random weights or
`--state-dict FILE`) at 224x224x3 is imported through `epim import` as 3-bit EPIM twice: with a
uniform ratio (default 12, both sides shrunk, so output channels wrap) and with the per-layer
shapes of the study's search (`python -m epim.sw.studies.study` writes them as
`search.json`). For each: `epim check`, `epim cost --json`, and the cost totals against the
study's row for the same configuration (`epim.sw.studies.study`). Then `epim reference` on 2
images (time per image, peak memory),
and the argmax of the exported integer network (the NumPy reference) against the
fake-quantized PyTorch model of the same network (batch norm folded, float64) on
`--agree` seeded synthetic images.

    python benchmarks/import_resnet50.py [--ratio 12] [--agree 200] [--out build/resnet50]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "epim.app.cli"]


def run(args: list) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"epim {' '.join(map(str, args))} failed:\n{proc.stderr}")
    out = proc.stdout
    print(f"$ epim {' '.join(map(str, args))}   ({time.perf_counter() - t0:.0f} s)")
    return out


def compare(name: str, cost_json: Path, row: dict) -> bool:
    ours = json.loads(cost_json.read_text())["summary"]
    keys = ["crossbars", "dense8_crossbars", "activations", "cycles_per_image", "energy_uj"]
    print(f"\n{name}: epim cost against the study's row {row['name']!r}")
    print(f"  {'figure':18} {'epim cost':>14} {'study':>14} {'equal':>6}")
    ok = True
    for k in keys:
        a, b = ours[k], row[k]
        eq = abs(a - b) <= 1e-9 * max(1.0, abs(b))
        ok &= eq
        print(f"  {k:18} {a:>14.6g} {b:>14.6g} {'yes' if eq else 'NO':>6}")
    print(f"  compression vs dense 8-bit: {ours['dense8_crossbars'] / ours['crossbars']:.2f}x")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=12)
    ap.add_argument("--split", default="balanced")
    ap.add_argument("--agree", type=int, default=200, help="synthetic images for agreement")
    ap.add_argument("--state-dict", help="ResNet-50 weights (default: seeded random)")
    ap.add_argument("--out", type=Path, default=Path("build/resnet50"))
    args = ap.parse_args()
    from epim.sw.chip import cost, netfile, reference
    from epim.sw.ml import importer
    from epim.sw.ml.train import load_checkpoint
    from epim.sw.studies import study

    args.out.mkdir(parents=True, exist_ok=True)
    # the study: its rows and the search's pick as search.json
    subprocess.run([sys.executable, "-m", "epim.sw.studies.study", "--out", args.out / "study"],
                   check=True, capture_output=True)
    rows = json.loads((args.out / "study" / "study.json").read_text())["configs"]
    pim = study.PIM_DEFAULT
    uni_row, _ = study.evaluate({"name": f"EPIM 3-bit r={args.ratio:g}, {args.split}",
                                 "bits": 3, "ratio": args.ratio, "split": args.split,
                                 "reuse": True}, pim, cost.CONSTANTS)
    search_row = next(r for r in rows if r["split"] == "searched")
    common = ["resnet50", "--input-shape", 3, 224, 224, "--calibration-count", 32]
    if args.state_dict:
        common += ["--state-dict", args.state_dict]
    ok = True
    for tag, extra, row in [
            ("uniform", ["--ratio", args.ratio, "--split", args.split], uni_row),
            ("searched", ["--epitomes", args.out / "study" / "search.json"], search_row)]:
        out = args.out / tag
        print(run(["import", *common, *extra, "--out", out]).strip())
        check = run(["check", out / "net.json"])
        print("  " + check.splitlines()[0])
        run(["cost", out / "net.json", "--json", out / "cost.json"])
        ok &= compare(tag, out / "cost.json", row)
        rep = json.loads((out / "import.json").read_text())
        mb = (out / "net.json").stat().st_size / 1e6
        print(f"  calibration: {rep['calibration']}; mean projection error "
              f"{rep['projection_error_mean']:.3f}; file {mb:.1f} MB")

    out = args.out / "uniform"
    x = importer.synthetic_images(max(2, args.agree), (3, 224, 224), seed=1).astype(np.int64)
    np.save(args.out / "x2.npy", x[:2])
    print(run(["reference", out / "net.json", "--inputs", args.out / "x2.npy", "--outputs",
               args.out / "y2.npy"]).strip())

    if args.agree:
        import torch

        net = netfile.load(out / "net.json")
        _, model = load_checkpoint(out)
        twin = copy.deepcopy(model).double().eval()
        t0 = time.perf_counter()
        ref = reference.run_network(net, x[:args.agree])
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            fq = torch.cat([twin.folded_fake_quant_forward(
                torch.as_tensor(x[i:i + 10], dtype=torch.float64) / 255)
                for i in range(0, args.agree, 10)])
        t_fq = time.perf_counter() - t0
        fq = fq.numpy()
        np.savez(args.out / "agreement.npz", reference=ref, fake_quant=fq)
        agree = float((fq.argmax(1) == ref.argmax(1)).mean())
        # integer logits can tie exactly; the float model then breaks the tie its own way
        ties = float(np.mean([r[f.argmax()] == r.max() for r, f in zip(ref, fq, strict=True)]))
        distinct = len(set(ref.argmax(1).tolist()))
        top5 = np.mean([len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5
                        for a, b in zip(ref, fq, strict=True)])
        corr = np.median([np.corrcoef(a, b)[0, 1] for a, b in zip(ref, fq, strict=True)])
        print(f"\nagreement on {args.agree} seeded synthetic images: integer file (epim reference) "
              f"vs fake-quantized PyTorch (folded, float64): argmax {100 * agree:.1f}% "
              f"({100 * ties:.1f}% counting exact ties of the integer logits; {distinct} "
              f"distinct classes predicted), top-5 overlap {100 * top5:.1f}%, "
              f"median logit correlation {corr:.5f} (reference {t_ref:.0f} s, PyTorch "
              f"{t_fq:.0f} s)")
        ok &= agree >= 0.99
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
