"""Content-keyed caches: generated accelerators and Verilator builds are reused when, and only
when, nothing they are made from changed; concurrent runs share one cache safely."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from epim.app import generate, verify
from epim.sim import buildcache
from epim.sw.chip import examples, netfile, reference


@pytest.fixture
def small_net():
    return netfile.parse(examples.random_network_net(4))


@pytest.fixture
def one_layer():
    return netfile.parse(examples.random_layer_net(1))


@pytest.mark.slow  # over 5 s
def test_generation_is_reused_only_when_unchanged(tmp_path, one_layer):
    small_net = one_layer
    out = tmp_path / "g"
    first = generate.generate_network(small_net, out)
    assert not first.cached
    stamp = out / generate.GENERATE_STAMP
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = generate.generate_network(small_net, out)
    assert again.cached and again.manifest == first.manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == times
    # a changed tile image, or a Verilog file edited by hand, is never taken as current
    hexfile = next((out / "tiles").rglob("xbar.hex"))
    hexfile.write_text(hexfile.read_text().replace("0", "1", 1))
    assert not generate.generate_network(small_net, out).cached
    assert generate.generate_network(small_net, out).cached
    (out / generate.NETWORK_VERILOG).write_text("module x; endmodule\n")
    assert not generate.generate_network(small_net, out).cached
    # other options are another design
    assert not generate.generate_network(small_net, out,
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
    y1, rep1 = verify.cosim_network(small_net, x, tmp_path / "b")
    assert not rep1["generate_cached"]

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    monkeypatch.setattr(buildcache, "run_with_progress", refuse)
    y2, rep2 = verify.cosim_network(small_net, x, tmp_path / "b")
    assert rep2["generate_cached"] and rep2["match"] and rep2["cycles_match"]
    np.testing.assert_array_equal(y2, reference.run_network(small_net, x))
    np.testing.assert_array_equal(y1, y2)


def test_generation_replaces_the_folder_whole(tmp_path, one_layer, capsys):
    """No file of an earlier generation survives; a folder of someone else's files is never
    replaced."""
    from epim.app.cli import main

    out = tmp_path / "g"
    other = netfile.parse(examples.random_layer_net(2))  # another layer name
    generate.generate_network(other, out)
    old_tiles = {p.name for p in (out / "tiles").iterdir()}
    generate.generate_network(one_layer, out)
    assert {p.name for p in (out / "tiles").iterdir()} == {one_layer.layers[0].name}
    assert old_tiles - {one_layer.layers[0].name}
    assert not list(tmp_path.glob(".g.*"))  # no staging or old folder left beside it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    net_path = tmp_path / "n.json"
    net_path.write_text(json.dumps(examples.random_layer_net(1)))
    assert main(["generate", str(net_path), "--out", str(mine)]) == 2
    assert "holds files that EPIM did not write (notes.txt" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_generate_killed_anywhere_leaves_the_old_or_the_new_output(tmp_path):
    """`epim generate` killed (SIGKILL) at 20 random points: the output folder always holds
    one complete generation, the old one or the new one, and the next run cleans up."""
    import os
    import random
    import signal
    import subprocess
    import sys

    nets = {}
    for seed in (0, 1):
        path = tmp_path / f"net{seed}.json"
        path.write_text(json.dumps(examples.random_layer_net(seed)))
        nets[seed] = netfile.load(path)
    out = tmp_path / "out"
    want = {}
    for seed, net in nets.items():  # each network's manifest and key, generated once
        gen = generate.generate_network(net, tmp_path / f"ref{seed}")
        text = (gen.folder / "network.json").read_text()
        want[seed] = (generate.generation_key(text, "network"), text)
    generate.generate_network(nets[0], out)
    rng = random.Random(7)
    seen = set()
    for trial in range(20):
        seed = trial % 2
        proc = subprocess.Popen([sys.executable, "-m", "epim.app.cli", "generate",
                                 str(tmp_path / f"net{seed}.json"), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 4.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        complete = [s for s, (key, text) in want.items()
                    if generate.network_is_current(out, key, text)]
        assert len(complete) == 1, f"trial {trial}: the output folder is not one generation"
        seen.add((proc.returncode == 0, complete[0]))
    generate.generate_network(nets[1], out)
    assert not list(tmp_path.glob(".out.*"))
    assert any(not ok for ok, _ in seen)  # some runs were killed part way
