"""The board's serial protocol (8N1 UART), shared by the RTL (`epim.hw.board`), the host command
(`epim board run`) and the cocotb board test. Plain Python: no Amaranth, no torch.

Host to board, one command byte each:

- ``?`` (0x3F) identify. The board answers ``EPIM``, the protocol version (3) and the first
  8 bytes of the `units_sha256` of the network images it was built from (13 bytes), so the host
  can refuse to talk to a board that holds another network. It also restarts the answers'
  sequence numbers at 0 and the programming checksum: identify before programming or sending
  images.
- ``P`` (0x50) program one word. `prog_bytes` bytes follow: the accelerator's programming word
  (`epim.contract.images.network_prog_fields`: tile, memory, address, data), least significant
  byte first. The board writes it through the network's programming port; the tiles take words
  only while they are idle, so program before sending images.
- ``C`` (0x43) checksum. The board answers ``C`` and the CRC-16 (below) of every ``P`` word's
  bytes since the last identify, two bytes, least significant first: the host compares it with
  its own, so a word corrupted on the line is caught before any image is computed.
- ``I`` (0x49) image. Exactly `height * width * channels` bytes follow, pixels in raster order
  (y, then x) and channels within a pixel, one byte per value (the low `bits` bits; the host
  refuses larger values). Several images may follow each other without waiting.
- anything else: the board answers ``!`` and lights its error LED.

Board to host, per image, in the order the images came, one frame:

- ``O`` (0x4F);
- the sequence number, one byte: 0 for the first answer after an identify, then counting up
  (modulo 256), so a lost or repeated answer is caught;
- the payload's length in bytes, two bytes, least significant first;
- the payload: the output layer's `beats_per_image` beats, each `channels` values of
  `ceil(bits / 8)` bytes, least significant byte first, two's complement when the output is
  signed;
- a CRC-16 (CCITT: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR) over
  the sequence number, the length and the payload, two bytes, least significant first.

An image value is one byte, so the board takes networks of at most 8 input bits; a payload is
at most 65 535 bytes. `check_board` refuses a network that does not fit.
"""

from __future__ import annotations

import math

from ..contract import beats

IDENTIFY, IMAGE, OUTPUT, ERROR = b"?", b"I", b"O", b"!"
PROGRAM, CHECK = b"P", b"C"
MAGIC = b"EPIM"
VERSION = 3
DIGEST_BYTES = 8
IDENT_BYTES = len(MAGIC) + 1 + DIGEST_BYTES
HEADER_BYTES = 4  # "O", sequence number, length (2)
CRC_BYTES = 2
CRC_POLY, CRC_INIT = 0x1021, 0xFFFF
MAX_INPUT_BITS = 8
MAX_PAYLOAD = 2**16 - 1


class ProtocolError(RuntimeError):
    """The board answered something the protocol does not allow."""


CHECK_BYTES = 3  # "C", CRC (2)


def prog_bytes(prog_bits: int) -> int:
    """Bytes of one programming word of `prog_bits` bits after the ``P``."""
    return max(1, math.ceil(prog_bits / 8))


def encode_program(words: list[int], prog_bits: int) -> bytes:
    """The ``P`` commands writing `words` (programming words of `prog_bits` bits)."""
    n = prog_bytes(prog_bits)
    out = bytearray()
    for w in words:
        if not 0 <= w < 2**prog_bits:
            raise ValueError(f"programming word {w:#x} does not fit {prog_bits} bits")
        out += PROGRAM + w.to_bytes(n, "little")
    return bytes(out)


def program_checksum(words: list[int], prog_bits: int) -> int:
    """The CRC-16 that ``C`` answers after `words` were programmed (from an identify)."""
    n = prog_bytes(prog_bits)
    return crc16(b"".join(w.to_bytes(n, "little") for w in words))


def check_checksum(reply: bytes, words: list[int], prog_bits: int) -> None:
    """Refuse a ``C`` answer that is malformed or does not match the words sent."""
    if len(reply) != CHECK_BYTES or reply[:1] != CHECK:
        raise ProtocolError(f"the board answered {reply!r} to 'C', not 'C' and a CRC")
    got, want = int.from_bytes(reply[1:], "little"), program_checksum(words, prog_bits)
    if got != want:
        raise ProtocolError(f"the board's programming checksum is {got:#06x}, the words sent "
                            f"give {want:#06x}: a word was lost or corrupted on the line "
                            "(program again)")


def ident_reply(units_sha256: str) -> bytes:
    return MAGIC + bytes([VERSION]) + bytes.fromhex(units_sha256)[:DIGEST_BYTES]


def value_bytes(bits: int) -> int:
    return max(1, math.ceil(bits / 8))


def output_bytes(manifest: dict) -> int:
    """Bytes after the ``O`` of one image's answer."""
    out = manifest["output"]
    return out["beats_per_image"] * out["channels"] * value_bytes(out["bits"])


def answer_bytes(manifest: dict) -> int:
    """Bytes of one image's whole answer frame."""
    return HEADER_BYTES + output_bytes(manifest) + CRC_BYTES


