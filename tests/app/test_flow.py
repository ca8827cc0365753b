"""The main job end to end, at a size CI can afford: train, export, compile, Verilog, cosim."""

from __future__ import annotations

import json

import numpy as np
import pytest

from epim.app import flow
from epim.sw.chip import data, netfile, reference

pytestmark = [pytest.mark.verilator, pytest.mark.slow]


def test_flow_end_to_end_and_its_numbers_reproduce(tmp_path, capsys):
    out = tmp_path / "flow"
    assert flow.main(["--data", "mnist-5k", "--limit", "512", "--test-limit", "200",
                      "--epochs", "1", "--width", "4", "--images", "3", "--out",
                      str(out)]) == 0
    text = capsys.readouterr().out
    assert "EPIM flow summary" in text and "3/3 bit-exact" in text
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    assert s["cosim"]["matching_images"] == 3 and s["cosim"]["cycles_match"]
    assert s["cosim"]["class_matches"] == 3
    assert 0.9 <= s["throughput_ratio"] <= 1.1
    # the reported accuracy is what the integer reference gives on the written file
    net = netfile.load(out / "train" / "net.json")
    x, y = data.load("mnist-5k", "test", 200)
    pred = reference.run_network(net, x.astype(np.int64)).argmax(1)
    assert float((pred == y).mean()) == s["accuracy"]
    assert s["crossbars"] < s["dense8_crossbars"]
    assert (out / "report.md").read_text().startswith("# EPIM flow")
    assert (out / "layers.png").stat().st_size > 1000
