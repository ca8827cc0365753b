"""The fuzz harness: mutated network files, tampered image folders, bad input arrays and
corrupted board answers, each run through what a user would run, with the outcome classified.

Outcomes:

- `refused`: a clean refusal (the CLI returns 2 with one line naming the problem; the library
  raises its documented error: `ImageError`, `ProtocolError`, `ValueError`);
- `accepted`: the input was valid (and everything after it ran);
- `traceback`: anything else (an internal error, an unexpected exception);
- `escaped`: a file appeared outside the run's output folder;
- `invalid`: accepted, but a later step failed (accepted-but-invalid).

`tests/test_fuzz.py` runs a small bounded sample; `benchmarks/fuzz.py` the long run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from amaranth.hdl import Fragment

from epim.app.cli import main as cli
from epim.contract.images import ImageError, canonical, manifest_digest, sha256_text
from epim.hw import protocol
from epim.hw.network import NetworkAccelerator, load_network
from epim.sw.chip import examples, images, netfile

WEIRD = [None, True, -1, 0, 1, 3, 2**31, 10**9, 10**30, 1.5, float("nan"), "", "x", "../x",
         "a b", "/etc/passwd", "x" * 300, [], [0], [[1, 2]], {}, {"a": 1}]


def base_networks(rng: random.Random) -> list[dict]:
    nprng = np.random.default_rng(rng.randrange(2**32))
    return [examples.conv_layer_net(nprng, cin=3, cout=5, h=5, w=5, epitome=(2, 3, 2, 2),
                                    offsets="random"),
            examples.random_network_net(rng.randrange(4)),
            examples.random_network_net(rng.randrange(4), v11=True)]


def paths(obj, prefix=()):
    """Every path into a JSON object (dict keys and list indices)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) <= 8:
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))
    elif isinstance(obj, list):
        for i in (0, len(obj) - 1):
            yield from paths(obj[i], prefix + (i,))


def mutate_json(obj: dict, rng: random.Random) -> bytes:
    """One mutation of a network file, as the bytes a user would hand in."""
    obj = copy.deepcopy(obj)
    kind = rng.choice(["set", "set", "set", "delete", "add", "nest", "text", "dup", "bytes"])
    where = rng.choice([p for p in paths(obj) if p])
    parent = obj
    for k in where[:-1]:
        parent = parent[k]
    key = where[-1]
    if kind == "set":
        parent[key] = copy.deepcopy(rng.choice(WEIRD))
    elif kind == "delete":
        del parent[key]
    elif kind == "add" and isinstance(parent, dict):
        parent[rng.choice(["extra", "name", "op", "inputs"])] = copy.deepcopy(rng.choice(WEIRD))
    elif kind == "nest":
        parent[key] = "__NEST__"
    elif kind == "dup" and "layers" in obj and obj["layers"]:
        obj["layers"].append(copy.deepcopy(rng.choice(obj["layers"])))
    text = json.dumps(obj, allow_nan=True)
    depth = rng.choice([10, 5000])
    text = text.replace('"__NEST__"', "[" * depth + "0" + "]" * depth)
    if kind == "text":
        cut = rng.randrange(len(text))
        text = text[:cut] + rng.choice(["", "}", "]]]", "\x00", "9" * 5000, "\ud800"]) \
            + text[cut + rng.randrange(3):]
    data = text.encode("utf-8", errors="surrogatepass")
    if kind == "bytes":
        pos = rng.randrange(len(data))
        data = data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]
    return data


def run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli(args)
        except SystemExit as exc:  # argparse
            code = exc.code
        except Exception as exc:  # noqa: BLE001 (an escaped exception is what we count)
            return -1, f"{type(exc).__name__}: {exc}"
    return code, err.getvalue()


