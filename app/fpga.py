"""`nox -s bitstream`: the board tops' bitstreams with the YoWASP tools, each board with its
default network, and one summary of the reports.

    python -m epim.app.fpga                        # ULX3S-85F and iCEBreaker
    python -m epim.app.fpga --board icebreaker     # one board
    python -m epim.app.fpga --board ulx3s-85f --net my/net.json --clock-mhz 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..contract import files as owned
from ..contract.ops import TILE_OPS
from ..hw import bitstream, protocol
from ..sw.chip import cyclemodel, images, netcycles, netfile

# relative to the repository's root, where nox runs
DEFAULT_NETS = {
    # the MNIST model the board build was tuned and measured with (the main flow's model
    # before its epitomes wrapped output channels; docs/fpga.md)
    "ulx3s-85f": Path("examples/mnist-epim-cnn-r4-nowrap/net.json"),
    # its first layer (conv 1->16 on 28x28): the whole model does not fit the iCE40UP5K
    "icebreaker": Path("examples/mnist-epim-cnn-r4-c1/net.json"),
}


def board_constraints(board: str, folder: str | Path = "constraints") -> dict:
    """The board's settings from `constraints/<board>.json` (empty if there is none)."""
    path = Path(folder) / f"{board}.json"
    if not path.exists():
        return {}
    try:
        data = owned.load_json(path, "a board's settings")
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    unknown = set(data) - {"board", "clock_mhz", "baud", "lanes", "cols", "why", "add_preferences",
                           "add_pre_pack"}
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    return data


def build_board(net_path: str | Path, board: str, out: str | Path,
                clock_mhz: float | None = None, baud: int | None = None, seed: int = 1,
                lanes: str | int | None = None, constraints: str | Path = "constraints",
                cols: int | None = None) -> dict:
    """Images of the network into `out/images`, then the bitstream and its report in `out`.

    `lanes`: "balanced" (`netcycles.balanced_lanes`: the fewest chunk lanes per tile that keep
    the network's throughput), "all" (every row chunk at once), or a number for every tile;
    `cols`: physical columns per cycle (`netfile.with_cols`); by default the constraints
    file's `lanes` and `cols` (`board_build`)."""
    cons = board_constraints(board, constraints)
    lanes, cols = board_build(board, lanes, cols, constraints)
    net = netfile.with_cols(netfile.load(net_path), cols)
    clock_mhz = clock_mhz or cons.get("clock_mhz")
    baud = baud or cons.get("baud", 115200)
    extra = {k: "\n".join(cons[k]) for k in ("add_preferences", "add_pre_pack")
             if cons.get(k)}
    out = owned.check_folder(out)
    folder = out / "images"
    lanes = fit_lanes(net, lanes)
    compiled = images.compile_network(net, lanes=lanes)
    try:
        protocol.check_board(compiled["manifest"])  # before any build work
    except ValueError as exc:
        raise ValueError(f"{net_path}: {exc}") from None
    owned.claim_folder(out, "bitstream")
    owned.record(out, ["images"])
    images.write_network(compiled, folder)
    steady = netcycles.predict(net, 4, lanes=lanes).steady
    return bitstream.build(folder, board, out, clock_mhz=clock_mhz, baud=baud, seed=seed,
                           cycles_per_image=steady, network=str(net_path), overrides=extra)


def board_build(board: str, lanes: str | int | None = None, cols: int | None = None,
                constraints: str | Path = "constraints") -> tuple[str | int, int | None]:
    """`(lanes, cols)` a board's bitstream is built with: those given, else its constraints
    file's, else "balanced" lanes and every column a cycle."""
    if board not in bitstream.BOARDS:
        raise ValueError(f"--board {board!r}: one of {', '.join(sorted(bitstream.BOARDS))}")
    cons = board_constraints(board, constraints)
    return lanes or cons.get("lanes", "balanced"), cols or cons.get("cols")


def fit_lanes(net, lanes: str | int) -> dict | int | None:
    if lanes == "balanced":
        return netcycles.balanced_lanes(net)
    if lanes == "all":
        return {la.name: cyclemodel.row_chunks(la, net.pim) for la in net.layers
                if la.op in TILE_OPS}
    return int(lanes)


def summary(reports: list[dict]) -> str:
    lines = ["| board | network | Fmax (MHz) | constraint | LUT4 | FF | DSP | BRAM | "
             "images/s at the constraint |", "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        u = r["utilisation"]
        cells = []
        for prefix in ("LUT4", "FF", "DSP", "BRAM"):
            key = next((k for k in u if k.startswith(prefix)), None)
            cells.append(f"{u[key]['used']}/{u[key]['available']}" if key else "-")
        met = "met" if r["meets_constraint"] else "FAILED"
        lines.append(f"| {r['board']} | `{r['network']}` | {r['fmax_mhz']:.1f} | "
                     f"{r['clock_constraint_mhz']:g} ({met}) | {' | '.join(cells)} | "
                     f"{r.get('images_per_second_at_constraint', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="FPGA bitstreams and reports of the board tops")
    ap.add_argument("--board", action="append", choices=sorted(bitstream.BOARDS),
                    help="a board to build (repeatable; default: all)")
    ap.add_argument("--net", help="network file (only with one --board; default: the "
                                  "board's example model)")
    ap.add_argument("--clock-mhz", type=float, help="only with one --board")
    ap.add_argument("--baud", type=int, help="UART rate (default: the constraints file's)")
    ap.add_argument("--constraints", type=Path, default=Path("constraints"),
                    help="folder of <board>.json settings (default: constraints)")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    ap.add_argument("--lanes", help="chunk lanes: balanced (fewest that keep the "
                                     "throughput), all, or a number (default: the constraints "
                                     "file's, else balanced)")
    ap.add_argument("--cols", type=int, help="physical columns per cycle (default: the "
                                             "constraints file's, else all)")
    ap.add_argument("--out", type=Path, default=Path("build/bitstream"))
    args = ap.parse_args(argv)
    boards = args.board or list(DEFAULT_NETS)
    if (args.net or args.clock_mhz) and len(boards) != 1:
        ap.error("--net and --clock-mhz need exactly one --board")
    owned.claim_folder(args.out, "bitstream")
    reports = []
    for b in boards:
        net = args.net or DEFAULT_NETS[b]
        print(f"building {b} with {net} ...", flush=True)
        rep = build_board(net, b, args.out / b, args.clock_mhz, args.baud, args.seed,
                          args.lanes, args.constraints, args.cols)
        print((args.out / b / "report.md").read_text(), flush=True)
        reports.append(rep)
    text = summary(reports)
    owned.write_owned(args.out, {"summary.md": text}, "bitstream")
    print(text)
    return 0 if all(r["meets_constraint"] for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
