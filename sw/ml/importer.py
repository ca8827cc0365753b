"""Import a PyTorch CNN as an epitome network (`epim import`).

A user's `nn.Module` is traced with `torch.fx` and read op by op. What the contract can express
is taken: `Conv2d` (square kernel, groups and dilation 1) with its `BatchNorm2d` and `ReLU`,
residual adds followed by a ReLU, `MaxPool2d`, global average pooling (`AdaptiveAvgPool2d(1)`,
an `AvgPool2d` over the whole map, or a mean over the spatial axes), flatten and `Linear`
(hidden ones followed by a ReLU, the last one giving logits); `Dropout` and `Identity` pass
through. Anything else is refused with its name and type before any work is done.

The result is a dense :class:`~epim.sw.ml.models.EpimNet` whose float forward equals the module's in
eval mode (batch norm with its running statistics; a conv without batch norm gets one set to the
identity plus the conv's bias; a negative batch-norm scale flips its channel's filter, which
the integer output stage needs). `epim.sw.ml.compress.epitomize` then replaces each conv and linear
layer by the epitome that is the least-squares projection of its weight, with the shapes given
by a uniform ratio or per layer (the `search.json` of `epim search`); :func:`calibrate` re-estimates
batch norm and sets the quantizer scales on calibration images; `epim.sw.ml.train.fit` fine-tunes
(quantization-aware) and `epim.sw.ml.export.export` writes `epim-net-v1`.

Names: a conv/linear node takes its module's path with dots as underscores (`layer1.0.conv1` ->
`layer1_0_conv1`); an add takes its block's path (`layer1_0_add`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ...contract.ops import TILE_OPS, Op
from ..chip.epitome import Fill, strided_offsets
from . import compress
from .layers import ActQuant, EpitomeConv2d, EpitomeLinear, WeightQuant
from .models import INPUT, EpimNet, Node, QuantConfig


class ModelImportError(ValueError):
    """The module cannot be written as an epitome network (the message names the module)."""


SUPPORTED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
             nn.AvgPool2d, nn.Flatten, nn.Linear, nn.Dropout, nn.Identity,
             # the project's own models (`epim.sw.ml.models.EpimNet`, e.g. a float `epim train`)
             EpitomeConv2d, ActQuant, WeightQuant)
SUPPORTED_TEXT = ("Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d(1), AvgPool2d over "
                  "the whole map, Flatten, Linear, Dropout, Identity, residual add")


def check_modules(module: nn.Module) -> None:
    """Refuse the first leaf module of an unsupported type, by name and type."""
    for name, mod in module.named_modules():
        if not list(mod.children()) and not isinstance(mod, SUPPORTED) and name:
            raise ModelImportError(f"module {name!r} ({type(mod).__name__}) is not supported; "
                                   f"supported: {SUPPORTED_TEXT}")


def _pair(v, what: str, where: str) -> int:
    """An int, or a square tuple's side."""
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1]:
        return int(v[0])
    raise ModelImportError(f"{where}: {what} {v!r} is not square")


@dataclass
class _Rec:
    """What an fx value stands for: the graph node producing it and how it was reshaped."""

    node: str  # a Node name, or INPUT
    flat: bool = False  # flattened to (N, F)


