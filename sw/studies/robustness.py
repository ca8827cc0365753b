"""The robustness study: dense, EPIM and pruned 3-bit networks on imperfect crossbars.

Does sharing one epitome across many filters make a network more fragile, since one bad cell
corrupts every filter sampled from it? For each data set:

1. train a dense 3-bit model; turn it into an EPIM 3-bit model (least-squares epitomes, ratio
   `--ratio`) and, separately, prune it to the EPIM model's crossbar count; fine-tune both with
   the same recipe (as `epim.sw.studies.accuracy` does);
2. evaluate each exported integer network with the noisy reference (`epim.sw.chip.noise`) over
   `--seeds` chips: against programming variation sigma (`--sigmas`, Gaussian, a fraction of
   the cell range) and against the stuck-at rate (`--rates`, half stuck at 0 and half at max),
   the latter with and without fault-aware remapping (`epim.sw.chip.faults`);
3. fine-tune each model again on noisy chips (`--ft-sigma`, `epim train --noise`, peak learning
   rate `--ft-lr`) and evaluate that at every sigma too.

Writes `robustness.json`, `robustness.md` and `robustness.png` into `--out`.

    python -m epim.sw.studies.robustness --data mnist fashion-mnist --seeds 5 --out build/robustness
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import signal
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..chip import data, faults, netfile, noise, reference
from ..ml import compress, models
from ..ml.export import export
from ..ml.train import Config, fit

KINDS = ("dense 3-bit", "EPIM 3-bit", "pruned 3-bit")


def _fit(cfg: Config, label: str, log, model=None):
    t0 = time.time()
    m = fit(cfg, None, log=lambda line: log(f"  {label}: {line}"), model=model)
    model = m.pop("model")
    return model, {"test_accuracy": m["test_accuracy"],
                   "crossbars": compress.model_crossbars(model, cfg.pim, 3),
                   "seconds": round(time.time() - t0, 1)}


def train_models(base: Config, ratio: float, log) -> dict[str, tuple]:
    """`{kind: (model, cfg, metrics)}` for the three networks of the study."""
    out = {}
    dense_cfg = replace(base, weight_bits=3, act_bits=4)
    dense, m = _fit(dense_cfg, KINDS[0], log)
    out[KINDS[0]] = (dense, dense_cfg, m)
    nodes = models.nodes(base.model, ratio, base.width, quant=models.QuantConfig(3, 4),
                         pim=base.pim)
    epi_cfg = replace(dense_cfg, ratio=ratio)
    epi, m = _fit(epi_cfg, KINDS[1], log, model=compress.epitomize(dense, nodes))
    out[KINDS[1]] = (epi, epi_cfg, m)
    pruned, m = _fit(epi_cfg, KINDS[2], log,
                     model=compress.prune(dense, m["crossbars"], base.pim))
    out[KINDS[2]] = (pruned, epi_cfg, m)
    return out


def accuracy(net: netfile.Network, x: np.ndarray, labels: np.ndarray,
             cfg: noise.NoiseConfig | None = None, seed: int = 0,
             fmap: dict | None = None) -> float:
    chip = None
    if (cfg is not None and not cfg.ideal) or fmap:
        chip = noise.NoisyChip(net, cfg or noise.NoiseConfig(), seed=seed, faults=fmap)
    y = reference.run_network(net, x, noise=chip)
    return float((y.reshape(len(y), -1).argmax(1) == labels).mean())


def sweep(obj: dict, x, labels, sigmas, rates, seeds: int, log, remap: bool = True) -> dict:
    """Accuracy of one exported network over chips: `{"sigma": {s: [acc per seed]},
    "stuck": {r: [...]}, "stuck_remapped": {r: [...]}}`. An ideal point (sigma 0, rate 0) is
    the same on every chip: it runs once and is listed once per seed."""
    net = netfile.parse(obj)
    out: dict = {"sigma": {}, "stuck": {}, "stuck_remapped": {}}
    ideal: list[float] = []

    def ideal_accuracy() -> float:
        if not ideal:
            ideal.append(accuracy(net, x, labels))
        return ideal[0]

    for s in sigmas:
        cfg = noise.NoiseConfig(programming_sigma=s)
        out["sigma"][s] = [ideal_accuracy() if cfg.ideal else accuracy(net, x, labels, cfg, seed)
                           for seed in range(seeds)]
        log(f"    sigma {100 * s:g} %: {_fmt(out['sigma'][s])}")
    for r in rates:
        accs, accs_r = [], []
        for seed in range(seeds):
            if r == 0:  # no stuck cells: nothing to remap
                accs.append(ideal_accuracy())
                accs_r.append(ideal_accuracy())
                continue
            fmap = faults.sample(net, r / 2, r / 2, seed)
            accs.append(accuracy(net, x, labels, fmap=fmap))
            if remap:
                new, _ = faults.remap(obj, net, fmap)
                accs_r.append(accuracy(netfile.parse(new), x, labels, fmap=fmap))
        out["stuck"][r] = accs
        if remap:
            out["stuck_remapped"][r] = accs_r
        log(f"    stuck {100 * r:g} %: {_fmt(accs)}"
            + (f", remapped {_fmt(accs_r)}" if remap else ""))
    return out


def _fmt(accs: list[float]) -> str:
    return f"{100 * statistics.mean(accs):.2f} +- {100 * statistics.pstdev(accs):.2f} %"


def study(data_name: str, args, log) -> dict:
    base = Config(data=data_name, model=args.model, width=args.width, epochs=args.epochs,
                  seed=0, limit=args.limit)
    x, labels = data.load(data_name, "test", args.images)
    x = x.astype(np.int64)
    trained = train_models(base, args.ratio, log)
    ft_noise = noise.NoiseConfig(programming_sigma=args.ft_sigma)
    result = {}
    for kind, (model, cfg, metrics) in trained.items():
        obj = export(copy.deepcopy(model).cpu(), cfg.pim)
        log(f"  {kind}: {metrics['crossbars']} crossbars, trained accuracy "
            f"{metrics['test_accuracy']:.4f}; on chips:")
        row = {"metrics": metrics,
               "plain": sweep(obj, x, labels, args.sigmas, args.rates, args.seeds, log)}
        # a tenth of the training rate by default: at the full rate the noisy gradients
        # undo the clean accuracy the model starts from (seen: F-MNIST EPIM 87.0 -> 81.8 %)
        ft_cfg = replace(cfg, epochs=args.ft_epochs, noise=ft_noise.to_json(), lr=args.ft_lr)
        noisy_model, ft_metrics = _fit(ft_cfg, f"{kind}, noise-aware", log,
                                       model=copy.deepcopy(model))
        obj_ft = export(noisy_model.cpu(), cfg.pim)
        log(f"  {kind}, noise-aware fine-tuned at sigma {100 * args.ft_sigma:g} %:")
        row["noise_aware"] = sweep(obj_ft, x, labels, args.sigmas, [], args.seeds, log,
                                   remap=False)
        row["noise_aware"]["metrics"] = ft_metrics
        result[kind] = row
    return result


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
    raise SystemExit(128 + signum)


def _study_job(data_name: str, args) -> dict:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    return study(data_name, args, lambda line: print(f"[{data_name}] {line}", flush=True))


def summary_rows(results: dict) -> list[dict]:
    rows = []
    for data_name, per_kind in results.items():
        for kind, row in per_kind.items():
            for axis, key in (("sigma", "plain"), ("sigma", "noise_aware"),
                              ("stuck", "plain"), ("stuck_remapped", "plain")):
                for level, accs in row[key][axis].items():
                    rows.append({"data": data_name, "kind": kind, "axis": axis.split("_")[0],
                                 "variant": {"plain": "", "noise_aware": "noise-aware"}[key]
                                 + ("remapped" if axis == "stuck_remapped" else ""),
                                 "level": float(level), "mean": statistics.mean(accs),
                                 "std": statistics.pstdev(accs), "seeds": len(accs)})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    out = [f"# Robustness study ({meta['seeds']} chips per point, {meta['images']} test images, "
           f"ratio {meta['ratio']:g}, {meta['epochs']} epochs + {meta['epochs']} fine-tune, "
           f"noise-aware fine-tune {meta['ft_epochs']} epochs at sigma "
           f"{100 * meta['ft_sigma']:g} %, peak learning rate {meta['ft_lr']:g})",
           ""]
    for axis, title in (("sigma", "programming variation sigma (% of the cell range)"),
                        ("stuck", "stuck-at rate (% of cells, half at 0, half at max)")):
        sel = [r for r in rows if r["axis"] == axis]
        levels = sorted({r["level"] for r in sel})
        out += [f"## Accuracy against {title}", "",
                "| data | network | " + " | ".join(f"{100 * v:g} %" for v in levels) + " |",
                "|---|---|" + "---|" * len(levels)]
        for key in sorted({(r["data"], r["kind"], r["variant"]) for r in sel},
                          key=lambda k: (k[0], KINDS.index(k[1]), k[2])):
            cells = []
            for v in levels:
                r = next((r for r in sel if (r["data"], r["kind"], r["variant"]) == key
                          and r["level"] == v), None)
                cells.append(f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}" if r else "-")
            name = key[1] + (f" ({key[2]})" if key[2] else "")
            out.append(f"| {key[0]} | {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(2, len(datas), figsize=(6 * len(datas), 8), squeeze=False)
    for col, d in enumerate(datas):
        for row_i, axis in enumerate(("sigma", "stuck")):
            ax = axes[row_i][col]
            for key in sorted({(r["kind"], r["variant"]) for r in rows
                               if r["data"] == d and r["axis"] == axis}):
                pts = sorted((r for r in rows if r["data"] == d and r["axis"] == axis
                              and (r["kind"], r["variant"]) == key), key=lambda r: r["level"])
                ax.errorbar([100 * r["level"] for r in pts], [100 * r["mean"] for r in pts],
                            yerr=[100 * r["std"] for r in pts], marker="o", capsize=3,
                            label=key[0] + (f" ({key[1]})" if key[1] else ""))
            ax.set_xlabel("programming variation sigma (%)" if axis == "sigma"
                          else "stuck-at rate (%)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(d)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["mnist", "fashion-mnist"])
    ap.add_argument("--seeds", type=int, default=5, help="chips per point")
    ap.add_argument("--sigmas", nargs="+", type=float, default=[0, 0.02, 0.05, 0.10, 0.20])
    ap.add_argument("--rates", nargs="+", type=float, default=[0, 0.001, 0.005, 0.01, 0.02])
    ap.add_argument("--ratio", type=float, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--ft-sigma", type=float, default=0.10)
    ap.add_argument("--ft-lr", type=float, default=1e-3,
                    help="peak learning rate of the noise-aware fine-tune (default 1e-3, a "
                         "tenth of training's)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model", default="cnn", choices=sorted(models.MODELS))
    ap.add_argument("--limit", type=int, help="training images (default: all)")
    ap.add_argument("--images", type=int, default=1000, help="test images per evaluation")
    ap.add_argument("--out", type=Path, default=Path("build/robustness"))
    ap.add_argument("--jobs", type=int, default=1,
                    help="data sets studied at once, one process each (default 1)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.images < 1 or args.jobs < 1:
        raise SystemExit("robustness: --seeds, --images and --jobs must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = {}
    if args.jobs == 1 or len(args.data) == 1:
        for d in args.data:
            print(f"{d}:", flush=True)
            results[d] = study(d, args, lambda line: print(line, flush=True))
            (args.out / "robustness.json").write_text(json.dumps({"results": results},
                                                                 indent=1))
    else:
        # one process per data set, each on its share of the cores; lines carry the data set
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(min(args.jobs, len(args.data)), mp_context=ctx)
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminate)
        try:
            futures = {d: pool.submit(_study_job, d, args) for d in args.data}
            for d, fut in futures.items():
                results[d] = fut.result()
                (args.out / "robustness.json").write_text(json.dumps({"results": results},
                                                                     indent=1))
        except BaseException:
            # Ctrl-C, `kill`, or a failed study: the workers must not run on as orphans
            for proc in list((pool._processes or {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        pool.shutdown()
    meta = {k: getattr(args, k) for k in ("seeds", "sigmas", "rates", "ratio", "epochs",
                                          "ft_epochs", "ft_sigma", "ft_lr", "width", "model",
                                          "limit", "images")}
    meta["data"] = args.data
    meta["jobs"] = args.jobs
    meta["seconds"] = round(time.time() - t0, 1)
    rows = summary_rows(results)
    (args.out / "robustness.json").write_text(json.dumps(
        {"meta": meta, "summary": rows, "results": results}, indent=1) + "\n")
    md = markdown(rows, meta)
    (args.out / "robustness.md").write_text(md)
    plot(rows, args.out / "robustness.png")
    print(md)
    print(f"({meta['seconds']:.0f} s; {args.out}/robustness.json, .md, .png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
