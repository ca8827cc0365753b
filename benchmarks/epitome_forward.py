"""Epitome conv forward: one gathered-weight conv2d against one conv2d per IFRT step.

`EpitomeConv2d.forward` samples the full weight with one gather and runs one convolution;
`forward_by_steps` runs one convolution per step with only the `Ce_out` epitome columns and
routes the results (OFAT), doing fewer multiplies when `Ce_out < Cout`. Both give the same
result (checked here). Prints forward+backward times per batch and their ratio, in one run.

    python benchmarks/epitome_forward.py
"""

from __future__ import annotations

import torch
from timing import median_time

from epim.sw.ml.layers import EpitomeConv2d

CASES = [  # cin, cout, map, (Ce_in, Ce_out, p_in, p_out)
    (32, 64, 14, (8, 64, 8, 64)),     # input side shrunk 4x (the models' default)
    (64, 64, 14, (64, 16, 64, 16)),   # output side shrunk 4x, wrapped
    (64, 64, 14, (16, 16, 16, 16)),   # both sides
]


def step(layer, forward, x):
    layer.zero_grad()
    forward(x).sum().backward()


def main():
    torch.manual_seed(0)
    print(f"{'layer':34} {'gathered ms':>12} {'by steps ms':>12} {'steps/gathered':>15}")
    for cin, cout, hw, epi in CASES:
        layer = EpitomeConv2d(cin, cout, 3, 1, 1, epi, weight_bits=3)
        x = torch.randn(128, cin, hw, hw)
        torch.testing.assert_close(layer(x), layer.forward_by_steps(x), rtol=1e-4, atol=1e-4)

        a = median_time(lambda layer=layer, x=x: step(layer, layer.forward, x), repeat=5)
        b = median_time(lambda layer=layer, x=x: step(layer, layer.forward_by_steps, x), repeat=5)
        name = f"{cin}->{cout} {hw}x{hw} epitome {epi}"
        print(f"{name:34} {a * 1e3:12.1f} {b * 1e3:12.1f} {b / a:15.2f}")


if __name__ == "__main__":
    main()
