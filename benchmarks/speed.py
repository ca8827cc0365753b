"""Before and after, in one run: the figures of the speed issue on the committed MNIST model.

    python benchmarks/speed.py                      # every part (about 20-30 minutes)
    python benchmarks/speed.py --only reference     # one part: cosim, reference, replication
    python benchmarks/speed.py --only reference --before f7dd7a5   # and the replaced reference

- **cosim**: `epim cosim` of the committed model on 20 test images twice in one fresh build
  folder: the first run generates and builds, the second finds both in the content-keyed
  caches. Both must be bit-exact and cycle-exact.
- **reference**: the integer reference on the MNIST test set, step by step (every crossbar
  activation slice by slice, as the reference ran before) and with the convolution path
  (`epim.sw.chip.reference`), against a PyTorch forward that gives the same bits (float64 conv2d of
  the sampled weights, the output stage in int64). All outputs must be equal.
- **replication**: images per second in the network cycle model without and with the tile
  copies that the replication search picks under the dense 3-bit crossbar budget; with
  `--cosim-replicated` also the replicated accelerator on Verilator (20 images, bit-exact, every
  handshake as modelled).

Absolute times on shared 2-core machines swing a lot; the ratios, measured in one run, less.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from epim.sw.chip import data, epitome, netcycles, netfile, reference, replication

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "mnist-epim-cnn-r4" / "net.json"


def epim(*args: str) -> tuple[float, str]:
    """Run the `epim` command; (seconds, output). Fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "epim.app.cli", *args], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"epim {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return time.perf_counter() - t0, out.stdout


def part_cosim(net_path: Path, work: Path, images: int, extra: list[str]) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    x, _ = data.load("mnist", "test", images)
    np.save(work / "x.npy", x.astype(np.int64))
    build = work / "cosim"
    times = []
    for run in (1, 2):
        rep = work / f"report{run}.json"
        t, _ = epim("cosim", str(net_path), "--inputs", str(work / "x.npy"), "--outputs",
                    str(work / f"y{run}.npy"), "--build-dir", str(build), "--report",
                    str(rep), *extra)
        r = json.loads(rep.read_text())
        assert r["match"] and r["cycles_match"], f"cosim run {run} not exact"
        times.append(t)
        print(f"  cosim run {run}: {t:7.1f} s, {r['matching_images']}/{images} bit-exact, "
              f"cycles equal to the model, generate {'cached' if r['generate_cached'] else 'done'}"
              f" ({r['seconds_generate']:.1f} s), build and simulation "
              f"{r['seconds_simulate']:.1f} s", flush=True)
    print(f"  second run {times[0] / times[1]:.1f}x faster than the first")
    return {"first_s": times[0], "second_s": times[1], "ratio": times[0] / times[1]}


def torch_forward(net: netfile.Network, x: np.ndarray) -> np.ndarray:
    """The network in PyTorch with the same bits as the reference where no ADC saturates:
    float64 conv2d of the sampled weights (exact: integer sums far below 2**53), the output
    stage, adds and pooling in int64."""
    import torch
    import torch.nn.functional as F

    t = {net.input_name: torch.as_tensor(x, dtype=torch.int64)}

    def scale(v, mult, shift, lo, hi):
        mult, shift = torch.as_tensor(mult), torch.as_tensor(shift)
        rnd = torch.where(shift > 0, torch.bitwise_left_shift(torch.ones_like(shift),
                                                              (shift - 1).clamp(min=0)), 0)
        return torch.clamp((v * mult + rnd) >> shift, lo, hi)

    for la in net.layers:
        a = t[la.inputs[0]]
        if la.op in ("conv", "linear"):
            w = torch.as_tensor(epitome.sample_weight(la.epitome, la.in_channels,
                                                      la.out_channels), dtype=torch.float64)
            if la.op == "linear":
                a = a.reshape(a.shape[0], -1, 1, 1)
            acc = F.conv2d(a.double(), w, stride=la.stride, padding=la.padding)
            acc = acc.round().long()
            shape = (1, -1, 1, 1)
            lo, hi = ((0, 2**la.out_bits - 1) if la.relu else
                      (-(2 ** (la.out_bits - 1)), 2 ** (la.out_bits - 1) - 1))
            t[la.name] = scale(acc + torch.as_tensor(la.bias).reshape(shape),
                               la.mult.reshape(shape), la.shift.reshape(shape), lo, hi)
        elif la.op == "add":
            t[la.name] = scale(a * la.ma + t[la.inputs[1]] * la.mb, 1, la.add_shift, 0,
                               2**la.out_bits - 1)
        elif la.op == "avgpool_global":
            t[la.name] = scale(a.sum(dim=(2, 3), keepdim=True), la.pool_mult, la.pool_shift,
                               0, 2**la.out_bits - 1)
    out = t[net.output].numpy()
    return out.reshape(out.shape[0], -1) if net.output_layer.op == "linear" else out


