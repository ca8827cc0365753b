"""A bounded fuzz run (`tests/fuzzing.py`): mutated network files, tampered image folders, bad
input arrays and corrupted board answers must each be refused cleanly or accepted as valid:
no traceback, no write outside the output folder, nothing accepted that then fails.
`benchmarks/fuzz.py` is the long run."""

from __future__ import annotations

import gc

import pytest

from tests import fuzzing

CLEAN = ("traceback", "escaped", "invalid", "hang", "lost", "half-written")


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


def test_the_second_round_classes(tmp_path):
    """Special files, folders of a user's files, a full disk (the writer's fsync failing, as
    the quick sample needs no mount), deep nesting in every JSON input, argument values and
    long layer chains."""
    check(fuzzing.fuzz_special_files(12, tmp_path / "s", seed=3), 12)
    check(fuzzing.fuzz_output_folders(12, tmp_path / "o", seed=3), 12)
    counts = fuzzing.fuzz_full_disk(12, tmp_path / "d", seed=3, real=False)
    check(counts, 12)
    assert counts["hit a full disk"] > 0
    check(fuzzing.fuzz_json_nesting(20, tmp_path / "n", seed=3), 20)
    check(fuzzing.fuzz_arguments(30, tmp_path / "a", seed=3), 30)
    counts = fuzzing.fuzz_layer_chains(2, tmp_path / "c", seed=5)
    check(counts, 2)
    assert counts["slowest"] < 5000


@pytest.mark.slow
def test_a_longer_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    check(fuzzing.fuzz_network_files(600, tmp_path / "a", seed=11), 600)
    check(fuzzing.fuzz_image_folders(150, tmp_path / "b", seed=11), 150)
