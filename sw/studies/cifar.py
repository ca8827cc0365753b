"""The CIFAR-10 benchmark: EPIM-ResNet-20 against dense and pruned ResNet-20 at equal crossbars.

Phase 1 trains the dense float ResNet-20 (`epochs + finetune_epochs`, so it sees as many epochs
as any compressed model) and the dense 3-bit one (`epochs`) from scratch. Phase 2 starts, for
every ratio, an EPIM 3-bit model (least-squares epitomes of the trained dense 3-bit weights) and
a pruned 3-bit model at the EPIM model's crossbar count (whole output channels removed), and
fine-tunes both `finetune_epochs` with the same recipe. Every run writes its checkpoint each
epoch (a rerun resumes), `metrics.json` and, when quantized, `net.json` under `runs/<name>`;
the benchmark writes `cifar.json`, `cifar.md` and `cifar.png`.

The recipe: SGD with Nesterov momentum, one-cycle learning rate, weight decay on the weights,
random crops (padding 4) and horizontal flips done on the device, bfloat16 autocast on a GPU.
Independent runs go to `--jobs` worker processes at once (one GPU serves them all: a ResNet-20
step is too small to fill it). With `--budget-s`, a short probe times training steps with all
workers busy and sets the epochs to fit that many seconds (the report says what was run).

    python -m epim.sw.studies.cifar --data-path cifar10-jpeg.npz --epochs 30
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..chip import data
from ..ml import compress, models
from ..ml.train import Config, build_model, fit, load_checkpoint, pick_device


def recipe(args) -> Config:
    return Config(data="cifar10", model="resnet20", width=args.width, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                  optimizer="sgd", seed=args.seed, limit=args.limit,
                  test_limit=args.test_limit, device=args.device, data_path=args.data_path,
                  label_smoothing=args.label_smoothing)


def plan(args) -> list[dict]:
    """The runs: name, config, phase and (for phase 2) how the model starts."""
    base = recipe(args)
    runs = [{"name": "dense-float", "label": "dense float", "phase": 1,
             "cfg": replace(base, weight_bits=None, act_bits=None,
                            epochs=args.epochs + args.finetune_epochs)},
            {"name": "dense-3bit", "label": "dense 3-bit", "phase": 1,
             "cfg": replace(base, weight_bits=3, act_bits=4)}]
    if args.dense8:
        runs.append({"name": "dense-8bit", "label": "dense 8-bit", "phase": 1,
                     "cfg": replace(base, weight_bits=8, act_bits=8,
                                    epochs=args.epochs + args.finetune_epochs)})
    for r in args.ratios:
        cfg = replace(base, ratio=r, weight_bits=3, act_bits=4, epochs=args.finetune_epochs)
        runs.append({"name": f"epim-r{r:g}", "label": f"EPIM 3-bit r={r:g}", "phase": 2,
                     "cfg": cfg, "init": "epitomize", "ratio": r})
        runs.append({"name": f"pruned-r{r:g}", "label": f"pruned 3-bit r={r:g}", "phase": 2,
                     "cfg": cfg, "init": "prune", "ratio": r})
    return runs


def start_model(run: dict, runs_dir: Path):
    """The phase-2 starting model, from the trained dense 3-bit checkpoint."""
    _, dense3 = load_checkpoint(runs_dir / "dense-3bit")
    cfg = run["cfg"]
    epi = compress.epitomize(dense3, models.nodes(cfg.model, run["ratio"], cfg.width,
                                                  quant=cfg.quant, pim=cfg.pim))
    if run["init"] == "epitomize":
        return epi
    return compress.prune(dense3, compress.model_crossbars(epi, cfg.pim), cfg.pim)


def train_run(run: dict, runs_dir: Path) -> dict:
    """Train one run (in a worker process); returns its row for the table."""
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = runs_dir / run["name"]
    log_path = out.parent / f"{run['name']}.log"
    out.mkdir(parents=True, exist_ok=True)

    def log(line):
        with open(log_path, "a") as f:
            f.write(line + "\n")
        print(f"  {run['label']}: {line}", flush=True)

    model = start_model(run, runs_dir) if run["phase"] == 2 else None
    t0 = time.time()
    m = fit(run["cfg"], out, log=log, model=model)
    model = m.pop("model")
    cfg = run["cfg"]
    row = {"name": run["name"], "config": run["label"], "phase": run["phase"],
           "epochs": cfg.epochs, "test_accuracy": m["test_accuracy"],
           "crossbars": compress.model_crossbars(model, cfg.pim, cfg.weight_bits or 8),
           "dense8_crossbars": compress.model_crossbars(model, cfg.pim, 8, dense=True),
           "seconds": round(time.time() - t0, 1),
           "epoch_seconds": [h["seconds"] for h in m["history"]]}
    for key in ("fake_quant_accuracy", "integer_vs_fake_quant_agreement",
                "integer_vs_unfolded_agreement"):
        if key in m:
            row[key] = m[key]
    if model.quantized:
        row["net"] = str(out / "net.json")
    return row


def probe(run: dict, steps: int, t_go: float) -> float:
    """Seconds per training step of `run`'s model in this process: warm up, wait until the
    wall-clock time `t_go` (so that all workers run their timed steps together), time."""
    cfg = run["cfg"]
    device = pick_device(cfg.device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(cfg.batch_size, *data.SHAPES[cfg.data], device=device)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=cfg.amp and device.type == "cuda")
    t0 = 0.0
    for i in range(steps + 5):
        if i == 5:
            if device.type == "cuda":
                torch.cuda.synchronize()
            time.sleep(max(0.0, t_go - time.time()))
            t0 = time.time()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.constrain_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.time() - t0) / steps


def fit_budget(args, runs: list[dict], pool) -> tuple[int, int, float]:
    """Epochs (phase 1, phase 2) that fit `args.budget_s` seconds, from a probe of the heaviest
    model with as many workers busy as phase 2 keeps busy."""
    busy = min(args.jobs, 1 + sum(r["phase"] == 2 for r in runs))
    heavy = next(r for r in runs if r["phase"] == 2)
    t_go = time.time() + 30  # worker start, imports, CUDA set-up and warm-up come first
    t = max(pool.map(probe, [heavy] * busy, [args.probe_steps] * busy, [t_go] * busy))
    n_train = args.limit or data.SIZES["cifar10"]["train"]
    epoch_s = math.ceil(n_train / args.batch_size) * t * 1.3  # evaluation and slack
    # phase 1 takes `e` epochs, phase 2 `f = e * share`: (1 + share) * e epochs in all
    # phase 2's runs and the still-running float model share `jobs` workers in waves
    waves = math.ceil((1 + sum(r["phase"] == 2 for r in runs)) / args.jobs)
    e = max(1, int(args.budget_s / (epoch_s * (1 + waves * args.finetune_share))))
    return e, max(1, round(e * args.finetune_share)), t


class Inline:
    """`--jobs 1`: run each job at once in this process (same interface as the pool)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args) -> Future:
        f = Future()
        f.set_result(fn(*args))
        return f

    def map(self, fn, *iterables):
        return [fn(*a) for a in zip(*iterables, strict=True)]


