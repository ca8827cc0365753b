"""One layer under programming variation: EPIM's noise model against IBM aihwkit's, side by side.

    python benchmarks/aihwkit_crosscheck.py --aihwkit-src DIR [--net NET] [--layer c2]
                                            [--sigma 0.05] [--chips 200] [--images 4]

aihwkit 1.2.0 is on PyPI only as a source distribution whose C++ simulator needs CMake and a
BLAS to build; its inference noise models and conductance converters are plain Python over
torch. So this benchmark imports `aihwkit.inference` either from an installed aihwkit or from
an unpacked source distribution (`pip download --no-deps aihwkit==1.2.0`, untar, and pass
`--aihwkit-src .../aihwkit-1.2.0/src`). It then, for one layer of a network file:

1. maps each bit slice's integer weights to a conductance pair with aihwkit's
   `SinglePairConductanceConverter` (`g_max` = the cell's top level, so one level is 1 uS) and
   checks that the pairs are exactly EPIM's cells (the plus and minus crossbars of the mapping);
2. programs those pairs with aihwkit's `StateIndependentNoiseModel` (state-independent
   programming noise `c0 = sigma * g_max`, drift and read noise off), which clips at 0 as a
   conductance must; EPIM also clips at the top level, so the aihwkit chips are run both as
   they come and with that one clip added;
3. runs the layer's real input (from the integer reference) through EPIM's noisy datapath
   (`epim.sw.chip.noise`: IFAT rows, IFRT steps, bit-serial DAC, ADC rounding, OFAT routing) on
   `--chips` chips programmed by aihwkit and on as many chips of EPIM's own model
   (`programming.sigma = sigma`, Gaussian), and compares every accumulator's mean and spread.

It prints, per variant, the share of accumulators whose means agree within 4 standard errors,
the spread ratio (aihwkit / EPIM, mean over accumulators), and the layer's mean shift in LSB
with its standard error; a second sample of EPIM's own chips shows what agreement looks like.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _import_aihwkit(src: Path | None):
    if src is not None:
        if not (src / "aihwkit" / "inference").is_dir():
            raise SystemExit(f"aihwkit_crosscheck: {src} has no aihwkit/inference package "
                             "(pass the 'src' folder of the unpacked aihwkit source)")
        sys.path.insert(0, str(src))
    try:
        from aihwkit.inference import SinglePairConductanceConverter, StateIndependentNoiseModel
    except ImportError as e:
        raise SystemExit(f"aihwkit_crosscheck: cannot import aihwkit.inference ({e}); run "
                         "`pip download --no-deps aihwkit==1.2.0`, untar it and pass "
                         "--aihwkit-src aihwkit-1.2.0/src") from None
    import aihwkit

    return aihwkit, SinglePairConductanceConverter, StateIndependentNoiseModel


def compare(a: np.ndarray, b: np.ndarray, ideal: np.ndarray) -> dict:
    """`a`, `b`: `(chips, outputs)` samples of two models. Per output: do the means agree
    within 4 standard errors, and the spread ratio; over the layer: the mean shift of `a`
    against `b` in LSB with its standard error (from each chip's mean error, so the outputs'
    correlation through shared cells is counted)."""
    n = a.shape[0]
    sa, sb = a.std(0, ddof=1), b.std(0, ddof=1)
    se = np.sqrt((sa**2 + sb**2) / n)
    live = se > 0
    z = np.abs(a.mean(0) - b.mean(0))[live] / se[live]
    ca, cb = (a - ideal).mean(1), (b - ideal).mean(1)  # each chip's mean error
    return {"outputs": int(live.sum()), "means_within_4se": float((z < 4).mean()),
            "spread_ratio": float((sa[live] / sb[live]).mean()),
            "mean_shift_lsb": float(ca.mean() - cb.mean()),
            "mean_shift_se": float(np.sqrt(ca.var(ddof=1) / n + cb.var(ddof=1) / n))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aihwkit-src", type=Path, help="aihwkit's unpacked 'src' folder "
                    "(default: an installed aihwkit)")
    ap.add_argument("--net", type=Path, default=ROOT / "examples/mnist-epim-cnn-r4/net.json")
    ap.add_argument("--layer", default="c2")
    ap.add_argument("--sigma", type=float, default=0.05,
                    help="programming variation, a fraction of the cell range")
    ap.add_argument("--chips", type=int, default=200)
    ap.add_argument("--images", type=int, default=4, help="MNIST test images as the input")
    args = ap.parse_args(argv)
    aihwkit, Converter, NoiseModel = _import_aihwkit(args.aihwkit_src)
    import torch

    from epim.sw.chip import data, netfile, noise, reference

    net = netfile.load(args.net)
    layer = next((la for la in net.layers if la.name == args.layer), None)
    if layer is None or layer.op not in ("conv", "linear"):
        raise SystemExit(f"aihwkit_crosscheck: {args.net} has no conv or linear layer "
                         f"{args.layer!r}")
    pim = net.pim
    gmax = 2**pim.cell_bits - 1
    x, _ = data.load("mnist", "test", args.images)
    tensors = reference.run_network(net, x.astype(np.int64), keep=True)
    xin = tensors[layer.inputs[0]]
    ideal = reference.layer_acc(layer, pim, xin).reshape(-1)

    # 1. aihwkit's single-pair mapping of every slice against EPIM's cells
    cells = reference.crossbar_slices(layer, pim.cell_bits)  # (2, n_s, R, C)
    converter = Converter(g_max=float(gmax))
    pairs = []
    for q in range(cells.shape[1]):
        w = torch.tensor((cells[0, q] - cells[1, q]).T, dtype=torch.float64)  # (C, R)
        (gp, gm), params = converter.convert_to_conductances(w)
        scale = float(params["scale_ratio"])
        pairs.append(np.stack([gp.numpy().T, gm.numpy().T]) / scale)
    g_aihw = np.stack(pairs, axis=1)
    same_cells = bool(np.array_equal(g_aihw, cells.astype(np.float64)))
    print(f"aihwkit {aihwkit.__version__}, torch {torch.__version__}; {args.net.name} layer "
          f"{layer.name}: {cells.shape[1]} slice(s) of {cells.shape[2]} rows x "
          f"{cells.shape[3]} columns, cells of {pim.cell_bits} bits (g_max {gmax} uS)")
    print(f"1. SinglePairConductanceConverter gives EPIM's cells: "
          f"{'yes, every cell' if same_cells else 'NO'}")

    # 2. and 3. the layer on chips of both models
    model = NoiseModel(g_max=float(gmax), prog_coeff=[args.sigma * gmax, 0.0, 0.0],
                       drift_nu_mean=0.0, drift_nu_std=0.0, read_noise_scale=0.0)
    ideal_cfg = noise.NoiseConfig()
    epim_cfg = noise.NoiseConfig(programming_sigma=args.sigma)
    runs = {"EPIM": [], "EPIM, other chips": [], "aihwkit": [], "aihwkit + top clip": []}
    t0 = time.time()
    for seed in range(args.chips):
        runs["EPIM"].append(noise.NoisyChip(net, epim_cfg, seed).acc(layer, pim, xin)
                            .reshape(-1))
        runs["EPIM, other chips"].append(  # the agreement two samples of one model reach
            noise.NoisyChip(net, epim_cfg, args.chips + seed).acc(layer, pim, xin).reshape(-1))
        torch.manual_seed(seed)
        g = model.apply_programming_noise_to_conductance(
            torch.tensor(cells, dtype=torch.float64)).numpy()
        for name, gg in (("aihwkit", g), ("aihwkit + top clip", np.minimum(g, gmax))):
            chip = noise.NoisyChip(net, ideal_cfg, seed)
            chip._layers[layer.name] = dataclasses.replace(chip.layer(layer), g=gg)
            runs[name].append(chip.acc(layer, pim, xin).reshape(-1))
    samples = {k: np.stack(v).astype(np.float64) for k, v in runs.items()}
    print(f"2./3. {args.chips} chips each at sigma {100 * args.sigma:g} % of the cell range, "
          f"{args.images} image(s), {ideal.size} accumulators ({time.time() - t0:.0f} s):")
    print("| chips | means within 4 SE of EPIM's | spread / EPIM's | mean shift (LSB) "
          "| spread (LSB) |")
    print("|---|---|---|---|---|")
    epim = samples["EPIM"]
    for name, s in samples.items():
        if name == "EPIM":
            continue
        c = compare(s, epim, ideal)
        spread = float(s.std(0, ddof=1).mean())
        print(f"| {name} | {100 * c['means_within_4se']:.1f} % | {c['spread_ratio']:.3f} | "
              f"{c['mean_shift_lsb']:+.3f} +- {c['mean_shift_se']:.3f} | {spread:.2f} |")
    bias = float((epim - ideal).mean())
    print(f"EPIM's chips against the ideal layer: mean shift {bias:+.2f} LSB (the clips at 0 "
          "and at the top level bias the cells at those levels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
