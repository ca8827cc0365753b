"""The board top on Verilator (UART pins driven by cocotb) and the host side of the serial
protocol (`epim board run`).

`board_cosim` sends, over the emulated serial line: an identify command, one byte that is no
command (the board must answer ``!``), then the images; it decodes the answers with the same
code the host command uses and compares them with the integer reference, bit for bit.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..contract.images import write_files_atomically
from ..hw import protocol
from ..sw import images, reference
from ..sw.netfile import Network
from .cosim import build_model, generate_network, run_job

BOARD_VERILOG = "epim_board.v"
BAD_COMMAND = b"Z"


def network_digest(net: Network) -> tuple[dict, str]:
    """The network images' manifest and `units_sha256`, as `epim generate` would write them."""
    with tempfile.TemporaryDirectory(prefix="epim-digest-") as tmp:
        images.write_network(images.compile_network(net), tmp)
        manifest = json.loads((Path(tmp) / "network.json").read_text())
    return manifest, manifest["units_sha256"]


def generate_board(net: Network, out_dir: str | Path, divisor: int,
                   lanes: int | dict | None = None) -> Path:
    """Images, the accelerator and the board top's Verilog (`epim_board.v`) in `out_dir`."""
    from ..hw.generate import board_from_images, emit_board_verilog

    gen = generate_network(net, out_dir, lanes=lanes)
    text = emit_board_verilog(board_from_images(gen.folder, divisor))
    write_files_atomically(Path(out_dir), {BOARD_VERILOG: text})
    return Path(out_dir) / BOARD_VERILOG


def board_cosim(net: Network, x: np.ndarray, build_root: str | Path, divisor: int = 8,
                lanes: int | dict | None = None) -> tuple[np.ndarray, dict]:
    """Run images through the board top's UART pins on Verilator; returns outputs and report.
    `lanes` as the FPGA build uses them (`epim.sim.fpga.fit_lanes`)."""
    x = reference.check_inputs(net, x)
    build_root = Path(build_root).resolve()
    t0 = time.time()
    verilog = generate_board(net, build_root / "generated-board", divisor, lanes)
    manifest = json.loads((build_root / "generated-board" / "network.json").read_text())
    n = x.shape[0]
    sends = [protocol.IDENTIFY, BAD_COMMAND] + [protocol.encode_image(img, manifest)
                                                 for img in x]
    expect = protocol.IDENT_BYTES + 1 + n * (1 + protocol.output_bytes(manifest))
    bits_per_image = 10 * len(sends[-1])
    runner, build_dir = build_model(verilog, build_root, top="epim_board")
    t1 = time.time()
    job = {"divisor": divisor, "send": [s.hex() for s in sends], "expect_bytes": expect,
           "max_cycles": (n + 4) * (bits_per_image * divisor + 200_000)}
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
    answers = protocol.parse_answers(data[protocol.IDENT_BYTES + 1:], manifest, n)
    y = to_array(answers, net)
    ref = reference.run_network(net, x)
    match = bool(y.shape == ref.shape and (y == ref).all())
    # cycles from the last image byte sent to the last answer byte: the answer's latency
    ends = [c for _, c in result["received"]]
    size = 1 + protocol.output_bytes(manifest)
    last_bytes = [ends[protocol.IDENT_BYTES + 1 + (k + 1) * size - 1] for k in range(n)]
    rep = {"network": net.source, "images": n, "match": match,
           "matching_images": int(sum(bool((y[i] == ref[i]).all()) for i in range(n))),
           "identify": "ok", "bad_command": "answered '!'",
           "error_led": bool(result["leds"] >> 3 & 1), "divisor": divisor, "lanes": lanes,
           "bytes_sent": sum(len(s) for s in sends), "bytes_received": len(data),
           "cycles_sent_to_answered": [e - s for s, e in zip(result["sent_at"][2:], last_bytes,
                                                             strict=True)],
           "seconds_build": round(t1 - t0, 2), "seconds_simulate": round(time.time() - t1, 2)}
    return y, rep


def to_array(answers: list[list[list[int]]], net: Network) -> np.ndarray:
    """Decoded answers in the integer reference's layout (N, C, H, W) or (N, F)."""
    out = net.output_layer
    arr = np.array(answers, dtype=np.int64)  # (N, beats, C)
    if out.op in ("linear", "avgpool_global"):
        return arr[:, 0, :].reshape(len(answers), *reference_shape(net))
    c, h, w = out.out_shape
    return arr.reshape(len(answers), h, w, c).transpose(0, 3, 1, 2)


def reference_shape(net: Network) -> tuple[int, ...]:
    out = net.output_layer
    c, h, w = out.out_shape
    return (c,) if out.op == "linear" else (c, h, w)


class Board:
    """The host end of the serial link: `port` is anything with `write(bytes)` and
    `read(n) -> bytes` (a `serial.Serial`, or a test double)."""

    def __init__(self, port, net: Network):
        self.port, self.net = port, net
        self.manifest, self.digest = network_digest(net)

    def _read(self, n: int) -> bytes:
        data = self.port.read(n)
        if len(data) != n:
            raise protocol.ProtocolError(f"the board sent {len(data)} of {n} bytes before the "
                                         "timeout: is it programmed, and at this baud rate?")
        return data

    def identify(self) -> None:
        self.port.write(protocol.IDENTIFY)
        protocol.check_ident(self._read(protocol.IDENT_BYTES), self.digest)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = reference.check_inputs(self.net, x)
        answers = []
        size = 1 + protocol.output_bytes(self.manifest)
        for img in x:
            self.port.write(protocol.encode_image(img, self.manifest))
            answers += protocol.parse_answers(self._read(size), self.manifest, 1)
        return to_array(answers, self.net)