def classify(code: int, err: str) -> str:
    if code == 0:
        return "accepted"
    lines = err.strip().splitlines()
    if code == 2 and len(lines) == 1 and lines[0].startswith("epim: error:") \
            and "internal error" not in lines[0]:
        return "refused"
    return "traceback"


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def fuzz_network_files(n: int, work: Path, seed: int = 0) -> Counter:
    """`n` mutated network files through `epim check`; an accepted one also through
    `epim reference` and image compilation (into `out/`). Counts the outcomes."""
    rng = random.Random(seed)
    bases = base_networks(rng)
    counts: Counter = Counter()
    work.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        run = work / f"r{k}"
        run.mkdir()
        net_path = run / "net.json"
        net_path.write_bytes(mutate_json(rng.choice(bases), rng))
        before = files_under(work)
        code, err = run_cli(["check", str(net_path)])
        outcome = classify(code, err)
        if outcome == "accepted":
            outcome = follow_up(net_path, run / "out", rng)
        escaped = {p for p in files_under(work) - before if run / "out" not in p.parents
                   and p != run / "out"}
        counts["tried"] += 1
        counts["escaped" if escaped else outcome] += 1
        shutil.rmtree(run, ignore_errors=True)
    return counts


def follow_up(net_path: Path, out: Path, rng: random.Random) -> str:
    """A file `check` accepted must also run: the reference on one image, the images."""
    try:
        net = netfile.load(net_path)
        x = np.random.default_rng(rng.randrange(2**32)).integers(
            0, 2**net.input_bits, (1,) + tuple(net.input_shape))
        out.mkdir()
        np.save(out / "x.npy", x)
        code, err = run_cli(["reference", str(net_path), "--inputs", str(out / "x.npy"),
                             "--outputs", str(out / "y.npy")])
        if code != 0:
            return "invalid"
        images.write_network(images.compile_network(net), out / "images")
        load_network(out / "images")
    except Exception:  # noqa: BLE001
        return "invalid"
    return "accepted"


TAMPER = ["json-field", "json-field-rehashed", "unit-field-rehashed", "tile-param",
          "tile-param-rehashed", "hex-digit", "hex-line", "hex-path", "hex-symlink",
          "delete-file", "truncate", "garbage", "folder-escape"]


def tamper(folder: Path, rng: random.Random) -> str:
    """One tampering of a compiled network folder; returns its kind."""
    kind = rng.choice(TAMPER)
    mpath = folder / "network.json"
    man = json.loads(mpath.read_text())
    tiles = sorted(folder.glob("tiles/*"))
    tile = rng.choice(tiles)
    tman_path = tile / "manifest.json"
    tman = json.loads(tman_path.read_text())

    def rehash(m: dict) -> dict:
        m["units_sha256"] = sha256_text(canonical(m["units"]))
        m["sha256"] = manifest_digest(m)
        return m

    if kind.startswith("json-field"):
        key = rng.choice([k for k in man if k not in ("format",)])
        man[key] = copy.deepcopy(rng.choice(WEIRD))
        if kind.endswith("rehashed"):
            man = rehash(man)
        mpath.write_text(json.dumps(man))
    elif kind == "unit-field-rehashed":
        unit = rng.choice(man["units"])
        unit[rng.choice(list(unit))] = copy.deepcopy(rng.choice(WEIRD))
        mpath.write_text(json.dumps(rehash(man)))
    elif kind.startswith("tile-param"):
        params = tman["params"]
        params[rng.choice(list(params))] = copy.deepcopy(rng.choice(WEIRD))
        if kind.endswith("rehashed"):
            tman["params_sha256"] = sha256_text(canonical(params))
        tman_path.write_text(json.dumps(tman))
    elif kind in ("hex-digit", "hex-line", "truncate", "garbage"):
        hexf = rng.choice(sorted(tile.glob("*.hex")))
        data = bytearray(hexf.read_bytes())
        if kind == "hex-digit" and data:
            data[rng.randrange(len(data))] = ord(rng.choice("0f9gZ- \n"))
        elif kind == "hex-line":
            data += b"ffffffffffffffffffffffffffff\n"
        elif kind == "truncate":
            data = data[:rng.randrange(len(data) + 1)]
        else:
            data = bytes(rng.randrange(256) for _ in range(64))
        hexf.write_bytes(bytes(data))
    elif kind == "hex-path":
        mem = rng.choice(list(tman["memories"]))
        tman["memories"][mem]["file"] = rng.choice(["../../network.json", "/etc/passwd",
                                                    "sub/x.hex", "..", 7])
        tman_path.write_text(json.dumps(tman))
    elif kind == "hex-symlink":
        hexf = rng.choice(sorted(tile.glob("*.hex")))
        hexf.unlink()
        hexf.symlink_to("/etc/passwd")
    elif kind == "delete-file":
        rng.choice([p for p in folder.rglob("*") if p.is_file()]).unlink()
    elif kind == "folder-escape":
        unit = next(u for u in man["units"] if "folder" in u)
        unit["folder"] = rng.choice(["../elsewhere", "/tmp", "tiles/../../x"])
        mpath.write_text(json.dumps(rehash(man)))
    return kind