@dataclass
class _Layer:
    """A conv or linear node's float parameters, gathered while tracing."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    bn: nn.BatchNorm2d | None = None
    module: str = ""


@dataclass
class Imported:
    """The graph and float parameters of an imported module."""

    nodes: list[Node]
    in_shape: tuple[int, int, int]
    num_classes: int
    params: dict[str, _Layer] = field(repr=False)
    modules: dict[str, str] = field(default_factory=dict)  # node -> module path

    def dense_model(self, quant: QuantConfig) -> EpimNet:
        """The dense EpimNet with the module's float weights (batch norm folded as the
        contract needs: conv bias into the mean, negative scales into flipped filters)."""
        model = EpimNet(self.nodes, self.in_shape, self.num_classes, quant)
        with torch.no_grad():
            for nd in self.nodes:
                if nd.op not in TILE_OPS:
                    continue
                p, layer = self.params[nd.name], model.layer(nd.name)
                w = p.weight.detach().double().clone()
                if nd.op == Op.LINEAR:
                    layer.E.copy_(w.reshape(layer.E.shape))
                    if p.bias is not None:
                        layer.bias.copy_(p.bias.detach())
                    continue
                bn = model.units[nd.name].bn
                b = p.bias.detach().double() if p.bias is not None else torch.zeros(len(w),
                                                                                  dtype=w.dtype)
                if p.bn is None:  # identity plus the conv's bias
                    gamma = torch.ones_like(b)
                    beta, mean = b, torch.zeros_like(b)
                    var = torch.full_like(b, 1 - bn.eps)
                else:
                    src = p.bn
                    bn.eps = src.eps
                    gamma, beta = src.weight.detach().double(), src.bias.detach().double()
                    mean = src.running_mean.detach().double() - b
                    var = src.running_var.detach().double()
                sign = torch.where(gamma < 0, -1.0, 1.0).to(w.dtype)
                layer.E.copy_(w * sign[:, None, None, None])
                bn.weight.copy_(gamma * sign)
                bn.bias.copy_(beta)
                bn.running_mean.copy_(mean * sign)
                bn.running_var.copy_(var)
        return model


FUNC_ADD = {operator.add, operator.iadd, torch.add}
FUNC_RELU = {F.relu, torch.relu}
PASS_MODULES = (nn.Dropout, nn.Identity)


def trace(module: nn.Module, in_shape: tuple[int, int, int]) -> Imported:
    """Read `module` (eval mode, input `(C, H, W)`) into a graph of contract ops."""
    check_modules(module)
    module = module.eval()
    cls = type(module)
    if isinstance(module, EpimNet):  # trace its float forward, not the folded integer one
        module.__class__ = type("TracedEpimNet", (cls,), {"forward": EpimNet.fake_quant_forward})
    try:
        graph = _Tracer().trace(module)
        gm = torch.fx.GraphModule(module, graph)
    except Exception as exc:  # fx raises many types; say what and where in one line
        raise ModelImportError(f"torch.fx cannot trace the module: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        module.__class__ = cls
    import contextlib
    import io

    from torch.fx.passes.shape_prop import ShapeProp

    said = io.StringIO()  # ShapeProp prints a traceback of its own before it raises
    try:
        with torch.no_grad(), contextlib.redirect_stderr(said):
            ShapeProp(gm).propagate(torch.zeros(1, *in_shape))
    except Exception as exc:
        cause = exc.__cause__ or exc
        where = str(exc).split(" with meta=")[0].removeprefix("ShapeProp error for: ") \
            if exc.__cause__ else ""
        err = ModelImportError(
            f"the module does not run on a 1x{'x'.join(map(str, in_shape))} input"
            + (f" (at {where})" if where else "") + f": {type(cause).__name__}: "
            + (str(cause).splitlines()[0] if str(cause) else ""))
        err.details = said.getvalue()  # (printed by `epim --debug`)
        raise err from None
    return _Reader(gm, in_shape).read()


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with the project's epitome layers and quantizers as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (EpitomeConv2d, ActQuant)) or super().is_leaf_module(m, qualname)


def _node_name(target: str) -> str:
    """A module path as a node name; an EpimNet's `units.c1.conv` is its node `c1`."""
    m = re.fullmatch(r"units\.(\w+?)(\.(conv|lin))?", target)
    return m.group(1) if m else _safe(target)


def _unit_of(n: torch.fx.Node | None, depth: int = 3) -> str | None:
    """The EpimNet node an op belongs to: the `units.X.aq` quantizer it feeds (through at
    most `depth` ops), else None."""
    for _ in range(depth):
        if n is None or len(n.users) != 1:
            return None
        n = next(iter(n.users))
        m = re.fullmatch(r"units\.(\w+)\.aq", str(n.target)) if n.op == "call_module" else None
        if m:
            return m.group(1)
    return None


def _shape(n: torch.fx.Node) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _safe(text: str) -> str:
    name = re.sub(r"\W", "_", text)
    return name if re.match(r"[A-Za-z_]", name) else f"n_{name}"