def executor(jobs: int):
    if jobs <= 1:
        return Inline()
    # CUDA needs fresh worker processes: spawn, not fork
    return ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"))


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# CIFAR-10 benchmark: ResNet-20 ({meta['device']})", "",
             f"Dense float: {meta['epochs'] + meta['finetune_epochs']} epochs; dense 3-bit: "
             f"{meta['epochs']} epochs; EPIM and pruned 3-bit: from the dense 3-bit model, "
             f"{meta['finetune_epochs']} more epochs. SGD (Nesterov, lr {meta['lr']}, one "
             f"cycle), batch {meta['batch_size']}, weight decay {meta['weight_decay']}, random "
             "crop (pad 4) and flip. Weights 3-bit, activations 4-bit, inputs 8-bit; "
             "accuracy of the integer network (the exported file) on "
             f"{meta['test_images']} test images, seed {meta['seed']}. Crossbars: spec "
             "section 3 on 32x32 arrays, 2-bit cells.", "",
             "| config | epochs | test accuracy | vs dense float | crossbars | "
             "compression vs dense 8-bit |", "|---|---|---|---|---|---|"]
    fl = next((r["test_accuracy"] for r in rows if r["name"] == "dense-float"), None)
    for r in rows:
        gap = f"{100 * (r['test_accuracy'] - fl):+.2f}" if fl is not None else "-"
        lines.append(f"| {r['config']} | {r['epochs']} | {100 * r['test_accuracy']:.2f}% | "
                     f"{gap} | {r['crossbars']} | {r['compression_vs_dense8']:.1f}x |")
    pairs = [(r, next(p for p in rows if p["name"] == r["name"].replace("epim", "pruned")))
             for r in rows if r["name"].startswith("epim")
             and any(p["name"] == r["name"].replace("epim", "pruned") for p in rows)]
    if pairs:
        lines += ["", "At equal crossbars:", ""]
        for e, p in pairs:
            d = 100 * (e["test_accuracy"] - p["test_accuracy"])
            lines.append(f"- {e['compression_vs_dense8']:.1f}x ({e['crossbars']} crossbars): "
                         f"EPIM {100 * e['test_accuracy']:.2f}% vs pruned "
                         f"{100 * p['test_accuracy']:.2f}%: "
                         f"{'EPIM' if d > 0 else 'pruning'} wins by {abs(d):.2f} points")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", help="CIFAR-10 files (python batches or JPEG .npz); "
                    f"default ${data.CIFAR_ENV}, ./data, the cache folder")
    ap.add_argument("--epochs", type=int, help="dense 3-bit epochs (phase 1; default 30 on a "
                    "GPU, 2 on the CPU, where one epoch takes many minutes)")
    ap.add_argument("--finetune-epochs", type=int, help="EPIM and pruned fine-tune epochs "
                    "(default: half of --epochs)")
    ap.add_argument("--budget-s", type=float, help="instead of --epochs: fit the training "
                    "into this many seconds, timed by a probe")
    ap.add_argument("--finetune-share", type=float, default=0.5,
                    help="with --budget-s: fine-tune epochs per phase-1 epoch")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--ratios", nargs="+", type=float, default=[3, 4, 8])
    ap.add_argument("--dense8", action="store_true", help="also train a dense 8-bit model")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="training images (default: all 50 000)")
    ap.add_argument("--test-limit", type=int, help="test images (default: all 10 000; the "
                    "test set is in class order, so a prefix is not a fair sample)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, help="runs at once (default: all on a GPU, 1 on CPU)")
    ap.add_argument("--out", type=Path, default=Path("build/cifar"))
    ap.add_argument("--check", type=Path, metavar="DIR", help="instead of training: run the "
                    "integer reference on the best EPIM model of the benchmark in DIR over the "
                    "full test set and compare with its reported accuracy")
    args = ap.parse_args(argv)
    if args.check:
        return check(args.check, args.data_path)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    args.jobs = args.jobs or (3 if cuda else 1)
    if args.epochs is None:
        args.epochs = 30 if cuda else 2
        if not cuda:
            print("no GPU: a short CPU run (2 + 1 epochs); the report says so", flush=True)
    if args.finetune_epochs is None:
        args.finetune_epochs = max(1, args.epochs // 2)
    data.load("cifar10", "test", 1, path=args.data_path)  # fail now if the data is missing
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    with executor(args.jobs) as pool:
        step_s = None
        if args.budget_s:
            args.epochs, args.finetune_epochs, step_s = fit_budget(args, plan(args), pool)
            print(f"probe: {step_s * 1000:.1f} ms per step with {args.jobs} worker(s); "
                  f"epochs {args.epochs} + {args.finetune_epochs}", flush=True)
        runs = plan(args)
        meta = {"device": torch.cuda.get_device_name() if cuda else "CPU",
                "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
                "budget_s": args.budget_s, "probe_step_seconds": step_s,
                "jobs": args.jobs, "test_images": args.test_limit or 10000,
                **{k: getattr(args, k) for k in ("lr", "batch_size", "weight_decay", "seed",
                                                 "ratios", "limit", "label_smoothing")},
                "configs": {r["name"]: asdict(r["cfg"]) for r in runs}}
        futures = {r["name"]: pool.submit(train_run, r, runs_dir)
                   for r in runs if r["phase"] == 1}
        futures["dense-3bit"].result()  # phase 2 starts from it
        for r in runs:
            if r["phase"] == 2:
                futures[r["name"]] = pool.submit(train_run, r, runs_dir)
        rows = [futures[r["name"]].result() for r in runs]
    # compression against the unpruned network in dense 8-bit (a pruned model is smaller)
    ref8 = next(r["dense8_crossbars"] for r in rows if r["name"] == "dense-3bit")
    for r in rows:
        r["compression_vs_dense8"] = ref8 / r["crossbars"]
    meta["seconds"] = round(time.time() - t_start, 1)
    (args.out / "cifar.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    md = markdown(rows, meta)
    (args.out / "cifar.md").write_text(md)
    plot(rows, args.out / "cifar.png")
    print(md)
    return 0


def check(folder: Path, data_path: str | None) -> int:
    """`epim reference` on the best EPIM model at 8x or more (else the best EPIM model): its
    accuracy on the full test set must equal the reported one. Records it in cifar.json."""
    from ..chip.netfile import load
    from ..chip.reference import run_network

    path = folder / "cifar.json"
    result = json.loads(path.read_text())
    epim = [r for r in result["runs"] if r["name"].startswith("epim")]
    if not epim:
        raise SystemExit(f"{path}: no EPIM run to check")
    pool = [r for r in epim if r["compression_vs_dense8"] >= 8] or epim
    best = max(pool, key=lambda r: r["test_accuracy"])
    net_file = folder / "runs" / best["name"] / "net.json"
    x, y = data.load("cifar10", "test", result["meta"]["test_images"], path=data_path)
    t0 = time.time()
    acc = float((run_network(load(net_file), x).argmax(1) == y).mean())
    ok = acc == best["test_accuracy"]
    result["reference_check"] = {"run": best["name"], "net": str(net_file),
                                 "test_images": len(y), "reference_accuracy": acc,
                                 "reported_accuracy": best["test_accuracy"], "equal": ok,
                                 "seconds": round(time.time() - t0, 1)}
    path.write_text(json.dumps(result, indent=1))
    print(f"epim reference on {net_file}: accuracy {acc:.4f} on {len(y)} images; reported "
          f"{best['test_accuracy']:.4f}: {'equal' if ok else 'DIFFERENT'}")
    return 0 if ok else 1


def plot(rows: list[dict], path: Path) -> None:
    from .accuracy import plot as accuracy_plot

    summary = [{"data": "cifar10 ResNet-20", "config": r["config"],
                "accuracy_mean": r["test_accuracy"],
                "compression_vs_dense8": r["compression_vs_dense8"]} for r in rows]
    accuracy_plot(summary, path)


if __name__ == "__main__":
    raise SystemExit(main())
