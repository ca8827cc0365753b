"""The board top on Verilator: cocotb drives only its UART pins, with the host side's own
encoder and decoder, and the answers must equal the integer reference bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from epim.app.board import Board
from epim.app.generate import network_digest
from epim.app.verify import board_cosim
from epim.sw import data, examples, netcycles, netfile, reference

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
    """A serial port with the board's behaviour, computed by the integer reference."""

    def __init__(self, net, digest: str, short: bool = False):
        from epim.hw import protocol

        self.net, self.p, self.digest, self.short = net, protocol, digest, short
        self.pending = b""

    def write(self, data: bytes) -> None:
        p = self.p
        if data == p.IDENTIFY:
            self.pending += p.ident_reply(self.digest)
            return
        c, h, w = self.net.input_shape
        flat = np.frombuffer(data[1:], dtype=np.uint8).astype(np.int64)
        x = flat.reshape(1, h, w, c).transpose(0, 3, 1, 2)
        y = reference.run_network(self.net, x)[0]
        bits = self.net.output_layer.out_bits
        nb = p.value_bytes(bits)
        self.pending += p.OUTPUT + b"".join(
            (int(v) & (2 ** (8 * nb) - 1)).to_bytes(nb, "little") for v in y.reshape(-1))
        if self.short:
            self.pending = self.pending[:-1]

    def read(self, n: int) -> bytes:
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def test_host_side_talks_the_protocol_and_refuses_a_wrong_board():
    from epim.hw.protocol import ProtocolError

    net = netfile.parse(examples.random_network_net(0))
    c, h, w = net.input_shape
    x = np.random.default_rng(2).integers(0, 2**net.input_bits, (3, c, h, w))
    board = Board(FakeBoard(net, network_digest(net)[1]), net)
    board.identify()
    assert (board.infer(x) == reference.run_network(net, x)).all()
    other = Board(FakeBoard(net, "00" * 32), net)
    with pytest.raises(ProtocolError, match="rebuild the bitstream"):
        other.identify()
    short = Board(FakeBoard(net, network_digest(net)[1], short=True), net)
    with pytest.raises(ProtocolError, match="before the timeout"):
        short.infer(x)
