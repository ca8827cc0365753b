"""Epitome CNNs in PyTorch, built as graphs of the spec's ops so they export one to one.

A model is a list of :class:`Node` s (conv, add, avgpool_global, linear), each naming its inputs,
exactly like an `epim-net-v1` file. Conv nodes are conv + batch norm + ReLU + activation
quantizer; `add` and `avgpool_global` re-quantize their result; the last `linear` gives logits.
Batch norm folds into the integer output stage at export (`epim.sw.ml.export`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...contract import geometry
from ...contract.ops import TILE_OPS, Op
from ..chip.epitome import Fill
from ..chip.epitome import epitome_shape as _epi
from ..chip.netfile import MULT_LIMIT
from .layers import ActQuant, EpitomeConv2d, EpitomeLinear, WeightQuant

INPUT = "input"


@dataclass
class Node:
    """One op of the graph. conv: `out_channels`, `kernel`, `stride`, `padding` (None:
    `kernel // 2`), `epitome`; `relu=False` ends it in batch norm alone, a signed tensor that
    only an `add` may read (contract v1.1). linear: `relu=True` for a hidden layer (the last
    linear gives logits). maxpool: `kernel`, `stride`, `padding`."""

    name: str
    op: str  # conv | add | avgpool_global | maxpool | linear
    inputs: list[str]
    out_channels: int = 0
    kernel: int = 3
    stride: int = 1
    epitome: tuple[int, int, int, int] | None = None
    extra: dict = field(default_factory=dict)
    padding: int | None = None
    relu: bool = True

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding is None else self.padding

    def to_dict(self) -> dict:
        """JSON-able form (checkpoints of imported models keep their graph this way)."""
        d = {"name": self.name, "op": self.op, "inputs": list(self.inputs),
             "out_channels": self.out_channels, "kernel": self.kernel, "stride": self.stride,
             "epitome": list(self.epitome) if self.epitome else None,
             "padding": self.padding, "relu": self.relu}
        if "weight_bits" in self.extra:
            d["weight_bits"] = self.extra["weight_bits"]
        if "offsets" in self.extra:
            d["offsets"] = [np.asarray(t).tolist() for t in self.extra["offsets"]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Node:
        extra = {"weight_bits": d["weight_bits"]} if "weight_bits" in d else {}
        if "offsets" in d:
            extra["offsets"] = tuple(np.asarray(t, dtype=np.int64) for t in d["offsets"])
        return cls(d["name"], d["op"], list(d["inputs"]), d["out_channels"], d["kernel"],
                   d["stride"], tuple(d["epitome"]) if d["epitome"] else None, extra,
                   d["padding"], d["relu"])


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths: `None` keeps that part in float."""

    weight_bits: int | None = 3
    act_bits: int | None = 4
    input_bits: int = 8
    pool_bits: int = 8

    @property
    def signed_bits(self) -> int | None:
        """Width of a signed branch (a conv without ReLU feeding an add): one bit more than
        the activations, so its positive half keeps their resolution."""
        return self.act_bits + 1 if self.act_bits else None


def layer_bits(nd: Node, quant: QuantConfig) -> int | None:
    """A conv or linear node's weight bits: `extra["weight_bits"]` (set by the layer-wise
    search) or the model's. `extra["offsets"] = (row_offset, col_offset)` likewise replaces
    the default offset tables."""
    if not quant.weight_bits:
        return None
    return nd.extra.get("weight_bits", quant.weight_bits)


class ConvUnit(nn.Module):
    """conv + batch norm + ReLU + unsigned quantizer; with `relu=False` conv + batch norm +
    signed quantizer (the last conv of a standard residual branch)."""

    def __init__(self, conv: EpitomeConv2d, act_bits, relu: bool = True):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)
        self.relu = relu
        self.aq = ActQuant(act_bits) if relu else ActQuant(act_bits and act_bits + 1,
                                                            signed=True)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.aq(torch.relu(y) if self.relu else y)


class LinearUnit(nn.Module):
    """A hidden linear layer: linear (with bias) + ReLU + unsigned quantizer."""

    def __init__(self, lin: EpitomeLinear, act_bits):
        super().__init__()
        self.lin = lin
        self.aq = ActQuant(act_bits)

    def forward(self, x):
        return self.aq(torch.relu(self.lin(x)))