def crc16_step(crc: int, byte: int) -> int:
    """The CRC after one more byte (most significant bit first)."""
    crc ^= byte << 8
    for _ in range(8):
        crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def crc16(data: bytes) -> int:
    crc = CRC_INIT
    for b in data:
        crc = crc16_step(crc, b)
    return crc


def frame(seq: int, payload: bytes) -> bytes:
    """One answer frame (what the board sends for one image)."""
    body = bytes([seq % 256]) + len(payload).to_bytes(2, "little") + payload
    return OUTPUT + body + crc16(body).to_bytes(2, "little")


def check_board(manifest: dict) -> None:
    """Refuse a network the board's protocol cannot carry (ValueError)."""
    bits = manifest["input"]["bits"]
    if bits > MAX_INPUT_BITS:
        raise ValueError(f"the network takes {bits}-bit inputs; the board's protocol carries "
                         f"one byte per input value (at most {MAX_INPUT_BITS} bits)")
    if output_bytes(manifest) > MAX_PAYLOAD:
        raise ValueError(f"an answer of {output_bytes(manifest)} bytes; the board's frames "
                         f"carry at most {MAX_PAYLOAD}")


def encode_image(x, manifest: dict) -> bytes:
    """The ``I`` command for one image `x` of shape (C, H, W) of unsigned integers."""
    inp = manifest["input"]
    c, h, w, bits = inp["channels"], inp["height"], inp["width"], inp["bits"]
    shape = tuple(getattr(x, "shape", ()))
    if shape != (c, h, w):
        raise ValueError(f"an image of shape {shape}, the network takes {(c, h, w)}")
    flat = []
    for y in range(h):
        for xx in range(w):
            for ch in range(c):
                v = int(x[ch][y][xx])
                if not 0 <= v < 2 ** bits:
                    raise ValueError(f"input value {v} at (channel {ch}, y {y}, x {xx}) does "
                                     f"not fit the network's {bits}-bit inputs")
                flat.append(v)
    return IMAGE + bytes(flat)


def decode_output(payload: bytes, manifest: dict) -> list[list[int]]:
    """One image's answer (after the ``O``) as beats of values."""
    out = manifest["output"]
    nb, bits = value_bytes(out["bits"]), out["bits"]
    if len(payload) != output_bytes(manifest):
        raise ProtocolError(f"an answer of {len(payload)} bytes, expected "
                            f"{output_bytes(manifest)}")
    values = []
    for k in range(0, len(payload), nb):
        v = int.from_bytes(payload[k:k + nb], "little") & ((1 << bits) - 1)
        values.append(beats.to_signed(v, bits) if out["signed"] else v)
    c = out["channels"]
    return [values[b * c:(b + 1) * c] for b in range(out["beats_per_image"])]


def parse_answers(data: bytes, manifest: dict, images: int,
                  first_seq: int = 0) -> list[list[list[int]]]:
    """Check and decode the board's answer frames to `images` images, the first carrying
    sequence number `first_seq`: a wrong start byte, a sequence number out of order (a lost or
    repeated answer), a wrong length or a CRC mismatch is a ProtocolError."""
    size = answer_bytes(manifest)
    if len(data) != images * size:
        raise ProtocolError(f"{len(data)} bytes for {images} image(s), expected "
                            f"{images * size} ({size} per answer)")
    out = []
    for k in range(images):
        chunk = data[k * size:(k + 1) * size]
        seq, want = chunk[1], (first_seq + k) % 256
        length = int.from_bytes(chunk[2:4], "little")
        if chunk[:1] != OUTPUT:
            raise ProtocolError(f"answer {k} starts with {chunk[:1]!r}, not {OUTPUT!r}")
        if seq != want:
            raise ProtocolError(f"answer {k} carries sequence number {seq}, expected {want}: "
                                "an answer was lost or repeated")
        if length != output_bytes(manifest):
            raise ProtocolError(f"answer {k} says {length} payload bytes, the network's "
                                f"output is {output_bytes(manifest)}")
        body, crc = chunk[1:-CRC_BYTES], int.from_bytes(chunk[-CRC_BYTES:], "little")
        if crc16(body) != crc:
            raise ProtocolError(f"answer {k}: CRC mismatch (sent {crc:#06x}, computed "
                                f"{crc16(body):#06x}): the bytes were corrupted on the line")
        out.append(decode_output(chunk[HEADER_BYTES:-CRC_BYTES], manifest))
    return out


def check_ident(reply: bytes, units_sha256: str) -> None:
    """Refuse an identity reply that is not this protocol's or names other network images."""
    want = ident_reply(units_sha256)
    if reply[:len(MAGIC)] != MAGIC:
        raise ProtocolError(f"the board answered {reply!r} to '?': not an EPIM board, or the "
                            "wrong serial port or baud rate, or bytes left from an earlier "
                            "session (the host discards what is waiting before it asks)")
    if reply[len(MAGIC)] != VERSION:
        raise ProtocolError(f"the board speaks protocol version {reply[len(MAGIC)]}, this "
                            f"host {VERSION}")
    if reply != want:
        raise ProtocolError(f"the board holds network images {reply[-DIGEST_BYTES:].hex()}..., "
                            f"the network file compiles to {want[-DIGEST_BYTES:].hex()}...: "
                            "rebuild the bitstream or pass the board's network file")