def fuzz_image_folders(n: int, work: Path, seed: int = 0) -> Counter:
    """`n` tampered network folders through the hardware side's loader, and an accepted one
    through building and elaborating the accelerator. Counts the outcomes."""
    rng = random.Random(seed)
    # a revision-1.0 network and a 1.1 one (a max-pool unit, adders with signed inputs)
    pristine = [work / "pristine", work / "pristine-v11"]
    for folder, obj in zip(pristine, (examples.random_network_net(0),
                                      examples.random_network_net(1, v11=True)), strict=True):
        images.write_network(images.compile_network(netfile.parse(obj)), folder)
    counts: Counter = Counter()
    for k in range(n):
        folder = work / f"t{k}"
        shutil.copytree(pristine[k % 2], folder, symlinks=True)
        tamper(folder, rng)
        counts["tried"] += 1
        try:
            loaded = load_network(folder)
        except ImageError:
            counts["refused"] += 1
        except Exception:  # noqa: BLE001
            counts["traceback"] += 1
        else:
            try:
                # built and elaborated whole: every unit of an accepted folder must build
                Fragment.get(NetworkAccelerator(loaded), None)
                counts["accepted"] += 1
            except ImageError:
                counts["refused"] += 1
            except Exception:  # noqa: BLE001
                counts["invalid"] += 1
        shutil.rmtree(folder, ignore_errors=True)
    return counts