class MaxPoolUnit(nn.Module):
    """Max pooling: exact on quantized values (the scale passes through)."""

    def __init__(self, kernel: int, stride: int, padding: int):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)


class AddUnit(nn.Module):
    def __init__(self, act_bits):
        super().__init__()
        self.aq = ActQuant(act_bits)

    def forward(self, a, b):
        return self.aq(torch.relu(a + b))


class PoolUnit(nn.Module):
    def __init__(self, bits):
        super().__init__()
        self.aq = ActQuant(bits)

    def forward(self, x):
        return self.aq(x.mean(dim=(2, 3), keepdim=True))


class EpimNet(nn.Module):
    """A network of spec ops; input images are `uint8`-valued tensors scaled to [0, 1]."""

    def __init__(self, nodes: list[Node], in_shape: tuple[int, int, int], num_classes: int,
                 quant: QuantConfig = QuantConfig()):
        super().__init__()
        self.nodes = nodes
        self.in_shape = in_shape
        self.quant = quant
        self.output = nodes[-1].name
        channels = {INPUT: in_shape[0]}
        spatial = {INPUT: in_shape[1:]}
        self.units = nn.ModuleDict()
        for nd in nodes:
            src = nd.inputs[0]
            cin, (h, w) = channels[src], spatial[src]
            if nd.op in (Op.CONV, Op.MAXPOOL):
                pad = nd.pad
                if nd.op == Op.CONV:
                    conv = EpitomeConv2d(cin, nd.out_channels, nd.kernel, nd.stride, pad,
                                         nd.epitome, *nd.extra.get("offsets", (None, None)),
                                         weight_bits=layer_bits(nd, quant))
                    self.units[nd.name] = ConvUnit(conv, quant.act_bits, nd.relu)
                    channels[nd.name] = nd.out_channels
                else:
                    self.units[nd.name] = MaxPoolUnit(nd.kernel, nd.stride, pad)
                    channels[nd.name] = cin
                spatial[nd.name] = ((h + 2 * pad - nd.kernel) // nd.stride + 1,
                                    (w + 2 * pad - nd.kernel) // nd.stride + 1)
            elif nd.op == Op.ADD:
                self.units[nd.name] = AddUnit(quant.act_bits)
                channels[nd.name], spatial[nd.name] = cin, (h, w)
            elif nd.op == Op.AVGPOOL_GLOBAL:
                self.units[nd.name] = PoolUnit(quant.pool_bits if quant.act_bits else None)
                channels[nd.name], spatial[nd.name] = cin, (1, 1)
            elif nd.op == Op.LINEAR:
                lin = EpitomeLinear(cin * h * w, nd.out_channels, nd.epitome,
                                    *nd.extra.get("offsets", (None, None)),
                                    weight_bits=layer_bits(nd, quant))
                hidden = nd is not nodes[-1] and nd.relu
                self.units[nd.name] = LinearUnit(lin, quant.act_bits) if hidden else lin
                channels[nd.name], spatial[nd.name] = nd.out_channels, (1, 1)
            else:
                raise ValueError(f"node {nd.name!r}: unknown op {nd.op!r}")
        if nodes[-1].op != Op.LINEAR or nodes[-1].out_channels != num_classes:
            raise ValueError("the last node must be a linear classifier with num_classes outputs")
        self.signed = {nd.name for nd in nodes if nd.op == Op.CONV and not nd.relu}
        for nd in nodes:
            for i in nd.inputs:
                if i in self.signed and nd.op != Op.ADD:
                    raise ValueError(f"node {nd.name!r} reads {i!r}, a conv without ReLU: only "
                                     "an add may read a signed tensor")
        self.shapes = {n: (channels[n], *spatial[n]) for n in channels}

    @property
    def quantized(self) -> bool:
        return bool(self.quant.weight_bits and self.quant.act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits. A quantized model in eval mode runs the folded integer network (batch norm
        and scales folded into the output stage, spec section 5), so that its predictions are
        those of the exported file; in training mode it fake-quantizes with batch norm."""
        if self.quantized and not self.training:
            return self.integer_forward(x)
        return self.fake_quant_forward(x)

    def fake_quant_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float simulation of the quantized network as trained (batch norm unfolded; in eval
        mode with its running statistics)."""
        t = {INPUT: x}
        for nd in self.nodes:
            t[nd.name] = self.units[nd.name](*(t[i] for i in nd.inputs))
        return t[self.output]

    @torch.no_grad()
    def folded_fake_quant_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized model as it is deployed (batch norm folded, Jacob et al. 2018):
        float arithmetic on fake-quantized weights and activations, batch norm (running
        statistics) folded into a per-channel scale and a bias, the bias quantized to the
        accumulator's unit `s_x * s_w` as the integer output stage holds it. This is what the
        integer network must reproduce; it differs from it only in float rounding and in the
        31-bit fixed-point `mult / 2**shift` standing for the float scale. Run it on a float64
        copy (`copy.deepcopy(model).double()`, as `train.evaluate` does) to compare predictions:
        integer logits tie exactly now and then, and float32 noise breaks such ties at random."""
        if not self.quantized:
            return self.fake_quant_forward(x)
        t, scales = {INPUT: x}, {INPUT: 1.0 / (2**self.quant.input_bits - 1)}
        for nd in self.nodes:
            unit, xs = self.units[nd.name], [t[i] for i in nd.inputs]
            if nd.op == Op.CONV:
                bn, conv = unit.bn, unit.conv
                g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                b = bn.bias - bn.running_mean * g
                acc_unit = scales[nd.inputs[0]] * conv.wq.scale * g
                bias = torch.round(b / acc_unit) * acc_unit
                y = conv(xs[0]) * g[:, None, None] + bias[:, None, None]
                t[nd.name] = unit.aq(torch.relu(y) if nd.relu else y)
            elif isinstance(unit, LinearUnit):
                lin = unit.lin
                acc_unit = scales[nd.inputs[0]] * lin.wq.scale
                w = lin.sampled_weight(lin.wq(lin.E)).flatten(1)
                bias = torch.round(lin.bias / acc_unit) * acc_unit
                t[nd.name] = unit.aq(torch.relu(F.linear(xs[0].flatten(1), w) + bias))
            elif nd.op == Op.LINEAR:
                acc_unit = scales[nd.inputs[0]] * unit.wq.scale
                w = unit.sampled_weight(unit.wq(unit.E)).flatten(1)
                bias = torch.round(unit.bias / acc_unit) * acc_unit
                t[nd.name] = F.linear(xs[0].flatten(1), w) + bias
            else:
                t[nd.name] = unit(*xs)
            if nd.op == Op.MAXPOOL:
                scales[nd.name] = scales[nd.inputs[0]]
            elif hasattr(unit, "aq"):
                scales[nd.name] = float(unit.aq.scale)
        return t[self.output]

    @torch.no_grad()
    def integer_forward(self, x: torch.Tensor, keep: bool = False, params=None):
        """The integer network on inputs in [0, 1]: logits in float (accumulator units times
        the classifier's scale), or with `keep=True` every integer tensor by name. `params`:
        the result of :func:`fold`, to fold once for many batches."""
        params = fold(self) if params is None else params
        qmax_in = 2**self.quant.input_bits - 1
        t = {INPUT: torch.round(x * qmax_in).to(torch.int64)}
        for nd in self.nodes:
            p, xs = params[nd.name], [t[i] for i in nd.inputs]
            if nd.op in TILE_OPS:
                conv = self.layer(nd.name)
                w = conv.sampled_weight(p["e_int"])
                xin = xs[0]
                if nd.op == Op.LINEAR:
                    xin = xin.flatten(1)[:, :, None, None]
                # float32 holds integers below 2**24 exactly: keep a margin for the conv algorithm
                bound = int(xin.abs().max()) * int(w.abs().max()) * w[0].numel()
                dtype = torch.float32 if bound < 2**21 else torch.float64
                acc = F.conv2d(xin.to(dtype), w.to(dtype), stride=conv.stride,
                               padding=conv.padding)
                acc = torch.round(acc).to(torch.int64)
                t[nd.name] = requantize(acc + p["bias"][:, None, None], p["mult"], p["shift"],
                                        p["lo"], p["hi"])
            elif nd.op == Op.ADD:
                t[nd.name] = requantize(xs[0] * p["ma"] + xs[1] * p["mb"], 1, p["shift"], 0,
                                        p["hi"])
            elif nd.op == Op.MAXPOOL:
                u = self.units[nd.name]  # exact in float64: the values are small integers
                t[nd.name] = F.max_pool2d(xs[0].double(), u.kernel, u.stride,
                                          u.padding).to(torch.int64)
            else:
                t[nd.name] = requantize(xs[0].sum(dim=(2, 3), keepdim=True), p["mult"],
                                        p["shift"], 0, p["hi"])
        if keep:
            return t
        return t[self.output].flatten(1).to(torch.float32) * params[self.output]["scale"]

    def layer(self, name: str) -> EpitomeConv2d:
        """The epitome conv or linear layer of a conv or linear node."""
        unit = self.units[name]
        if isinstance(unit, ConvUnit):
            return unit.conv
        return unit.lin if isinstance(unit, LinearUnit) else unit

    def epitome_layers(self):
        """(name, EpitomeConv2d) of every conv and linear node."""
        for nd in self.nodes:
            if nd.op in TILE_OPS:
                yield nd.name, self.layer(nd.name)

    def constrain_(self) -> None:
        """Keep batch-norm and quantizer scales positive: the integer output stage needs
        `mult >= 1`, and an epitome's shared filters cannot absorb a per-channel sign flip."""
        with torch.no_grad():
            for unit in self.units.values():
                if isinstance(unit, ConvUnit):
                    unit.bn.weight.clamp_(min=1e-3)
            for mod in self.modules():  # learned quantizer scales stay positive too
                if isinstance(mod, (ActQuant, WeightQuant)) and mod.scale is not None:
                    mod.scale.clamp_(min=1e-6)


class FoldError(ValueError):
    """A model cannot be written as an integer network (the message names the layer)."""


def mult_shift(m: float, where: str) -> tuple[int, int]:
    """`(mult, shift)` with `mult / 2**shift ~= m`, `1 <= mult < 2**31`, `0 <= shift <= 62`."""
    if not m > 0 or not math.isfinite(m):
        raise FoldError(f"{where}: the output scale must be positive and finite, got {m}")
    shift = min(62, max(0, 30 - math.floor(math.log2(m))))
    mult = round(m * 2**shift)
    while mult >= MULT_LIMIT and shift > 0:
        shift -= 1
        mult = round(m * 2**shift)
    if not 1 <= mult < MULT_LIMIT:
        raise FoldError(f"{where}: scale {m} does not fit mult/2**shift")
    return int(mult), int(shift)


def requantize(v: torch.Tensor, mult, shift, lo: int, hi: int) -> torch.Tensor:
    """Spec section 5 in int64: `clamp(v*mult + rnd >> shift, lo, hi)`, per channel (dim 1)."""
    mult = torch.as_tensor(mult, dtype=torch.int64, device=v.device)
    shift = torch.as_tensor(shift, dtype=torch.int64, device=v.device)
    if mult.ndim:
        mult, shift = (a.reshape(1, -1, *([1] * (v.ndim - 2))) for a in (mult, shift))
    rnd = torch.where(shift > 0, torch.ones_like(shift) << (shift - 1).clamp(min=0), 0)
    return torch.clamp((v * mult + rnd) >> shift, lo, hi)


@torch.no_grad()
def fold(model: EpimNet) -> dict[str, dict]:
    """Integer parameters of every node of a quantized model (batch norm in eval form).

    conv: `e_int`, `bias`, `mult`, `shift` with `(acc + bias) * mult / 2**shift ~= acc * M + b`,
    `M = s_x * s_w * gamma / (sigma * s_y)`; add: `ma`, `mb`, `shift`; avgpool: `mult`, `shift`;
    the linear classifier: `bias` in accumulator units and the logit `scale = s_x * s_w`.
    """
    q = model.quant
    if not model.quantized:
        raise FoldError("only a quantized model (weight_bits and act_bits set) has an integer "
                        "form")
    scales = {INPUT: 1.0 / (2**q.input_bits - 1)}
    out = {}
    for nd in model.nodes:
        unit, where = model.units[nd.name], f"layer {nd.name!r}"
        s_x = scales[nd.inputs[0]]
        if nd.op == Op.CONV:
            conv, bn = unit.conv, unit.bn
            s_w = float(conv.wq.scale)
            sigma = torch.sqrt(bn.running_var.double() + bn.eps)
            gamma, beta = bn.weight.double(), bn.bias.double()
            s_y = float(unit.aq.scale)
            m = s_x * s_w * gamma / (sigma * s_y)
            b = (beta - gamma * bn.running_mean.double() / sigma) / s_y
            ms = [mult_shift(float(mi), f"{where} channel {o}") for o, mi in enumerate(m)]
            if nd.relu:
                lo, hi = 0, 2**q.act_bits - 1
            else:
                lo, hi = -(2 ** (q.signed_bits - 1)), 2 ** (q.signed_bits - 1) - 1
            out[nd.name] = {"e_int": conv.wq.integers(conv.E), "bias": torch.round(b / m).long(),
                            "mult": [a for a, _ in ms], "shift": [c for _, c in ms],
                            "lo": lo, "hi": hi}
            scales[nd.name] = s_y
        elif nd.op == Op.MAXPOOL:
            out[nd.name] = {}
            scales[nd.name] = s_x
        elif isinstance(unit, LinearUnit):
            lin = unit.lin
            s_w, s_y = float(lin.wq.scale), float(unit.aq.scale)
            ms = [mult_shift(s_x * s_w / s_y, where)] * lin.out_channels
            out[nd.name] = {"e_int": lin.wq.integers(lin.E),
                            "bias": torch.round(lin.bias.double() / (s_x * s_w)).long(),
                            "mult": [a for a, _ in ms], "shift": [c for _, c in ms],
                            "lo": 0, "hi": 2**q.act_bits - 1}
            scales[nd.name] = s_y
        elif nd.op == Op.ADD:
            s_y = float(unit.aq.scale)
            ra, rb = scales[nd.inputs[0]] / s_y, scales[nd.inputs[1]] / s_y
            shift = min(62, max(0, 29 - math.floor(math.log2(max(ra, rb)))))
            out[nd.name] = {"ma": round(ra * 2**shift), "mb": round(rb * 2**shift),
                            "shift": shift, "hi": 2**q.act_bits - 1}
            scales[nd.name] = s_y
        elif nd.op == Op.AVGPOOL_GLOBAL:
            _, ph, pw = model.shapes[nd.inputs[0]]
            s_y = float(unit.aq.scale)
            mult, shift = mult_shift(s_x / (ph * pw * s_y), where)
            out[nd.name] = {"mult": mult, "shift": shift, "hi": 2**q.pool_bits - 1}
            scales[nd.name] = s_y
        else:
            s_w = float(unit.wq.scale)
            hi = 2 ** (LOGIT_BITS - 1) - 1
            out[nd.name] = {"e_int": unit.wq.integers(unit.E),
                            "bias": torch.round(unit.bias.double() / (s_x * s_w)).long(),
                            "mult": [1] * unit.out_channels, "shift": [0] * unit.out_channels,
                            "lo": -hi - 1, "hi": hi, "scale": s_x * s_w}
    return out


LOGIT_BITS = 32


DEFAULT_PIM = geometry.DEFAULT_PIM  # the crossbar geometry the models are shaped for


def plain_cnn(ratio: float | None = None, width: int = 16, num_classes: int = 10,
              fill: Fill | None = None, wrap: int = 1) -> list[Node]:
    """A small plain CNN: 4 conv layers (28 -> 14 -> 7), global average pooling, linear."""
    w = width
    spec = [("c1", 1, w, 1), ("c2", w, 2 * w, 2), ("c3", 2 * w, 2 * w, 1),
            ("c4", 2 * w, 4 * w, 2)]
    nodes, prev = [], INPUT
    for name, cin, cout, stride in spec:
        epi = None if name == "c1" else _epi(cin, cout, ratio, 3, fill, wrap)
        nodes.append(Node(name, Op.CONV, [prev], cout, 3, stride, epi))
        prev = name
    nodes.append(Node("gap", Op.AVGPOOL_GLOBAL, [prev]))
    nodes.append(Node("fc", Op.LINEAR, ["gap"], num_classes))
    return nodes


def small_resnet(ratio: float | None = None, width: int = 16, num_classes: int = 10,
                 fill: Fill | None = None, wrap: int = 1, block: str = "relu") -> list[Node]:
    """A small ResNet (the EPIM-ResNet analogue): stem, two stages of two basic blocks, global
    average pooling, linear. Blocks are conv-conv with ReLU on both (the spec's activations
    between layers are unsigned), summed with the skip (1x1 conv when the shape changes)."""
    return resnet([(width, 1, 2), (2 * width, 2, 2)], ratio, width, num_classes, fill, wrap,
                  block)


def resnet20(ratio: float | None = None, width: int = 16, num_classes: int = 10,
             fill: Fill | None = None, wrap: int = 1, block: str = "relu") -> list[Node]:
    """The CIFAR ResNet-20 of He et al. (2016): a 3x3 stem, three stages of three basic blocks
    at `width`, `2*width`, `4*width` channels (16/32/64), global average pooling, linear. As in
    :func:`small_resnet`, both convs of a block end in ReLU before the add, and the skip is a 1x1
    conv where the shape changes (He et al.'s option B)."""
    return resnet([(width, 1, 3), (2 * width, 2, 3), (4 * width, 2, 3)], ratio, width,
                  num_classes, fill, wrap, block)


BLOCKS = ("relu", "standard")


def resnet(stages: list[tuple[int, int, int]], ratio: float | None, width: int,
           num_classes: int, fill: Fill | None, wrap: int = 1,
           block: str = "relu") -> list[Node]:
    """Stem conv (dense), then `(channels, stride, blocks)` per stage of basic blocks whose
    3x3 convs are epitomes at `ratio`; the 1x1 skip convs stay dense. `block="relu"`: both
    convs of a block end in ReLU before the add (contract v1); `"standard"`: He et al.'s block,
    `relu(bn(conv2(.)) + shortcut)`, the second conv and the 1x1 shortcut without ReLU, so the
    adder takes signed inputs (contract v1.1)."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r} (expected one of {', '.join(BLOCKS)})")
    relu = block == "relu"
    nodes = [Node("stem", Op.CONV, [INPUT], width, 3, 1)]
    prev, cin = "stem", width
    for stage, (cout, stride, blocks) in enumerate(stages, 1):
        for block in range(1, blocks + 1):
            s = stride if block == 1 else 1
            tag = f"s{stage}b{block}"
            nodes.append(Node(f"{tag}c1", Op.CONV, [prev], cout, 3, s,
                              _epi(cin, cout, ratio, 3, fill, wrap)))
            nodes.append(Node(f"{tag}c2", Op.CONV, [f"{tag}c1"], cout, 3, 1,
                              _epi(cout, cout, ratio, 3, fill, wrap), relu=relu))
            skip = prev
            if s != 1 or cin != cout:
                skip = f"{tag}sc"
                nodes.append(Node(skip, Op.CONV, [prev], cout, 1, s, None, relu=relu))
            nodes.append(Node(f"{tag}add", Op.ADD, [f"{tag}c2", skip]))
            prev, cin = f"{tag}add", cout
    nodes.append(Node("gap", Op.AVGPOOL_GLOBAL, [prev]))
    nodes.append(Node("fc", Op.LINEAR, ["gap"], num_classes))
    return nodes


MODELS = {"cnn": plain_cnn, "resnet": small_resnet, "resnet20": resnet20}


def build(model: str, ratio: float | None = None, quant: QuantConfig = QuantConfig(),
          width: int = 16, in_shape=(1, 28, 28), num_classes: int = 10,
          pim: dict | None = None, wrap: int = 1, block: str = "relu") -> EpimNet:
    """A model by name; epitomes (for `ratio > 1`) are fitted to the crossbars of `pim`
    (default :data:`DEFAULT_PIM`) at the model's weight bits; `wrap > 1` shrinks their output
    side that many times (`epim.sw.chip.epitome.epitome_shape`); `block` the residual block of the
    ResNets (:func:`resnet`)."""
    return EpimNet(nodes(model, ratio, width, num_classes, quant, pim, wrap, block), in_shape,
                   num_classes, quant)


def nodes(model: str, ratio: float | None = None, width: int = 16, num_classes: int = 10,
          quant: QuantConfig = QuantConfig(), pim: dict | None = None,
          wrap: int = 1, block: str = "relu") -> list[Node]:
    """The graph of a model by name (see :func:`build`)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} (expected one of {', '.join(MODELS)})")
    fill = Fill.of(pim or DEFAULT_PIM, quant.weight_bits or 8)
    if model == "cnn":
        if block != "relu":
            raise ValueError("the plain cnn has no residual blocks (--block is for ResNets)")
        return plain_cnn(ratio, width, num_classes, fill, wrap)
    return MODELS[model](ratio, width, num_classes, fill, wrap, block)
