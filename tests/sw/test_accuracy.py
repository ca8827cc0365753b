"""The accuracy benchmark end to end on a tiny MNIST subset (outputs, not accuracy)."""

from __future__ import annotations

import json

import pytest

from epim.sw.studies import accuracy


@pytest.mark.slow  # trains five models
def test_benchmark_writes_table_json_and_plot(tmp_path):
    assert accuracy.main(["--data", "mnist-5k", "--seeds", "0", "--epochs", "1", "--ratios",
                          "4", "--width", "8", "--limit", "256", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "accuracy.json").read_text())
    configs = [s["config"] for s in result["summary"]]
    assert configs == ["dense float", "dense 8-bit", "dense 3-bit", "EPIM 3-bit r=4",
                       "pruned 3-bit r=4"]
    by = {s["config"]: s for s in result["summary"]}
    assert by["pruned 3-bit r=4"]["crossbars"] <= by["EPIM 3-bit r=4"]["crossbars"]
    assert by["EPIM 3-bit r=4"]["compression_vs_dense8"] > by["dense 3-bit"][
        "compression_vs_dense8"] > 1
    assert "| mnist-5k | EPIM 3-bit r=4 |" in (tmp_path / "accuracy.md").read_text()
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
