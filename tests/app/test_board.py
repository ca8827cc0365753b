"""The board top on Verilator: cocotb drives only its UART pins, with the host side's own
encoder and decoder, and the answers must equal the integer reference bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from epim.app.board import Board
from epim.app.generate import network_digest
from epim.app.verify import board_cosim
from epim.hw import protocol
from epim.sw.chip import data, examples, netcycles, netfile, reference

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

# the ULX3S build's model (app/fpga.py)
COMMITTED = (Path(__file__).resolve().parents[2] / "examples" / "mnist-epim-cnn-r4-nowrap"
             / "net.json")


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("board")


def test_board_top_on_a_random_residual_network(build_root):
    net = netfile.parse(examples.random_network_net(0))
    c, h, w = net.input_shape
    x = np.random.default_rng(1).integers(0, 2**net.input_bits, (4, c, h, w))
    y, rep = board_cosim(net, x, build_root / "random", divisor=5)
    assert rep["match"] and rep["matching_images"] == 4
    assert rep["error_led"]  # the byte that is no command lit it
    assert (y == reference.run_network(net, x)).all()


def test_board_top_on_the_committed_mnist_model_with_real_test_images(build_root):
    net = netfile.load(COMMITTED)
    x, labels = data.load("mnist", "test", 5)
    # with the chunk lanes the FPGA build uses
    y, rep = board_cosim(net, x.astype(np.int64), build_root / "mnist", divisor=8,
                         lanes=netcycles.balanced_lanes(net))
    assert rep["images"] == 5 and rep["matching_images"] == 5 and rep["match"]
    assert (y.argmax(1) == reference.run_network(net, x.astype(np.int64)).argmax(1)).all()


class FakeBoard:
    """A serial port with the board's behaviour, computed by the integer reference; `fault`
    makes it misbehave: "short" (an answer one byte short), "repeat" (the second answer sent
    again in place of the third), "flip" (a bit flipped in the second answer's payload),
    "stale" (bytes from an earlier session waiting in the port)."""

    def __init__(self, net, digest: str, fault: str | None = None):
        self.net, self.digest, self.fault = net, digest, fault
        self.pending = b"O\x07junk" if fault == "stale" else b""
        self.seq, self.answers = 0, []

    def reset_input_buffer(self) -> None:
        self.pending = b""

    def write(self, data: bytes) -> None:
        if data == protocol.IDENTIFY:
            self.pending += protocol.ident_reply(self.digest)
            self.seq = 0
            return
        c, h, w = self.net.input_shape
        flat = np.frombuffer(data[1:], dtype=np.uint8).astype(np.int64)
        x = flat.reshape(1, h, w, c).transpose(0, 3, 1, 2)
        y = reference.run_network(self.net, x)[0]
        nb = protocol.value_bytes(self.net.output_layer.out_bits)
        payload = b"".join((int(v) & (2 ** (8 * nb) - 1)).to_bytes(nb, "little")
                           for v in y.reshape(-1))
        answer = protocol.frame(self.seq, payload)
        self.seq += 1
        if self.fault == "flip" and len(self.answers) == 1:
            answer = answer[:6] + bytes([answer[6] ^ 4]) + answer[7:]
        if self.fault == "repeat" and len(self.answers) == 2:
            answer = self.answers[1]
        if self.fault == "short":
            answer = answer[:-1]
        self.answers.append(answer)
        self.pending += answer

    def read(self, n: int) -> bytes:
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def test_host_side_talks_the_protocol_and_refuses_a_wrong_board():
    net = netfile.parse(examples.random_network_net(0))
    c, h, w = net.input_shape
    x = np.random.default_rng(2).integers(0, 2**net.input_bits, (3, c, h, w))
    digest = network_digest(net)[1]
    board = Board(FakeBoard(net, digest, "stale"), net)
    board.identify()  # (the stale bytes are discarded first)
    assert (board.infer(x) == reference.run_network(net, x)).all()
    other = Board(FakeBoard(net, "00" * 32), net)
    with pytest.raises(protocol.ProtocolError, match="rebuild the bitstream"):
        other.identify()
    for fault, message in [("short", "sent 9 of 10 bytes in 0.2 s"),
                           ("repeat", "sequence number 1, expected 2: an answer was lost or "
                                      "repeated"),
                           ("flip", "answer 0: CRC mismatch")]:
        bad = Board(FakeBoard(net, digest, fault), net, timeout=0.2)
        bad.identify()
        with pytest.raises(protocol.ProtocolError, match=message):
            bad.infer(x)
