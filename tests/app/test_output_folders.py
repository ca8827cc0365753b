"""A property of every command that writes: whatever a folder held before that the command did
not write is left untouched, or the command refuses to run (one line, exit 2).

Folder outputs (`generate`, `generate --tile`, `cosim --build-dir`, `train --out`,
`import --out`) are tried on a user's folder and on a folder of an earlier EPIM run with the
user's files added; file outputs (`faults`, `remap`, `--json`, `--report`, `--outputs`) on a
folder of the user's files beside the file the user names (which the command replaces: the
user asked for it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epim.app.cli import main
from epim.sw.chip import examples

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples" / "mnist-epim-cnn-r4" / "net.json"

# names the commands write, so that a user's file of the same name is tried too
COLLIDING = ["network.json", "epim_net.v", "tiles", "manifest.json", "xbar.hex", "epim_tile.v",
             ".epim-owner.json", ".epim-generate.json", "checkpoint.pt", "net.json",
             "metrics.json", "import.json", "predictions.npy", "generated", "modules",
             "layers", "report.json", ".generated.staging-1", "job-x"]
DIR = b"<dir>"

names = st.one_of(st.sampled_from(COLLIDING),
                  st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,11}", fullmatch=True))
contents = st.dictionaries(names, st.one_of(st.binary(max_size=40), st.just(DIR)),
                           max_size=5)


def lay_out(folder: Path, content: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():
        if data == DIR:
            (folder / name).mkdir(exist_ok=True)
            (folder / name / "inside.txt").write_bytes(b"a user's file")
        else:
            (folder / name).write_bytes(data)


def snapshot(folder: Path, skip: set[str] = frozenset()) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if p.relative_to(folder).parts[0] not in skip}


def untouched_or_refused(capsys, folder: Path, args: list, skip: set[str] = frozenset(),
                         before: dict | None = None) -> int:
    """Run `epim ARGS`: every file of `before` (default: the folder now) must keep its bytes,
    whether the command ran (exit 0) or refused (exit 2, one line)."""
    before = snapshot(folder, skip) if before is None else before
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2), (args, code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("epim: error:"), err
    after = snapshot(folder, skip)
    assert {k: after.get(k, "gone") for k in before} == before, (args, code, err)
    return code


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("folders")
    net = w / "net.json"
    net.write_text(json.dumps(examples.conv_layer_net(np.random.default_rng(0), cin=2, cout=3,
                                                      h=5, w=5)))
    np.save(w / "x.npy", np.random.default_rng(1).integers(0, 16, (1, 2, 5, 5)))
    assert main(["faults", str(MNIST), "--stuck-at-zero", "0.01", "--out",
                 str(w / "faults.json")]) == 0
    for kind, args in (("gen", []), ("tile", ["--tile"])):
        assert main(["generate", str(net), "--out", str(w / f"earlier-{kind}"), *args]) == 0
    return w


FAST = settings(max_examples=8, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(content=contents, earlier=st.booleans())
def test_generate_keeps_or_refuses(work, tmp_path_factory, capsys, content, earlier):
    for kind, args in (("gen", ["--no-reuse"]), ("tile", ["--tile"])):
        folder = tmp_path_factory.mktemp("out") / "f"
        if earlier:  # an EPIM folder of an earlier run, with the user's files added
            shutil.copytree(work / f"earlier-{kind}", folder)
            content = {k: v for k, v in content.items() if not (folder / k).exists()}
        before = None
        lay_out(folder, content)
        before = snapshot(folder, {"tiles"} if earlier else set())
        if earlier:  # (the command's own files are its to replace)
            from epim.contract import files
            mine = files.listed(folder) | {files.OWNER_STAMP}
            before = {k: v for k, v in before.items() if Path(k).parts[0] not in mine}
        code = untouched_or_refused(capsys, folder, ["generate", work / "net.json", "--out",
                                                     folder, *args], before=before)
        if not content:
            assert code == 0  # an empty folder, or EPIM's own, is always accepted


@FAST
@given(content=contents)
def test_file_outputs_keep_their_neighbours(work, tmp_path_factory, capsys, content):
    folder = tmp_path_factory.mktemp("files") / "f"
    lay_out(folder, content)
    named = {"new.json", "rep.json", "c.json", "y.npy"}
    content = {k: v for k, v in content.items() if k not in named}
    for args in (["faults", MNIST, "--stuck-at-max", "0.01", "--out", folder / "new.json"],
                 ["remap", MNIST, "--faults", work / "faults.json", "--out",
                  folder / "new.json", "--report", folder / "rep.json"],
                 ["cost", work / "net.json", "--json", folder / "c.json"],
                 ["reference", work / "net.json", "--inputs", work / "x.npy", "--outputs",
                  folder / "y.npy"]):
        untouched_or_refused(capsys, folder, args, skip=named)


@FAST
@given(content=contents.filter(bool))
def test_a_users_folder_is_refused_as_a_build_or_training_folder(work, tmp_path_factory,
                                                                 capsys, content):
    folder = tmp_path_factory.mktemp("users") / "f"
    lay_out(folder, content)
    for args in (["cosim", work / "net.json", "--inputs", work / "x.npy", "--outputs",
                  work / "y.npy", "--build-dir", folder],
                 ["train", "--data", "mnist-5k", "--out", folder],
                 ["import", "resnet18", "--out", folder]):
        assert untouched_or_refused(capsys, folder, args) == 2


@pytest.mark.slow  # Verilator builds, and training
def test_earlier_build_and_training_folders_keep_the_users_additions(tmp_path, capsys):
    net = tmp_path / "net.json"
    net.write_text(json.dumps(examples.conv_layer_net(np.random.default_rng(0), cin=2, cout=3,
                                                      h=5, w=5)))
    np.save(tmp_path / "x.npy", np.random.default_rng(1).integers(0, 16, (1, 2, 5, 5)))
    cosim = ["cosim", net, "--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "y.npy",
             "--build-dir", tmp_path / "b"]
    train = ["train", "--data", "mnist-5k", "--limit", "256", "--test-limit", "64",
             "--epochs", "1", "--width", "2", "--out", tmp_path / "t"]
    for args, folder in ((cosim, tmp_path / "b"), (train, tmp_path / "t")):
        assert main([str(a) for a in args]) == 0
        user = {"notes.txt": b"mine", "figures": DIR, "old.pt": b"\x00"}
        lay_out(folder, user)
        before = {k: v for k, v in snapshot(folder).items()
                  if Path(k).parts[0] in user}
        assert untouched_or_refused(capsys, folder, args, before=before) == 0
