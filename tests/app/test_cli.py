"""The `epim` command line: the four commands and their errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from epim.app.cli import main
from epim.sw.chip import examples, netfile, reference
from tests.helpers import residual_net


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "epim.app.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_check_ok(net_path, capsys):
    assert main(["check", str(net_path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "2 step(s) x 4 DAC slice(s)" in out


def test_malformed_file_one_line_error_and_nonzero_exit(tmp_path, net_obj):
    net_obj["layers"][0]["epitome"]["patch_out"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(net_obj))
    for cmd in (["check"], ["generate", "--out", tmp_path / "gen"],
                ["generate", "--tile", "--out", tmp_path / "gen"],
                ["reference", "--inputs", tmp_path / "x.npy", "--outputs", tmp_path / "y.npy"]):
        proc = run_cli(cmd[0], bad, *cmd[1:])
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "layer 'epim_conv3x3', field 'epitome.patch_out'" in lines[0]
    assert not (tmp_path / "gen").exists()
    assert not (tmp_path / "y.npy").exists()


def test_reference_command(tmp_path, net_path):
    x = np.random.default_rng(0).integers(0, 16, (2, 8, 16, 16))
    np.save(tmp_path / "x.npy", x)
    assert main(["reference", str(net_path), "--inputs", str(tmp_path / "x.npy"),
                 "--outputs", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_array_equal(y, reference.run_network(netfile.load(net_path), x))


def test_reference_refuses_bad_inputs(tmp_path, net_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), dtype=np.int64))
    assert main(["reference", str(net_path), "--inputs", str(tmp_path / "x.npy"),
                 "--outputs", str(tmp_path / "y.npy")]) == 2
    assert "shape (N, 8, 16, 16) with N >= 1" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()


def test_generate_writes_verilog_images_and_manifest(tmp_path, net_path):
    out = tmp_path / "gen"
    assert main(["generate", str(net_path), "--out", str(out), "--tile"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".epim-owner.json", "epim_tile.v", "ifat.hex", "ifrt.hex",
                     "manifest.json", "ofat.hex", "ostage.hex", "xbar.hex"]
    assert "module epim_tile" in (out / "epim_tile.v").read_text()


@pytest.mark.slow  # over 5 s
def test_generate_network_accelerator(tmp_path, net_obj, capsys):
    path = tmp_path / "res.json"
    path.write_text(json.dumps(residual_net(net_obj)))
    out = tmp_path / "g"
    assert main(["generate", str(path), "--out", str(out)]) == 0
    assert "skip FIFO depths" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".epim-generate.json", ".epim-owner.json",
                                                     "epim_net.v", "network.json", "tiles"]
    manifest = json.loads((out / "network.json").read_text())
    assert [u["op"] for u in manifest["units"]] == [la["op"] for la in
                                                   residual_net(net_obj)["layers"]]
    assert "module epim_net" in (out / "epim_net.v").read_text()


@pytest.mark.slow  # over 5 s
def test_lanes_balanced_and_bad_lanes(tmp_path, capsys):
    """`--lanes balanced` gives each tile the lanes of `netcycles.balanced_lanes`."""
    from epim.sw.chip import netcycles

    path = tmp_path / "res.json"  # a small residual network: generating it takes seconds
    path.write_text(json.dumps(examples.random_network_net(4)))
    out = tmp_path / "g"
    assert main(["generate", str(path), "--out", str(out), "--lanes", "balanced"]) == 0
    want = netcycles.balanced_lanes(netfile.load(path))
    for name, lanes in want.items():
        params = json.loads((out / "tiles" / name / "manifest.json").read_text())["params"]
        assert params["lanes"] == lanes
    r = run_cli("cost", path, "--lanes", "0")
    assert r.returncode == 2 and "lanes must be at least 1" in r.stderr
    r = run_cli("cost", path, "--lanes", "some")
    assert r.returncode == 2 and "a positive number or 'balanced'" in r.stderr


@pytest.mark.slow  # over 5 s
def test_replicas_option(tmp_path, capsys):
    """`--replicas auto` picks copies within the budget and writes them into the images; bad
    values name what is wrong."""
    from epim.sw.chip import replication

    path = tmp_path / "res.json"
    path.write_text(json.dumps(examples.random_network_net(4)))
    net = netfile.load(path)
    budget = 2 * replication.crossbars(net)
    out = tmp_path / "g"
    assert main(["generate", str(path), "--out", str(out), "--replicas", "auto",
                 "--budget", str(budget)]) == 0
    units = json.loads((out / "network.json").read_text())["units"]
    want = replication.choose_replicas(net, budget)
    assert {u["name"]: u["replicas"] for u in units if "folder" in u} == want
    assert max(want.values()) > 1 and "tile copies" in capsys.readouterr().out
    # the same again: nothing is emitted anew
    assert main(["generate", str(path), "--out", str(out), "--replicas", "auto",
                 "--budget", str(budget)]) == 0
    assert capsys.readouterr().out.startswith("kept (unchanged)")
    # argparse's own error: one line, exit 2
    assert "'auto', 'none', a positive number" in _one_line(capsys, "cost", path,
                                                           "--replicas", "stem=0")
    assert "'nosuch' is not a conv or linear layer" in _one_line(
        capsys, "cost", path, "--replicas", "nosuch=2")
    mnist = "examples/mnist-epim-cnn-r4/net.json"
    assert "layer 'fc' takes 1..1 copies" in _one_line(capsys, "cost", mnist, "--replicas",
                                                       "fc=2")
    assert main(["cost", mnist, "--replicas", "auto"]) == 0
    assert "copies" in capsys.readouterr().out


def test_single_tile_options_refuse_a_network(tmp_path, net_obj, capsys):
    path = tmp_path / "res.json"
    path.write_text(json.dumps(residual_net(net_obj)))
    assert main(["generate", str(path), "--out", str(tmp_path / "g"), "--tile"]) == 2
    assert "a single tile (--tile, --program) holds one conv or linear layer" in \
        capsys.readouterr().err
    assert not (tmp_path / "g").exists()


@pytest.mark.verilator
@pytest.mark.slow
def test_cosim_command(tmp_path, net_path):
    x = np.random.default_rng(2).integers(0, 16, (2, 8, 16, 16))
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("cosim", net_path, "--inputs", tmp_path / "x.npy", "--outputs",
                   tmp_path / "y.npy", "--report", tmp_path / "r.json", "--build-dir",
                   tmp_path / "build", "--tile", "--program")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bit-exact" in proc.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    for key in ("cycles", "predicted_cycles", "steady_cycles_per_image",
                "predicted_steady_cycles_per_image"):
        assert key in rep
    assert rep["cycles"] == rep["predicted_cycles"] and rep["programmed_via_port"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"),
                                  reference.run_network(netfile.load(net_path), x))


def _one_line(capsys, *args, code=2) -> str:
    """Run `epim ARGS` in this process: the exit code, and the one line it printed."""
    assert main([str(a) for a in args]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_hostile_network_files_get_one_line_and_exit_2(tmp_path, net_obj, capsys):
    """Names that would escape --out, sizes past the limits, nesting, bytes that are not text:
    each refused by validation with the file and field named, nothing written."""
    cases = {}
    o = json.loads(json.dumps(net_obj))
    o["layers"][0]["name"] = "../../../../elsewhere/x"
    o["output"] = o["layers"][0]["name"]
    cases["escape"] = (o, "field 'name': must be an identifier")
    o = json.loads(json.dumps(net_obj))
    o["layers"][0]["name"] = "has space"
    o["output"] = "has space"
    cases["space"] = (o, "field 'name': must be an identifier")
    o = json.loads(json.dumps(net_obj))
    o["input"]["height"] = 10**9
    cases["height"] = (o, "input, field 'height': must be in 1..4096, got 1000000000")
    o = json.loads(json.dumps(net_obj))
    o["input"].update(channels=4096, height=4096, width=4096)
    cases["tensor"] = (o, "more than the limit 67108864")
    for name, (obj, want) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(obj))
        out = tmp_path / f"gen-{name}"
        line = _one_line(capsys, "generate", path, "--out", out)
        assert str(path) in line and want in line, line
        assert not out.exists()
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested more than 32 deep" in _one_line(capsys, "check", deep)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"format": "\xff\xfe"}')
    assert f"{binary}: not UTF-8 text" in _one_line(capsys, "check", binary)
    digits = tmp_path / "digits.json"
    digits.write_text('{"format": ' + "9" * 5000 + "}")
    assert f"{digits}: not accepted as JSON: a number of 5000 digits" in _one_line(
        capsys, "check", digits)


def test_hostile_input_arrays_get_one_line_and_exit_2(tmp_path, net_path, capsys):
    x = np.random.default_rng(0).integers(0, 16, (1, 8, 16, 16))
    good = tmp_path / "x.npy"
    np.save(good, x)
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "arrays.npz", x=x)
    np.save(tmp_path / "floats.npy", np.zeros(1))
    with open(tmp_path / "huge.npy", "wb") as f:  # a header that claims 2**40 values
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<i8", "fortran_order": False, "shape": (2**40,)})
    out = tmp_path / "y.npy"
    for bad, want in [("empty.npy", "must be a .npy array file"),
                      ("arrays.npz", "must be a .npy array file"),
                      ("huge.npy", "more than the limit of 4 GiB")]:
        line = _one_line(capsys, "reference", net_path, "--inputs", tmp_path / bad,
                         "--outputs", out)
        assert bad in line and want in line, line
    line = _one_line(capsys, "reference", net_path, "--inputs", good, "--outputs", out,
                     "--labels", tmp_path / "floats.npy")
    assert "labels must be integers" in line
    assert not out.exists()


def test_internal_errors_say_so_and_keep_the_traceback_for_debug(monkeypatch, capsys,
                                                                 net_path):
    from epim.app import cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_check", broken)
    parser = cli.build_parser

    def patched():
        p = parser()
        p._subparsers._group_actions[0].choices["check"].set_defaults(func=broken)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    assert cli.main(["check", str(net_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: KeyError" in err[0] and "--debug" in err[0]
    with pytest.raises(KeyError):
        cli.main(["--debug", "check", str(net_path)])


def test_bitstream_refuses_what_the_board_cannot_carry(tmp_path, rng):
    """More than 8 input bits do not fit the board's one byte per value: refused in one line,
    exit 2, before any build work."""
    net = tmp_path / "wide.json"
    net.write_text(json.dumps(examples.conv_layer_net(rng, cin=2, cout=2, h=4, w=4,
                                                      in_bits=9)))
    out = run_cli("bitstream", net, "--board", "icebreaker", "--out", tmp_path / "b")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "9-bit inputs" in lines[0] and str(net) in lines[0]
    assert not (tmp_path / "b" / "images").exists()


def test_cost_constants_must_be_an_object_of_finite_numbers(tmp_path, net_path):
    for text, want in [("[1, 2]", "must be a JSON object of constants"),
                       ('{"clock_mhz": NaN}', "NaN is not a JSON number"),
                       ('{"clock_mhz": 1e999}', "number 1e999 is out of range"),
                       ('{"clock_mhz": 1e300}', "'clock_mhz' must be a positive number up to"),
                       ('{"clock_mhz": 1' + "0" * 400 + "}", "a number of 401 digits"),
                       ('{"clock_mhz": 1, "clock_mhz": 2}', "duplicate key 'clock_mhz'"),
                       ("{", "not valid JSON")]:
        path = tmp_path / "c.json"
        path.write_text(text)
        out = run_cli("cost", net_path, "--constants", path)
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and want in out.stderr


def test_train_options_default_to_the_library_config():
    """`epim train` takes its defaults from `epim.sw.ml.config.Config` (two of its own:
    epitomes at ratio 2 and half the loss to a teacher), builds its `Config` from exactly the
    options it declares, and prints its help without importing torch."""
    import dataclasses
    import subprocess
    import sys

    from epim.app import cli
    from epim.sw.ml.config import Config

    args = cli.build_parser().parse_args(["train"])
    want = dataclasses.asdict(Config())
    assert set(cli.TRAIN_OPTIONS) <= set(want)
    for name in cli.TRAIN_OPTIONS:
        assert getattr(args, name) == (cli.TRAIN_RATIO if name == "ratio" else want[name]), name
    assert args.distill == cli.TRAIN_DISTILL != Config().distill
    code = ("import sys; from epim.app import cli; cli.build_parser(); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
