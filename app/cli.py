"""The `epim` command: check, reference, generate and cosim a network file."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..contract.ops import Op
from . import reports

EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 1


def _load_net(path: str, cols: int | None = None):
    """The network file at `path`, built with `cols` columns a cycle when given (`--cols`;
    ValueError, exit 2, when out of range)."""
    from ..sw.chip import netfile
    return netfile.with_cols(netfile.load(path), cols)


MAX_ARRAY_BYTES = 4 * 2**30  # an input or label array, checked from its header first


def _load_inputs(path: str, what: str = "inputs") -> np.ndarray:
    """A `.npy` array from a regular file (no pickled objects), its size checked from the
    header before the data is read."""
    from ..contract.files import open_regular

    fmt = np.lib.format
    with open_regular(path, what, MAX_ARRAY_BYTES + 2**20) as f:
        try:
            version = fmt.read_magic(f)
            read_header = (fmt.read_array_header_1_0 if version == (1, 0)
                           else fmt.read_array_header_2_0)
            shape, _, dtype = read_header(f)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read {what}: {exc.strerror}") from None
        except (ValueError, EOFError) as exc:
            raise ValueError(f"{path}: {what} must be a .npy array file: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'empty'}") from None
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if dtype.hasobject:
            raise ValueError(f"{path}: {what} hold Python objects; give an integer array")
        if size > MAX_ARRAY_BYTES:
            raise ValueError(f"{path}: {what} of shape {list(shape)} would take {size} bytes, "
                             f"more than the limit of {MAX_ARRAY_BYTES // 2**30} GiB")
        try:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: cannot read {what}: {str(exc).splitlines()[0]}") \
                from None


def cmd_check(args) -> int:
    from ..sw.chip.cyclemodel import tile_timing
    from ..sw.chip.epitome import crossbar_count

    net = _load_net(args.net)
    pim = net.pim
    print(f"{args.net}: ok ({len(net.layers)} layer(s), input {list(net.input_shape)} "
          f"{net.input_bits}-bit, output {net.output!r})")
    for layer in net.layers:
        line = (f"  {layer.name}: {layer.op} -> {list(layer.out_shape)} {layer.out_bits}-bit"
                + ("" if layer.relu else " signed"))
        if layer.epitome is not None:
            epi = layer.epitome
            xb = crossbar_count(layer, pim.cell_bits, pim.xbar_rows, pim.xbar_cols)
            t = tile_timing(layer, pim)
            kind = "dense" if epi.dense else (
                f"epitome Ce_in x Ce_out = {epi.in_channels}x{epi.out_channels}, patches "
                f"p_in x p_out = {epi.patch_in}x{epi.patch_out}")
            line += (f", {kind}, {xb} crossbars, {t.n_steps} step(s) x {t.n_t} DAC slice(s) "
                     "per pixel")
        print(line)
    from ..sw.chip import workload

    est = workload.estimate(net, 1)
    print(f"  {est.line()}")
    limit = workload.default_max_memory()
    if est.reference_bytes > limit:
        print(f"  note: more than this machine's limit of {workload.human_bytes(limit)}: "
              "epim reference and cosim refuse it unless given --max-memory")
    return 0


def cmd_search(args) -> int:
    from ..sw.chip.reproducible import pin_cpu_kernels

    pin_cpu_kernels()

    from ..sw.ml.finetune import search_checkpoint

    search_checkpoint(args.init, args.out, ratio=args.ratio, budget=args.budget,
                      bits=tuple(args.bits), weights=tuple(args.weights),
                      population=args.population, generations=args.generations,
                      mutation=args.mutation, seed=args.seed, finetune=args.finetune, log=print)
    return 0


def cmd_cost(args) -> int:
    from ..sw.chip import cost

    net = _load_net(args.net, args.cols)
    consts = cost.Constants.from_file(args.constants)
    lanes = resolve_lanes(net, args.lanes)
    replicas = resolve_replicas(net, args.replicas, args.budget, lanes, not args.no_reuse)
    nc = cost.network_cost(net, consts=consts, reuse=not args.no_reuse, lanes=lanes,
                           replicas=replicas, max_steps=args.max_steps)
    print(reports.cost_table(nc, consts))
    if args.json:
        from .generate import write_json

        write_json(args.json, {"summary": nc.summary(), "layers": [
            {**vars(c), "energy_total_pj": c.energy_total_pj} for c in nc.layers],
            "constants": vars(consts)})
    return 0


def cmd_faults(args) -> int:
    from ..sw.chip import faults
    from .generate import write_json

    if args.stuck_at_zero + args.stuck_at_max > 1:
        raise ValueError("--stuck-at-zero + --stuck-at-max: more than 1")
    net = _load_net(args.net)
    fmap = faults.sample(net, args.stuck_at_zero, args.stuck_at_max, args.seed)
    write_json(args.out, faults.to_json(fmap))
    cells = sum(f.size for f in fmap.values())
    zero = sum(int((f == faults.STUCK_ZERO).sum()) for f in fmap.values())
    top = sum(int((f == faults.STUCK_MAX).sum()) for f in fmap.values())
    print(f"wrote {args.out}: {zero} cells stuck at 0 and {top} at max among {cells} cells of "
          f"{len(fmap)} layers' crossbars (seed {args.seed})")
    return 0


def cmd_remap(args) -> int:
    from ..sw.chip import faults, netfile
    from .generate import write_json

    obj = netfile.read(args.net)  # (read once: parsed here, remapped below)
    net = netfile.parse(obj, source=str(args.net))
    fmap = faults.load(args.faults, net)
    new, report = faults.remap(obj, net, fmap)
    netfile.parse(new, args.out)  # the remapped file is a valid network file
    write_json(args.out, new)
    if args.report:
        write_json(args.report, {"network": args.net, "faults": args.faults, "layers": report})
    print("| layer | stuck cells | rotation (rows, cols) | damage before | after |\n"
          "|---|---|---|---|---|")
    for r in report:
        print(f"| {r['layer']} | {r['stuck_cells']} | ({r['row_rotation']}, "
              f"{r['col_rotation']}) | {r['damage_before']:.0f} | {r['damage_after']:.0f} |")
    before = sum(r["damage_before"] for r in report)
    after = sum(r["damage_after"] for r in report)
    print(f"wrote {args.out}: damage {before:.0f} -> {after:.0f} "
          f"({100 * (1 - after / before) if before else 0:.0f}% less)")
    return 0


def cmd_reference(args) -> int:
    from ..sw.chip import reference
    from ..sw.chip.progress import bar as progress_bar
    from .generate import save_npy

    net = _load_net(args.net)
    x = _load_inputs(args.inputs)
    labels = _load_inputs(args.labels, "labels") if args.labels else None
    if labels is not None and labels.shape != (x.shape[0],):
        raise ValueError(f"{args.labels}: must have shape ({x.shape[0]},) to match the inputs, "
                         f"got {labels.shape}")
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{args.labels}: labels must be integers, got dtype {labels.dtype}")
    x = reference.check_inputs(net, x)
    from ..sw.chip import workload

    workload.check_reference(net, len(x), args.max_memory)
    chip = None
    if args.noise or args.faults:
        from ..sw.chip import faults, noise

        chip = noise.NoisyChip(net, noise.load(args.noise) if args.noise else
                               noise.NoiseConfig(), seed=0 if args.seed is None else args.seed,
                               faults=faults.load(args.faults, net) if args.faults else None)
    elif args.seed is not None:
        raise ValueError("--seed: only with --noise (the ideal reference has no randomness)")
    t0 = time.perf_counter()
    with progress_bar(len(x), "reference", "img") as bar:
        y = reference.run_network(net, x, reuse=not args.no_reuse, progress=bar.update,
                                  noise=chip)
    seconds = time.perf_counter() - t0
    save_npy(args.outputs, y)
    what = ""
    if args.noise:
        what += f"; crossbars with the non-idealities of {args.noise}, seed {chip.seed}"
    if args.faults:
        what += f"; the stuck cells of {args.faults}"
    print(f"wrote {args.outputs}: {y.dtype} {list(y.shape)}; {len(x)} image(s) in "
          f"{seconds:.2f} s ({seconds / len(x):.3f} s per image), peak memory "
          f"{peak_memory_mib():.0f} MiB{what}")
    if labels is not None:
        pred = y.reshape(y.shape[0], -1).argmax(axis=1)
        print(f"accuracy {float((pred == labels).mean()):.4f} on {len(labels)} images")
    return 0


def peak_memory_mib() -> float:
    """Peak resident memory of this process or its largest child process (Linux reports KiB,
    macOS bytes)."""
    import resource

    peak = max(resource.getrusage(who).ru_maxrss  # this process, or its largest child (a
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # simulator)
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def cmd_data(args) -> int:
    from ..sw.chip import data
    from .generate import save_npy

    images, labels = data.load(args.name, args.split, args.limit, path=args.data_path)
    save_npy(args.images, images.astype(np.int64))
    save_npy(args.labels, labels)
    print(f"wrote {args.images} {list(images.shape)} and {args.labels} ({args.name} "
          f"{args.split})")
    return 0


def cmd_generate(args) -> int:
    from .generate import generate, generate_network

    net = _load_net(args.net, args.cols)
    args.lanes = resolve_lanes(net, args.lanes)
    replicas = resolve_replicas(net, args.replicas, args.budget, args.lanes, not args.no_reuse)
    if args.fixed and (args.tile or args.blank):
        raise ValueError("--fixed is for the network accelerator; a single tile (--tile, "
                         "--blank) is programmable")
    if args.tile or args.blank:
        gen = generate(net, args.out, reuse=not args.no_reuse, blank=args.blank,
                       lanes=args.lanes)
        p = gen.image.params
        print(f"wrote {gen.verilog.name}, manifest.json and memory images for layer "
              f"{p.name!r} ({p.n_steps} IFRT step(s) per pixel) into {gen.folder}")
        return 0
    from .generate import refuse_foreign

    refuse_foreign(Path(args.out).resolve())  # (before any work)
    gen = generate_network(net, args.out, reuse=not args.no_reuse, lanes=args.lanes,
                           replicas=replicas, fixed=args.fixed)
    units = gen.manifest["units"]
    tiles = sum("folder" in u for u in units)
    fifos = {u["name"]: u["fifo"] for u in units if u["op"] == Op.ADD}
    copies = {u["name"]: u["replicas"] for u in units if u.get("replicas", 1) > 1}
    verb = "kept (unchanged)" if gen.cached else "wrote"
    modules = gen.verilog.read_text().count("\nmodule epim_tile_")
    kind = ("fixed (weight-baked) tiles" if args.fixed else
            f"programmable tiles, {modules} module(s) for {tiles} tile(s)")
    print(f"{verb} {gen.verilog.name} ({gen.verilog.stat().st_size / 1e6:.1f} MB, {kind}), "
          f"network.json and the images of {tiles} tile(s) in "
          f"{gen.folder}" + (f"; skip FIFO depths {fifos}" if fifos else "")
          + (f"; tile copies {copies}" if copies else ""))
    return 0


def cmd_bitstream(args) -> int:
    from ..hw import bitstream
    from .fpga import build_board

    out = Path(args.out)
    try:
        rep = build_board(args.net, args.board, out, clock_mhz=args.clock_mhz, baud=args.baud,
                          seed=args.seed, lanes=args.lanes, cols=args.cols)
    except bitstream.ToolMissing as exc:
        from ..sim.verilator import ToolMissing

        raise ToolMissing(str(exc)) from None
    print((out / "report.md").read_text())
    if args.require_fmax and rep["fmax_mhz"] < args.require_fmax:
        print(f"error: Fmax {rep['fmax_mhz']:.2f} MHz is below the required "
              f"{args.require_fmax:g} MHz", file=sys.stderr)
        return 1
    return 0


def cmd_board_run(args) -> int:
    import time

    from ..hw.protocol import ProtocolError
    from ..sim.verilator import ToolMissing
    from .board import Board

    try:
        import serial
    except ImportError:
        raise ToolMissing("pyserial is not installed: pip install 'pyserial>=3.5' (or install "
                          "EPIM with its 'board' extra)") from None
    from .fpga import board_build, fit_lanes

    lanes, cols = board_build(args.board, args.lanes, args.cols)
    net = _load_net(args.net, cols)
    lanes = fit_lanes(net, lanes)
    x = _load_inputs(args.inputs)
    with serial.Serial(args.port, args.baud, timeout=args.timeout) as port:
        board = Board(port, net, timeout=args.timeout, lanes=lanes)
        try:
            board.identify()
            if args.program:
                from .board import network_program

                words, bits = network_program(net, lanes)
                t0 = time.time()
                board.program(words, bits)
                print(f"programmed {len(words)} words in {time.time() - t0:.2f} s, checksum "
                      "ok")
            t0 = time.time()
            y = board.infer(x)
        except ProtocolError as exc:
            print(f"epim: board error: {exc}", file=sys.stderr)
            return EXIT_MISMATCH
        dt = time.time() - t0
    print(f"{len(y)} image(s) through the board on {args.port} in {dt:.2f} s "
          f"({len(y) / dt:.1f} images/s over the serial link)")
    if args.outputs:
        from .generate import save_npy

        save_npy(args.outputs, y)
    if args.check:
        from ..sw.chip import reference

        ref = reference.run_network(net, x)
        same = int(sum(bool((a == b).all()) for a, b in zip(y, ref, strict=True)))
        print(f"{same}/{len(y)} outputs bit-exact against the integer reference")
        if same != len(y):
            return 1
    return 0


def cmd_cosim(args) -> int:
    from .generate import save_npy, write_json
    from .verify import cosim, cosim_network

    net = _load_net(args.net, args.cols)
    x = _load_inputs(args.inputs)
    from ..sw.chip import reference, workload

    workload.check_reference(net, len(reference.check_inputs(net, x)), args.max_memory)
    from ..contract.files import check_folder

    check_folder(args.build_dir)
    args.lanes = resolve_lanes(net, args.lanes)
    if args.per_layer:
        from .verify import cosim_per_layer

        if isinstance(args.lanes, dict) or args.waves or args.fixed or args.tile \
                or args.faults:
            raise ValueError("--per-layer takes none of --lanes balanced, --waves, --fixed, "
                             "--faults and --tile (it runs every tile alone, programmed "
                             "through its port)")
        y, rep = cosim_per_layer(net, x, args.build_dir, stalls=args.stalls, seed=args.seed,
                                 reuse=not args.no_reuse, lanes=args.lanes, jobs=args.jobs,
                                 scheduler=args.scheduler,
                                 log=lambda line: print(line, flush=True))
        save_npy(args.outputs, y)
        if args.report:
            write_json(args.report, rep)
        where = (f" on {args.scheduler}" if args.scheduler else
                 f" on {args.jobs} local Dask workers" if args.jobs > 1 else "")
        print(f"{rep['tiles']} tile(s){where}, {rep['distinct_builds']} distinct Verilator "
              "build(s): "
              f"{'every tile bit-exact' if rep['match'] else 'MISMATCH'}, cycles "
              f"{'as modelled' if rep['cycles_match'] else 'NOT as modelled'}; "
              f"{rep['seconds']:.0f} s, peak memory {peak_memory_mib():.0f} MiB")
        return 0 if rep["match"] and rep["cycles_match"] else EXIT_MISMATCH
    replicas = resolve_replicas(net, args.replicas, args.budget, args.lanes, not args.no_reuse)
    if args.fixed and (args.program or args.tile):
        raise ValueError("--fixed tiles have no programming port and no single-tile top: "
                         "leave out --program and --tile")
    if args.faults and args.tile:
        raise ValueError("--faults: whole networks only (leave out --tile)")
    if not args.tile:
        fmap = None
        if args.faults:
            from ..sw.chip import faults

            fmap = faults.load(args.faults, net)
        y, rep = cosim_network(net, x, args.build_dir, stalls=args.stalls, seed=args.seed,
                               reuse=not args.no_reuse, lanes=args.lanes, replicas=replicas,
                               log=lambda line: print(line, flush=True), waves=args.waves,
                               program=args.program, fixed=args.fixed, faults=fmap)
        save_npy(args.outputs, y)
        if args.report:
            write_json(args.report, rep)
        print(reports.network_report(rep))
        _say_waves(args.waves)
        return 0 if rep["match"] and rep["cycles_match"] else EXIT_MISMATCH
    y, report = cosim(net, x, args.build_dir, stalls=args.stalls, seed=args.seed,
                      program=args.program, reuse=not args.no_reuse, lanes=args.lanes,
                      waves=args.waves)
    save_npy(args.outputs, y)
    if args.report:
        write_json(args.report, report)
    print(reports.tile_report(report))
    _say_waves(args.waves)
    ok = report["match"] and report["cycles_match"] in (True, None)
    return 0 if ok else EXIT_MISMATCH


def _say_waves(path: str | None) -> None:
    if path:
        size = Path(path).stat().st_size / 1e6 if Path(path).exists() else 0
        print(f"waveform: {path} (VCD, {size:.1f} MB; open it with GTKWave or Surfer)")


def _ratio(text: str) -> float | None:
    """`--ratio` of train: 'dense' (or 'none'), or a finite number >= 1."""
    return None if text in ("none", "dense") else RATIO(text)


def _bits(kind):
    """`--weight-bits`/`--act-bits` of train: 'float' (or 'none'), or bits in range."""
    def parse(text: str) -> int | None:
        return None if text in ("none", "float") else kind(text)
    parse.__name__ = "bits"
    return parse


def cmd_train(args) -> int:
    from ..sw.chip.reproducible import pin_cpu_kernels

    pin_cpu_kernels()
    from ..sw.ml import compress, models
    from ..sw.ml.train import Config, fit, load_checkpoint

    # every `Config` field that the command declares as an option (`TRAIN_OPTIONS`)
    cfg = Config(**{k: getattr(args, k) for k in TRAIN_OPTIONS},
                 distill=args.distill if args.teacher else 0.0)
    if args.noise:
        from ..sw.chip import noise

        cfg.noise = noise.load(args.noise).to_json()
    model = teacher = None
    if args.init:
        init_cfg, dense = load_checkpoint(args.init)
        if init_cfg.graph is not None:
            raise ValueError(f"--init {args.init}: an imported model; fine-tune it with epim "
                             "import --data --epochs")
        if init_cfg.block != cfg.block:
            raise ValueError(f"--init {args.init}: a model of {init_cfg.block!r} blocks, but "
                             f"this run trains {cfg.block!r} blocks")
        if (init_cfg.model, init_cfg.width, init_cfg.quant) != (cfg.model, cfg.width, cfg.quant):
            raise ValueError(f"--init {args.init}: a {init_cfg.model} of width {init_cfg.width} "
                             f"with {init_cfg.quant}, but this run trains a {cfg.model} of width "
                             f"{cfg.width} with {cfg.quant}")
        model = compress.epitomize(dense, models.nodes(cfg.model, cfg.ratio, cfg.width,
                                                       quant=cfg.quant, pim=cfg.pim,
                                                       wrap=cfg.wrap, block=cfg.block))
    if args.teacher:
        _, teacher = load_checkpoint(args.teacher)
    metrics = fit(cfg, args.out, model=model, teacher=teacher)
    if metrics.get("rank", 0) > 0:  # a torchrun worker: rank 0 reports
        return 0
    line = f"test accuracy {metrics['test_accuracy']:.4f} on {metrics['test_images']} images"
    if "crossbars" in metrics:
        line += (f"; {metrics['crossbars']} crossbars, {metrics['compression_vs_dense8']:.2f}x "
                 f"fewer than dense 8-bit; wrote {args.out}/net.json")
    print(line)
    return 0


DATA_PATH_HELP = ("cifar10: its files (the python-batch folder cifar-10-batches-py, its parent, or "
                  "a JPEG .npz); default $EPIM_CIFAR10, ./data, the cache folder")
LANES_HELP = ("row chunks each tile computes in a cycle (default 1: one crossbar's rows); more "
              "lanes mean more adder trees and ADCs and ceil(chunks / lanes) passes per step; "
              "'balanced': per tile the fewest that keep the throughput of every chunk at once")


COLS_HELP = ("physical columns each tile computes in a cycle (default: all of a crossbar's); "
             "fewer mean that many times fewer adders and ADCs and a cell memory word that "
             "narrow (block RAM), and the crossbar's columns read out in turn")


# `epim train`: the `Config` fields it takes from its options as they are, and its two defaults
# of its own (the library's `Config` trains dense and distils only when told)
TRAIN_OPTIONS = ("data", "data_path", "model", "ratio", "wrap", "width", "weight_bits",
                 "act_bits", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "seed",
                 "limit", "test_limit", "device", "block")
TRAIN_RATIO = 2.0
TRAIN_DISTILL = 0.5


class Parser(argparse.ArgumentParser):
    """argparse with EPIM's one error line (`epim: error: ...`, exit 2) for bad arguments."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"epim: error: {self.prog.removeprefix('epim ')}: "
                                  f"{message.splitlines()[0]}\n")


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in `lo..hi` (no upper bound for None)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r}: an integer " + (f"in {lo}..{hi}" if hi is not None
                                                  else f">= {lo}"))
        return v
    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float | None = None, lo_open: bool = False):
    """An argparse type: a finite number in `lo..hi` (`lo` excluded with `lo_open`)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None
                                                                         and v > hi):
            where = (f"> {lo:g}" if lo_open else f">= {lo:g}") if hi is None else (
                f"in {lo:g}..{hi:g}" + (f" (not {lo:g})" if lo_open else ""))
            raise argparse.ArgumentTypeError(f"{text[:40]!r}: a finite number {where}")
        return v
    parse.__name__ = "number"
    return parse


def size_arg(text: str) -> int:
    from ..sw.chip.workload import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


COUNT = int_in(1)  # images, epochs, batch sizes, ...
SEED = int_in(0, 2**32 - 1)
SHARE = float_in(0.0, 1.0)
POSITIVE = float_in(0.0, lo_open=True)
WEIGHT_BITS = int_in(2, 16)  # the contract's range of weight_bits
ACT_BITS = int_in(1, 16)  # a tensor fed to a crossbar: at most 16 bits
RATIO = float_in(1.0)  # an epitome ratio: 1 is dense


def lanes_arg(text: str) -> int | str:
    """`--lanes`: a positive number or `balanced`."""
    if text == "balanced":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number or 'balanced'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: lanes must be at least 1")
    return n


def resolve_lanes(net, lanes):
    """`--lanes balanced` as the per-tile dictionary of `netcycles.balanced_lanes`."""
    if lanes != "balanced":
        return lanes
    from ..sw.chip import netcycles

    return netcycles.balanced_lanes(net)


REPLICAS_HELP = ("copies of each layer's tile, each computing a share of the output pixels "
                 "(more crossbars, fewer cycles per image): 'auto' gives the slowest tiles "
                 "copies while --budget allows, 'none' (default), N for every tile, or "
                 "LAYER=N,LAYER=N")
BUDGET_HELP = ("crossbars that --replicas auto may use in all (default: the network's count "
               "with dense 3-bit weights)")


def replicas_arg(text: str) -> str | int | dict[str, int]:
    """`--replicas`: auto, none, a number, or LAYER=N pairs separated by commas."""
    if text in ("auto", "none"):
        return text
    try:
        if "=" not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return n
        out = {}
        for part in text.split(","):
            name, _, num = part.partition("=")
            if not name or int(num) < 1:
                raise ValueError
            out[name.strip()] = int(num)
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: 'auto', 'none', a positive number or LAYER=N,LAYER=N") from None


def resolve_replicas(net, replicas, budget=None, lanes=None, reuse: bool = True):
    """`--replicas` as a dictionary by layer name (None for 'none')."""
    from ..sw.chip import replication

    if replicas in (None, "none"):
        return None
    if replicas == "auto":
        return replication.choose_replicas(net, budget, reuse=reuse, lanes=lanes)
    if isinstance(replicas, int):
        replicas = {la.name: replicas for la in replication.tiles(net)}
    replication.check_replicas(net, replicas)
    return replicas


def shared_options() -> dict[str, argparse.ArgumentParser]:
    """The options that several commands share, declared once (argparse `parents=`):
    `build`: how the accelerator is built (`epim cost`, `generate`, `cosim`); `io`: the input
    and output arrays (`epim reference`, `cosim`)."""
    build = argparse.ArgumentParser(add_help=False)
    build.add_argument("--no-reuse", action="store_true", help="one IFRT step per block")
    build.add_argument("--lanes", type=lanes_arg, help=LANES_HELP)
    build.add_argument("--cols", type=COUNT, help=COLS_HELP)
    build.add_argument("--replicas", type=replicas_arg, default="none", help=REPLICAS_HELP)
    build.add_argument("--budget", type=COUNT, help=BUDGET_HELP)
    io = argparse.ArgumentParser(add_help=False)
    io.add_argument("--inputs", required=True, help="integer array (N, C, H, W) in .npy")
    io.add_argument("--outputs", required=True, help="where to write the output .npy")
    return {"build": build, "io": io}


def build_parser() -> argparse.ArgumentParser:
    from ..sw.ml.config import Config as TrainConfig

    p = Parser(prog="epim", description=__doc__)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an internal error")
    sub = p.add_subparsers(dest="command", required=True)
    shared = shared_options()

    c = sub.add_parser("check", help="validate a network file")
    c.add_argument("net")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("cost", help="PIM cost model: crossbars, area, activations, latency, "
                                    "energy per layer and network", parents=[shared["build"]])
    c.add_argument("net")
    c.add_argument("--constants", help="JSON object overriding cost constants (docs/cost.md)")
    c.add_argument("--max-steps", type=COUNT,
                   help="refuse a network whose tile schedules take more slot steps than this "
                        "(default 2e7, about 25 s on two cores; epim check prints the figure)")
    c.add_argument("--json", help="also write the figures to this JSON file")
    c.set_defaults(func=cmd_cost)

    se = sub.add_parser("search", help="layer-wise epitome search under a crossbar budget")
    se.add_argument("--init", required=True, help="trained dense quantized checkpoint folder")
    se.add_argument("--budget", type=COUNT, help="crossbars (default: the uniform model's at "
                                               "--ratio)")
    se.add_argument("--ratio", type=RATIO, default=4.0,
                    help="uniform epitome ratio: the default budget and a seed individual")
    se.add_argument("--bits", type=WEIGHT_BITS, nargs="+", default=[2, 3, 4],
                    help="weight bits a layer may take")
    se.add_argument("--weights", type=float_in(0.0), nargs=3, default=[1.0, 0.2, 0.2],
                    metavar=("ACC", "LATENCY", "ENERGY"), help="fitness weights")
    se.add_argument("--population", type=int_in(2), default=32)
    se.add_argument("--generations", type=COUNT, default=40)
    se.add_argument("--mutation", type=SHARE,
                    help="mutation probability per gene (default: min(0.15, 1/layers))")
    se.add_argument("--seed", type=SEED, default=0)
    se.add_argument("--finetune", type=int_in(0), default=0,
                    help="fine-tune the pick this many epochs and export it")
    se.add_argument("--out", default="build/search")
    se.set_defaults(func=cmd_search)

    r = sub.add_parser("reference", help="run the integer reference", parents=[shared["io"]])
    r.add_argument("net")
    r.add_argument("--no-reuse", action="store_true",
                   help="IFRT reuse off (the same result, except with --noise: more reads, "
                        "so other noise)")
    r.add_argument("--labels", help="class labels (N,) in .npy: print the accuracy")
    r.add_argument("--noise", metavar="CFG.json",
                   help="run the crossbars with the non-idealities of this configuration "
                        "(format epim-noise-v1, docs/noise.md): programming variation, stuck "
                        "cells, read noise, ADC offset, gain and noise")
    r.add_argument("--seed", type=SEED, default=None,
                   help="the chip and noise seed for --noise (default 0); one seed is one "
                        "Monte Carlo sample")
    r.add_argument("--faults", metavar="FAULTS.json",
                   help="run on crossbars with these stuck cells (epim-faults-v1, from `epim "
                        "faults` or measured; docs/noise.md)")
    r.add_argument("--max-memory", type=size_arg, metavar="SIZE",
                   help="refuse a run whose estimated peak memory is above SIZE (e.g. 40G; "
                        "default: three quarters of this machine's memory)")
    r.set_defaults(func=cmd_reference)

    fa = sub.add_parser("faults", help="draw a random fault map (stuck cells) for a network's "
                                       "crossbars")
    fa.add_argument("net")
    fa.add_argument("--stuck-at-zero", type=SHARE, default=0.0, help="share of cells (0..1)")
    fa.add_argument("--stuck-at-max", type=SHARE, default=0.0, help="share of cells (0..1)")
    fa.add_argument("--seed", type=SEED, default=0)
    fa.add_argument("--out", required=True, help="where to write the fault map (JSON)")
    fa.set_defaults(func=cmd_faults)

    rm = sub.add_parser("remap", help="place each layer's epitome on faulty crossbars where "
                                      "its stuck cells do least damage (same function, same "
                                      "RTL)")
    rm.add_argument("net")
    rm.add_argument("--faults", required=True, metavar="FAULTS.json")
    rm.add_argument("--out", required=True, help="the remapped network file")
    rm.add_argument("--report", help="also write the per-layer choices and damage (JSON)")
    rm.set_defaults(func=cmd_remap)

    g = sub.add_parser("generate", help="write the accelerator's Verilog, memory images and "
                                         "manifests", parents=[shared["build"]])
    g.add_argument("net")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--tile", action="store_true",
                   help="a single-layer network as one tile with its programming port "
                        "(top epim_tile) instead of the network accelerator (top epim_net)")
    g.add_argument("--blank", action="store_true",
                   help="with --tile: zeroed memories in the Verilog, to program through the "
                        "port")
    g.add_argument("--fixed", action="store_true",
                   help="weight-baked tiles (every memory a ROM holding its images), as the "
                        "FPGA build uses them: one module per layer and no programming port "
                        "(default: programmable tiles, one module per distinct tile shape, "
                        "blank until programmed through the port)")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("cosim", help="run the accelerator's Verilog on Verilator and check "
                                      "outputs and cycles",
                       parents=[shared["io"], shared["build"]])
    s.add_argument("net")
    s.add_argument("--report", help="where to write the JSON report")
    s.add_argument("--build-dir", default="build/cosim",
                   help="Verilator builds and scratch: a new or empty folder, or one that an "
                        "earlier cosim made")
    s.add_argument("--max-memory", type=size_arg, metavar="SIZE",
                   help="as for epim reference (the cosim runs the reference too)")
    s.add_argument("--stalls", action="store_true",
                   help="random input gaps and output back-pressure")
    s.add_argument("--seed", type=SEED, default=0, help="seed for --stalls")
    s.add_argument("--per-layer", action="store_true",
                   help="check every conv/linear tile alone with its real input tensor from "
                        "the reference (blank memories programmed through the port, so tiles "
                        "of equal shape share one build)")
    s.add_argument("--jobs", type=int_in(1, 256), default=1,
                   help="--per-layer: run the tiles on a local Dask cluster of N worker "
                        "processes (default 1: one after the other, no cluster)")
    s.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="--per-layer: run the tiles on this Dask scheduler's workers (they must "
                        "see --build-dir)")
    s.add_argument("--waves", metavar="FILE.vcd",
                   help="write the run's waveform (every signal, VCD) to this file; the "
                        "traced build is cached apart from the plain one")
    s.add_argument("--program", action="store_true",
                   help="start from blank memories and write every tile's words through the "
                        "network's programming port (with --tile, the tile's own) before the "
                        "images, instead of loading the images at start-up")
    s.add_argument("--tile", action="store_true",
                   help="single-layer networks: run the bare tile (top epim_tile) instead of "
                        "the network accelerator")
    s.add_argument("--fixed", action="store_true",
                   help="weight-baked tiles, as the FPGA build uses them (one module per "
                        "layer; slower to build)")
    s.add_argument("--faults", metavar="FAULTS.json",
                   help="write these stuck cells (epim-faults-v1) into the crossbar images "
                        "and check against the reference on the same faulty chip (whole "
                        "network only)")
    s.set_defaults(func=cmd_cosim)

    d = sub.add_parser("data", help="write a data set split as .npy (inputs and labels)")
    d.add_argument("name", help="mnist, fashion-mnist, mnist-5k or cifar10")
    d.add_argument("--split", default="test", choices=["train", "test"])
    d.add_argument("--limit", type=COUNT, help="the first N images")
    d.add_argument("--data-path", help=DATA_PATH_HELP)
    d.add_argument("--images", required=True, help="where to write (N, C, H, W) .npy")
    d.add_argument("--labels", required=True, help="where to write (N,) .npy")
    d.set_defaults(func=cmd_data)

    b = sub.add_parser("bitstream", help="FPGA bitstream of the board top (UART, LEDs) around "
                                         "a network, with a timing and utilisation report")
    b.add_argument("net", help="epim-net-v1 file")
    b.add_argument("--board", default="ulx3s-85f", help="ulx3s-85f (default) or icebreaker")
    b.add_argument("--clock-mhz", type=float_in(0.0, 1000.0, lo_open=True),
                   help="clock (default: 50 MHz from the PLL on the ULX3S, 12 MHz on the "
                        "iCEBreaker)")
    b.add_argument("--baud", type=int_in(300, 100_000_000),
                   help="UART rate (default: constraints/<board>.json's, else 115200)")
    b.add_argument("--seed", type=SEED, default=1, help="nextpnr placement seed")
    b.add_argument("--lanes", type=lanes_arg,
                   help=LANES_HELP + " (default: constraints/<board>.json's, else balanced)")
    b.add_argument("--cols", type=COUNT,
                   help=COLS_HELP.replace("default: all of a crossbar's",
                                          "default: constraints/<board>.json's, else all"))
    b.add_argument("--require-fmax", type=POSITIVE,
                   help="exit 1 when the achieved Fmax is below this many MHz")
    b.add_argument("--out", default="build/bitstream")
    b.set_defaults(func=cmd_bitstream)

    bo = sub.add_parser("board", help="talk to a board running an EPIM bitstream")
    bsub = bo.add_subparsers(dest="board_command", required=True)
    br = bsub.add_parser("run", help="send images over the serial port, print and check the "
                                     "answers (protocol: docs/fpga.md)")
    br.add_argument("net", help="the epim-net-v1 file the bitstream was built from")
    br.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    br.add_argument("--inputs", required=True, help="(N, C, H, W) integer .npy")
    br.add_argument("--outputs", help="write the board's outputs here (.npy)")
    br.add_argument("--baud", type=int_in(300, 100_000_000), default=115200)
    br.add_argument("--timeout", type=float_in(0.0, 3600.0, lo_open=True), default=5.0,
                    help="seconds to wait for an answer")
    br.add_argument("--check", action="store_true",
                    help="compare with the integer reference; exit 1 on a difference")
    br.add_argument("--program", action="store_true",
                    help="first write the network's images through the link (a programmable "
                         "bitstream; checked by the board's checksum)")
    br.add_argument("--lanes", type=lanes_arg,
                    help="the chunk lanes the bitstream was built with (default: as epim "
                         "bitstream builds it for --board)")
    br.add_argument("--board", default="ulx3s-85f",
                    help="the board the bitstream was built for (its default --lanes, --cols)")
    br.add_argument("--cols", type=COUNT,
                    help="the columns per cycle the bitstream was built with (default: as "
                         "epim bitstream builds it for --board)")
    br.set_defaults(func=cmd_board_run)

    t = sub.add_parser("train", help="train an epitome CNN (quantization-aware) and export it")
    d = TrainConfig()  # the library's defaults (`epim.sw.ml.config.Config`)
    t.add_argument("--data", default=d.data, help="mnist, fashion-mnist, mnist-5k or cifar10")
    t.add_argument("--data-path", default=d.data_path, help=DATA_PATH_HELP)
    t.add_argument("--model", default=d.model, help="cnn, resnet or resnet20 (CIFAR ResNet-20)")
    # (the library trains dense by default; the command trains epitomes)
    t.add_argument("--ratio", type=_ratio, default=TRAIN_RATIO,
                   help="epitome compression of the conv layers, at least 1 ('dense' for "
                        f"none; default {TRAIN_RATIO})")
    t.add_argument("--wrap", type=COUNT, default=d.wrap,
                   help="shrink the epitomes' output side this many times: output channels "
                        "wrap around their columns through the OFAT, and output groups share "
                        "activations (IFRT reuse); the rest of --ratio goes to the input side")
    t.add_argument("--width", type=int_in(1, 4096), default=d.width,
                   help="channels of the first stage")
    t.add_argument("--weight-bits", type=_bits(WEIGHT_BITS), default=d.weight_bits,
                   help="bits (2..16), or 'float'")
    t.add_argument("--act-bits", type=_bits(ACT_BITS), default=d.act_bits,
                   help="bits (1..16), or 'float'")
    t.add_argument("--epochs", type=COUNT, default=d.epochs)
    t.add_argument("--batch-size", type=COUNT, default=d.batch_size)
    t.add_argument("--lr", type=POSITIVE, default=d.lr)
    t.add_argument("--optimizer", default=d.optimizer, choices=["adam", "sgd"])
    t.add_argument("--weight-decay", type=float_in(0.0), default=d.weight_decay)
    t.add_argument("--seed", type=SEED, default=d.seed)
    t.add_argument("--limit", type=COUNT, default=d.limit,
                   help="use the first N training images")
    t.add_argument("--test-limit", type=COUNT, default=d.test_limit,
                   help="use the first N test images")
    t.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    t.add_argument("--init", help="fine-tune from this trained checkpoint (same model, width "
                                  "and bits; its convs become least-squares epitomes)")
    t.add_argument("--teacher", help="distil from this trained checkpoint (e.g. dense float)")
    # (the library distils only when told; the command's --teacher takes half the loss)
    t.add_argument("--distill", type=SHARE, default=TRAIN_DISTILL,
                   help=f"weight of the distillation loss with --teacher (default {TRAIN_DISTILL})")
    t.add_argument("--block", default=d.block, choices=["relu", "standard"],
                   help="ResNet block: 'relu' (ReLU on both convs before the add) or "
                        "'standard' (relu(bn(conv2) + shortcut): signed adder inputs)")
    t.add_argument("--out", default="build/train",
                   help="checkpoint, metrics and net.json (a rerun resumes)")
    t.add_argument("--noise", metavar="CFG.json",
                   help="noise-aware training: every step runs on a freshly drawn chip with "
                        "these crossbar non-idealities (docs/noise.md); evaluation and export "
                        "stay ideal (epim reference --noise evaluates on noisy chips)")
    t.set_defaults(func=cmd_train)

    im = sub.add_parser("import", help="import a PyTorch model as an epitome network: trace, "
                                       "project, calibrate, fine-tune, export")
    im.add_argument("model", help="resnet18, resnet34, resnet50 (torchvision's structure), "
                                  "FILE.py:FUNCTION returning an nn.Module, or an epim train "
                                  "checkpoint folder")
    im.add_argument("--state-dict", help="weights to load first (a torch state_dict file)")
    im.add_argument("--input-shape", type=int_in(1, 4096), nargs=3, metavar=("C", "H", "W"),
                    help="input image shape (default: the --data set's, else 3 224 224)")
    im.add_argument("--num-classes", type=int_in(1, 16384), help="classes of a built-in ResNet")
    im.add_argument("--ratio", type=RATIO,
                    help="uniform epitome ratio, at least 1 (default: dense)")
    im.add_argument("--split", default="epim", choices=["epim", "input", "balanced"],
                    help="how --ratio shrinks a layer: 'epim' (input side first, the training "
                         "rule), 'input' (input side only), 'balanced' (both by sqrt(ratio))")
    im.add_argument("--wrap", type=COUNT, default=1, help="as for epim train (split epim)")
    im.add_argument("--epitomes", help="per-layer epitome shapes: the search.json of epim "
                                       "search (layers it does not name stay dense)")
    im.add_argument("--weight-bits", type=WEIGHT_BITS, default=3, help="2..16")
    im.add_argument("--act-bits", type=ACT_BITS, default=4, help="1..16")
    im.add_argument("--pool-bits", type=int_in(1, 32), default=8,
                    help="global pooling's output bits")
    im.add_argument("--calibration", help="uint8 calibration images (N, C, H, W) in .npy "
                                          "(default: the first --data training images, else "
                                          "seeded synthetic images)")
    im.add_argument("--calibration-count", type=COUNT, default=64,
                    help="calibration images taken (default 64)")
    im.add_argument("--keep-batch-norm", action="store_true",
                    help="keep the module's batch-norm statistics (default: re-estimate them "
                         "on the calibration images after projection)")
    im.add_argument("--data", help="fine-tune on this data set (mnist, fashion-mnist, ...)")
    im.add_argument("--data-path", help=DATA_PATH_HELP)
    im.add_argument("--epochs", type=int_in(0), default=0, help="fine-tuning epochs (0: none)")
    im.add_argument("--lr", type=POSITIVE, default=2e-3)
    im.add_argument("--batch-size", type=COUNT, default=128)
    im.add_argument("--limit", type=COUNT, help="fine-tune on the first N training images")
    im.add_argument("--seed", type=SEED, default=0)
    im.add_argument("--out", default="build/import",
                    help="net.json, checkpoint.pt and import.json")
    im.set_defaults(func=cmd_import)
    return p


def cmd_import(args) -> int:
    from ..sw.chip.reproducible import pin_cpu_kernels

    pin_cpu_kernels()
    import torch

    from ..sw.chip import data
    from ..sw.ml import importer
    from ..sw.ml.models import QuantConfig

    torch.manual_seed(args.seed)
    if args.ratio is not None and args.epitomes:
        raise ValueError("give --ratio or --epitomes, not both")
    if args.epochs and not args.data:
        raise ValueError("--epochs needs --data (the set to fine-tune on)")
    if args.data and args.data not in data.SHAPES:
        raise ValueError(f"--data {args.data!r}: one of {', '.join(data.SHAPES)}")
    shape = tuple(args.input_shape) if args.input_shape else (
        tuple(data.SHAPES[args.data]) if args.data else (3, 224, 224))
    module = importer.load_module(args.model, args.num_classes, shape[0])
    if args.state_dict:
        importer.load_state_dict(module, args.state_dict)
    calib, source = None, ""
    if args.calibration:
        calib = _load_inputs(args.calibration, "calibration images")
        if calib.ndim != 4 or tuple(calib.shape[1:]) != shape or not np.issubdtype(
                calib.dtype, np.integer) or calib.min() < 0 or calib.max() > 255:
            raise ValueError(f"{args.calibration}: calibration images must be 0..255 integers "
                             f"of shape (N, {', '.join(map(str, shape))})")
        calib, source = calib.astype(np.uint8), f"{len(calib)} images from {args.calibration}"
    finetune = None
    if args.epochs:
        finetune = {"data": args.data, "epochs": args.epochs, "lr": args.lr,
                    "batch_size": args.batch_size, "limit": args.limit, "seed": args.seed,
                    "data_path": args.data_path, "device": "cpu"}
    quant = QuantConfig(args.weight_bits, args.act_bits, pool_bits=args.pool_bits)
    report = importer.import_to(
        args.out, module, shape, quant=quant, finetune=finetune, ratio=args.ratio,
        split=args.split, wrap=args.wrap, epitomes=args.epitomes, calibration=calib,
        calibration_source=source, calib_count=args.calibration_count, seed=args.seed,
        recalibrate_bn=not args.keep_batch_norm)
    if "test_accuracy" in report:
        print(f"test accuracy {report['test_accuracy']:.4f} (float model "
              f"{report.get('float_test_accuracy', float('nan')):.4f}) on "
              f"{report['test_images']} images")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument (its one line is printed)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    with _terminate_as_exit():
        return _run(args)


@contextlib.contextmanager
def _terminate_as_exit():
    """While a command runs, SIGTERM (`kill`, a batch system's time limit) ends it the way
    Ctrl-C does: as an exception, so that every `finally` runs (temporary files are removed, a
    local Dask cluster stops with what its workers started). The previous handler comes back
    afterwards; nothing changes where this is not the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(args) -> int:
    from ..contract.images import ImageError
    from ..sim.cosim import UnsupportedNetwork
    from ..sim.verilator import ToolMissing
    from ..sw.chip.data import DataMissing
    from ..sw.chip.netfile import NetFileError
    from ..sw.chip.reference import InputError

    try:
        return args.func(args)
    except (NetFileError, InputError, ImageError, UnsupportedNetwork, ToolMissing, OSError,
            ValueError) as exc:
        if args.debug and getattr(exc, "details", None):
            print(exc.details.rstrip(), file=sys.stderr)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"epim: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DataMissing as exc:
        print(f"epim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as exc:
        top = (exc.name or "").split(".")[0]
        extra = EXTRAS.get(top)
        if extra is None:
            return internal_error(exc, args.debug)
        print(f"epim: error: '{args.command}' needs {top}, which is not installed: "
              f"pip install 'epim[{extra}]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RecursionError as exc:
        return internal_error(exc, args.debug)
    except RuntimeError as exc:  # the simulation itself failed (build error, testbench abort)
        if args.debug:
            raise
        print(f"epim: simulation failed: {str(exc).strip()[-1500:]}", file=sys.stderr)
        return EXIT_MISMATCH
    except Exception as exc:
        return internal_error(exc, args.debug)


# optional stacks by top-level module: the extra of pyproject.toml that installs each
EXTRAS = {"torch": "ml", "PIL": "ml", "amaranth": "hw", "cocotb": "sim", "cocotb_tools": "sim",
          "verilator": "sim", "serial": "board", "amaranth_boards": "fpga", "matplotlib": "test"}


def internal_error(exc: Exception, debug: bool) -> int:
    """A bug of ours, not the user's: one line and exit 1; the traceback with `--debug`."""
    if debug:
        raise exc
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    print(f"epim: internal error: {type(exc).__name__}: {first} (please report it; rerun "
          "with --debug for the traceback)", file=sys.stderr)
    return EXIT_MISMATCH

if __name__ == "__main__":
    sys.exit(main())
