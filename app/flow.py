"""The main job, from nothing to a verified accelerator (what `nox -s flow` runs).

1. train a small EPIM network with 3-bit epitome-aware QAT (`epim.sw.ml.train`; resumes from its
   checkpoint), quantize and export it to `net.json`;
2. run the integer reference on the whole test set (accuracy);
3. compile the network's memory images and emit the accelerator's Verilog;
4. stream the first N test images through the Verilator cosim: outputs bit-exact against the
   reference, every handshake in the cycle the network model predicts;
5. write `report.md` (with `layers.png`) and `report.json`, and print the summary.

Everything lands under one folder (`build/flow` by default):

    python -m epim.app.flow --data mnist --epochs 3 --images 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..contract import files as owned
from ..contract.ops import TILE_OPS
from ..sw.chip import cost, data, netcycles, netfile, reference, replication
from ..sw.chip.epitome import crossbar_count
from ..sw.chip.progress import bar as progress_bar
from .cli import replicas_arg, resolve_replicas
from .generate import save_npy, write_json
from .verify import cosim_network

# The showcase: epitomes at 4x whose output side wraps twice through the OFAT (IFRT reuse on),
# trained 3 epochs; `examples/mnist-epim-cnn-r4/` is this run's net.json.
RATIO, WRAP, EPOCHS = 4.0, 2, 3


def layer_rows(net: netfile.Network, timing: dict, replicas: dict[str, int]) -> list[dict]:
    pim = net.pim
    rows = []
    for la in net.layers:
        row = {"layer": la.name, "op": la.op, "out_shape": list(la.out_shape)}
        if la.op in TILE_OPS:
            epi = la.epitome
            row.update(
                epitome=None if epi.dense else [epi.in_channels, epi.out_channels,
                                                epi.patch_in, epi.patch_out],
                replicas=replicas.get(la.name, 1),
                crossbars=crossbar_count(la, pim.cell_bits, pim.xbar_rows, pim.xbar_cols),
                dense8_crossbars=crossbar_count(la, pim.cell_bits, pim.xbar_rows,
                                                pim.xbar_cols, dense=True, weight_bits=8))
        row.update(timing["layers"][la.name])
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["layer"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.bar(names, [r.get("crossbars", 0) for r in rows], label="EPIM")
    a.bar(names, [r.get("dense8_crossbars", 0) for r in rows], fill=False, edgecolor="k",
          label="dense 8-bit")
    a.set_ylabel("crossbars")
    a.set_yscale("log")
    a.legend(fontsize=8)
    a.set_title("crossbars per layer")
    b.bar(names, [r.get("steady_cycles_per_image") or 0 for r in rows], label="cycles/image")
    b.bar(names, [r.get("ideal_cycles_per_image", 0) for r in rows], fill=False,
          edgecolor="k", label="crossbar busy (ideal)")
    b.set_ylabel("cycles per image")
    b.legend(fontsize=8)
    b.set_title("steady-state cycles per layer")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    owned.write_owned(Path(path).parent, {Path(path).name: lambda f: fig.savefig(
        f, dpi=110, format="png")}, "flow")
    plt.close(fig)


def markdown(s: dict, rows: list[dict]) -> str:
    c = s["cosim"]
    lines = [
        f"# EPIM flow: {s['data']} {s['model']} (epitome ratio {s['ratio']:g}, wrap {s['wrap']})",
        "",
        f"Trained {s['epochs']} epoch(s), 3-bit weights / {s['act_bits']}-bit activations; "
        f"exported to `net.json`.", "",
        "| figure | value |", "|---|---|",
        f"| test accuracy, integer reference ({s['test_images']} images) | "
        f"{100 * s['accuracy']:.2f}% |",
        f"| crossbars (spec section 3) | {s['crossbars']} |",
        f"| dense 8-bit crossbars | {s['dense8_crossbars']} |",
        f"| compression vs dense 8-bit | {s['compression']:.2f}x |",
        f"| layers wrapping output channels (`Ce_out < Cout`) | "
        f"{', '.join(s['wrapping_layers']) or 'none'} |",
        f"| crossbar activations per image, IFRT reuse on / off | {s['activations']} / "
        f"{s['activations_no_reuse']} |",
        f"| tile copies | {s['copies_text']} |",
        f"| crossbars with the copies (budget: dense 3-bit's {s['dense3_crossbars']}) | "
        f"{s['crossbars_with_copies']} |",
        f"| latency, first image | {s['latency_cycles']} cycles |",
        f"| steady state | {s['cycles_per_image']:g} cycles/image "
        f"({s['cycles_per_image_without_copies']:g} without copies) |",
        f"| slowest tile | {s['slowest_tile']} ({s['slowest_tile_cycles']:g} cycles/image); "
        f"network / slowest = {s['throughput_ratio']:.3f} |",
        f"| throughput at {s['clock_mhz']:g} MHz | {s['images_per_second']:.0f} images/s |",
        f"| cosim images | {c['images']} |",
        f"| bit-exact outputs | {c['matching_images']}/{c['images']} |",
        f"| predicted classes equal to the reference | {c['class_matches']}/{c['images']} |",
        f"| every handshake cycle equals the model | {'yes' if c['cycles_match'] else 'NO'} |",
        f"| cosim latency / model | {c['cycles'][0]} / {c['predicted_cycles'][0]} cycles |",
        "", "## Layers", "",
        "| layer | op | output | epitome (Ce_in, Ce_out, p_in, p_out) | crossbars | copies | "
        "dense 8-bit | cycles/image | crossbar busy (ideal) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sc = r.get("steady_cycles_per_image")
        lines.append(
            f"| {r['layer']} | {r['op']} | {r['out_shape']} | {r.get('epitome') or '-'} | "
            f"{r.get('crossbars', '-')} | {r.get('replicas', '-')} | "
            f"{r.get('dense8_crossbars', '-')} | "
            f"{f'{sc:g}' if sc else '-'} | {r.get('ideal_cycles_per_image', '-')} |")
    lines += ["", "![crossbars and cycles per layer](layers.png)", "",
              "Reproduce the accuracy with the integer reference on the same file:", "",
              f"    epim data {s['data']} --split test --images x.npy --labels y.npy",
              f"    epim reference {s['net']} --inputs x.npy --outputs logits.npy "
              "--labels y.npy", "",
              "Cycles: `docs/network.md`. Clock: a stated figure, not a timing-closed one "
              "(the FPGA issue measures Fmax)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from ..sim.verilator import ToolMissing
    from ..sw.chip.data import DataMissing
    from ..sw.chip.reproducible import pin_cpu_kernels

    pin_cpu_kernels()  # before torch is imported: the same bits on any x86-64 machine
    try:
        return run(argv)
    except (DataMissing, ToolMissing) as exc:
        print(f"epim flow: {exc}", file=sys.stderr)
        return 2


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist", help="mnist, fashion-mnist or mnist-5k")
    ap.add_argument("--model", default="cnn", help="cnn or resnet")
    ap.add_argument("--ratio", type=float, default=RATIO,
                    help=f"epitome compression of the convs (default {RATIO:g})")
    ap.add_argument("--wrap", type=int, default=WRAP,
                    help=f"output channels wrap this many times around the epitomes' columns "
                         f"(default {WRAP}; 1: no wrapping, no IFRT reuse)")
    ap.add_argument("--replicas", default="auto",
                    help="tile copies: 'auto' (default: the slowest tiles get copies while the "
                         "crossbars stay within --budget), 'none', or LAYER=N,...")
    ap.add_argument("--budget", type=int,
                    help="crossbars for --replicas auto (default: dense 3-bit's count)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="training images (default: all)")
    ap.add_argument("--test-limit", type=int, help="test images for the accuracy (default: all)")
    ap.add_argument("--images", type=int, default=20, help="test images through the cosim")
    ap.add_argument("--clock-mhz", type=float, default=100.0,
                    help="clock for images per second (default 100 MHz)")
    ap.add_argument("--out", type=Path, default=Path("build/flow"))
    args = ap.parse_args(argv)
    from ..sw.ml.train import Config, fit

    out = owned.claim_folder(args.out, "flow")
    t0 = time.time()
    phases: dict[str, float] = {}

    def phase(name: str, started: float) -> None:
        phases[name] = round(time.time() - started, 1)
        print(f"      done in {phases[name]:.0f} s", flush=True)

    t = time.time()
    print(f"[1/4] training {args.model} on {args.data} ({args.epochs} epoch(s), ratio "
          f"{args.ratio:g}, wrap {args.wrap}) in {out / 'train'}", flush=True)
    cfg = Config(data=args.data, model=args.model, ratio=args.ratio, wrap=args.wrap,
                 width=args.width, epochs=args.epochs, seed=args.seed, limit=args.limit,
                 test_limit=args.test_limit)
    metrics = fit(cfg, out / "train", log=lambda line: print("      " + line, flush=True))
    metrics.pop("model")
    net_path = out / "train" / "net.json"
    net = netfile.load(net_path)
    phase("train", t)

    t = time.time()
    print("[2/4] integer reference on the test set", flush=True)
    x, labels = data.load(args.data, "test", args.test_limit)
    x = x.astype(np.int64)
    with progress_bar(len(x), "reference", "img") as bar:
        logits = reference.run_network(net, x, progress=bar.update)
    pred = logits.reshape(len(x), -1).argmax(1)
    accuracy = float((pred == labels).mean())
    print(f"      accuracy {accuracy:.4f} on {len(x)} images", flush=True)
    phase("reference", t)

    t = time.time()
    replicas = resolve_replicas(net, replicas_arg(args.replicas), args.budget)
    print(f"[3/4] accelerator (tile copies: {replication.describe(net, replicas or {})}) and "
          f"cosim of {args.images} test image(s) in {out / 'cosim'}", flush=True)
    n = min(args.images, len(x))
    y, rep = cosim_network(net, x[:n], out / "cosim", replicas=replicas,
                           log=lambda line: print("      " + line, flush=True))
    save_npy(out / "cosim" / "outputs.npy", y)
    class_matches = int((y.reshape(n, -1).argmax(1) == pred[:n]).sum())
    rep["class_matches"] = class_matches
    write_json(out / "cosim" / "report.json", rep)
    phase("accelerator and cosim", t)

    print("[4/4] report", flush=True)
    timing = netcycles.predict(net, 4, rep["fifo_depths"], replicas=replicas)
    plain = netcycles.predict(net, 4)
    nc = cost.network_cost(net, replicas=replicas)
    rows = layer_rows(net, {"layers": timing.layers}, replicas or {})
    tiles = [r for r in rows if "crossbars" in r]
    bottleneck, alone = rep["slowest_tile"], rep["slowest_tile_cycles_per_image"]
    xbars = sum(r["crossbars"] for r in tiles)
    copies = sum(r["crossbars"] * r["replicas"] for r in tiles)
    dense8 = sum(r["dense8_crossbars"] for r in tiles)
    summary = {
        "data": args.data, "model": args.model, "ratio": args.ratio, "wrap": args.wrap,
        "epochs": args.epochs, "act_bits": cfg.act_bits, "net": str(net_path),
        "accuracy": accuracy, "test_images": len(x),
        "fake_quant_accuracy": metrics.get("fake_quant_accuracy"),
        "integer_vs_fake_quant_agreement": metrics.get("integer_vs_fake_quant_agreement"),
        "crossbars": xbars, "dense8_crossbars": dense8, "compression": dense8 / xbars,
        "dense3_crossbars": replication.dense_budget(net),
        "replicas": replicas or {}, "crossbars_with_copies": copies,
        "copies_text": replication.describe(net, replicas or {}),
        "activations": nc.summary()["activations"],
        "activations_no_reuse": nc.summary()["activations_no_reuse"],
        "wrapping_layers": [la.name for la in net.layers if la.epitome is not None
                            and la.epitome.out_channels < la.out_channels],
        "latency_cycles": timing.latency[0], "cycles_per_image": timing.steady,
        "cycles_per_image_without_copies": plain.steady,
        "slowest_tile": bottleneck, "slowest_tile_cycles": alone,
        "throughput_ratio": timing.steady / alone,
        "clock_mhz": args.clock_mhz,
        "images_per_second": args.clock_mhz * 1e6 / timing.steady,
        "cosim": {k: rep[k] for k in ("images", "matching_images", "cycles",
                                      "predicted_cycles", "steady_cycles_per_image",
                                      "predicted_steady_cycles_per_image", "cycles_match",
                                      "class_matches")},
        "phases_seconds": phases,
        "seconds": round(time.time() - t0, 1),
    }
    owned.write_owned(out, {"report.json": json.dumps({"summary": summary, "layers": rows},
                                                      indent=1) + "\n",
                            "report.md": markdown(summary, rows)}, "flow")
    plot(rows, out / "layers.png")
    c = summary["cosim"]
    print(f"""
