"""`epim cosim --per-layer`: every tile alone with its real input, builds shared by shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from epim.app.cli import main as cli
from epim.sw.chip import examples, netfile


def _two_equal_tiles() -> dict:
    """conv a -> conv b of one shape and width (different weights), then a 1x1 classifier."""
    rng = np.random.default_rng(5)
    pim = {"xbar_rows": 16, "xbar_cols": 16, "cell_bits": 2, "dac_bits": 1, "adc_bits": 5}
    layers = []
    for name, src in (("a", "input"), ("b", "a")):
        lay = examples.conv_layer_net(rng, cin=4, cout=4, h=5, w=5, epitome=(4, 4, 2, 2),
                                      offsets="strided", pim=pim, name=name)["layers"][0]
        lay["inputs"] = [src]
        layers.append(lay)
    return {"format": "epim-net-v1", "pim": pim,
            "input": {"name": "input", "channels": 4, "height": 5, "width": 5, "bits": 4},
            "layers": layers, "output": "b"}


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_per_layer_cosim_checks_every_tile_and_shares_builds(tmp_path, jobs):
    """One after the other, and on a local Dask cluster of 2 worker processes."""
    obj = _two_equal_tiles()
    (tmp_path / "n.json").write_text(json.dumps(obj))
    net = netfile.parse(obj)
    x = np.random.default_rng(0).integers(0, 16, (2, *net.input_shape))
    np.save(tmp_path / "x.npy", x)
    assert cli(["cosim", str(tmp_path / "n.json"), "--inputs", str(tmp_path / "x.npy"),
                "--outputs", str(tmp_path / "y.npy"), "--per-layer", "--report",
                str(tmp_path / "r.json"), "--build-dir", str(tmp_path / "b"),
                "--jobs", str(jobs)]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["jobs"] == jobs
    assert [r["layer"] for r in rep["per_layer"]] == ["a", "b"]
    assert all(r["match"] and r["cycles_match"] for r in rep["per_layer"])
    assert rep["distinct_builds"] == 1  # two tiles of one shape: one module, one build
    assert len(list((tmp_path / "b" / "modules").glob("tile-*.v"))) == 1  # emitted once
    from epim.sw.chip import reference

    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), reference.run_network(net, x))


def test_an_interrupted_fan_out_stops_what_its_workers_started():
    """`_fan_out`, on an error or Ctrl-C, stops the processes below it (a worker's `make`, the
    C++ compiler, a simulator), which would otherwise outlive the closed cluster."""
    import subprocess
    import time

    import psutil

    from epim.sim import buildcache

    before = buildcache.child_processes()
    shell = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60; wait"])
    try:
        deadline = time.time() + 30
        while len(psutil.Process(shell.pid).children()) < 2 and time.time() < deadline:
            time.sleep(0.1)
        tree = [psutil.Process(shell.pid), *psutil.Process(shell.pid).children(recursive=True)]
        assert len(tree) == 3  # the shell and its two sleeps
        assert {p.pid for p in buildcache.new_processes(before)} == {p.pid for p in tree}
        buildcache.stop_processes(tree)
        shell.wait(timeout=5)  # ended (raises TimeoutExpired if not)
        for p in tree[1:]:
            assert not _alive(p)
    finally:
        if shell.poll() is None:
            shell.kill()


def _name(proc) -> str:
    import psutil

    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("how", [["--per-layer", "--jobs", "2"], []],
                         ids=["per-layer-2-workers", "whole-network"])
def test_a_terminated_cosim_leaves_no_build_behind(tmp_path, how):
    """`kill` (SIGTERM) on `epim cosim` while Verilator or the C++ compiler runs (in a Dask
    worker, or in this process's build thread): the command ends, and so does everything it
    started."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    obj = _two_equal_tiles()
    (tmp_path / "n.json").write_text(json.dumps(obj))
    x = np.random.default_rng(0).integers(0, 16, (1, *netfile.parse(obj).input_shape))
    np.save(tmp_path / "x.npy", x)
    cmd = [sys.executable, "-m", "epim.app.cli", "cosim", str(tmp_path / "n.json"), "--inputs",
           str(tmp_path / "x.npy"), "--outputs", str(tmp_path / "y.npy"), *how,
           "--build-dir", str(tmp_path / "b")]
    log = tmp_path / "cosim.log"
    with open(log, "w") as fh:
        main = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        top = psutil.Process(main.pid)
        deadline = time.time() + 300
        below = []
        while time.time() < deadline and main.poll() is None:
            below = top.children(recursive=True)
            if any(_name(p) in ("make", "cc1plus", "verilator_bin") for p in below):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no build started below `epim cosim` (exit {main.poll()}): "
                        f"{log.read_text()[-2000:]}")
        os.kill(main.pid, signal.SIGTERM)
        assert main.wait(timeout=120) == 128 + signal.SIGTERM
        time.sleep(1)
        left = [_name(p) for p in below if _alive(p)]
        assert not left, f"still running after the command ended: {left}"
    finally:
        if main.poll() is None:
            main.kill()
