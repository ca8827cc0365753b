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
from epim.sw import examples, images, netfile

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

