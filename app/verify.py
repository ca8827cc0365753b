"""Verification jobs: generate, run on Verilator through `epim.sim.cosim`, and compare.

`cosim` runs a single tile, `cosim_network` the whole-network accelerator and `board_cosim`
the board top through its UART pins: an identify command, one byte that is no command (the
board must answer ``!``), then the images, decoded as `epim board run` decodes them. Each
compares outputs bit-exactly with the integer reference and cycles exactly with the cycle
model, and returns the outputs and a report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..contract import files as owned
from ..contract.ops import TILE_OPS, Op
from ..hw import protocol
from ..sim.cosim import (
    build_model,
    measured_cycles,
    network_program_beats,
    pack_beats,
    program_beats,
    run_job,
    run_phases,
    tile_layer,
    unpack_beats,
)
from ..sw.chip import cyclemodel, reference, replication
from ..sw.chip.netfile import Network
from .board import to_array
from .generate import generate, generate_board, generate_network

BAD_COMMAND = b"Z"  # no command: the board must answer "!"


def cosim(net: Network, x: np.ndarray, build_root: str | Path, stalls: bool = False,
          seed: int = 0, program: bool = False, reuse: bool = True,
          lanes: int | None = None, waves: str | Path | None = None,
          gen_dir: str | Path | None = None,
          module_cache: str | Path | None = None) -> tuple[np.ndarray, dict]:
    """Run a batch through the tile's Verilog; returns outputs and the report (`waves`: a VCD
    of the run to this file; `gen_dir`: where to generate, default `build_root/generated`;
    `module_cache`: where blank tiles' Verilog is kept by shape, `generate`)."""
    x = reference.check_inputs(net, x)
    layer = tile_layer(net)
    build_root = owned.claim_folder(Path(build_root).resolve(), "cosim")
    t0 = time.time()
    gen = generate(net, gen_dir or build_root / "generated", reuse=reuse, blank=program,
                   lanes=lanes, module_cache=module_cache)
    _, ho, wo = layer.out_shape
    phase = {"program": program_beats(gen.image) if program else [],
             "inputs": pack_beats(x, net.input_bits, layer), "n_out": x.shape[0] * ho * wo}
    result = run_phases(gen, [phase], build_root, stalls=stalls, seed=seed,
                        beats_per_image=ho * wo, waves=waves)[0]
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
        "pixel_cycles": timing.pixel_cycles,
        "stalls": stalls, "programmed_via_port": program, "prog_beats": result["prog_beats"],
        "ifrt_reuse": reuse, "seconds": round(seconds, 2),
    }