class _Reader:
    def __init__(self, gm: torch.fx.GraphModule, in_shape):
        self.gm, self.in_shape = gm, tuple(in_shape)
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.params: dict[str, _Layer] = {}
        self.val: dict[torch.fx.Node, _Rec | None] = {}
        self.modules: dict[str, str] = {}
        self.adds: dict[str, torch.fx.Node] = {}
        self.origin: dict[str, torch.fx.Node] = {}  # the fx node of a function-made op

    def fail(self, n: torch.fx.Node, msg: str) -> ModelImportError:
        what = n.target if n.op == "call_module" else getattr(n.target, "__name__", n.target)
        return ModelImportError(f"{n.op} {what!s} ({n.name}): {msg}")

    def add_node(self, nd: Node, module: str = "", fx: torch.fx.Node | None = None) -> _Rec:
        base, i = nd.name, 1
        while nd.name in self.by_name or nd.name == INPUT:
            i += 1
            nd.name = f"{base}_{i}"
        self.nodes.append(nd)
        self.by_name[nd.name] = nd
        if module:
            self.modules[nd.name] = module
        if fx is not None:
            self.origin[nd.name] = fx
        return _Rec(nd.name)

    def src(self, n: torch.fx.Node, arg) -> _Rec:
        if not isinstance(arg, torch.fx.Node) or self.val.get(arg) is None:
            raise self.fail(n, "its input is not a feature map of the network")
        return self.val[arg]

    def read(self) -> Imported:
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if self.val:
                    raise self.fail(n, "the module must take one input")
                self.val[n] = _Rec(INPUT)
            elif n.op == "output":
                output = n.args[0]
            elif n.op == "get_attr":
                raise self.fail(n, "a module that reads its own tensors in forward is not "
                                "supported")
            elif n.op == "call_module":
                self.module(n, self.gm.get_submodule(n.target))
            else:
                self.function(n)
        if not isinstance(output, torch.fx.Node) or self.val.get(output) is None:
            raise ModelImportError("the module must return one tensor (the logits)")
        last = self.by_name.get(self.val[output].node)
        if last is None or last.op != Op.LINEAR or last is not self.nodes[-1] or last.relu:
            raise ModelImportError("the module's output must be its last layer, a Linear "
                                   "classifier without ReLU")
        self.finish()
        return Imported(self.nodes, self.in_shape, last.out_channels, self.params,
                        self.modules)

    # -- call_module ------------------------------------------------------------------------
    def module(self, n: torch.fx.Node, mod: nn.Module) -> None:
        where = f"module {n.target!r} ({type(mod).__name__})"
        if isinstance(mod, EpitomeLinear):
            self.linear(n, mod, where)
        elif isinstance(mod, (nn.Conv2d, EpitomeConv2d)):
            self.conv(n, mod, where)
        elif isinstance(mod, nn.BatchNorm2d):
            self.batchnorm(n, mod, where)
        elif isinstance(mod, nn.ReLU):
            self.relu(n)
        elif isinstance(mod, nn.MaxPool2d):
            if mod.dilation not in (1, (1, 1)) or mod.ceil_mode or mod.return_indices:
                raise ModelImportError(f"{where}: only dilation 1, floor mode, no indices")
            stride = mod.stride if mod.stride is not None else mod.kernel_size
            self.maxpool(n, _pair(mod.kernel_size, "kernel", where),
                         _pair(stride, "stride", where), _pair(mod.padding, "padding", where),
                         str(n.target))
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            if mod.output_size not in (1, (1, 1)):
                raise ModelImportError(f"{where}: only output size 1 (global pooling)")
            self.gap(n, str(n.target), keep=True)
        elif isinstance(mod, nn.AvgPool2d):
            shape = _shape(n.args[0])
            if shape is None or _shape(n) is None or _shape(n)[2:] != (1, 1) \
                    or _pair(mod.kernel_size, "kernel", where) != shape[2] != shape[3]:
                raise ModelImportError(f"{where}: only an average over the whole map "
                                       "(global pooling)")
            self.gap(n, str(n.target), keep=True)
        elif isinstance(mod, nn.Flatten):
            self.flatten(n, mod.start_dim, mod.end_dim)
        elif isinstance(mod, nn.Linear):
            self.linear(n, mod, where)
        elif isinstance(mod, (*PASS_MODULES, ActQuant)):
            self.val[n] = self.src(n, n.args[0])
        else:  # check_modules refused it already, unless it is a container called directly
            raise ModelImportError(f"{where} is not supported; supported: {SUPPORTED_TEXT}")

    def conv(self, n, mod: nn.Conv2d | EpitomeConv2d, where: str) -> None:
        rec = self.src(n, n.args[0])
        if rec.flat:
            raise self.fail(n, "reads a flattened tensor")
        if isinstance(mod, EpitomeConv2d):  # an EpimNet's layer: its sampled (float) weight
            name = _node_name(str(n.target))
            self.val[n] = self.add_node(Node(name, Op.CONV, [rec.node], mod.out_channels,
                                             mod.kernel_size, mod.stride, None,
                                             padding=mod.padding, relu=False), str(n.target))
            self.params[self.val[n].node] = _Layer(mod.sampled_weight().detach(), None, None,
                                                   str(n.target))
            return
        if mod.groups != 1 or mod.dilation != (1, 1) or mod.padding_mode != "zeros":
            raise ModelImportError(f"{where}: only groups 1, dilation 1 and zero padding map "
                                   "to crossbars")
        k = _pair(mod.kernel_size, "kernel", where)
        s = _pair(mod.stride, "stride", where)
        pad = mod.padding
        if pad == "valid":
            pad = 0
        elif pad == "same":
            if s != 1 or k % 2 == 0:
                raise ModelImportError(f"{where}: padding 'same' needs stride 1, odd kernel")
            pad = k // 2
        p = _pair(pad, "padding", where)
        if p > k - 1:
            raise ModelImportError(f"{where}: padding {p} larger than kernel - 1")
        name = _safe(str(n.target))
        self.val[n] = self.add_node(Node(name, Op.CONV, [rec.node], mod.out_channels, k, s,
                                         None, padding=p, relu=False), str(n.target))
        self.params[self.val[n].node] = _Layer(mod.weight, mod.bias, None, str(n.target))

    def batchnorm(self, n, mod: nn.BatchNorm2d, where: str) -> None:
        arg = n.args[0]
        rec = self.src(n, arg)
        nd = self.by_name.get(rec.node)
        if (nd is None or nd.op != Op.CONV or self.params[nd.name].bn is not None
                or nd.relu or len(arg.users) != 1):
            raise ModelImportError(f"{where}: a batch norm must directly follow a conv whose "
                                   "output nothing else reads")
        if not mod.affine or not mod.track_running_stats:
            raise ModelImportError(f"{where}: needs affine=True and running statistics")
        self.params[nd.name].bn = mod
        self.val[n] = rec

    def relu(self, n) -> None:
        arg = n.args[0]
        rec = self.src(n, arg)
        nd = self.by_name.get(rec.node)
        self.val[n] = rec
        if nd is None or nd.relu:  # the input, a pool or a ReLU'd layer: unsigned already
            return
        if len(arg.users) != 1:
            raise self.fail(n, "a ReLU must be the only reader of the layer it follows")
        nd.relu = True

    def maxpool(self, n, k: int, s: int, p: int, name: str) -> None:
        rec = self.src(n, n.args[0])
        nd = self.by_name.get(rec.node)
        if rec.flat or (nd is not None and not nd.relu):
            raise self.fail(n, "max pooling reads an unsigned map (after a ReLU)")
        if p > k // 2:
            raise self.fail(n, f"padding {p} larger than kernel // 2")
        self.val[n] = self.add_node(Node(_safe(name), Op.MAXPOOL, [rec.node], 0, k, s,
                                         padding=p), fx=n)

    def gap(self, n, name: str, keep: bool) -> None:
        rec = self.src(n, n.args[0])
        nd = self.by_name.get(rec.node)
        if rec.flat or (nd is not None and not nd.relu):
            raise self.fail(n, "global pooling reads an unsigned map (after a ReLU)")
        self.val[n] = self.add_node(Node(_safe(name), Op.AVGPOOL_GLOBAL, [rec.node]), fx=n)
        self.val[n].flat = not keep

    def flatten(self, n, start: int, end: int) -> None:
        rec = self.src(n, n.args[0])
        shape = _shape(n)
        if start != 1 or end != -1 or shape is None or len(shape) != 2:
            raise self.fail(n, "only flatten(x, 1) to (N, features) is supported")
        self.val[n] = _Rec(rec.node, flat=True)

    def linear(self, n, mod: nn.Linear | EpitomeLinear, where: str) -> None:
        rec = self.src(n, n.args[0])
        shape = _shape(n.args[0])
        epi = isinstance(mod, EpitomeLinear)  # flattens its input itself
        if shape is None or (len(shape) != 2 and not epi):
            raise ModelImportError(f"{where}: reads a {shape} tensor; flatten it to "
                                   "(N, features) first")
        nd = self.by_name.get(rec.node)
        if nd is not None and nd.op in TILE_OPS and not nd.relu:
            raise ModelImportError(f"{where}: reads {nd.name!r}, which has no ReLU; the "
                                   "crossbars read unsigned activations")
        name = _node_name(str(n.target))
        if epi:
            weight, out = mod.sampled_weight().detach().flatten(1), mod.out_channels
        else:
            weight, out = mod.weight, mod.out_features
        self.val[n] = self.add_node(Node(name, Op.LINEAR, [rec.node], out, 1, 1, None,
                                         relu=False), str(n.target))
        self.params[self.val[n].node] = _Layer(weight, mod.bias, None, str(n.target))

    # -- call_function / call_method ----------------------------------------------------------
    def function(self, n) -> None:
        t, method = n.target, n.op == "call_method"
        args = n.args
        if (not method and t in FUNC_ADD) or (method and t in ("add", "add_", "__add__")):
            self.add(n, args[0], args[1])
        elif (not method and t in FUNC_RELU) or (method and t in ("relu", "relu_")):
            self.relu(n)
        elif (not method and t is torch.flatten) or (method and t == "flatten"):
            start = args[1] if len(args) > 1 else n.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else n.kwargs.get("end_dim", -1)
            self.flatten(n, start, end)
        elif method and t in ("view", "reshape"):
            shape, src = _shape(n), _shape(args[0])
            if shape is None or src is None or len(shape) != 2 or shape[1] != math.prod(src[1:]):
                raise self.fail(n, "only a reshape to (N, features) is supported")
            self.val[n] = _Rec(self.src(n, args[0]).node, flat=True)
        elif method and t == "size":
            self.val[n] = None  # a shape, read by view/reshape
        elif (not method and t is F.max_pool2d):
            kw = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                           "return_indices"), args[1:], strict=False)) | dict(n.kwargs)
            if kw.get("dilation", 1) not in (1, (1, 1)) or kw.get("ceil_mode") or \
                    kw.get("return_indices"):
                raise self.fail(n, "only dilation 1, floor mode, no indices")
            k = _pair(kw["kernel_size"], "kernel", n.name)
            s = kw.get("stride") or k
            self.maxpool(n, k, _pair(s, "stride", n.name),
                         _pair(kw.get("padding", 0), "padding", n.name), n.name)
        elif (not method and t is F.adaptive_avg_pool2d):
            size = args[1] if len(args) > 1 else n.kwargs.get("output_size")
            if size not in (1, (1, 1)):
                raise self.fail(n, "only output size 1 (global pooling)")
            self.gap(n, n.name, keep=True)
        elif (not method and t is torch.mean) or (method and t == "mean"):
            dims = args[1] if len(args) > 1 else n.kwargs.get("dim")
            keep = (args[2] if len(args) > 2 else n.kwargs.get("keepdim", False))
            src = _shape(args[0])
            if src is None or len(src) != 4 or dims is None or \
                    sorted(d % 4 for d in (dims if isinstance(dims, (list, tuple)) else [dims])) \
                    != [2, 3]:
                raise self.fail(n, "only a mean over the two spatial axes (global pooling)")
            self.gap(n, n.name, keep=bool(keep))
        elif (not method and t in (F.dropout, torch.nn.functional.dropout)) or \
                (method and t in ("contiguous", "clone")):
            self.val[n] = self.src(n, args[0])
        else:
            raise self.fail(n, f"is not supported; supported: {SUPPORTED_TEXT}")

    def add(self, n, a, b) -> None:
        ra, rb = self.src(n, a), self.src(n, b)
        if ra.flat or rb.flat:
            raise self.fail(n, "adds flattened tensors")
        if _shape(a) != _shape(b):
            raise self.fail(n, f"adds tensors of shapes {_shape(a)} and {_shape(b)}")
        rec = self.add_node(Node(_safe(n.name), Op.ADD, [ra.node, rb.node], relu=False), fx=n)
        self.adds[rec.node] = n
        self.val[n] = rec

    def finish(self) -> None:
        """Every add is followed by a ReLU (the contract's add clamps at 0); a signed tensor
        (a conv without ReLU) is read only by adds; adds take their block's name."""
        readers: dict[str, list[Node]] = {}
        for nd in self.nodes:
            for i in nd.inputs:
                readers.setdefault(i, []).append(nd)
        renames = {}
        for nd in self.nodes:
            if nd.op == Op.ADD:
                n = self.adds[nd.name]
                if not nd.relu:
                    raise self.fail(n, "a residual add must be followed by a ReLU (the "
                                    "contract's add clamps at 0)")
                first = self.modules.get(nd.inputs[0], "")  # the residual branch's module
                if "." in first:
                    renames[nd.name] = _safe(first.rsplit(".", 1)[0]) + "_add"
            unit = _unit_of(self.origin.get(nd.name))
            if unit:  # an EpimNet's op: its node's own name
                renames[nd.name] = unit
            if nd.op == Op.CONV and not nd.relu:
                bad = [f"module {self.modules[r.name]!r}" if r.name in self.modules
                       else f"{r.op} {r.name!r}"
                       for r in readers.get(nd.name, []) if r.op != Op.ADD]
                if bad or not readers.get(nd.name):
                    raise ModelImportError(
                        f"module {self.params[nd.name].module!r} (Conv2d) has no ReLU and is "
                        f"read by {bad[0] if bad else 'nothing'}: only a residual add may "
                        "read a signed tensor")
        taken = {nd.name for nd in self.nodes}
        for old, new in renames.items():
            if new in taken:
                continue
            taken.add(new)
            self.by_name[old].name = new
            for nd in self.nodes:
                nd.inputs = [new if i == old else i for i in nd.inputs]