def fuzz_input_arrays(n: int, work: Path, seed: int = 0) -> Counter:
    """Bad `.npy` inputs through `epim reference`."""
    rng = random.Random(seed)
    obj = examples.conv_layer_net(np.random.default_rng(seed), cin=2, cout=2, h=4, w=4)
    net_path = work / "net.json"
    net_path.write_text(json.dumps(obj))
    good = np.zeros((1, 2, 4, 4), np.int64)
    makers = [
        lambda: b"",
        lambda: b"\x93NUMPY\x01\x00" + (100).to_bytes(2, "little") + b"{'descr': '<i8', "
                b"'fortran_order': False, 'shape': (1000000000, 10000), }".ljust(100),
        lambda: npy(good.astype(np.float32) + 0.5),
        lambda: npy(good[0]),
        lambda: npy(good + 99),
        lambda: npy(good - 1),
        lambda: object_npy(),
        lambda: npy(good.astype(np.uint8)),
        lambda: bytes(rng.randrange(256) for _ in range(200)),
        lambda: npz(good),
    ]
    counts: Counter = Counter()
    for k in range(n):
        path = work / f"x{k}.npy"
        path.write_bytes(rng.choice(makers)())
        code, err = run_cli(["reference", str(net_path), "--inputs", str(path),
                             "--outputs", str(work / f"y{k}.npy")])
        counts["tried"] += 1
        counts[classify(code, err)] += 1
    return counts


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def object_npy() -> bytes:
    """A `.npy` of Python objects, written by hand (its payload is pickle bytes that the
    reader must refuse to load, so this file never needs pickling to make)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    return buf.getvalue() + b"\x80\x04N."


def npz(arr) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=arr)
    return buf.getvalue()


def fuzz_board_answers(n: int, seed: int = 0) -> Counter:
    """Corrupted answer frames through the host's parser: every corruption is refused or, for
    a change the frame cannot see (none), accepted with the right values."""
    rng = random.Random(seed)
    manifest = {"input": {"channels": 1, "height": 1, "width": 1, "bits": 8},
                "output": {"channels": 3, "bits": 16, "signed": True, "beats_per_image": 1}}
    counts: Counter = Counter()
    for _ in range(n):
        payloads = [bytes(rng.randrange(256) for _ in range(6)) for _ in range(3)]
        frames = [protocol.frame(k, p) for k, p in enumerate(payloads)]
        kind = rng.choice(["flip", "repeat", "drop-byte", "extra-byte", "swap"])
        data = bytearray(b"".join(frames))
        if kind == "flip":
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == "repeat":
            data = bytearray(frames[0] + frames[0] + frames[2])
        elif kind == "drop-byte":
            del data[rng.randrange(len(data))]
        elif kind == "extra-byte":
            data.insert(rng.randrange(len(data)), rng.randrange(256))
        else:
            data = bytearray(frames[1] + frames[0] + frames[2])
        counts["tried"] += 1
        try:
            protocol.parse_answers(bytes(data), manifest, 3)
        except protocol.ProtocolError:
            counts["refused"] += 1
        except Exception:  # noqa: BLE001
            counts["traceback"] += 1
        else:
            counts["invalid"] += 1  # every corruption above changes the frames
    return counts


def summary(name: str, counts: Counter) -> str:
    return (f"{name}: {counts['tried']} tried, {counts['refused']} refused cleanly, "
            f"{counts['accepted']} accepted (valid), {counts['traceback']} tracebacks, "
            f"{counts['escaped']} writes outside --out, {counts['invalid']} accepted-but-invalid")



# --- The second round (issue 32): special files, output folders, full disks, nesting in every
# JSON input, argument ranges and very long layer chains. Outcomes add:
# - `hang`: the command ran past `HANG_SECONDS` (stopped by an alarm);
# - `lost`: a file that the command did not write changed or went away;
# - `half-written`: a temporary file was left behind, or an output at its final name does not
#   read back whole.

HANG_SECONDS = 30


class Hang(Exception):
    pass


def run_timed(args: list, limit: float = HANG_SECONDS) -> tuple[int, str, float]:
    """`run_cli` under an alarm: a command still running after `limit` seconds is stopped
    (a blocking `open` is interrupted too) and reported as code -2."""
    import signal
    import time

    def ring(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, limit)
    t0 = time.perf_counter()
    try:
        code, err = run_cli([str(a) for a in args])
    except Hang:
        code, err = -2, "hang"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return code, err, time.perf_counter() - t0


def outcome(code: int, err: str) -> str:
    return "hang" if code == -2 else classify(code, err)


def second_round_inputs(work: Path, seed: int) -> dict[str, Path]:
    """Valid inputs the second-round classes start from: a small network, an input array,
    a fault map of the committed MNIST model, a noise configuration and cost constants."""
    work.mkdir(parents=True, exist_ok=True)
    net = work / "net.json"
    net.write_text(json.dumps(examples.conv_layer_net(np.random.default_rng(seed), cin=2,
                                                      cout=3, h=5, w=5)))
    np.save(work / "x.npy", np.random.default_rng(seed).integers(0, 16, (1, 2, 5, 5)))
    faults = work / "faults.json"
    assert run_cli(["faults", str(MNIST), "--stuck-at-zero", "0.01", "--out", str(faults)]
                   )[0] == 0
    (work / "noise.json").write_text(json.dumps({"format": "epim-noise-v1",
                                                 "programming": {"sigma": 0.05}}))
    (work / "consts.json").write_text(json.dumps({"clock_mhz": 200}))
    return {"net": net, "x": work / "x.npy", "faults": faults, "noise": work / "noise.json",
            "consts": work / "consts.json"}


MNIST = Path(__file__).resolve().parents[1] / "examples" / "mnist-epim-cnn-r4" / "net.json"


def special_paths(work: Path) -> dict[str, Path]:
    """A FIFO, devices, a folder, a socket and links to them: none is a regular file."""
    import os
    import socket

    work.mkdir(parents=True, exist_ok=True)
    out = {"fifo": work / "fifo", "folder": work / "folder", "dev-zero": Path("/dev/zero"),
           "dev-null": Path("/dev/null"), "dev-urandom": Path("/dev/urandom"),
           "socket": work / "sock", "link-to-fifo": work / "link", "dangling": work / "dead"}
    if not out["fifo"].exists():
        os.mkfifo(out["fifo"])
        out["folder"].mkdir()
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(out["socket"]))
        s.close()
        out["link-to-fifo"].symlink_to(out["fifo"])
        out["dangling"].symlink_to(work / "nowhere")
    return out


def fuzz_special_files(n: int, work: Path, seed: int = 0) -> Counter:
    """FIFOs, devices, folders and sockets given where a command reads a file: each must be
    refused with one line, at once (a FIFO with no writer used to block `open` forever)."""
    rng = random.Random(seed)
    ok = second_round_inputs(work / "in", seed)
    special = special_paths(work / "special")
    out = work / "out"
    commands = [
        lambda p: ["check", p],
        lambda p: ["reference", ok["net"], "--inputs", p, "--outputs", out / "y.npy"],
        lambda p: ["reference", ok["net"], "--inputs", ok["x"], "--outputs", out / "y.npy",
                   "--labels", p],
        lambda p: ["reference", ok["net"], "--inputs", ok["x"], "--outputs", out / "y.npy",
                   "--noise", p],
        lambda p: ["reference", ok["net"], "--inputs", ok["x"], "--outputs", out / "y.npy",
                   "--faults", p],
        lambda p: ["cost", ok["net"], "--constants", p],
        lambda p: ["cost", p],
        lambda p: ["remap", MNIST, "--faults", p, "--out", out / "r.json"],
        lambda p: ["generate", p, "--out", out / "g"],
        lambda p: ["faults", p, "--out", out / "f.json"],
        lambda p: ["import", "resnet18", "--state-dict", p, "--out", out / "imp"],
        lambda p: ["train", "--init", p, "--out", out / "t"],
    ]
    counts: Counter = Counter()
    for _ in range(n):
        path = special[rng.choice(sorted(special))]
        code, err, _ = run_timed(rng.choice(commands)(path))
        counts["tried"] += 1
        counts[outcome(code, err)] += 1
    return counts


# names that commands write, tried as the user's files too
COLLIDING = ["network.json", "epim_net.v", "tiles", "manifest.json", "xbar.hex", "epim_tile.v",
             ".epim-owner.json", ".epim-generate.json", "checkpoint.pt", "net.json",
             "metrics.json", "import.json", "predictions.npy", "generated", "modules",
             "layers", "report.json", "job-x", "thesis.tex", "data"]


def user_folder(folder: Path, rng: random.Random) -> None:
    """A user's files (some of the names EPIM writes among them) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(rng.randrange(1, 6)):
        name = rng.choice(COLLIDING + [f"u{rng.randrange(10**6)}.txt"])
        if (folder / name).exists():
            continue
        if rng.random() < 0.3:
            (folder / name).mkdir(exist_ok=True)
            (folder / name / "inside.txt").write_bytes(b"a user's file")
        else:
            (folder / name).write_bytes(bytes(rng.randrange(256) for _ in range(16)))


