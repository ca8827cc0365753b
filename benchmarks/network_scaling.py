"""Weight-baked ("fixed") against programmable tiles with one module per distinct tile shape, on a
whole-network accelerator, in one run: Verilog size, generation, Verilator build and simulation
of N images, each checked bit-exact against the integer reference and cycle-exact against the
network cycle model.

    python benchmarks/network_scaling.py                      # the committed CIFAR-10 ResNet-20
    python benchmarks/network_scaling.py --net NET.json --images 3 --modes programmable fixed
    python benchmarks/network_scaling.py --limit-minutes 50   # cap each mode's wall time
    python benchmarks/network_scaling.py --modes programmable --baseline 093decc

`--baseline REV` adds a row for the programmable tiles of git revision REV (its `epim`
package, from a temporary `git worktree` of this clone, through the same steps of this file,
on the same network file, images and machine), and the ratios of this revision's programmable
tiles to it: `093decc` is the last revision with the behavioural tiles that the memory tile
replaced.

Each mode runs in its own process group, generates into, and builds in, a fresh folder (no cache
hit), and records each phase as it finishes. `--limit-minutes M` stops a mode that is still
running after M minutes (the whole process group: Verilator, the C++ compiler, the simulator).
Its finished phases keep their measured figures; the unfinished phase and the total are then
lower bounds, printed as ">= S", and so is any ratio taken against them. The weight-baked
ResNet-20 needs about 3 hours on a 2-core machine (Verilator and the C++ compiler on 62 MB of
Verilog, then 3 images through a simulator of that size), which is why the cap exists.

`--json` writes the figures. The images are seeded random inputs of the network's input shape
and width (the arithmetic does not care where they come from; `epim cosim` takes real ones).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NET = ROOT / "examples/cifar10-epim-resnet20-r3/net.json"
PHASES = ("generate", "build", "simulate")


def _record(path: Path, row: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, path)


def run_mode(net_path: str, x: np.ndarray, mode: str, root: Path, progress: Path) -> dict:
    """Run one mode in this process, writing the figures to `progress` after every phase."""
    from epim.app import generate, verify
    from epim.contract import files as owned
    from epim.sim import buildcache
    from epim.sw.chip import netfile

    net = netfile.load(net_path)
    # the cosim's build folder, EPIM's own (its stamp), beside the progress file
    root = owned.claim_folder(root / "work", "cosim")
    fixed = mode == "fixed"
    row: dict = {"mode": mode, "images": int(x.shape[0]), "finished": []}
    row["started_generate"] = time.time()
    _record(progress, row)
    t0 = time.perf_counter()
    gen = generate.generate_network(net, root / ("generated-fixed" if fixed else "generated"),
                                    fixed=fixed)
    row["seconds_generate"] = round(time.perf_counter() - t0, 1)
    row["finished"].append("generate")
    _record(progress, row)
    row["verilog_mb"] = round(gen.verilog.stat().st_size / 1e6, 2)
    row["verilog_modules"] = gen.verilog.read_text().count("\nmodule ") + 1
    row["started_build"] = time.time()
    _record(progress, row)
    t0 = time.perf_counter()
    _, built = buildcache.verilator_build([gen.verilog], "epim_net", root)
    row["seconds_build"] = round(time.perf_counter() - t0, 1)
    assert built, "the build folder was not fresh"
    row["finished"].append("build")
    row["started_simulate"] = time.time()
    _record(progress, row)
    t0 = time.perf_counter()
    _, rep = verify.cosim_network(net, x, root, fixed=fixed)
    row["seconds_simulate"] = round(time.perf_counter() - t0, 1)
    row["finished"].append("simulate")
    row.update(bit_exact=rep["match"], cycles_match=rep["cycles_match"],
               steady_cycles_per_image=rep["steady_cycles_per_image"])
    _record(progress, row)
    return row


def _worktree(rev: str, tmp: Path) -> tuple[Path, dict]:
    """A detached `git worktree` of `rev` under `tmp`, and the environment that imports `epim`
    from it (a folder whose `epim` is the worktree: the source folders map onto the package's
    names as `pyproject.toml` says)."""
    src = tmp / "src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(src),
                    rev], check=True, capture_output=True, text=True)
    (tmp / "pkg").mkdir()
    (tmp / "pkg" / "epim").symlink_to(src)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp / "pkg"), str(src)])}
    return src, env


def run_capped(args, x_path: Path, mode: str, limit_s: float | None) -> dict:
    """Run one mode in a child process group; stop the whole group after `limit_s` seconds.
    Mode `baseline`: the programmable tiles of revision `args.baseline`."""
    with tempfile.TemporaryDirectory(prefix=f"epim-scaling-{mode}-") as tmp:
        progress = Path(tmp) / "progress.json"
        env, src = None, None
        if mode == "baseline":  # this file's child, importing the older revision's `epim`
            src, env = _worktree(args.baseline, Path(tmp))
        root = Path(tmp) / "run"  # the child's own folder (an older revision claims it whole)
        root.mkdir()
        cmd = [sys.executable, __file__, "--child",
               "programmable" if mode == "baseline" else mode, "--net", args.net,
               "--x", str(x_path), "--root", str(root), "--progress", str(progress)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, start_new_session=True, env=env)
        except BaseException:
            _drop_worktree(src)
            raise
        try:
            rc = proc.wait(timeout=limit_s)
            stopped = False
        except subprocess.TimeoutExpired:
            t_stop = time.time()  # (before the kill and its grace: a bound is never overstated)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, stopped = None, True
        finally:
            if proc.poll() is None:  # interrupted: leave no Verilator or compiler behind
                os.killpg(proc.pid, signal.SIGKILL)
        wall = time.perf_counter() - t0
        try:  # a group member may outlive the leader; the group must go with it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _drop_worktree(src)
        row = json.loads(progress.read_text()) if progress.exists() else \
            {"mode": mode, "images": int(np.load(x_path).shape[0]), "finished": []}
        if mode == "baseline":
            row["mode"] = f"programmable at {args.baseline}"
    if stopped and all(p in row["finished"] for p in PHASES):
        stopped = False  # the limit struck after the last phase: every figure is measured
        rc = 0
    if not stopped and rc != 0:
        raise SystemExit(f"mode {mode} failed (exit {rc}); its output is above")
    row["stopped_at_limit"] = stopped
    row["seconds_wall"] = round(wall, 1)
    done = sum(row.get(f"seconds_{p}", 0.0) for p in PHASES if p in row["finished"])
    if stopped:
        unfinished = [p for p in PHASES if p not in row["finished"]]
        # the phase that was running when the limit struck ran from its recorded start to the stop
        running = unfinished[0]
        if f"started_{running}" in row:
            row[f"seconds_{running}"] = round(t_stop - row[f"started_{running}"], 1)
        row["lower_bound"] = unfinished
        row["seconds_total"] = round(sum(row.get(f"seconds_{p}", 0.0) for p in PHASES), 1)
        row.setdefault("bit_exact", None)
        row.setdefault("cycles_match", None)
    else:
        row["lower_bound"] = []
        row["seconds_total"] = round(done, 1)
    return row


def _drop_worktree(src: Path | None) -> None:
    if src is not None:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src)],
                       capture_output=True)


def _fig(r: dict, key: str) -> str:
    if key not in r:
        return "-"
    lb = key.removeprefix("seconds_") in r["lower_bound"] or (key == "seconds_total"
                                                              and r["lower_bound"])
    return (">= " if lb else "") + str(r[key])


def _ratio(f: dict, p: dict, key: str, name: str = "programmable") -> str:
    """`f[key] / p[key]`, a lower bound where `f` was stopped, n/a where `p` was."""
    if key not in f or key not in p:
        return "n/a"
    f_lb = key.removeprefix("seconds_") in f["lower_bound"] or (key == "seconds_total"
                                                                and f["lower_bound"])
    p_lb = key.removeprefix("seconds_") in p["lower_bound"] or (key == "seconds_total"
                                                                and p["lower_bound"])
    if p_lb:
        return f"n/a ({name} was stopped)"
    return (">= " if f_lb else "") + f"{f[key] / p[key]:.1f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default=str(DEFAULT_NET))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["programmable", "fixed"],
                    choices=["fixed", "programmable"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-minutes", type=float, default=None,
                    help="stop a mode after this many minutes and report lower bounds")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run the programmable tiles of this git revision (for example "
                         "093decc, the behavioural tiles), and print the ratios to it")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--child", choices=["fixed", "programmable"], help=argparse.SUPPRESS)
    ap.add_argument("--x", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    args = ap.parse_args()
    # `kill` on the benchmark ends it through its `finally` blocks, which stop the mode's
    # process group (Verilator, the compiler, the simulator) instead of leaving it running
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.child:
        run_mode(args.net, np.load(args.x), args.child, Path(args.root), Path(args.progress))
        return
    from epim.sw.chip import netfile

    net = netfile.load(args.net)
    c, h, w = net.input_shape
    x = np.random.default_rng(args.seed).integers(0, 2**net.input_bits,
                                                  size=(args.images, c, h, w))
    tiles = [la for la in net.layers if la.op in ("conv", "linear")]
    limit_s = None if args.limit_minutes is None else args.limit_minutes * 60
    print(f"{args.net}: {len(tiles)} tiles, {args.images} image(s); modes {args.modes}; "
          f"limit {'none' if limit_s is None else f'{args.limit_minutes:g} min'} per mode",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="epim-scaling-") as tmp:
        x_path = Path(tmp) / "x.npy"
        np.save(x_path, x)
        for mode in args.modes + (["baseline"] if args.baseline else []):
            rows.append(run_capped(args, x_path, mode, limit_s))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| tiles | Verilog MB | modules | generate s | build s | simulate s | total s | "
          "bit-exact | cycles as model |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r.get('verilog_mb', '-')} | {r.get('verilog_modules', '-')} | "
              f"{_fig(r, 'seconds_generate')} | {_fig(r, 'seconds_build')} | "
              f"{_fig(r, 'seconds_simulate')} | {_fig(r, 'seconds_total')} | "
              f"{r.get('bit_exact', '-')} | {r.get('cycles_match', '-')} |")
        if r["stopped_at_limit"]:
            print(f"  ({r['mode']} stopped at the {args.limit_minutes:g}-minute limit during "
                  f"{r['lower_bound'][0]}: '>=' figures are lower bounds)")
    by = {r["mode"]: r for r in rows}
    if args.baseline and "programmable" in by:
        p, b = by["programmable"], rows[-1]
        print(f"\nprogrammable against {b['mode']}: "
              f"{_ratio(p, b, 'verilog_mb', 'the baseline')} the Verilog, "
              f"{_ratio(p, b, 'seconds_total', 'the baseline')} the total wall time "
              f"({_ratio(p, b, 'seconds_generate', 'the baseline')} generate, "
              f"{_ratio(p, b, 'seconds_build', 'the baseline')} build, "
              f"{_ratio(p, b, 'seconds_simulate', 'the baseline')} simulate)")
    if {"fixed", "programmable"} <= set(by):
        f, p = by["fixed"], by["programmable"]
        print(f"\nprogrammable vs fixed: {_ratio(f, p, 'verilog_mb')} less Verilog, "
              f"{_ratio(f, p, 'seconds_total')} less total wall time "
              f"({_ratio(f, p, 'seconds_build')} build, "
              f"{_ratio(f, p, 'seconds_simulate')} simulation)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    finished = [r for r in rows if not r["stopped_at_limit"]]
    if not all(r["bit_exact"] and r["cycles_match"] for r in finished):
        raise SystemExit("a mode was not bit-exact or not cycle-exact")


if __name__ == "__main__":
    main()
