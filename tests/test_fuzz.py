"""A bounded fuzz run (`tests/fuzzing.py`): mutated network files, tampered image folders, bad
input arrays and corrupted board answers must each be refused cleanly or accepted as valid:
no traceback, no write outside the output folder, nothing accepted that then fails.
`benchmarks/fuzz.py` is the long run."""

from __future__ import annotations

import gc

import pytest

from tests import fuzzing

CLEAN = ("traceback", "escaped", "invalid")


def check(counts, n):
    gc.collect()  # (an elaboratable left unused would warn here, inside this test)
    assert counts["tried"] == n
    assert {k: counts[k] for k in CLEAN} == dict.fromkeys(CLEAN, 0), fuzzing.summary("", counts)
    assert counts["refused"] > 0


def test_network_files(tmp_path):
    counts = fuzzing.fuzz_network_files(60, tmp_path, seed=3)
    check(counts, 60)
    assert counts["refused"] + counts["accepted"] == 60


def test_image_folders(tmp_path):
    check(fuzzing.fuzz_image_folders(40, tmp_path, seed=3), 40)


def test_input_arrays_and_board_answers(tmp_path):
    check(fuzzing.fuzz_input_arrays(15, tmp_path, seed=3), 15)
    counts = fuzzing.fuzz_board_answers(200, seed=3)
    check(counts, 200)
    assert counts["refused"] == 200


@pytest.mark.slow
def test_a_longer_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    check(fuzzing.fuzz_network_files(600, tmp_path / "a", seed=11), 600)
    check(fuzzing.fuzz_image_folders(150, tmp_path / "b", seed=11), 150)