# --- epitome shapes ----------------------------------------------------------------------------

SPLITS = ("epim", "input", "balanced")


def uniform_rule(ratio: float, fill: Fill, split: str = "epim", wrap: int = 1):
    """Epitome shapes at a uniform `ratio` (the ResNet-50 study's rules, `epim.sw.studies.study`):
    `split="epim"` the training code's rule (input side first; `wrap` shrinks the output side
    first), `"input"` only the input side, `"balanced"` both by `sqrt(ratio)`."""
    from ..chip.epitome import epitome_shape

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")

    def rule(cin: int, cout: int, k: int):
        if split == "epim":
            return epitome_shape(cin, cout, ratio, k, fill, wrap)
        side = ratio if split == "input" else ratio**0.5
        ce_in = fill.grow_in(cin, max(1, round(cin / side)), k)
        ce_out = cout if split == "input" else fill.grow_out(cout, max(1, round(cout / side)))
        return (ce_in, ce_out, ce_in, ce_out)
    return rule


def read_epitomes(path: str | Path, nodes: list[Node]) -> dict[str, dict]:
    """Per-layer genes from a search JSON (`epim search`'s `search.json`: `best.layers`, or an
    object with `layers`): `{layer: {ce_in, ce_out, p_in, p_out, d_r, bits}}`. Layer names
    may use the module's dots (`layer1.0.conv1`) or the node's underscores."""
    from ...contract.files import load_json

    path = Path(path)
    obj = load_json(path, "a search JSON", error=ModelImportError)
    layers = obj.get("best", obj).get("layers") if isinstance(obj, dict) else None
    if not isinstance(layers, dict):
        raise ModelImportError(f"{path}: no 'best.layers' or 'layers' object (the search.json "
                               "of epim search)")
    names = {nd.name for nd in nodes if nd.op in TILE_OPS}
    out = {}
    for key, gene in layers.items():
        name = _safe(str(key))
        if name not in names:
            raise ModelImportError(f"{path}: layer {key!r} is not a conv or linear layer of "
                                   "the model")
        want = ("ce_in", "ce_out", "p_in", "p_out")
        if not isinstance(gene, dict) or not all(
                isinstance(gene.get(k), int) and not isinstance(gene.get(k), bool)
                and gene[k] >= 1 for k in want):
            raise ModelImportError(f"{path}: layer {key!r} needs positive integers "
                                   f"{', '.join(want)}")
        for k in ("d_r", "bits"):
            if k in gene and (not isinstance(gene[k], int) or isinstance(gene[k], bool)
                              or gene[k] < 0):
                raise ModelImportError(f"{path}: layer {key!r}: {k!r} must be an integer")
        out[name] = gene
    return out