EPIM flow summary ({args.data}, {args.model}, ratio {args.ratio:g}, wrap {args.wrap}; \
{out / 'report.md'})
  accuracy (integer reference)  {100 * accuracy:.2f}% on {len(x)} test images
  crossbars                     {xbars} ({dense8 / xbars:.2f}x fewer than dense 8-bit: {dense8})
  output channel wrapping       {', '.join(summary['wrapping_layers']) or 'none'}; \
{summary['activations']} activations per image with IFRT reuse, \
{summary['activations_no_reuse']} without
  tile copies                   {replication.describe(net, replicas or {})}: {copies} \
crossbars (dense 3-bit: {summary['dense3_crossbars']})
  cycles per image (steady)     {timing.steady:g} ({plain.steady:g} without copies); \
latency {timing.latency[0]} cycles
  slowest tile                  {bottleneck}: {alone:g} cycles/image alone \
(network/slowest {summary['throughput_ratio']:.3f})
  images per second             {summary['images_per_second']:.0f} at {args.clock_mhz:g} MHz
  cosim                         {c['matching_images']}/{c['images']} bit-exact, \
{c['class_matches']}/{c['images']} classes equal to the reference, cycles \
{'equal to' if c['cycles_match'] else 'DIFFERENT FROM'} the model
  time                          {summary['seconds']:.0f} s \
({', '.join(f'{k} {v:.0f} s' for k, v in phases.items())})""")
    ok = c["matching_images"] == c["images"] and c["cycles_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