def fingerprint(folder: Path, skip: set[str] = frozenset()) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink()
                                         else None)
            for p in sorted(folder.rglob("*")) if p.relative_to(folder).parts[0] not in skip}


def fuzz_output_folders(n: int, work: Path, seed: int = 0) -> Counter:
    """Commands pointed at folders that hold a user's files (or an earlier EPIM output with
    the user's files added): every user file must keep its bytes, whether the command ran or
    refused."""
    from epim.contract import files

    rng = random.Random(seed)
    ok = second_round_inputs(work / "in", seed)
    earlier = {}
    for kind, extra in (("gen", []), ("tile", ["--tile"])):
        earlier[kind] = work / f"earlier-{kind}"
        assert run_cli(["generate", str(ok["net"]), "--out", str(earlier[kind]), *extra]
                       )[0] == 0
    counts: Counter = Counter()
    for k in range(n):
        folder = work / f"o{k}"
        cmd = rng.choice(["generate", "tile", "cosim", "train", "import", "faults", "remap",
                          "cost", "reference"])
        named: set[str] = set()
        if cmd in ("generate", "tile") and rng.random() < 0.5:
            shutil.copytree(earlier["gen" if cmd == "generate" else "tile"], folder)
            named = files.listed(folder) | {files.OWNER_STAMP}
        user_folder(folder, rng)
        args = {"generate": ["generate", ok["net"], "--out", folder, "--no-reuse"],
                "tile": ["generate", ok["net"], "--tile", "--out", folder],
                "cosim": ["cosim", ok["net"], "--inputs", ok["x"], "--outputs",
                          work / "y.npy", "--build-dir", folder],
                "train": ["train", "--data", "mnist-5k", "--out", folder],
                "import": ["import", "resnet18", "--out", folder],
                "faults": ["faults", MNIST, "--out", folder / "new.json"],
                "remap": ["remap", MNIST, "--faults", ok["faults"], "--out",
                          folder / "new.json", "--report", folder / "rep.json"],
                "cost": ["cost", ok["net"], "--json", folder / "c.json"],
                "reference": ["reference", ok["net"], "--inputs", ok["x"], "--outputs",
                              folder / "y.npy"]}[cmd]
        named |= {"new.json", "rep.json", "c.json", "y.npy"} & {Path(str(a)).name
                                                                 for a in args}
        before = fingerprint(folder, named)
        code, err, _ = run_timed(args)
        after = fingerprint(folder, named)
        counts["tried"] += 1
        if {p: after.get(p, "gone") for p in before} != before:
            counts["lost"] += 1
        else:
            counts[outcome(code, err)] += 1
        shutil.rmtree(folder, ignore_errors=True)
    return counts


