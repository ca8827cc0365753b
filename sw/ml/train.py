"""Train epitome CNNs with epitome-aware quantization-aware training, deterministically.

`fit` trains an :class:`~epim.sw.ml.models.EpimNet` on `uint8` images with Adam and a cosine
schedule, evaluates, writes a checkpoint per epoch (resumable) and, for quantized models, the
exported `epim-net-v1` file. `epim train` is its command line.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...contract import files as owned
from ..chip import data
from ..chip.progress import bar as progress_bar
from . import models
from .compress import model_crossbars
from .config import Config
from .export import export, quantize_inputs

# Threads of CPU training: fixed, because a sum split over another number of threads rounds
# differently (EPIM_TRAIN_THREADS overrides it, at the price of other bits).
TRAIN_THREADS = 2


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed every generator; on the CPU also fix the thread count and ask for deterministic
    kernels (see `epim.sw.chip.reproducible`; on a GPU determinism would slow training several-fold,
    so GPU runs are seeded but not bit-reproducible)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cpu = device is None or device.type == "cpu"
    if cpu:
        torch.set_num_threads(int(os.environ.get("EPIM_TRAIN_THREADS", TRAIN_THREADS)))
    torch.use_deterministic_algorithms(cpu, warn_only=True)
    if not cpu:
        torch.backends.cudnn.benchmark = True


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2,
            flip: bool = False) -> torch.Tensor:
    """Random shifts of up to `pad` pixels (zero-pad and crop) and, with `flip`, random
    horizontal flips, on the device. MNIST-like sets use pad 2; CIFAR-10 pad 4 and flips."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device="cpu").to(x.device)
    jj = torch.arange(w, device=x.device)[None, :]
    if flip:
        f = torch.randint(0, 2, (n,), generator=gen, device="cpu").to(x.device).bool()
        jj = torch.where(f[:, None], w - 1 - jj, jj)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]
    cols = dx[:, None] + jj
    idx = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around a slice put their dimensions first: (n, h, w, C)
    return padded[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


AUGMENT = {"cifar10": {"pad": 4, "flip": True}}


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
    """A bar per epoch with the batch rate, time left and running loss, on a terminal only
    (`epim.sw.chip.progress`); the epoch's summary line is logged by `fit`."""

    def __init__(self, total: int, label: str):
        self.bar = progress_bar(total, label, "batch")
        self.t0 = time.time()

    def step(self, i: int, loss_sum, count: int) -> None:
        if not self.bar.disable and (i % 10 == 0 or i == self.bar.total):
            self.bar.set_postfix_str(f"loss {float(loss_sum) / count:.3f}", refresh=False)
            self.bar.update(i - self.bar.n)

    def done(self) -> float:
        self.bar.close()
        return time.time() - self.t0


def loss_fn(cfg: Config, logits: torch.Tensor, labels: torch.Tensor,
            teacher_logits: torch.Tensor | None) -> torch.Tensor:
    """Cross entropy, mixed with knowledge distillation (Hinton et al. 2015) when a teacher's
    logits are given: `(1 - a) * CE + a * T**2 * KL(teacher_T || student_T)`."""
    logits = logits.float()
    if teacher_logits is not None:
        teacher_logits = teacher_logits.float()
    ce = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
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
    ckpt = read_checkpoint(path, device)
    try:
        cfg = Config(**ckpt["config"])
        model = build_model(cfg)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise ValueError(f"{path}: not a checkpoint of epim train or import: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return cfg, model


MAX_CHECKPOINT_BYTES = 4 * 2**30


def read_checkpoint(path: str | Path, device="cpu") -> dict:
    """A checkpoint dictionary from a regular file, read with `weights_only=True` (nothing is
    unpickled); a file that is none gives a ValueError naming it."""
    import io

    path = Path(path)
    raw = owned.read_regular(path, "a checkpoint", MAX_CHECKPOINT_BYTES)
    try:
        ckpt = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises many types for a file it refuses)
        raise ValueError(f"{path}: not a checkpoint that loads without unpickling code "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dictionary")
    return ckpt


def build_model(cfg: Config) -> models.EpimNet:
    """The untrained model a config describes (input shape from its data set); an imported
    model from the graph its config keeps."""
    if cfg.graph is not None:
        nodes = [models.Node.from_dict(d) for d in cfg.graph]
        return models.EpimNet(nodes, tuple(cfg.in_shape or data.SHAPES[cfg.data]),
                              cfg.num_classes, cfg.quant)
    return models.build(cfg.model, cfg.ratio, cfg.quant, cfg.width,
                        in_shape=data.SHAPES[cfg.data], pim=cfg.pim, wrap=cfg.wrap,
                        block=cfg.block)


def make_optimizer(cfg: Config, model: models.EpimNet) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum; weight decay applies to the weights (epitomes)
    only, not to batch norm, biases or quantizer scales."""
    decay = [p for n, p in model.named_parameters() if n.endswith(".E")]
    rest = [p for n, p in model.named_parameters() if not n.endswith(".E")]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected adam or sgd)")


def fit(cfg: Config, out_dir: str | Path | None = None, log=print,
        model: models.EpimNet | None = None,
        teacher: models.EpimNet | None = None) -> dict:
    """Train (or fine-tune `model`), evaluate and, if quantized, export; returns the metrics
    (the trained model under `"model"`). With a `teacher` and `cfg.distill > 0` the loss
    mixes in distillation from the teacher's logits."""
    device = pick_device(cfg.device)
    dist = Distributed.start(device)
    device = dist.device
    seed_everything(cfg.seed, device)
    x_train, y_train = data.load(cfg.data, "train", cfg.limit, path=cfg.data_path)
    x_test, y_test = data.load(cfg.data, "test", cfg.test_limit, path=cfg.data_path)
    if model is None:
        model = build_model(cfg)
    model = model.to(device)
    if cfg.noise:
        from ..chip import noise
        from . import noise_train

        noise_train.attach(model, noise.parse(cfg.noise, "the noise configuration"), cfg.pim,
                           cfg.seed)
        on = {f"{sec}.{k}": v for sec, part in cfg.noise.items() if isinstance(part, dict)
              for k, v in part.items() if v and not isinstance(v, str)}
        log(f"noise-aware training: a fresh chip per step ({on or 'every parameter 0'})")
    if teacher is not None and cfg.distill:
        teacher = teacher.to(device).eval()
    else:
        teacher = None
    opt = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs
                                                * steps_per_epoch, pct_start=cfg.pct_start)
    out = owned.check_folder(out_dir) if out_dir else None  # (claimed at the first write)
    start = 0
    if out and "checkpoint.pt" in owned.listed(out) and (out / "checkpoint.pt").is_file():
        ckpt = read_checkpoint(out / "checkpoint.pt", device)
        if ckpt.get("config") == asdict(cfg):
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            start = ckpt["epoch"]
            log(f"resuming from epoch {start} ({out / 'checkpoint.pt'})")
    gen = torch.Generator().manual_seed(cfg.seed)
    if dist.world > 1 and start == 0:
        dist.init_quantizers(model, x_train[:cfg.batch_size], device)
    net = dist.wrap(model)
    # the whole training set sits on the device as uint8; batches are cut and augmented there
    xt = torch.as_tensor(x_train).to(device)
    yt = torch.as_tensor(y_train).to(device)
    aug = AUGMENT.get(cfg.data, {})
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=cfg.amp and device.type == "cuda")
    history = []
    for epoch in range(start, cfg.epochs):
        gen.manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(xt), generator=gen)
        model.train()
        prog = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
        total = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            # the global batch is cfg.batch_size; each process takes every world-th image
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size][dist.rank::dist.world]
            idx = idx.to(device)
            x = augment(xt[idx].float() / 255, gen, **aug)
            with autocast:
                with torch.no_grad():
                    t_logits = teacher.fake_quant_forward(x) if teacher is not None else None
                loss = loss_fn(cfg, net(x), yt[idx], t_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.constrain_()
            total = total + loss.detach()  # stays on the device: no sync per step
            prog.step(i + 1, total, i + 1)
        seconds = prog.done()
        total = float(total)
        if dist.rank > 0:  # rank 0 evaluates, logs and writes the checkpoint
            dist.barrier()
            continue
        acc, _ = evaluate(model, x_test, y_test, device)
        history.append({"epoch": epoch + 1, "loss": total / steps_per_epoch,
                        "test_accuracy": acc, "seconds": round(seconds, 1)})
        if out:
            state = {"config": asdict(cfg), "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "rng": torch.get_rng_state(), "epoch": epoch + 1}
            owned.write_owned(out, {"checkpoint.pt": functools.partial(torch.save, state)},
                              "train")
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / steps_per_epoch:.4f}, "
            f"test accuracy {acc:.4f} ({seconds:.0f} s)")
        dist.barrier()
    replicas_identical = dist.replicas_identical(model)
    if dist.rank > 0:
        # wait until rank 0 has evaluated and written, then leave together: a process group
        # torn down on one side while the other still holds it can abort Gloo's threads
        dist.barrier()
        dist.stop()
        return {"rank": dist.rank, "model": model}
    acc, pred = evaluate(model, x_test, y_test, device)
    metrics = {"config": asdict(cfg), "test_accuracy": acc, "test_images": len(y_test),
               "history": history}
    if dist.world > 1:
        metrics.update(world_size=dist.world, replicas_identical=replicas_identical)
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
            owned.write_owned(out, {"net.json": json.dumps(net) + "\n"}, "train")
    if out:
        owned.write_owned(out, {"metrics.json": json.dumps(metrics, indent=1) + "\n",
                                "predictions.npy": lambda f: np.save(f, pred)}, "train")
    dist.barrier()
    dist.stop()
    metrics["model"] = model
    return metrics


