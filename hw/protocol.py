"""The board's serial protocol (8N1 UART), shared by the RTL (`epim.hw.board`), the host command
(`epim board run`) and the cocotb board test. Plain Python: no Amaranth, no torch.

Host to board, one command byte each:

- ``?`` (0x3F) identify. The board answers ``EPIM``, the protocol version (1) and the first
  8 bytes of the `units_sha256` of the network images it was built from (13 bytes), so the host
  can refuse to talk to a board that holds another network.
- ``I`` (0x49) image. Exactly `height * width * channels` bytes follow, pixels in raster order
  (y, then x) and channels within a pixel, one byte per value (the low `bits` bits; the host
  refuses larger values). Several images may follow each other without waiting.
- anything else: the board answers ``!`` and lights its error LED.

Board to host, per image, in the order the images came: ``O`` (0x4F), then the output layer's
`beats_per_image` beats, each `channels` values of `ceil(bits / 8)` bytes, least significant
byte first, two's complement when the output is signed.
"""

from __future__ import annotations

import math

IDENTIFY, IMAGE, OUTPUT, ERROR = b"?", b"I", b"O", b"!"
MAGIC = b"EPIM"
VERSION = 1
DIGEST_BYTES = 8
IDENT_BYTES = len(MAGIC) + 1 + DIGEST_BYTES


class ProtocolError(RuntimeError):
    """The board answered something the protocol does not allow."""


def ident_reply(units_sha256: str) -> bytes:
    return MAGIC + bytes([VERSION]) + bytes.fromhex(units_sha256)[:DIGEST_BYTES]


def value_bytes(bits: int) -> int:
    return max(1, math.ceil(bits / 8))


def output_bytes(manifest: dict) -> int:
    """Bytes after the ``O`` of one image's answer."""
    out = manifest["output"]
    return out["beats_per_image"] * out["channels"] * value_bytes(out["bits"])


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
        if out["signed"] and v >> (bits - 1):
            v -= 1 << bits
        values.append(v)
    c = out["channels"]
    return [values[b * c:(b + 1) * c] for b in range(out["beats_per_image"])]


def parse_answers(data: bytes, manifest: dict, images: int) -> list[list[list[int]]]:
    """Split the board's answers to `images` images (each ``O`` + payload) and decode them."""
    size = 1 + output_bytes(manifest)
    if len(data) != images * size:
        raise ProtocolError(f"{len(data)} bytes for {images} image(s), expected "
                            f"{images * size}")
    out = []
    for k in range(images):
        chunk = data[k * size:(k + 1) * size]
        if chunk[:1] != OUTPUT:
            raise ProtocolError(f"answer {k} starts with {chunk[:1]!r}, not {OUTPUT!r}")
        out.append(decode_output(chunk[1:], manifest))
    return out


def check_ident(reply: bytes, units_sha256: str) -> None:
    """Refuse an identity reply that is not this protocol's or names other network images."""
    want = ident_reply(units_sha256)
    if reply[:len(MAGIC)] != MAGIC:
        raise ProtocolError(f"the board answered {reply!r} to '?': not an EPIM board (or the "
                            "wrong serial port or baud rate)")
    if reply[len(MAGIC)] != VERSION:
        raise ProtocolError(f"the board speaks protocol version {reply[len(MAGIC)]}, this "
                            f"host {VERSION}")
    if reply != want:
        raise ProtocolError(f"the board holds network images {reply[-DIGEST_BYTES:].hex()}..., "
                            f"the network file compiles to {want[-DIGEST_BYTES:].hex()}...: "
                            "rebuild the bitstream or pass the board's network file")
