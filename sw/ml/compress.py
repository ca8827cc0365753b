"""Compress a trained dense model to a crossbar budget: epitomes or structured pruning.

Both start from the same trained dense model and are then fine-tuned with the same recipe:

- :func:`epitomize` replaces each conv by the epitome that reproduces its weight best in least
  squares (each epitome entry is the mean of the weights sampled from it);
- :func:`prune` removes whole output channels (smallest batch-norm-scaled L1 norm first) until
  the network's crossbar count is within the budget, keeping the surviving weights.

Crossbars are counted by spec section 3 from the layer shapes (:func:`model_crossbars`).
"""

from __future__ import annotations

import torch

from ...contract.ops import TILE_OPS, Op
from ..chip.cost import shape_layer
from ..chip.epitome import matrix_crossbars
from ..chip.netfile import Layer
from .layers import project
from .models import INPUT, ConvUnit, EpimNet, Node


def crossbars(rows: int, cols: int, weight_bits: int, pim: dict) -> int:
    """Spec section 3 for one matrix of `rows x cols` weights."""
    return matrix_crossbars(rows, cols, weight_bits, pim["cell_bits"], pim["xbar_rows"],
                            pim["xbar_cols"])


def model_crossbars(model: EpimNet, pim: dict, weight_bits: int | None = None,
                    dense: bool = False) -> int:
    """Crossbars of a model's conv and linear layers (`dense=True`: as dense layers)."""
    total = 0
    for _, conv in model.epitome_layers():
        bits = weight_bits or conv.wq.bits or 8  # per layer: the search may mix bit widths
        ce_in, ce_out, _, _ = conv.epitome_shape
        cin, cout = (conv.in_channels, conv.out_channels) if dense else (ce_in, ce_out)
        total += crossbars(cin * conv.kernel_size**2, cout, bits, pim)
    return total


def _copy_common(src: EpimNet, dst: EpimNet) -> None:
    """Batch norm, quantizer scales and the classifier bias carry over by name."""
    for nd in src.nodes:
        a, b = src.units[nd.name], dst.units[nd.name]
        if isinstance(a, ConvUnit):
            b.bn.load_state_dict(a.bn.state_dict())
        if nd.op in TILE_OPS:
            dst.layer(nd.name).wq.load_state_dict(src.layer(nd.name).wq.state_dict())
        if hasattr(a, "aq"):
            b.aq.load_state_dict(a.aq.state_dict())
        if nd.op == Op.LINEAR:
            dst.layer(nd.name).bias.data.copy_(src.layer(nd.name).bias.data)


@torch.no_grad()
def epitomize(dense: EpimNet, nodes: list[Node]) -> EpimNet:
    """The epitome model `nodes` (same graph, epitome shapes set) initialised from `dense`."""
    model = EpimNet(nodes, dense.in_shape, nodes[-1].out_channels, dense.quant)
    _copy_common(dense, model)
    src = dict(dense.epitome_layers())
    for name, conv in model.epitome_layers():
        w = src[name].sampled_weight()
        conv.E.copy_(project(w, conv.index, conv.E.shape))
    return model


def channel_scores(model: EpimNet, name: str) -> torch.Tensor:
    """Importance of each output channel: |gamma| / sigma times the filter's L1 norm."""
    unit = model.units[name]
    w = unit.conv.sampled_weight().detach()
    bn = unit.bn
    gain = bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)
    return gain * w.abs().sum(dim=(1, 2, 3))


