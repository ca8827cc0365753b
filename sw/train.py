"""Train epitome CNNs with epitome-aware quantization-aware training, deterministically.

`fit` trains an :class:`~epim.sw.models.EpimNet` on `uint8` images with Adam and a cosine
schedule, evaluates, writes a checkpoint per epoch (resumable) and, for quantized models, the
exported `epim-net-v1` file. `epim train` is its command line.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data, models
from .compress import model_crossbars
from .export import export, quantize_inputs

DEFAULT_PIM = models.DEFAULT_PIM


@dataclass
class Config:
    data: str = "mnist"
    model: str = "cnn"
    ratio: float | None = None  # epitome compression of the conv layers (None: dense)
    width: int = 16
    weight_bits: int | None = 3
    act_bits: int | None = 4
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0
    limit: int | None = None  # training images (None: all)
    test_limit: int | None = None
    device: str = "auto"
    pim: dict = field(default_factory=lambda: dict(DEFAULT_PIM))
    distill: float = 0.0  # weight of the distillation loss when a teacher is given
    temperature: float = 2.0

    @property
    def quant(self) -> models.QuantConfig:
        return models.QuantConfig(self.weight_bits, self.act_bits)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (pad and crop), on the device."""
    n, _, h, w = x.shape
    pad = F.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen, device="cpu").to(x.device)
    dx = torch.randint(0, 5, (n,), generator=gen, device="cpu").to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])
    idx = torch.arange(n, device=x.device)[:, None, None]
    return pad[:, 0][idx, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def evaluate(model: models.EpimNet, images: np.ndarray, labels: np.ndarray,
             device: torch.device, batch: int = 1000,
             mode: str = "integer") -> tuple[float, np.ndarray]:
    """Accuracy and predictions of a model in eval mode. `mode`: "integer" runs a quantized
    model's integer network (a float model runs as it is), "folded" its fake-quantized float
    simulation with batch norm folded, "unfolded" the float simulation as trained."""
    model.eval()
    if mode == "integer" and model.quantized:
        params = models.fold(model)

        def run(x):
            return model.integer_forward(x, params=params)
    elif mode == "folded":
        # in float64: float32 noise would break the integer logits' exact ties its own way
        twin = copy.deepcopy(model).double()

        def run(x):
            return twin.folded_fake_quant_forward(x.double())
    else:
        run = {"integer": model, "unfolded": model.fake_quant_forward}[mode]
    preds = []
    for i in range(0, len(images), batch):
        x = quantize_inputs(images[i:i + batch]).to(device)
        preds.append(run(x).argmax(1).cpu().numpy())
    pred = np.concatenate(preds)
    return float((pred == labels).mean()), pred


class Progress:
    """One line per epoch; a live batch counter when the output is a terminal."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self.live = sys.stderr.isatty()
        self.t0 = time.time()

    def step(self, i: int, loss: float) -> None:
        if self.live and (i % 10 == 0 or i == self.total):
            bar = "#" * int(30 * i / self.total)
            print(f"\r{self.label} [{bar:30}] {i}/{self.total} loss {loss:.3f}",
                  end="", file=sys.stderr, flush=True)

    def done(self) -> float:
        if self.live:
            print("\r" + " " * 79 + "\r", end="", file=sys.stderr, flush=True)
        return time.time() - self.t0


def loss_fn(cfg: Config, logits: torch.Tensor, labels: torch.Tensor,
            teacher_logits: torch.Tensor | None) -> torch.Tensor:
    """Cross entropy, mixed with knowledge distillation (Hinton et al. 2015) when a teacher's
    logits are given: `(1 - a) * CE + a * T**2 * KL(teacher_T || student_T)`."""
    ce = F.cross_entropy(logits, labels)
    if teacher_logits is None or not cfg.distill:
        return ce
    t = cfg.temperature
    kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  log_target=True, reduction="batchmean") * t * t
    return (1 - cfg.distill) * ce + cfg.distill * kd


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[Config, models.EpimNet]:
    """The config and trained model of a `fit` checkpoint (a `checkpoint.pt` or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (train with --out first)")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    cfg = Config(**ckpt["config"])
    model = models.build(cfg.model, cfg.ratio, cfg.quant, cfg.width, pim=cfg.pim)
    model.load_state_dict(ckpt["model"])
    return cfg, model


def fit(cfg: Config, out_dir: str | Path | None = None, log=print,
        model: models.EpimNet | None = None,
        teacher: models.EpimNet | None = None) -> dict:
    """Train (or fine-tune `model`), evaluate and, if quantized, export; returns the metrics
    (the trained model under `"model"`). With a `teacher` and `cfg.distill > 0` the loss
    mixes in distillation from the teacher's logits."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    x_train, y_train = data.load(cfg.data, "train", cfg.limit)
    x_test, y_test = data.load(cfg.data, "test", cfg.test_limit)
    if model is None:
        model = models.build(cfg.model, cfg.ratio, cfg.quant, cfg.width, pim=cfg.pim)
    model = model.to(device)
    if teacher is not None and cfg.distill:
        teacher = teacher.to(device).eval()
    else:
        teacher = None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs
                                                * steps_per_epoch, pct_start=0.15)
    out = Path(out_dir) if out_dir else None
    start = 0
    if out and (out / "checkpoint.pt").exists():
        ckpt = torch.load(out / "checkpoint.pt", map_location=device, weights_only=False)
        if ckpt["config"] == asdict(cfg):
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            start = ckpt["epoch"]
            log(f"resuming from epoch {start} ({out / 'checkpoint.pt'})")
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(x_train)
    yt = torch.as_tensor(y_train)
    history = []
    for epoch in range(start, cfg.epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(xt), generator=gen)
        model.train()
        prog = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = augment(quantize_inputs(xt[idx]).to(device), gen)
            with torch.no_grad():
                t_logits = teacher.fake_quant_forward(x) if teacher is not None else None
            loss = loss_fn(cfg, model(x), yt[idx].to(device), t_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.constrain_()
            total += loss.detach().item()
            prog.step(i + 1, total / (i + 1))
        seconds = prog.done()
        acc, _ = evaluate(model, x_test, y_test, device)
        history.append({"epoch": epoch + 1, "loss": total / steps_per_epoch,
                        "test_accuracy": acc, "seconds": round(seconds, 1)})
        if out:
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"config": asdict(cfg), "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch + 1},
                       out / "checkpoint.tmp")
            (out / "checkpoint.tmp").replace(out / "checkpoint.pt")
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / steps_per_epoch:.4f}, "
            f"test accuracy {acc:.4f} ({seconds:.0f} s)")
    acc, pred = evaluate(model, x_test, y_test, device)
    metrics = {"config": asdict(cfg), "test_accuracy": acc, "test_images": len(y_test),
               "history": history}
    if model.quantized:
        fq_acc, fq_pred = evaluate(model, x_test, y_test, device, mode="folded")
        un_acc, un_pred = evaluate(model, x_test, y_test, device, mode="unfolded")
        metrics.update(fake_quant_accuracy=fq_acc,
                       integer_vs_fake_quant_agreement=float((fq_pred == pred).mean()),
                       unfolded_fake_quant_accuracy=un_acc,
                       integer_vs_unfolded_agreement=float((un_pred == pred).mean()))
        net = export(model.cpu(), cfg.pim)
        xbars = model_crossbars(model, cfg.pim)
        dense8 = model_crossbars(model, cfg.pim, weight_bits=8, dense=True)
        metrics.update(crossbars=xbars, dense8_crossbars=dense8,
                       compression_vs_dense8=dense8 / xbars)
        if out:
            (out / "net.json").write_text(json.dumps(net) + "\n")
    if out:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        np.save(out / "predictions.npy", pred)
    metrics["model"] = model
    return metrics
