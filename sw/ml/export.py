"""Export a trained, quantized :class:`~epim.sw.ml.models.EpimNet` to an `epim-net-v1` object.

Batch norm and the quantizer scales fold into the integer output stage of spec section 5
(:func:`epim.sw.ml.models.fold`); this module writes the folded integers in the file format. The
final linear layer gives logits in accumulator units (`mult = 1`, `shift = 0`).
"""

from __future__ import annotations

import numpy as np
import torch

from ...contract.ops import Op
from ..chip.netfile import parse
from .models import INPUT, LOGIT_BITS, EpimNet, fold


def epitome_fields(conv, e_int: torch.Tensor) -> dict:
    """The `epitome` (or dense `weights`) fields of a conv/linear layer."""
    if conv.dense:
        return {"weights": conv.sampled_weight(e_int).tolist()}
    ce_in, ce_out, p_in, p_out = conv.epitome_shape
    return {"epitome": {"in_channels": ce_in, "out_channels": ce_out, "patch_in": p_in,
                        "patch_out": p_out, "row_offset": conv.row_offset.tolist(),
                        "col_offset": conv.col_offset.tolist(), "weights": e_int.tolist()}}


def export(model: EpimNet, pim: dict, source: str = "<export>") -> dict:
    """The integer network of a quantized model, validated against the spec."""
    q = model.quant
    params = fold(model.eval())
    c, h, w = model.in_shape
    layers = []
    for nd in model.nodes:
        p = params[nd.name]
        head = {"name": nd.name, "op": nd.op, "inputs": list(nd.inputs)}
        if nd.op == Op.CONV:
            conv = model.units[nd.name].conv
            layers.append({**head, "out_channels": conv.out_channels,
                           "kernel": conv.kernel_size, "stride": conv.stride,
                           "padding": conv.padding, "weight_bits": conv.wq.bits,
                           **epitome_fields(conv, p["e_int"]), "bias": p["bias"].tolist(),
                           "mult": p["mult"], "shift": p["shift"], "relu": nd.relu,
                           "out_bits": q.act_bits if nd.relu else q.signed_bits})
        elif nd.op == Op.MAXPOOL:
            u = model.units[nd.name]
            layers.append({**head, "kernel": u.kernel, "stride": u.stride,
                           "padding": u.padding})
        elif nd.op == Op.ADD:
            layers.append({**head, "ma": p["ma"], "mb": p["mb"], "shift": p["shift"],
                           "out_bits": q.act_bits})
        elif nd.op == Op.AVGPOOL_GLOBAL:
            layers.append({**head, "mult": p["mult"], "shift": p["shift"],
                           "out_bits": q.pool_bits})
        else:
            unit = model.layer(nd.name)
            hidden = nd.name != model.output
            layers.append({**head, "out_features": unit.out_channels,
                           "weight_bits": unit.wq.bits, **epitome_fields(unit, p["e_int"]),
                           "bias": p["bias"].tolist(), "mult": p["mult"], "shift": p["shift"],
                           "relu": hidden, "out_bits": q.act_bits if hidden else LOGIT_BITS})
    net = {"format": "epim-net-v1", "pim": dict(pim),
           "input": {"name": INPUT, "channels": c, "height": h, "width": w,
                     "bits": q.input_bits},
           "layers": layers, "output": model.output}
    parse(net, source=source)  # an export that breaks the spec is a bug: fail here, loudly
    return net


def quantize_inputs(images, bits: int = 8) -> torch.Tensor:
    """`uint8` images to the model's input: integers scaled to [0, 1]."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return x / (2**bits - 1)
