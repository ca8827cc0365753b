"""The host side of the board's serial protocol (`epim board run`): identify the board, send
images, decode the answers into the integer reference's layout. `epim.app.verify.board_cosim`
decodes the Verilator-run board top's answers with the same code."""

from __future__ import annotations

import time

import numpy as np

from ..contract.ops import Op, spec
from ..hw import protocol
from ..sw.chip import reference
from ..sw.chip.netfile import Network
from .generate import network_digest

BOARD_VERILOG = "epim_board.v"
BAD_COMMAND = b"Z"


def to_array(answers: list[list[list[int]]], net: Network) -> np.ndarray:
    """Decoded answers in the integer reference's layout (N, C, H, W) or (N, F)."""
    out = net.output_layer
    arr = np.array(answers, dtype=np.int64)  # (N, beats, C)
    if spec(out.op).one_beat:
        return arr[:, 0, :].reshape(len(answers), *reference_shape(net))
    c, h, w = out.out_shape
    return arr.reshape(len(answers), h, w, c).transpose(0, 3, 1, 2)


def network_program(net: Network, lanes: int | dict | None = None) -> tuple[list[int], int]:
    """`(words, bits)`: every memory word of every tile of the network's images compiled with
    `lanes` (as the bitstream was built), as programming words of `bits` bits."""
    import tempfile

    from ..hw.network import load_network
    from ..sim.cosim import network_program_beats, network_program_bits
    from ..sw.chip import images

    with tempfile.TemporaryDirectory(prefix="epim-program-") as tmp:
        images.write_network(images.compile_network(net, lanes=lanes), tmp)
        loaded = load_network(tmp)
        return network_program_beats(loaded), network_program_bits(loaded)


def reference_shape(net: Network) -> tuple[int, ...]:
    out = net.output_layer
    c, h, w = out.out_shape
    return (c,) if out.op == Op.LINEAR else (c, h, w)


class Board:
    """The host end of the serial link: `port` is anything with `write(bytes)` and
    `read(n) -> bytes` (a `serial.Serial`, or a test double). Every read waits at most
    `timeout` seconds in all, whatever the port's own timeout."""

    def __init__(self, port, net: Network, timeout: float = 10.0,
                 lanes: int | dict | None = None):
        self.port, self.net, self.timeout = port, net, timeout
        self.manifest, self.digest = network_digest(net, lanes)
        protocol.check_board(self.manifest)
        self.seq = 0  # the sequence number of the next answer

    def _read(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout
        data = b""
        while len(data) < n and time.monotonic() < deadline:
            data += self.port.read(n - len(data))
        if len(data) != n:
            raise protocol.ProtocolError(f"the board sent {len(data)} of {n} bytes in "
                                         f"{self.timeout:g} s: is it programmed, and at this "
                                         "baud rate?")
        return data

    def identify(self) -> None:
        """Check that the board holds this network; restarts the answers' numbering."""
        if hasattr(self.port, "reset_input_buffer"):
            self.port.reset_input_buffer()  # bytes left from an earlier session
        self.port.write(protocol.IDENTIFY)
        protocol.check_ident(self._read(protocol.IDENT_BYTES), self.digest)
        self.seq = 0

    def program(self, words: list[int], prog_bits: int) -> None:
        """Write `words` (the network's programming words, `network_program`) through the link
        and check the board's programming checksum: a word lost or corrupted on the line is a
        ProtocolError. Identify first (it restarts the checksum)."""
        self.port.write(protocol.encode_program(words, prog_bits))
        self.port.write(protocol.CHECK)
        protocol.check_checksum(self._read(protocol.CHECK_BYTES), words, prog_bits)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = reference.check_inputs(self.net, x)
        answers = []
        size = protocol.answer_bytes(self.manifest)
        for img in x:
            self.port.write(protocol.encode_image(img, self.manifest))
            answers += protocol.parse_answers(self._read(size), self.manifest, 1, self.seq)
            self.seq = (self.seq + 1) % 256
        return to_array(answers, self.net)
