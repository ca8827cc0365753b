"""Content-keyed caches: generated accelerators and Verilator builds are reused when, and only
when, nothing they are made from changed; concurrent runs share one cache safely."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from epim.sim import buildcache, cosim
from epim.sw import examples, netfile, reference


@pytest.fixture
def small_net():
    return netfile.parse(examples.random_network_net(4))


@pytest.fixture
def one_layer():
    return netfile.parse(examples.random_layer_net(1))


def test_generation_is_reused_only_when_unchanged(tmp_path, one_layer):
    small_net = one_layer
    out = tmp_path / "g"
    first = cosim.generate_network(small_net, out)
    assert not first.cached
    stamp = out / cosim.GENERATE_STAMP
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = cosim.generate_network(small_net, out)
    assert again.cached and again.manifest == first.manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == times
    # a changed tile image, or a Verilog file edited by hand, is never taken as current
    hexfile = next((out / "tiles").rglob("xbar.hex"))
    hexfile.write_text(hexfile.read_text().replace("0", "1", 1))
    assert not cosim.generate_network(small_net, out).cached
    assert cosim.generate_network(small_net, out).cached
    (out / cosim.NETWORK_VERILOG).write_text("module x; endmodule\n")
    assert not cosim.generate_network(small_net, out).cached
    # other options are another design
    assert not cosim.generate_network(small_net, out,
                                      replicas={small_net.layers[0].name: 2}).cached
    assert json.loads(stamp.read_text())["key"] != ""


class FakeRunner:
    """Stands in for cocotb's Verilator runner: a slow build that writes the executable."""

    calls = 0
    lock = threading.Lock()

    def build(self, build_dir, hdl_toplevel, **kwargs):
        with self.lock:
            FakeRunner.calls += 1
        time.sleep(0.3)
        (Path(build_dir) / hdl_toplevel).write_text("built")


def test_one_build_per_key_also_when_runs_race(tmp_path, monkeypatch):
    monkeypatch.setattr("cocotb_tools.runner.get_runner", lambda name: FakeRunner())
    FakeRunner.calls = 0
    src = tmp_path / "a.v"
    src.write_text("module a; endmodule\n")
    results = []

    def build():
        results.append(buildcache.verilator_build([src], "epim_a", tmp_path / "cache"))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert FakeRunner.calls == 1
    assert len({d for d, _ in results}) == 1 and sorted(b for _, b in results) == [0, 0, 1]
    # the same bytes written again (a new mtime): still cached
    src.write_text("module a; endmodule\n")
    assert buildcache.verilator_build([src], "epim_a", tmp_path / "cache")[1] is False
    # other bytes: another build; an interrupted build (no stamp) is redone
    src.write_text("module a; wire w; endmodule\n")
    build_dir, built = buildcache.verilator_build([src], "epim_a", tmp_path / "cache")
    assert built and FakeRunner.calls == 2
    (build_dir / buildcache.STAMP).unlink()
    assert buildcache.verilator_build([src], "epim_a", tmp_path / "cache")[1] is True


@pytest.mark.verilator
@pytest.mark.slow
def test_second_cosim_neither_generates_nor_builds(tmp_path, small_net, monkeypatch):
    x = np.random.default_rng(0).integers(0, 2**small_net.input_bits,
                                          (2, *small_net.input_shape))
    y1, rep1 = cosim.cosim_network(small_net, x, tmp_path / "b")
    assert not rep1["generate_cached"]

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    monkeypatch.setattr(buildcache, "run_with_progress", refuse)
    y2, rep2 = cosim.cosim_network(small_net, x, tmp_path / "b")
    assert rep2["generate_cached"] and rep2["match"] and rep2["cycles_match"]
    np.testing.assert_array_equal(y2, reference.run_network(small_net, x))
    np.testing.assert_array_equal(y1, y2)