def small_disk(path: Path, kib: int) -> bool:
    """Mount a tmpfs of `kib` KiB at `path` (root only); False where that is not possible."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def unmount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", str(path)], capture_output=True)


def reads_back(path: Path) -> bool:
    """An output at its final name is whole: JSON parses, `.npy` loads, a folder's stamp and
    manifest read."""
    try:
        if path.is_dir():
            from epim.contract.files import read_owner

            return read_owner(path) is not None
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        else:
            json.loads(path.read_text())
    except (OSError, ValueError, EOFError):
        return False
    return True


def fuzz_full_disk(n: int, work: Path, seed: int = 0, real: bool | None = None) -> Counter:
    """Commands writing onto a disk that fills up: on a small tmpfs with a filler file of a
    random size (`real`, root only), else with the writer's fsync failing with ENOSPC at a
    random call. Every run ends with the old state or the whole new output: no temporary file
    left, no output cut short."""
    import errno
    import os

    from epim.contract import files

    rng = random.Random(seed)
    ok = second_round_inputs(work / "in", seed)
    disk = work / "disk"
    real = small_disk(disk, 256) if real is None else (real and small_disk(disk, 256))
    counts: Counter = Counter({"real-disk": int(real)})
    real_fsync = os.fsync
    try:
        for _ in range(n):
            target = disk / "o"
            cmd = rng.choice(["cost", "faults", "remap", "reference", "tile", "generate"])
            outs = {"cost": [target / "c.json"], "faults": [target / "f.json"],
                    "remap": [target / "r.json", target / "rep.json"],
                    "reference": [target / "y.npy"], "tile": [target / "tile"],
                    "generate": [target / "gen"]}[cmd]
            o = [*outs, None]
            args = {"cost": ["cost", ok["net"], "--json", o[0]],
                    "faults": ["faults", MNIST, "--stuck-at-zero", "0.02", "--out", o[0]],
                    "remap": ["remap", MNIST, "--faults", ok["faults"], "--out", o[0],
                              "--report", o[1]],
                    "reference": ["reference", ok["net"], "--inputs", ok["x"], "--outputs",
                                  o[0]],
                    "tile": ["generate", ok["net"], "--tile", "--out", o[0]],
                    "generate": ["generate", ok["net"], "--out", o[0]]}[cmd]
            disk.mkdir(exist_ok=True)
            target.mkdir()
            if real:
                filler = disk / "filler"
                with open(filler, "wb") as f:
                    try:
                        f.write(b"\0" * rng.randrange(0, 256 * 1024))
                    except OSError:
                        pass
            else:
                fail_at = rng.randrange(1, 6)
                calls = []

                def fsync(fd, fail_at=fail_at, calls=calls):
                    calls.append(fd)
                    if len(calls) >= fail_at:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    real_fsync(fd)
                files.os.fsync = fsync
            try:
                code, err, _ = run_timed(args)
            finally:
                files.os.fsync = real_fsync
            left = [p for p in disk.rglob("*") if p.name.endswith(".tmp")
                    or ".staging-" in p.name or ".old-" in p.name]
            cut = [p for p in outs if p.exists() and not reads_back(p)]
            counts["tried"] += 1
            counts["half-written" if left or cut else outcome(code, err)] += 1
            counts["hit a full disk"] += int("No space left" in err)
            shutil.rmtree(target, ignore_errors=True)
            (disk / "filler").unlink(missing_ok=True)
    finally:
        files.os.fsync = real_fsync
        if real:
            unmount(disk)
    return counts


JSON_INPUTS = ["network", "faults", "noise", "constants"]


def nest(depth: int, rng: random.Random) -> str:
    opens = "".join(rng.choice(["[", '{"a":']) for _ in range(depth))
    closes = "".join("]" if c == "[" else "}" for c in reversed(
        [c for c in opens.replace('{"a":', "{")]))
    return opens + "1" + closes


def fuzz_json_nesting(n: int, work: Path, seed: int = 0) -> Counter:
    """Deep nesting (1 to 20 000 levels, arrays and objects) put in place of a value of every
    JSON input: network files, fault maps, noise configurations, cost constants."""
    rng = random.Random(seed)
    ok = second_round_inputs(work / "in", seed)
    base = {k: json.loads(ok[k].read_text()) for k in ("net", "faults", "noise", "consts")}
    counts: Counter = Counter()
    for k in range(n):
        kind = rng.choice(["net", "faults", "noise", "consts"])
        obj = copy.deepcopy(base[kind])
        where = rng.choice([p for p in paths(obj) if p])
        parent = obj
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = "__NEST__"
        depth = rng.choice([1, 2, 5, 31, 32, 33, 100, 400, 700, 980, 995, 2000, 20000])
        text = json.dumps(obj).replace('"__NEST__"', nest(depth, rng))
        path = work / f"n{k}.json"
        path.write_text(text)
        y = work / f"y{k}.npy"
        args = {"net": ["check", path],
                "faults": ["reference", MNIST, "--inputs", mnist_x(work), "--outputs", y,
                           "--faults", path],
                "noise": ["reference", ok["net"], "--inputs", ok["x"], "--outputs", y,
                          "--noise", path],
                "consts": ["cost", ok["net"], "--constants", path]}[kind]
        code, err, _ = run_timed(args)
        counts["tried"] += 1
        counts[outcome(code, err)] += 1
        path.unlink()
        y.unlink(missing_ok=True)
    return counts


def mnist_x(work: Path) -> Path:
    path = work / "mnist-x.npy"
    if not path.exists():
        np.save(path, np.random.default_rng(0).integers(0, 256, (1, 1, 28, 28)))
    return path


# numeric options and the range each documents (None: no bound); every value the parser
# accepts must lie in it
RANGES = {
    ("train", "--width"): (1, 4096), ("train", "--batch-size"): (1, None),
    ("train", "--epochs"): (1, None), ("train", "--ratio"): (1, None),
    ("train", "--lr"): (0, None), ("train", "--weight-bits"): (2, 16),
    ("train", "--act-bits"): (1, 16), ("train", "--limit"): (1, None),
    ("train", "--distill"): (0, 1), ("train", "--wrap"): (1, None),
    ("import", "--ratio"): (1, None), ("import", "--weight-bits"): (2, 16),
    ("import", "--act-bits"): (1, 16), ("import", "--pool-bits"): (1, 32),
    ("import", "--calibration-count"): (1, None), ("import", "--epochs"): (0, None),
    ("import", "--batch-size"): (1, None), ("search", "--population"): (2, None),
    ("search", "--mutation"): (0, 1), ("search", "--generations"): (1, None),
    ("bitstream", "--clock-mhz"): (0, 1000), ("bitstream", "--baud"): (300, 10**8),
}
# options of commands cheap enough to run whole with the value
RUN = {"cost --budget": ["cost", "{net}", "--replicas", "auto", "--budget", "{v}"],
       "cost --max-steps": ["cost", "{net}", "--max-steps", "{v}"],
       "faults --stuck-at-zero": ["faults", "{net}", "--stuck-at-zero", "{v}", "--out",
                                  "{out}/f.json"],
       "faults --seed": ["faults", "{net}", "--seed", "{v}", "--out", "{out}/f.json"],
       "reference --seed": ["reference", "{net}", "--inputs", "{x}", "--outputs",
                            "{out}/y.npy", "--noise", "{noise}", "--seed", "{v}"],
       "reference --max-memory": ["reference", "{net}", "--inputs", "{x}", "--outputs",
                                  "{out}/y.npy", "--max-memory", "{v}"],
       "generate --lanes": ["generate", "{net}", "--tile", "--lanes", "{v}", "--out",
                            "{out}/t"],
       "generate --replicas": ["generate", "{net}", "--replicas", "{v}", "--out", "{out}/g"],
       "data --limit": ["data", "mnist-5k", "--limit", "{v}", "--images", "{out}/x.npy",
                        "--labels", "{out}/y.npy"]}
VALUES = ["0", "-1", "-2", "1", "2", "3", "0.5", "1.5", "nan", "inf", "-inf", "1e400", "1e-300",
          "1000000000", "99999999999999999999999", "", "x", "0x10", "2G", "1k", "8", "16", "33"]


def fuzz_arguments(n: int, work: Path, seed: int = 0) -> Counter:
    """Odd numbers for numeric options: commands cheap enough run whole with the value; for
    the others (training, import, search, bitstream) the parser's verdict is checked against
    each option's documented range."""
    from epim.app.cli import build_parser

    rng = random.Random(seed)
    ok = second_round_inputs(work / "in", seed)
    counts: Counter = Counter()
    for k in range(n):
        v = rng.choice(VALUES)
        out = work / f"a{k}"
        counts["tried"] += 1
        if rng.random() < 0.5:
            spec = RUN[rng.choice(sorted(RUN))]
            args = [a.format(net=ok["net"], x=ok["x"], out=out, noise=ok["noise"], v=v)
                    for a in spec]
            code, err, _ = run_timed(args)
            counts[outcome(code, err)] += 1
        else:
            (cmd, opt), (lo, hi) = rng.choice(sorted(RANGES.items()))
            args = {"train": ["train"], "import": ["import", "resnet18"],
                    "search": ["search", "--init", "x"], "bitstream": ["bitstream", "n"]}[cmd]
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    ns = build_parser().parse_args(args + [opt, v])
            except SystemExit:
                counts[classify(2, err.getvalue())] += 1
            else:
                got = getattr(ns, opt[2:].replace("-", "_"))
                inside = got is not None and lo <= got and (hi is None or got <= hi)
                counts["accepted" if inside else "invalid"] += 1
        shutil.rmtree(out, ignore_errors=True)
    return counts