def with_epitomes(imp: Imported, rule=None, genes: dict[str, dict] | None = None,
                  dense: set[str] | None = None) -> list[Node]:
    """The graph with epitome shapes: `genes` by layer (missing layers stay dense), else
    `rule(cin, cout, k)` for every conv and linear layer except those in `dense` (default:
    the first conv, as in the study)."""
    shapes = _in_channels(imp)
    first = next(nd.name for nd in imp.nodes if nd.op == Op.CONV)
    dense = {first} if dense is None else dense
    out = []
    for nd in imp.nodes:
        nd = dataclasses.replace(nd, inputs=list(nd.inputs), extra=dict(nd.extra))
        if nd.op in TILE_OPS:
            cin, cout = shapes[nd.name], nd.out_channels
            if genes is not None:
                g = genes.get(nd.name)
                if g is not None:
                    e = (g["ce_in"], g["ce_out"], g["p_in"], g["p_out"])
                    if not (g["p_in"] <= g["ce_in"] and g["p_out"] <= g["ce_out"]):
                        raise ModelImportError(f"layer {nd.name!r}: patches must fit the "
                                               f"epitome, got {e}")
                    nd.epitome = e
                    nd.extra["offsets"] = strided_offsets(cin, cout, *e, d_r=g.get("d_r", 0))
                    if "bits" in g:
                        nd.extra["weight_bits"] = g["bits"]
            elif rule is not None and nd.name not in dense:
                nd.epitome = rule(cin, cout, nd.kernel)
        out.append(nd)
    return out