def tied_groups(model: EpimNet) -> list[list[str]]:
    """The conv nodes whose output channels must be pruned together: a residual `add` sums its
    inputs channel by channel, so both inputs (and the add) keep the same channels, and the
    whole chain of adds of a ResNet stage (stem or 1x1 skip conv, every block's second conv) is
    one group. Every other conv is a group of its own."""
    parent = {nd.name: nd.name for nd in model.nodes}

    def root(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for nd in model.nodes:
        if nd.op == Op.ADD:
            for i in nd.inputs:
                parent[root(i)] = root(nd.name)
    groups: dict[str, list[str]] = {}
    for nd in model.nodes:
        if nd.op == Op.CONV:
            groups.setdefault(root(nd.name), []).append(nd.name)
    return list(groups.values())


def group_scores(model: EpimNet, group: list[str]) -> torch.Tensor:
    """Channel importance of a tied group: each member's :func:`channel_scores` over its own
    mean, summed."""
    total = 0
    for name in group:
        s = channel_scores(model, name)
        total = total + s / s.mean().clamp(min=1e-12)
    return total


def pruned_nodes(model: EpimNet, keep: dict[str, int]) -> list[Node]:
    return [Node(nd.name, nd.op, list(nd.inputs), keep.get(nd.name, nd.out_channels),
                 nd.kernel, nd.stride, None,
                 {k: v for k, v in nd.extra.items() if k != "offsets"})
            for nd in model.nodes]


@torch.no_grad()
def prune(dense: EpimNet, budget: int, pim: dict) -> EpimNet:
    """Remove output channels of the convs, lowest score first and evenly across layers (by
    fraction kept), until the model needs at most `budget` crossbars. Channels tied by residual
    adds (:func:`tied_groups`) go together, by their summed scores."""
    groups = tied_groups(dense)
    full = [dense.units[g[0]].conv.out_channels for g in groups]

    def keep_of(frac):
        return {n: max(1, round(c * frac)) for g, c in zip(groups, full, strict=True)
                for n in g}

    def build(keep):
        return EpimNet(pruned_nodes(dense, keep), dense.in_shape, dense.nodes[-1].out_channels,
                       dense.quant)

    lo, hi = 0.0, 1.0
    for _ in range(30):  # bisection on the fraction of channels kept
        mid = (lo + hi) / 2
        if model_crossbars(build(keep_of(mid)), pim) <= budget:
            lo = mid
        else:
            hi = mid
    keep = keep_of(lo)
    model = build(keep)
    if model_crossbars(model, pim) > budget:
        raise ValueError(f"cannot prune to {budget} crossbars (one channel per layer needs "
                         f"{model_crossbars(model, pim)})")
    kept = {}
    for g in groups:
        idx = torch.sort(torch.topk(group_scores(dense, g), keep[g[0]]).indices).values
        kept.update({n: idx for n in g})
    _copy_common_pruned(dense, model, kept)
    return model


def _copy_common_pruned(src: EpimNet, dst: EpimNet, kept: dict[str, torch.Tensor]) -> None:
    """Copy weights, batch norm and scales, selecting the kept output and input channels."""
    for nd in src.nodes:
        a, b = src.units[nd.name], dst.units[nd.name]
        outs = kept.get(nd.name)
        ins = kept.get(nd.inputs[0]) if nd.inputs[0] != INPUT else None
        if nd.op in TILE_OPS:
            conv_a = a.conv if nd.op == Op.CONV else a
            conv_b = b.conv if nd.op == Op.CONV else b
            w = conv_a.sampled_weight()
            if nd.op == Op.LINEAR and ins is not None:
                # the classifier reads the pooled (C, 1, 1) map: features are channels
                w = w[:, ins]
            elif ins is not None:
                w = w[:, ins]
            if outs is not None:
                w = w[outs]
            conv_b.E.copy_(w)
            conv_b.wq.load_state_dict(conv_a.wq.state_dict())
        if nd.op == Op.CONV:
            sd = a.bn.state_dict()
            if outs is not None:
                sd = {k: (v[outs] if v.ndim == 1 else v) for k, v in sd.items()}
            b.bn.load_state_dict(sd)
        if hasattr(a, "aq"):
            b.aq.load_state_dict(a.aq.state_dict())
        if nd.op == Op.LINEAR:
            b.bias.copy_(a.bias)
        if nd.op in (Op.ADD, Op.AVGPOOL_GLOBAL) and outs is None:
            kept[nd.name] = kept.get(nd.inputs[0])


def torch_layers(model, input_shape: tuple[int, int, int], weight_bits: int = 3,
                 act_bits: int = 4, input_bits: int = 8,
                 in_bits: dict[str, int] | None = None) -> list[Layer]:
    """Weightless layers of a PyTorch model's `Conv2d` and `Linear` modules (groups 1, square
    kernels), their input sizes found by one forward pass of zeros: cost any torchvision model
    without its weights. Epitome layers of `epim.sw.ml.layers` keep their epitome shapes. Inputs
    are `input_bits` wide for the first layer, `act_bits` after, or `in_bits[module name]`."""
    import torch

    found = []

    def hook(mod, args, _out):
        found.append((mod, tuple(args[0].shape)))

    handles = []
    for mod in model.modules():
        cls = type(mod).__name__
        if cls in ("Conv2d", "Linear", "EpitomeConv2d", "EpitomeLinear"):
            handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        # an EpimNet in eval mode runs its integer network without calling its layers
        run = getattr(model, "fake_quant_forward", model)
        with torch.no_grad():
            run(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    names = {mod: name for name, mod in model.named_modules()}
    layers, first = [], True
    for mod, shape in found:
        cls = type(mod).__name__
        bits = (in_bits or {}).get(names[mod], input_bits if first else act_bits)
        first = False
        if cls in ("Linear", "EpitomeLinear"):
            cin = mod.in_features if cls == "Linear" else mod.in_channels
            cout = mod.out_features if cls == "Linear" else mod.out_channels
            epi = None if cls == "Linear" or mod.dense else mod.epitome_shape
            layers.append(shape_layer(names[mod], cin, cout, 1, 1, (1, 1), epi, bits,
                                      weight_bits, 32, Op.LINEAR))
            continue
        k = mod.kernel_size if isinstance(mod.kernel_size, int) else mod.kernel_size[0]
        s = mod.stride if isinstance(mod.stride, int) else mod.stride[0]
        if cls == "Conv2d" and (mod.groups != 1 or mod.kernel_size[0] != mod.kernel_size[1]):
            raise ValueError(f"{names[mod]}: only square, ungrouped convolutions map to crossbars")
        epi = None if cls == "Conv2d" or mod.dense else mod.epitome_shape
        pad = mod.padding if isinstance(mod.padding, int) else mod.padding[0]
        layers.append(shape_layer(names[mod], mod.in_channels, mod.out_channels, k, s,
                                  shape[2:], epi, bits, weight_bits, act_bits,
                                  padding=pad))
    return layers
