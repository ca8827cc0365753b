"""Training that gives the same bits on any machine of a kind, whatever its load.

PyTorch picks its CPU kernels by the instruction set it finds (AVX-512 where there is one, AVX2
elsewhere), and kernels of different widths add in different orders, so the same seed trains
different weights on different x86 machines; and a reduction split over a different number of
threads rounds differently. :func:`pin_cpu_kernels` caps both kernel libraries at AVX2 (which
every x86-64 machine of the last decade has); it must run before `torch` is imported.
`epim.sw.ml.train` fixes the thread count (`TRAIN_THREADS`) and asks for deterministic
algorithms.
"""

from __future__ import annotations

import os
import platform
import sys


def pin_cpu_kernels() -> None:
    """Cap ATen's and oneDNN's CPU kernels at AVX2 on x86-64 (unless the environment already
    says otherwise). Has no effect once torch is imported."""
    if "torch" in sys.modules or platform.machine().lower() not in ("x86_64", "amd64"):
        return
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
