"""The robustness study end to end, on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from epim.sw.studies import robustness


@pytest.mark.slow  # per data set: three trainings and three noise-aware fine-tunes
def test_the_study_writes_its_table_and_plot(tmp_path, capfd):
    # two data sets in two worker processes (--jobs 2)
    assert robustness.main(["--data", "mnist-5k", "fashion-mnist", "--limit", "256",
                            "--images", "64", "--epochs", "1", "--ft-epochs", "1", "--seeds",
                            "2", "--sigmas", "0", "0.2", "--rates", "0", "0.02", "--width", "8",
                            "--jobs", "2", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "robustness.json").read_text())
    assert list(out["results"]) == ["mnist-5k", "fashion-mnist"]
    assert out["meta"]["jobs"] == 2
    printed = capfd.readouterr().out  # the workers write to the descriptor itself
    assert "[mnist-5k]   dense 3-bit" in printed and "[fashion-mnist]   EPIM 3-bit" in printed
    for kinds in out["results"].values():
        assert set(kinds) == set(robustness.KINDS)
        # EPIM and pruned at equal crossbar counts (pruning stops at or below the EPIM budget)
        assert kinds["pruned 3-bit"]["metrics"]["crossbars"] \
            <= kinds["EPIM 3-bit"]["metrics"]["crossbars"]
        for row in kinds.values():
            zero = row["plain"]["sigma"]["0.0"]
            assert len(zero) == 2 and zero[0] == zero[1]  # no noise: every chip is the same
            assert row["plain"]["stuck"]["0.0"] == row["plain"]["stuck_remapped"]["0.0"] == zero
            assert len(row["plain"]["stuck"]["0.02"]) == 2
            assert "0.2" in row["noise_aware"]["sigma"]
    md = (tmp_path / "robustness.md").read_text()
    assert "EPIM 3-bit (noise-aware)" in md and "pruned 3-bit (remapped)" in md
    assert "| fashion-mnist | dense 3-bit |" in md
    assert (tmp_path / "robustness.png").stat().st_size > 10_000


@pytest.mark.slow  # two worker processes import torch
def test_a_terminated_study_leaves_no_worker_behind(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "epim.sw.studies.robustness", "--data",
                             "mnist-5k", "fashion-mnist", "--jobs", "2", "--out", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2:
            workers = [p for p in parent.children(recursive=True)
                       if "resource_tracker" not in " ".join(p.cmdline())]
            time.sleep(0.5)
        assert len(workers) >= 2, "the study did not start its two workers"
        time.sleep(5)  # the workers are loading data and training now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers left running: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
