"""Example networks: random single-layer `epim-net-v1` objects for tests, demos and benchmarks."""

from __future__ import annotations

import math

import numpy as np

from ...contract.ops import Op
from .epitome import sample_weight, strided_offsets
from .netfile import parse

# The crossbar of the example and random networks (the tests' fixtures and their expected
# figures are built on it): 128 x 128, not the product's default of 32 x 32
# (`epim.contract.geometry.DEFAULT_PIM`, what `epim train` and `epim import` shape models for).
EXAMPLE_PIM = {"xbar_rows": 128, "xbar_cols": 128, "cell_bits": 2, "dac_bits": 1, "adc_bits": 8}


def conv_layer_net(
    rng: np.random.Generator,
    *,
    cin: int = 4,
    cout: int = 8,
    h: int = 8,
    w: int = 8,
    kernel: int = 3,
    stride: int = 1,
    padding: int = 1,
    in_bits: int = 4,
    out_bits: int = 4,
    weight_bits: int = 3,
    epitome: tuple[int, int, int, int] | None = (2, 4, 2, 4),
    offsets: str = "strided",
    d_r: int = 0,
    d_c: int = 1,
    pim: dict | None = None,
    relu: bool = True,
    name: str = "conv",  # (the layer's name)
) -> dict:
    """One conv layer as a network object.

    `epitome` is `(Ce_in, Ce_out, p_in, p_out)` or None for a dense layer. `offsets` is
    `"strided"` (the rule of spec section 2 with `d_r`, `d_c`) or `"random"`. Output-stage
    parameters are chosen so that outputs spread over the whole `out_bits` range.
    """
    wmax = 2 ** (weight_bits - 1) - 1
    layer: dict = {"name": name, "op": Op.CONV, "inputs": ["input"], "out_channels": cout,
                   "kernel": kernel, "stride": stride, "padding": padding,
                   "weight_bits": weight_bits}
    if epitome is None:
        layer["weights"] = rng.integers(-wmax, wmax + 1, (cout, cin, kernel, kernel)).tolist()
    else:
        ce_in, ce_out, p_in, p_out = epitome
        g_in, g_out = math.ceil(cin / p_in), math.ceil(cout / p_out)
        if offsets == "strided":
            row, col = strided_offsets(cin, cout, ce_in, ce_out, p_in, p_out, d_r, d_c)
        else:
            row = rng.integers(0, ce_in, (g_in, g_out))
            col = rng.integers(0, ce_out, (g_in, g_out))
        layer["epitome"] = {
            "in_channels": ce_in, "out_channels": ce_out, "patch_in": p_in, "patch_out": p_out,
            "row_offset": row.tolist(), "col_offset": col.tolist(),
            "weights": rng.integers(-wmax, wmax + 1, (ce_out, ce_in, kernel, kernel)).tolist()}
    # Scale and centre so that typical accumulators spread over the whole output range.
    spread = math.sqrt(cin * kernel * kernel) * (2**in_bits) * max(wmax, 1) / 2
    target = 2 ** (out_bits - 1) if relu else 2 ** (out_bits - 2)
    shift = 16
    while shift > 0 and target / max(spread, 1) * 2**shift >= 2**29:
        shift -= 1
    mult = max(1, int(round(target / max(spread, 1) * 2**shift)))
    layer.update(bias=[0] * cout, mult=rng.integers(max(1, mult // 2), mult * 2 + 1, cout).tolist(),
                 shift=[shift] * cout, relu=relu, out_bits=out_bits)
    net = {
        "format": "epim-net-v1",
        "pim": dict(pim or EXAMPLE_PIM),
        "input": {"name": "input", "channels": cin, "height": h, "width": w, "bits": in_bits},
        "layers": [layer],
        "output": name,
    }
    parsed = parse(net).layers[0]
    wsum = sample_weight(parsed.epitome, cin, cout).sum(axis=(1, 2, 3))
    centre = (2**in_bits - 1) / 2 * wsum - target * 2**shift / np.asarray(layer["mult"]) * 0.8
    layer["bias"] = [int(v) for v in -np.round(centre) + rng.integers(-2, 3, cout)]
    return net


def default_layer_net() -> dict:
    """The embedded default: a 3x3 epitome layer, 2 IFRT steps per pixel, 4-bit inputs."""
    return conv_layer_net(np.random.default_rng(2024), cin=8, cout=16, h=16, w=16,
                          epitome=(4, 8, 4, 8), d_r=0, d_c=4, name="epim_conv3x3")


def random_layer_net(seed: int) -> dict:
    """A random dense or epitome conv layer over the parameters the spec lets vary: shapes,
    stride, padding, patches with channel wrapping, random offset tables, weight, cell, DAC and
    (mostly lossy) ADC bits, signed or ReLU outputs. Every third seed gives a dense layer."""
    r = np.random.default_rng(seed)
    cin, cout = int(r.integers(1, 7)), int(r.integers(1, 7))
    k = int(r.integers(1, 4))
    pad = int(r.integers(0, k))
    h, w = int(r.integers(max(k, 3), 7)), int(r.integers(max(k, 3), 7))
    if seed % 3 == 0:
        epi = None
    else:
        ce_in, ce_out = int(r.integers(1, cin + 2)), int(r.integers(1, cout + 2))
        epi = (ce_in, ce_out, int(r.integers(1, ce_in + 1)), int(r.integers(1, ce_out + 1)))
    pim = {"xbar_rows": int(r.integers(2, 20)), "xbar_cols": 16,
           "cell_bits": int(r.integers(1, 4)), "dac_bits": int(r.integers(1, 4)),
           "adc_bits": int(r.integers(2, 7))}
    return conv_layer_net(
        r, cin=cin, cout=cout, h=h, w=w, kernel=k, stride=int(r.integers(1, 3)), padding=pad,
        in_bits=int(r.integers(2, 7)), out_bits=int(r.integers(3, 9)),
        weight_bits=int(r.integers(2, 6)), epitome=epi, offsets="random", pim=pim,
        relu=bool(seed % 4 != 1), name=f"rand{seed}")


def _conv(r: np.random.Generator, name: str, src: str, shape, cout: int, kernel: int,
          stride: int, padding: int, in_bits: int, out_bits: int, pim: dict,
          relu: bool = True, op: str = Op.CONV) -> tuple[dict, tuple[int, int, int]]:
    """One random conv (or linear) layer reading `src` of `shape`, and its output shape."""
    cin, h, w = shape
    if op == Op.LINEAR:
        cin, h, w, kernel, stride, padding = cin * h * w, 1, 1, 1, 1, 0
    if r.random() < 0.3:
        epi = None
    else:
        ce_in, ce_out = int(r.integers(1, cin + 1)), int(r.integers(1, cout + 1))
        epi = (ce_in, ce_out, int(r.integers(1, ce_in + 1)), int(r.integers(1, ce_out + 1)))
    lay = conv_layer_net(r, cin=cin, cout=cout, h=h, w=w, kernel=kernel, stride=stride,
                         padding=padding, in_bits=in_bits, out_bits=out_bits,
                         weight_bits=int(r.integers(2, 5)), epitome=epi,
                         offsets="random" if r.random() < 0.5 else "strided", pim=pim,
                         relu=relu, name=name)["layers"][0]
    lay["inputs"] = [src]
    if op == Op.LINEAR:
        for key in ("kernel", "stride", "padding"):
            del lay[key]
        lay["op"] = Op.LINEAR
        lay["out_features"] = lay.pop("out_channels")
        return lay, (cout, 1, 1)
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    return lay, (cout, ho, wo)


def random_network_net(seed: int, v11: bool = False) -> dict:
    """A small random network over what the accelerator covers: a stem conv, one or two
    residual blocks (identity skip, or a 1x1 conv skip when the shape changes), then global
    pooling and a linear classifier, a linear layer on the flattened map, or the last map
    itself. Random shapes, epitomes (with wrapping and random offsets), bits, and lossy ADCs.

    `v11=True` uses what version 1.1 of the contract adds: a max pool after the stem (random
    kernel, stride and padding) and standard residual blocks, whose second conv and 1x1
    shortcut have `relu: false` and feed the adder signed values."""
    r = np.random.default_rng(seed)
    pim = {"xbar_rows": int(r.integers(4, 24)), "xbar_cols": 16,
           "cell_bits": int(r.integers(1, 4)), "dac_bits": int(r.integers(1, 4)),
           "adc_bits": int(r.integers(3, 8))}
    in_bits = int(r.integers(2, 7))
    side = (5, 10) if v11 else (4, 8)  # room for the max pool
    shape = (int(r.integers(1, 4)), int(r.integers(*side)), int(r.integers(*side)))
    net_in = {"name": "input", "channels": shape[0], "height": shape[1], "width": shape[2],
              "bits": in_bits}
    bits = int(r.integers(2, 6))
    k = int(r.choice([1, 3]))
    lay, shape = _conv(r, "stem", "input", shape, int(r.integers(2, 6)), k, 1, k // 2, in_bits,
                       bits, pim)
    layers = [lay]
    prev = "stem"
    if v11:
        pk = int(r.integers(2, 4))
        ps = int(r.integers(1, 3))
        pp = int(r.integers(0, pk // 2 + 1))
        layers.append({"name": "pool", "op": Op.MAXPOOL, "inputs": ["stem"], "kernel": pk,
                       "stride": ps, "padding": pp})
        shape = (shape[0], (shape[1] + 2 * pp - pk) // ps + 1,
                 (shape[2] + 2 * pp - pk) // ps + 1)
        prev = "pool"
    for b in range(int(r.integers(1, 3))):
        cout = int(r.integers(2, 6))
        stride = int(r.integers(1, 3)) if shape[1] >= 4 and shape[2] >= 4 else 1
        k = int(r.choice([1, 3]))
        c1, s1 = _conv(r, f"b{b}c1", prev, shape, cout, k, stride, k // 2, bits, bits, pim)
        c2_bits = int(r.integers(3, 8)) if v11 else bits  # a standard block's signed branch
        c2, s2 = _conv(r, f"b{b}c2", f"b{b}c1", s1, cout, 3, 1, 1, bits, c2_bits, pim,
                       relu=not v11)
        layers += [c1, c2]
        skip = prev
        if s2 != shape:
            sc_bits = int(r.integers(3, 8)) if v11 else bits
            sc_relu = bool(r.random() < 0.3) if v11 else True
            sc, _ = _conv(r, f"b{b}sc", prev, shape, cout, 1, stride, 0, bits, sc_bits, pim,
                          relu=sc_relu)
            layers.append(sc)
            skip = f"b{b}sc"
        out_bits = int(r.integers(2, 6))
        layers.append({"name": f"b{b}add", "op": Op.ADD, "inputs": [f"b{b}c2", skip],
                       "ma": int(r.integers(1, 8)), "mb": int(r.integers(-2, 8)),
                       "shift": int(r.integers(1, 4)), "out_bits": out_bits})
        prev, shape, bits = f"b{b}add", s2, out_bits
    end = seed % 2 * 2 if v11 else seed % 3  # v1.1: pool and classifier, or the map itself
    if end == 0:  # pool, then a linear classifier
        pool_bits = int(r.integers(3, 9))
        shift = 12
        layers.append({"name": "gap", "op": Op.AVGPOOL_GLOBAL, "inputs": [prev],
                       "mult": max(1, round(2**shift / (shape[1] * shape[2]))),
                       "shift": shift, "out_bits": pool_bits})
        lay, _ = _conv(r, "fc", "gap", (shape[0], 1, 1), int(r.integers(2, 11)), 1, 1, 0,
                       pool_bits, 16, pim, relu=False, op=Op.LINEAR)
        layers.append(lay)
    elif end == 1:  # a linear layer on the flattened map
        lay, _ = _conv(r, "fc", prev, shape, int(r.integers(2, 8)), 1, 1, 0, bits, 12, pim,
                       relu=False, op=Op.LINEAR)
        layers.append(lay)
    net = {"format": "epim-net-v1", "pim": pim, "input": net_in, "layers": layers,
           "output": layers[-1]["name"]}
    parse(net)
    return net