def reference_at(rev: str):
    """`epim.sw.chip.reference` as it was at git revision `rev` (to time the code it replaced)."""
    import importlib.util

    # (sw/reference.py before sw/ had wings; its siblings `.epitome`, `.netfile` are in chip)
    where = {"sw/chip/reference.py": "epim.sw.chip", "sw/reference.py": "epim.sw.chip"}
    for path in where:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
                               capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"{rev}: no sw/chip/reference.py or sw/reference.py there")
    package = where[path]
    spec = importlib.util.spec_from_loader(f"{package}._reference_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def part_reference(net: netfile.Network, limit: int | None, before: str | None) -> dict:
    import torch

    x, labels = data.load("mnist", "test", limit)
    x = x.astype(np.int64)
    out = {}
    if before:
        old = reference_at(before)
        t0 = time.perf_counter()
        y_old = old.run_network(net, x)
        out["before_rev_s"] = time.perf_counter() - t0
        out["equal_to_before_rev"] = bool((y_old == reference.run_network(net, x)).all())
        print(f"  reference at {before}   {out['before_rev_s']:7.2f} s  "
              f"{len(x) / out['before_rev_s']:8.0f} images/s  (outputs equal to today's: "
              f"{out['equal_to_before_rev']})", flush=True)
    saturable = any(reference.saturable(la, net.pim).any() for la in net.layers
                    if la.op in ("conv", "linear"))
    print(f"  {len(x)} test images; an ADC can saturate: {saturable} (the PyTorch forward "
          f"gives the reference's bits only where none can)", flush=True)
    t0 = time.perf_counter()
    fast = reference.run_network(net, x)
    t_fast = time.perf_counter() - t0
    torch.set_num_threads(reference.cpu_count())
    t0 = time.perf_counter()
    with torch.no_grad():
        tref = np.concatenate([torch_forward(net, x[i:i + 500]) for i in range(0, len(x), 500)])
    t_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = reference.run_network(net, x, literal=True)
    t_slow = time.perf_counter() - t0
    same = bool((fast == slow).all())
    same_torch = bool((fast == tref).all())
    acc = float((fast.reshape(len(x), -1).argmax(1) == labels).mean())
    n = len(x)
    print(f"  step by step (before)  {t_slow:7.2f} s  {n / t_slow:8.0f} images/s")
    print(f"  convolution (after)    {t_fast:7.2f} s  {n / t_fast:8.0f} images/s  "
          f"{t_slow / t_fast:.1f}x faster; outputs equal to the step-by-step path: {same}")
    print(f"  PyTorch, same bits     {t_torch:7.2f} s  {n / t_torch:8.0f} images/s  "
          f"reference / PyTorch time {t_fast / t_torch:.2f}; outputs equal: {same_torch}")
    print(f"  accuracy {acc:.4f}")
    assert same, "the convolution path differs from the step-by-step path"
    if before:
        print(f"  convolution path {out['before_rev_s'] / t_fast:.1f}x faster than the reference "
              f"at {before}")
    return {**out, "images": n, "step_by_step_s": t_slow, "convolution_s": t_fast,
            "torch_s": t_torch, "speedup": t_slow / t_fast, "vs_torch": t_fast / t_torch,
            "equal": same, "equal_torch": same_torch, "accuracy": acc}


def part_replication(net: netfile.Network, net_path: Path, work: Path, cosim: bool,
                     images: int) -> dict:
    budget = replication.dense_budget(net)
    reps = replication.choose_replicas(net, budget)
    plain = netcycles.predict(net, 6)
    repl = netcycles.predict(net, 6, replicas=reps)
    print(f"  budget (dense 3-bit crossbars) {budget}; copies {replication.describe(net, reps)}")
    print(f"  without copies: {replication.crossbars(net)} crossbars, {plain.steady:g} "
          f"cycles/image; with: {replication.crossbars(net, reps)} crossbars, "
          f"{repl.steady:g} cycles/image: {plain.steady / repl.steady:.2f}x more images/s")
    out = {"budget": budget, "replicas": reps, "crossbars": replication.crossbars(net, reps),
           "steady_before": plain.steady, "steady_after": repl.steady,
           "speedup": plain.steady / repl.steady}
    if cosim:
        spec = ",".join(f"{k}={v}" for k, v in reps.items())
        out["cosim"] = part_cosim(net_path, work, images, ["--replicas", spec])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["cosim", "reference", "replication"], action="append")
    ap.add_argument("--net", type=Path, default=MODEL)
    ap.add_argument("--images", type=int, default=20, help="cosim images")
    ap.add_argument("--limit", type=int, help="reference: the first N test images (all)")
    ap.add_argument("--cosim-replicated", action="store_true")
    ap.add_argument("--before", metavar="REV",
                    help="reference: also time sw/chip/reference.py as it was at this git revision "
                         "(f7dd7a5: before the convolution path)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    parts = args.only or ["reference", "replication", "cosim"]
    net = netfile.load(args.net)
    figures = {}
    work = Path(tempfile.mkdtemp(prefix="epim-speed-"))
    try:
        for part in parts:
            print(f"[{part}]", flush=True)
            if part == "cosim":
                figures[part] = part_cosim(args.net, work, args.images, [])
            elif part == "reference":
                figures[part] = part_reference(net, args.limit, args.before)
            else:
                figures[part] = part_replication(net, args.net, work / "repl",
                                                 args.cosim_replicated, args.images)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