def _in_channels(imp: Imported) -> dict[str, int]:
    """Cin of each conv and linear node as the crossbar sees it: its weight's second axis
    (a linear layer's flattened input features)."""
    return {name: int(p.weight.shape[1]) for name, p in imp.params.items()}


# --- calibration -------------------------------------------------------------------------------

def synthetic_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Seeded `uint8` images for calibration when the user gives none: smooth random fields
    (a coarse uniform grid upsampled), so that maps keep spatial structure."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.integers(0, 256, (n, c, max(1, h // 8), max(1, w // 8))).astype(np.float32)
    up = F.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bilinear",
                       align_corners=False).numpy()
    noise = rng.normal(0, 16, up.shape)
    return np.clip(np.rint(up + noise), 0, 255).astype(np.uint8)


@torch.no_grad()
def calibrate(model: EpimNet, images: np.ndarray, batch: int = 32,
              bn: bool = True) -> None:
    """Set a quantized model up for export without training: with `bn`, re-estimate every batch
    norm's running statistics on `images` (the projection changed each layer's output), then
    initialise the quantizer scales from the first batch (LSQ's rule, as training does)."""
    from .export import quantize_inputs

    x_all = quantize_inputs(images)
    if bn:
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
        model.train()
        was = [q.bits for q in _quantizers(model)]
        for q in _quantizers(model):
            q.bits = None  # float statistics
        for i in range(0, len(x_all), batch):
            model.fake_quant_forward(x_all[i:i + batch])
        for q, b in zip(_quantizers(model), was, strict=True):
            q.bits = b
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
    model.eval()
    model.fake_quant_forward(x_all[:batch])  # first call: the quantizers take their scales
    model.constrain_()


def _quantizers(model: EpimNet):
    from .layers import ActQuant, WeightQuant

    return [m for m in model.modules() if isinstance(m, (ActQuant, WeightQuant))]


# --- the whole import ------------------------------------------------------------------------