def fuzz_layer_chains(n: int, work: Path, seed: int = 0) -> Counter:
    """Long chains (1 000 to 20 000 layers) of pools and adds in a random file order, some
    with a cycle or an unknown input: `epim check` must answer within seconds (counts
    `slowest` in ms)."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    for k in range(n):
        length = rng.choice([1000, 5000, 20000])
        obj = examples.conv_layer_net(np.random.default_rng(k), cin=1, cout=2, h=4, w=4)
        prev = obj["layers"][0]["name"]
        for i in range(length):
            if rng.random() < 0.3:
                lay = {"name": f"a{i}", "op": "add", "inputs": [prev, prev], "ma": 1, "mb": 1,
                       "shift": 1, "out_bits": 4}
            else:
                lay = {"name": f"p{i}", "op": "maxpool", "inputs": [prev], "kernel": 1,
                       "stride": 1, "padding": 0}
            obj["layers"].append(lay)
            prev = lay["name"]
        obj["output"] = prev
        broken = rng.random()
        if broken < 0.1:
            obj["layers"][1]["inputs"] = [prev] * len(obj["layers"][1]["inputs"])  # a cycle
        elif broken < 0.2:
            obj["layers"][-1]["inputs"] = ["nowhere"] * len(obj["layers"][-1]["inputs"])
        rng.shuffle(obj["layers"])
        path = work / f"c{k}.json"
        path.write_text(json.dumps(obj))
        code, err, seconds = run_timed(["check", path])
        counts["tried"] += 1
        counts[outcome(code, err)] += 1
        counts["slowest"] = max(counts["slowest"], int(1000 * seconds))
        path.unlink()
    return counts


def summary2(name: str, counts: Counter) -> str:
    """The second round's line: the first round's outcomes plus hangs, losses and half-written
    files."""
    extra = {k: counts[k] for k in ("real-disk", "hit a full disk", "slowest") if k in counts}
    return (f"{summary(name, counts)}, {counts['hang']} hangs, {counts['lost']} user files "
            f"lost, {counts['half-written']} half-written" + (f" {extra}" if extra else ""))
