"""What `epim.sw.ml.train.fit` trains: the run's configuration, with its defaults.

Its own module, free of torch, so that the command line (`epim train`, `epim.app.cli`) takes
its option defaults from here instead of copying them, without importing torch to print its
help.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...contract.geometry import DEFAULT_PIM


@dataclass
class Config:
    data: str = "mnist"
    model: str = "cnn"
    ratio: float | None = None  # epitome compression of the conv layers (None: dense)
    wrap: int = 1  # > 1: output channels wrap this many times around the epitomes' columns
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
    optimizer: str = "adam"  # adam | sgd (momentum 0.9, Nesterov)
    label_smoothing: float = 0.0
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    data_path: str | None = None  # CIFAR-10's files (see epim.sw.chip.data)
    pct_start: float = 0.15  # warm-up fraction of the one-cycle schedule
    pool_bits: int = 8  # global average pooling's output
    block: str = "relu"  # residual block of the ResNets: relu | standard (epim.sw.ml.models)
    # an imported model (`epim import`): its graph as node dicts, input shape and classes
    graph: list | None = None
    in_shape: list | None = None
    num_classes: int = 10
    # crossbar non-idealities while training (an `epim-noise-v1` object, `epim.sw.chip.noise`)
    noise: dict | None = None

    @property
    def quant(self):
        """The model's `epim.sw.ml.models.QuantConfig`."""
        from .models import QuantConfig

        return QuantConfig(self.weight_bits, self.act_bits, pool_bits=self.pool_bits)
