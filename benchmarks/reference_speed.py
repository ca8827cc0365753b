"""How fast the integer reference runs a 28x28 epitome layer, against PyTorch's conv2d.

Prints seconds per image for the spec-literal reference (ADC, slices, polarities, IFRT steps,
OFAT wrapping) and for a float conv2d of the sampled weight on the same data, and their ratio,
all measured in one run (absolute times on shared 2-core machines swing a lot; the ratio less).

    python benchmarks/reference_speed.py
"""

from __future__ import annotations

import numpy as np
import torch
from timing import median_time

from epim.sw.chip import epitome, examples, netfile, reference


def main() -> None:
    rng = np.random.default_rng(0)
    net = netfile.parse(examples.conv_layer_net(
        rng, cin=16, cout=32, h=28, w=28, epitome=(8, 16, 8, 16), d_c=4, in_bits=8))
    layer = net.layers[0]
    x = rng.integers(0, 256, (1,) + net.input_shape)
    steps = len(epitome.steps(layer.epitome))
    ref = median_time(lambda: reference.run_network(net, x))
    w = torch.tensor(epitome.sample_weight(layer.epitome, 16, 32), dtype=torch.float32)
    xt = torch.tensor(x, dtype=torch.float32)
    tconv = median_time(lambda: torch.nn.functional.conv2d(xt, w, padding=1))
    print(f"layer 16->32 3x3 on 28x28, epitome 16x8, {steps} IFRT steps, 8-bit inputs "
          f"(8 DAC slices)")
    print(f"integer reference: {ref * 1e3:8.1f} ms/image")
    print(f"torch conv2d     : {tconv * 1e3:8.1f} ms/image (float, no ADC or slicing)")
    print(f"ratio reference / conv2d: {ref / tconv:.1f}")


if __name__ == "__main__":
    main()