def load_module(spec: str, num_classes: int | None = None, in_channels: int | None = None):
    """A module by name: `resnet18`, `resnet34`, `resnet50` (torchvision's structure,
    `epim.sw.ml.resnets`), `FILE.py:FUNCTION`, a function of the user's file that returns the
    module (the file runs as Python: it is the user's own model code), or a checkpoint of
    `epim train` (its folder or `checkpoint.pt`: the project's own models)."""
    from . import resnets

    if spec in resnets.BUILDERS:
        kw = {}
        if num_classes:
            kw["num_classes"] = num_classes
        if in_channels:
            kw["in_channels"] = in_channels
        return resnets.BUILDERS[spec](**kw)
    if Path(spec).is_dir() or spec.endswith(".pt"):  # a checkpoint of `epim train`
        from .train import load_checkpoint

        try:
            return load_checkpoint(spec)[1]
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ModelImportError(f"{spec}: not an epim train checkpoint: "
                                   f"{str(exc).splitlines()[0]}") from None
    path, sep, func = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not func.isidentifier():
        raise ModelImportError(f"{spec!r}: give one of {', '.join(resnets.BUILDERS)}, "
                               "FILE.py:FUNCTION or an epim train checkpoint")
    import importlib.util

    if not Path(path).is_file():
        raise ModelImportError(f"{path}: no such file")
    mspec = importlib.util.spec_from_file_location(f"epim_user_{Path(path).stem}", path)
    mod = importlib.util.module_from_spec(mspec)
    try:
        mspec.loader.exec_module(mod)
        fn = getattr(mod, func, None)
        if not callable(fn):
            raise ModelImportError(f"{path}: defines no function {func!r}")
        module = fn()
    except ModelImportError:
        raise
    except Exception as exc:  # the user's code failed: say where, in one line
        raise ModelImportError(f"{spec}: raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelImportError(f"{spec}: returned a {type(module).__name__}, not an nn.Module")
    return module


def load_state_dict(module: nn.Module, path: str | Path) -> None:
    """Weights from a `state_dict` file (read with `weights_only=True`: nothing unpickled)."""
    import io

    from ...contract.files import read_regular
    from .train import MAX_CHECKPOINT_BYTES

    raw = read_regular(path, "a state_dict file", MAX_CHECKPOINT_BYTES, ModelImportError)
    try:
        sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise ModelImportError(f"{path}: not a state_dict file: {str(exc).splitlines()[0]}") \
            from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelImportError(f"{path}: holds a {type(sd).__name__}, not a state_dict")
    try:
        module.load_state_dict(sd)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ModelImportError(f"{path}: does not fit the model: "
                               f"{lines[1] if len(lines) > 1 else lines[0]}") from None


def projection_error(dense: EpimNet, model: EpimNet) -> dict[str, float]:
    """Per layer, `||W - S(P(W))||^2 / ||W||^2`: how much of the weight the least-squares
    epitome loses (0 for a dense layer)."""
    src = dict(dense.epitome_layers())
    out = {}
    with torch.no_grad():
        for name, layer in model.epitome_layers():
            w = src[name].sampled_weight().double()
            err = (w - layer.sampled_weight().double()).pow(2).sum() / w.pow(2).sum().clamp(
                min=1e-30)
            out[name] = float(err)
    return out


def import_module(module: nn.Module, in_shape: tuple[int, int, int], *,
                  quant: QuantConfig | None = None, pim: dict | None = None,
                  ratio: float | None = None, split: str = "epim", wrap: int = 1,
                  epitomes: str | Path | None = None, calibration: np.ndarray | None = None,
                  calibration_source: str = "", calib_count: int = 64, seed: int = 0,
                  recalibrate_bn: bool = True, log=print) -> tuple[EpimNet, dict]:
    """Trace, epitomize (least-squares projection) and calibrate: the quantized epitome model,
    ready for fine-tuning or export, and a report (what was done, crossbars, projection
    error). `calibration`: `uint8` images `(N, C, H, W)`; None: `calib_count` seeded synthetic
    ones."""
    from .models import DEFAULT_PIM

    pim = dict(pim or DEFAULT_PIM)
    quant = quant or QuantConfig()
    imp = trace(module, in_shape)
    dense = imp.dense_model(quant)
    fill = Fill.of(pim, quant.weight_bits or 8)
    if epitomes is not None:
        genes = read_epitomes(epitomes, imp.nodes)
        nodes = with_epitomes(imp, genes=genes)
        how = f"per layer from {epitomes} ({len(genes)} layers; others dense)"
    elif ratio and ratio > 1:
        nodes = with_epitomes(imp, uniform_rule(ratio, fill, split, wrap))
        how = f"uniform ratio {ratio:g}, split {split}" + (f", wrap {wrap}" if wrap > 1 else "")
    else:
        nodes = with_epitomes(imp)
        how = "dense (no ratio)"
    model = compress.epitomize(dense, nodes)
    if calibration is None:
        calibration = synthetic_images(calib_count, tuple(in_shape), seed)
        source = f"{calib_count} seeded synthetic images (seed {seed})"
    else:
        source = calibration_source or f"{len(calibration)} user images"
    if quant.weight_bits and quant.act_bits:
        calibrate(model, calibration, bn=recalibrate_bn)
    errs = projection_error(dense, model)
    xbars = compress.model_crossbars(model, pim)
    dense8 = compress.model_crossbars(model, pim, weight_bits=8, dense=True)
    report = {"layers": len(nodes), "in_shape": list(in_shape), "num_classes": imp.num_classes,
              "epitomes": how, "calibration": source,
              "batch_norm_recalibrated": bool(recalibrate_bn),
              "crossbars": xbars, "dense8_crossbars": dense8,
              "compression_vs_dense8": dense8 / xbars,
              "projection_error_mean": float(np.mean(list(errs.values()))),
              "projection_error": errs, "modules": imp.modules}
    log(f"imported {len(nodes)} ops ({sum(nd.op in TILE_OPS for nd in nodes)} conv/"
        f"linear); epitomes {how}; {xbars} crossbars, {dense8 / xbars:.2f}x fewer than dense "
        f"8-bit; calibration: {source}")
    return model, report


def import_to(out: str | Path, module: nn.Module, in_shape: tuple[int, int, int], *,
              quant: QuantConfig | None = None, pim: dict | None = None,
              finetune: dict | None = None, float_accuracy: bool = True, log=print,
              **kw) -> dict:
    """`epim import`: :func:`import_module`, then with `finetune` (the fields of
    `epim.sw.ml.train.Config`: `data`, `epochs`, ...) quantization-aware fine-tuning as `epim
    train --init` does, then export. Writes `out/net.json`, `out/checkpoint.pt` (loadable by
    `epim.sw.ml.train.load_checkpoint`) and `out/import.json` (the report); returns the report."""
    from dataclasses import asdict

    from ...contract import files as owned
    from ..chip import data
    from .export import export
    from .models import DEFAULT_PIM
    from .train import Config, evaluate, fit, pick_device

    quant = quant or QuantConfig()
    pim = dict(pim or DEFAULT_PIM)
    out = owned.check_folder(out)  # (claimed when the first file is written)
    if finetune and tuple(data.SHAPES.get(finetune.get("data", ""), ())) != tuple(in_shape):
        raise ModelImportError(f"fine-tuning data {finetune.get('data')!r} has images of shape "
                               f"{data.SHAPES.get(finetune.get('data'))}, the model takes "
                               f"{tuple(in_shape)}")
    if float_accuracy and finetune:
        x_test, y_test = data.load(finetune["data"], "test", finetune.get("test_limit"),
                                   path=finetune.get("data_path"))
    if finetune and kw.get("calibration") is None:  # calibrate on the data set's images
        count = kw.pop("calib_count", 64)
        kw["calibration"], _ = data.load(finetune["data"], "train", count,
                                         path=finetune.get("data_path"))
        kw["calibration_source"] = f"the first {count} {finetune['data']} training images"
    model, report = import_module(module, in_shape, quant=quant, pim=pim, log=log, **kw)
    cfg = Config(**{"model": "import", "ratio": None, "weight_bits": quant.weight_bits,
                    "act_bits": quant.act_bits, "pool_bits": quant.pool_bits, "pim": pim,
                    "graph": [nd.to_dict() for nd in model.nodes], "in_shape": list(in_shape),
                    "num_classes": model.nodes[-1].out_channels, "epochs": 0,
                    **(finetune or {})})
    if finetune:
        if float_accuracy:
            from .export import quantize_inputs

            with torch.no_grad():
                module.eval()
                pred = np.concatenate([
                    module(quantize_inputs(x_test[i:i + 500])).argmax(1).numpy()
                    for i in range(0, len(x_test), 500)])
            report["float_test_accuracy"] = float((pred == y_test).mean())
            acc, _ = evaluate(model, x_test, y_test, pick_device("cpu"))
            report["epim_before_finetune_accuracy"] = acc
            log(f"float model {report['float_test_accuracy']:.4f}, EPIM before fine-tuning "
                f"{acc:.4f} on {len(y_test)} {finetune['data']} test images")
        metrics = fit(cfg, out, log=log, model=model)
        model = metrics["model"].cpu()
        report.update(finetune={k: v for k, v in asdict(cfg).items()
                                if k in ("data", "epochs", "lr", "batch_size", "seed", "limit")},
                      test_accuracy=metrics["test_accuracy"],
                      test_images=metrics["test_images"],
                      fake_quant_accuracy=metrics.get("fake_quant_accuracy"))
    else:
        state = {"config": asdict(cfg), "model": model.state_dict()}
        owned.write_owned(out, {"checkpoint.pt": lambda f: torch.save(state, f)}, "import")
    net = export(model.eval(), pim, source=str(out / "net.json"))
    report["pim"] = pim
    report["quant"] = {"weight_bits": quant.weight_bits, "act_bits": quant.act_bits,
                       "signed_bits": quant.signed_bits, "pool_bits": quant.pool_bits,
                       "input_bits": quant.input_bits}
    owned.write_owned(out, {"net.json": json.dumps(net) + "\n",
                            "import.json": json.dumps(report, indent=1) + "\n"}, "import")
    log(f"wrote {out / 'net.json'}, {out / 'checkpoint.pt'} and {out / 'import.json'}")
    return report