def cosim_network(net: Network, x: np.ndarray, build_root: str | Path, stalls: bool = False,
                  seed: int = 0, reuse: bool = True, lanes: int | dict | None = None,
                  replicas: int | dict | None = None,
                  log: Callable[[str], None] | None = None,
                  waves: str | Path | None = None, program: bool = False,
                  fixed: bool = False, faults: dict | None = None,
                  plusargs: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Run a batch through the whole-network accelerator's Verilog; returns outputs and report.

    Programmable tiles start blank, as an unprogrammed chip, and are written word by word
    through the network's programming port first (`program` is implied);
    `fixed` builds weight-baked tiles (memories initialised with the images) instead. The
    report compares outputs with the integer reference and the cycles of every handshake with
    the network cycle model (`epim.sw.chip.netcycles`), which replays the testbench's random
    gaps and back-pressure too when `stalls` is set. `faults` (a fault map,
    `epim.sw.chip.faults`) writes stuck cells into the crossbar images and checks against the
    reference on the same faulty chip. `plusargs` go to the simulator (for example
    `+verilator+rand+reset+2`: every memory starts with random words)."""
    from ..sw.chip import netcycles

    if program and fixed:
        raise ValueError("fixed tiles have no programming port: leave out one of program "
                         "and fixed")
    program = not fixed
    x = reference.check_inputs(net, x)
    build_root = owned.claim_folder(Path(build_root).resolve(), "cosim")
    t0 = time.time()
    gen = generate_network(net, build_root / ("generated-fixed" if fixed else "generated"),
                           reuse=reuse, lanes=lanes, replicas=replicas, log=log, fixed=fixed,
                           faults=faults)
    n = x.shape[0]
    per = netcycles.out_beats_per_image(net)
    depths = {u["name"]: u["fifo"] for u in gen.manifest["units"] if u["op"] == Op.ADD}
    pred = netcycles.predict(net, n, depths, reuse, stalls_seed=seed if stalls else None,
                             lanes=lanes, replicas=replicas)
    prog = []
    if program:
        from ..hw.network import load_network

        prog = network_program_beats(load_network(gen.folder))
    phase = {"program": prog, "inputs": pack_beats(x, net.input_bits), "n_out": n * per}
    t1 = time.time()
    result = run_phases(gen, [phase], build_root, stalls=stalls, seed=seed,
                        max_cycles=2 * pred.run.cycles + 10 * len(prog) + 10_000,
                        top="epim_net", log=log, beats_per_image=per, waves=waves,
                        plusargs=plusargs, prog_port=not fixed and any("folder" in u
                                                    for u in gen.manifest["units"]))[0]
    y = unpack_beats(result["outputs"], net.output_layer)
    chip = None
    if faults:
        from ..sw.chip import noise

        chip = noise.NoisyChip(net, noise.NoiseConfig(), faults=faults)
    ref = reference.run_network(net, x, reuse=reuse, noise=chip)
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
             for la in net.layers if la.op in TILE_OPS}
    for name, cyc in alone.items():
        pred.layers[name]["alone_cycles_per_image"] = cyc
    slowest = max(alone, key=alone.get) if alone else None  # (a network of pools alone)
    rep = {
        "network": net.source, "images": n, "match": match,
        "matching_images": int(sum(bool((y[i] == ref[i]).all()) for i in range(n)))
        if y.shape == ref.shape else 0,
        "cycles": latency, "predicted_cycles": pred.latency,
        "steady_cycles_per_image": steady, "predicted_steady_cycles_per_image": pred.steady,
        "cycles_match": (result["in_cycles"] == pred.run.in_cycles
                         and result["out_cycles"] == pred.run.out_cycles),
        "layers": pred.layers, "slowest_tile": slowest,
        "slowest_tile_cycles_per_image": alone.get(slowest),
        "throughput_ratio": (steady / alone[slowest]) if steady and alone else None,
        "fifo_depths": depths, "stalls": stalls, "ifrt_reuse": reuse, "lanes": lanes,
        "replicas": {la.name: cyclemodel.replicas_for(la, replicas)
                     for la in net.layers if la.op in TILE_OPS},
        "tiles": "fixed" if fixed else "programmable",
        "programmed_via_port": program, "prog_beats": result["prog_beats"],
        "stuck_cells": {k: int((f != 0).sum()) for k, f in faults.items()} if faults else None,
        "verilog_bytes": gen.verilog.stat().st_size,
        "generate_cached": gen.cached,
        "seconds_generate": round(t1 - t0, 2), "seconds_simulate": round(time.time() - t1, 2),
    }
    return y, rep


def board_cosim(net: Network, x: np.ndarray, build_root: str | Path, divisor: int = 8,
                lanes: int | dict | None = None) -> tuple[np.ndarray, dict]:
    """Run images through the board top's UART pins on Verilator; returns outputs and report.
    The board's tiles start blank: the bench programs every memory word through the link
    (``P`` commands), checks the board's programming checksum (``C``), then sends the images.
    `lanes` as the FPGA build uses them (`epim.app.fpga.fit_lanes`)."""
    from ..hw.network import load_network
    from ..sim.cosim import network_program_beats, network_program_bits

    x = reference.check_inputs(net, x)
    build_root = owned.claim_folder(Path(build_root).resolve(), "cosim")
    t0 = time.time()
    folder = build_root / "generated-board"
    verilog = generate_board(net, folder, divisor, lanes)
    manifest = json.loads((folder / "network.json").read_text())
    loaded = load_network(folder)
    words = network_program_beats(loaded)
    prog_bits = network_program_bits(loaded)
    n = x.shape[0]
    sends = [protocol.IDENTIFY, BAD_COMMAND, protocol.encode_program(words, prog_bits),
             protocol.CHECK] + [protocol.encode_image(img, manifest) for img in x]
    head = protocol.IDENT_BYTES + 1 + protocol.CHECK_BYTES
    expect = head + n * protocol.answer_bytes(manifest)
    bits_per_image = 10 * len(sends[-1])
    # The UART has no flow control: a board's link runs far slower than its accelerator, but
    # the bench's fast UART (`divisor` cycles a bit) can outrun it, so the bench leaves a gap
    # after each image that paces the images at the network's steady rate (cycle model) plus
    # a tenth, as a host would when the link is faster than the board.
    from ..sw.chip import netcycles

    steady = netcycles.predict(net, 3, lanes=lanes).steady or 0
    gap = max(0, int(steady * 1.1) - bits_per_image * divisor)
    runner, build_dir = build_model(verilog, build_root, top="epim_board")
    t1 = time.time()
    job = {"divisor": divisor, "send": [s.hex() for s in sends], "expect_bytes": expect,
           "gap_cycles": gap,
           "max_cycles": (n + 4) * (bits_per_image * divisor + gap + 200_000)
           + 10 * len(sends[2]) * divisor}
    result = run_job(runner, build_dir, build_root, "epim.sim.tb_board", "epim_board",
                     "EPIM_BOARD_JOB", job)
    data = bytes(b for b, _ in result["received"])
    if result["errors"]:
        raise protocol.ProtocolError("; ".join(result["errors"]))
    if len(data) != expect:
        raise protocol.ProtocolError(f"the board sent {len(data)} bytes, expected {expect} "
                                     f"(got {data[:40].hex()}...)")
    protocol.check_ident(data[:protocol.IDENT_BYTES], manifest["units_sha256"])
    bad = data[protocol.IDENT_BYTES:protocol.IDENT_BYTES + 1]
    if bad != protocol.ERROR:
        raise protocol.ProtocolError(f"the board answered {bad!r} to a byte that is no "
                                     f"command, not {protocol.ERROR!r}")
    protocol.check_checksum(data[protocol.IDENT_BYTES + 1:head], words, prog_bits)
    answers = protocol.parse_answers(data[head:], manifest, n)
    y = to_array(answers, net)
    ref = reference.run_network(net, x)
    match = bool(y.shape == ref.shape and (y == ref).all())
    # cycles from the last image byte sent to the last answer byte: the answer's latency
    ends = [c for _, c in result["received"]]
    size = protocol.answer_bytes(manifest)
    last_bytes = [ends[head + (k + 1) * size - 1] for k in range(n)]
    rep = {"network": net.source, "images": n, "match": match,
           "matching_images": int(sum(bool((y[i] == ref[i]).all()) for i in range(n))),
           "identify": "ok", "bad_command": "answered '!'",
           "programmed_words": len(words), "programming_checksum": "ok",
           "gap_cycles_between_images": gap,
           "error_led": bool(result["leds"] >> 3 & 1), "divisor": divisor, "lanes": lanes,
           "bytes_sent": sum(len(s) for s in sends), "bytes_received": len(data),
           "cycles_sent_to_answered": [e - s for s, e in zip(result["sent_at"][4:], last_bytes,
                                                             strict=True)],
           "seconds_build": round(t1 - t0, 2), "seconds_simulate": round(time.time() - t1, 2)}
    return y, rep


def layer_network(net: Network, layer) -> Network:
    """A network of one conv or linear layer of `net`, its input the layer's input tensor (the
    producer's shape and bits), for checking that tile alone."""
    import dataclasses

    return dataclasses.replace(net, input_name=layer.inputs[0], input_shape=layer.in_shape,
                               input_bits=layer.in_bits, layers=(layer,), output=layer.name,
                               source=f"{net.source}:{layer.name}")


def _layer_job(sub: Network, x: np.ndarray, want: np.ndarray, build_root: Path, gen_dir: Path,
               options: dict) -> tuple[np.ndarray, dict]:
    """One tile's check (a job a Dask worker may run): its output and its report row."""
    t1 = time.time()
    layer = sub.layers[0]
    y, rep = cosim(sub, x, build_root, gen_dir=gen_dir, module_cache=build_root / "modules",
                   **options)
    exact = y.size == want.size and bool((y.reshape(want.shape) == want).all())
    return y, {"layer": layer.name, "op": layer.op, "match": rep["match"] and exact,
               "cycles_match": rep["cycles_match"], "cycles": rep["cycles"],
               "predicted_cycles": rep["predicted_cycles"],
               "steady_cycles_per_image": rep["steady_cycles_per_image"],
               "seconds": round(time.time() - t1, 2)}


def cosim_per_layer(net: Network, x: np.ndarray, build_root: str | Path, program: bool = True,
                    stalls: bool = False, seed: int = 0, reuse: bool = True,
                    lanes: int | None = None, jobs: int = 1, scheduler: str | None = None,
                    log: Callable[[str], None] | None = None) -> tuple[np.ndarray, dict]:
    """Check every conv and linear tile alone on Verilator with its real input tensor from the
    integer reference: bit-exact against the reference's tensor, every cycle against the tile's
    cycle model (the way FINN verifies node by node before the stitched design). With `program`
    (the default) each tile is built with blank memories and programmed through its port, so
    tiles of equal shape share one Verilog module and one Verilator build. The tiles are
    independent jobs: with `jobs > 1` they run on a local Dask cluster of that many worker
    processes, with `scheduler` (`tcp://host:port`) on a running Dask cluster whose workers
    share `build_root`'s file system. Returns the network output (the output layer's tile
    output, else the reference's) and the report."""
    t0 = time.time()
    x = reference.check_inputs(net, x)
    tensors = reference.run_network(net, x, reuse=reuse, keep=True)
    build_root = owned.claim_folder(Path(build_root).resolve(), "cosim")
    options = {"stalls": stalls, "seed": seed, "program": program, "reuse": reuse,
               "lanes": lanes}
    tiles = [la for la in net.layers if la.op in TILE_OPS]
    args = [(layer_network(net, la), tensors[la.inputs[0]], tensors[la.name], build_root,
             build_root / "layers" / la.name, options) for la in tiles]

    def show(row: dict) -> None:
        if log:
            log(f"{row['layer']}: {'bit-exact' if row['match'] else 'MISMATCH'}, cycles "
                f"{'as modelled' if row['cycles_match'] in (True, None) else 'NOT as modelled'}"
                f" ({row['seconds']:.0f} s)")

    if jobs > 1 or scheduler:
        results = _fan_out(args, jobs, scheduler, show)
    else:
        results = []
        for a in args:
            results.append(_layer_job(*a))
            show(results[-1][1])
    rows = [r for _, r in results]
    out = next((y for (y, r) in results if r["layer"] == net.output), None)
    if out is None:
        out = tensors[net.output]
        if net.output_layer.op == Op.LINEAR:
            out = out.reshape(out.shape[0], -1)
    builds = {p.name for p in build_root.glob("tile-*")}  # Verilator builds, by digest
    rep = {"network": net.source, "images": int(x.shape[0]), "per_layer": rows,
           "match": all(r["match"] for r in rows),
           "cycles_match": all(r["cycles_match"] in (True, None) for r in rows),
           "tiles": len(rows), "distinct_builds": len(builds), "programmed_via_port": program,
           "outputs_from": "tile" if net.output_layer.op in TILE_OPS else "reference",
           "stalls": stalls, "jobs": jobs, "scheduler": scheduler,
           "seconds": round(time.time() - t0, 2)}
    return out, rep


def _fan_out(args: list[tuple], jobs: int, scheduler: str | None,
             show: Callable[[dict], None]) -> list[tuple[np.ndarray, dict]]:
    """Run `_layer_job` on each argument tuple on Dask (`distributed`): a local cluster of
    `jobs` single-threaded worker processes, or the scheduler at `scheduler`; results in the
    order of `args`, each shown as it completes."""
    from distributed import Client, LocalCluster, as_completed

    from ..sim.buildcache import child_processes, new_processes, stop_processes

    before = child_processes()
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    done = False
    try:
        futures = [client.submit(_layer_job, *a, pure=False) for a in args]
        for fut in as_completed(futures):
            show(fut.result()[1])
        results = [f.result() for f in futures]
        done = True
        return results
    finally:
        # on an error or Ctrl-C, the workers' own children (make, the C++ compiler, a running
        # simulator) would outlive the cluster: list them while they are still ours
        leftovers = [] if done or cluster is None else new_processes(before)
        client.close()
        if cluster is not None:
            cluster.close()
        stop_processes(leftovers)