class Distributed:
    """Data-parallel training across processes started by `torchrun` (PyTorch's
    DistributedDataParallel): NCCL on GPUs (one per process), Gloo on CPUs. Every process
    trains on its share of each global batch, gradients are averaged, rank 0 evaluates and
    writes. Without `torchrun` (`WORLD_SIZE` unset or 1) this is a single process."""

    def __init__(self, device, rank=0, world=1, owned=False):
        self.device, self.rank, self.world, self.owned = device, rank, world, owned

    @classmethod
    def start(cls, device: torch.device) -> Distributed:
        import torch.distributed as td

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device)
        owned = not td.is_initialized()
        if owned:
            td.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        return cls(device, td.get_rank(), td.get_world_size(), owned)

    def init_quantizers(self, model, images, device) -> None:
        """Set every quantizer's scale from the same batch on every process (they would each
        take their own batch's statistics otherwise); nothing else changes."""
        keep = {k: v.clone() for k, v in model.state_dict().items()
                if not k.endswith(("scale", "initialised"))}
        model.train()
        with torch.no_grad():
            model(torch.as_tensor(images).to(device).float() / 255)
        model.load_state_dict(keep, strict=False)

    def wrap(self, model):
        if self.world <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def replicas_identical(self, model) -> bool | None:
        """Whether every process ended with the same parameters (checksums all-gathered)."""
        if self.world <= 1:
            return None
        import torch.distributed as td

        s = torch.stack([p.detach().double().sum() for p in model.parameters()])
        got = [torch.zeros_like(s) for _ in range(self.world)]
        td.all_gather(got, s)
        return all(torch.equal(g, got[0]) for g in got)

    def stop(self) -> None:
        if self.world > 1 and self.owned:
            import torch.distributed as td

            td.destroy_process_group()
