"""The committed example network is the embedded default, and it fits the spec."""

from __future__ import annotations

import json
from pathlib import Path

from epim.sw.chip import examples, netfile

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "epim_conv3x3.json"


def test_committed_example_is_the_default():
    assert json.loads(EXAMPLE.read_text()) == examples.default_layer_net()
    net = netfile.load(EXAMPLE)
    assert net.layers[0].name == "epim_conv3x3"
