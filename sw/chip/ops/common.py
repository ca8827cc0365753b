"""What every op's entry shares."""

from __future__ import annotations


def unit_head(layer) -> dict:
    """The fields every unit of `network.json` starts with: the layer's name, op and inputs."""
    return {"name": layer.name, "op": layer.op, "inputs": tuple(layer.inputs)}
