"""A user-written PyTorch model, imported, on Verilator: the chain from `nn.Module` to RTL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from epim.app import verify
from epim.sw.chip import netfile, reference
from epim.sw.ml import export, importer, models


class Tiny(nn.Module):
    """A max-pooled stem and one standard residual block (signed branch into the adder)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(y)) + x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.verilator
@pytest.mark.slow
def test_imported_model_is_bit_exact_on_verilator(tmp_path):
    torch.manual_seed(0)
    model, _ = importer.import_module(Tiny(), (1, 8, 8), ratio=2, calib_count=16,
                                      log=lambda s: None)
    net = netfile.parse(export.export(model, dict(models.DEFAULT_PIM)))
    assert {"maxpool", "add"} <= {la.op for la in net.layers} and net.signed("c2")
    x = importer.synthetic_images(3, (1, 8, 8), seed=2).astype(np.int64)
    y, rep = verify.cosim_network(net, x, tmp_path / "build")
    np.testing.assert_array_equal(y, reference.run_network(net, x))
    assert rep["match"] and rep["cycles_match"]
