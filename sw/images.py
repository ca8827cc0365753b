"""Pack a layer into memory images: crossbar cells, IFRT, IFAT, OFAT and output-stage words.

The images are the only thing besides the network file that the hardware side reads: `$readmemh`
hex files (one word per line, most significant digit first) plus `manifest.json` with the
layer's shape parameters and every memory's file, width, depth and SHA-256. The word layouts are
documented in `docs/memory-images.md`; all fields are packed least significant first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cyclemodel import lanes_for, replicas_for, row_chunks
from .epitome import ifat_sources, n_slices, steps
from .netfile import Layer, Network
from .reference import crossbar_slices

MANIFEST_FORMAT = "epim-images-v1"
BIAS_BITS, MULT_BITS, SHIFT_BITS = 32, 31, 6
MEMORIES = ("xbar", "ifrt", "ifat", "ofat", "ostage")


class ImageError(ValueError):
    """A memory image or manifest is missing, corrupted or does not fit the hardware."""


def ubits(n: int) -> int:
    """Bits to hold the values `0 .. n-1` (at least 1)."""
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class LayerImage:
    """Everything the tile generator needs: shape parameters and the memory words."""

    params: dict
    words: dict[str, list[int]]

    def manifest(self) -> dict:
        return {"format": MANIFEST_FORMAT, "params": self.params,
                "params_sha256": params_digest(self.params),
                "memories": {m: {"file": f"{m}.hex", "width": self.params["widths"][m],
                                 "depth": len(self.words[m]),
                                 "sha256": _sha256(hex_text(self.words[m],
                                                            self.params["widths"][m]))}
                             for m in MEMORIES}}


def layer_params(net: Network, layer: Layer, max_steps: int | None = None,
                 lanes: int | dict | None = None) -> dict:
    """Shape and PIM parameters of a conv/linear layer's tile (everything but the contents)."""
    if layer.op not in ("conv", "linear"):
        raise ValueError(f"layer {layer.name!r}: op {layer.op!r} has no crossbar tile")
    pim, epi = net.pim, layer.epitome
    k = layer.kernel
    ns = n_slices(layer, pim.cell_bits)
    cin, cout = layer.in_channels, layer.out_channels
    h, w = layer.in_hw
    _, ho, wo = layer.out_shape
    g_in, g_out = layer.g_in, layer.g_out
    max_steps = max_steps or g_in * g_out
    xmax = 2**layer.in_bits - 1
    umax = 2 ** (ns * pim.cell_bits) - 1  # largest magnitude the cells can hold
    acc_bound = cin * k * k * xmax * umax
    src_bits = ubits(cin)
    p = dict(
        name=layer.name, op=layer.op, cin=cin, cout=cout, h=h, w=w, ho=ho, wo=wo, kernel=k,
        stride=layer.stride, padding=layer.padding, in_bits=layer.in_bits,
        out_bits=layer.out_bits, relu=layer.relu, weight_bits=layer.weight_bits,
        ce_in=epi.in_channels, ce_out=epi.out_channels, patch_in=epi.patch_in,
        patch_out=epi.patch_out, g_in=g_in, g_out=g_out, n_slices=ns,
        n_t=math.ceil(layer.in_bits / pim.dac_bits), max_steps=max_steps,
        acc_bits=acc_bound.bit_length() + 1, src_bits=src_bits,
        xbar_rows=pim.xbar_rows, xbar_cols=pim.xbar_cols, cell_bits=pim.cell_bits,
        dac_bits=pim.dac_bits, adc_bits=pim.adc_bits,
    )
    chunks = row_chunks(layer, pim)
    p["lanes"] = lanes_for(layer, pim, lanes)
    p["passes"] = -(-chunks // p["lanes"])
    p["widths"] = {
        "xbar": 2 * p["ce_out"] * ns * pim.cell_bits,
        "ifrt": 1 + g_out + ubits(g_in),
        "ifat": p["ce_in"] * (1 + src_bits),
        "ofat": g_out * ubits(p["ce_out"]),
        "ostage": BIAS_BITS + MULT_BITS + SHIFT_BITS,
    }
    return p


def pack_fields(values, width: int) -> int:
    """Pack non-negative field values, first at the least significant end."""
    word = 0
    for i, v in enumerate(values):
        v = int(v)
        if not 0 <= v < 2**width:
            raise ValueError(f"field value {v} does not fit {width} bits")
        word |= v << (i * width)
    return word


def compile_layer(net: Network, layer: Layer, reuse: bool = True,
                  max_steps: int | None = None, lanes: int | dict | None = None) -> LayerImage:
    """Memory images of one conv/linear layer (spec sections 3-5). `lanes`: row chunks the tile
    computes at once (`epim.sw.cyclemodel.lanes_for`; default all)."""
    p = layer_params(net, layer, max_steps, lanes)
    epi = layer.epitome
    cells = crossbar_slices(layer, p["cell_bits"])  # (2, n_s, R, Ce_out)
    per_row = cells.transpose(2, 0, 3, 1).reshape(cells.shape[2], -1)  # (R, pi, e_out, q)
    xbar = [pack_fields(row, p["cell_bits"]) for row in per_row]

    step_list = steps(epi, reuse)
    if len(step_list) > p["max_steps"]:
        raise ImageError(f"layer {layer.name!r}: {len(step_list)} IFRT steps exceed the "
                         f"tile's max_steps={p['max_steps']}")
    ifrt, ifat = [], []
    gi_shift = 1 + p["g_out"]
    for n, st in enumerate(step_list):
        mask = sum(1 << go for go in st.reuse)
        last = int(n == len(step_list) - 1)
        ifrt.append(last | (mask << 1) | (st.gi << gi_shift))
        src = ifat_sources(epi, p["cin"], st)
        ifat.append(pack_fields([(s << 1) | 1 if s >= 0 else 0 for s in src],
                                1 + p["src_bits"]))
    pad = p["max_steps"] - len(step_list)
    ifrt += [0] * pad
    ifat += [0] * pad
    ofat = [pack_fields(epi.col_offset[gi], ubits(p["ce_out"])) for gi in range(p["g_in"])]
    ostage = [(int(b) & (2**BIAS_BITS - 1)) | (int(m) << BIAS_BITS)
              | (int(s) << (BIAS_BITS + MULT_BITS))
              for b, m, s in zip(layer.bias, layer.mult, layer.shift, strict=True)]
    p = dict(p, n_steps=len(step_list), reuse=reuse)
    return LayerImage(p, {"xbar": xbar, "ifrt": ifrt, "ifat": ifat, "ofat": ofat,
                          "ostage": ostage})


def hex_text(words: list[int], width: int) -> str:
    digits = max(1, math.ceil(width / 4))
    return "".join(f"{w:0{digits}x}\n" for w in words)


def params_digest(params: dict) -> str:
    """SHA-256 of the parameters in canonical JSON: guards the manifest against edits."""
    return _sha256(json.dumps(params, sort_keys=True, separators=(",", ":")))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_images(image: LayerImage, out_dir: str | Path) -> Path:
    """Write the hex files and `manifest.json` atomically (all or nothing) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {f"{m}.hex": hex_text(image.words[m], image.params["widths"][m]) for m in MEMORIES}
    files["manifest.json"] = json.dumps(image.manifest(), indent=1) + "\n"
    write_files_atomically(out_dir, files)
    return out_dir / "manifest.json"


def make_readable(path) -> None:
    """Give a temporary file the permissions a plainly created one would have (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_files_atomically(out_dir: Path, files: dict[str, str]) -> None:
    """Write every file to a temporary name first, then rename them all into place."""
    tmp = []
    try:
        for name, text in files.items():
            fd, path = tempfile.mkstemp(prefix=f".{name}.", dir=out_dir)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            make_readable(path)
            tmp.append((path, out_dir / name))
        for path, dest in tmp:
            os.replace(path, dest)
    finally:
        for path, _ in tmp:
            if os.path.exists(path):
                os.unlink(path)


# --- Whole networks ---------------------------------------------------------------------------

NETWORK_FORMAT = "epim-network-images-v1"


def stream_bits(net: Network, name: str) -> int:
    """Bits per value of a tensor's stream (the producer's `out_bits`, or the input's bits)."""
    return net.input_bits if name == net.input_name else net.layer(name).out_bits


def compile_network(net: Network, reuse: bool = True,
                    fifo_depths: dict[str, list[int]] | None = None,
                    lanes: int | dict | None = None,
                    replicas: int | dict | None = None) -> dict:
    """Memory images of a whole network: `{"manifest": ..., "tiles": {layer: LayerImage}}`.

    The network manifest lists every unit of the accelerator with its parameters (tiles by
    folder and manifest checksum; `add` with its skip FIFO depths from the network cycle model;
    `avgpool_global`), the input and the output beat. A tile's `replicas` is the number of
    copies of it (`epim.sw.replication`). :func:`write_network` writes it.
    """
    from .netcycles import fifo_depths as measure_depths
    from .netcycles import needs_flatten, shape_of

    if fifo_depths is None:
        fifo_depths = measure_depths(net, reuse, lanes=lanes, replicas=replicas)
    tiles: dict[str, LayerImage] = {}
    units = []
    for layer in net.layers:
        head = {"name": layer.name, "op": layer.op, "inputs": list(layer.inputs)}
        if layer.op in ("conv", "linear"):
            tiles[layer.name] = compile_layer(net, layer, reuse=reuse, lanes=lanes)
            src = shape_of(net, layer.inputs[0])
            flat = ({"channels": src[0], "pixels": src[1] * src[2],
                     "bits": stream_bits(net, layer.inputs[0])}
                    if needs_flatten(net, layer) else None)
            units.append({**head, "folder": f"tiles/{layer.name}", "flatten": flat,
                          "replicas": replicas_for(layer, replicas)})
        elif layer.op == "add":
            c = layer.out_shape[0]
            units.append({**head, "channels": c, "a_bits": stream_bits(net, layer.inputs[0]),
                          "b_bits": stream_bits(net, layer.inputs[1]),
                          "out_bits": layer.out_bits, "ma": int(layer.ma), "mb": int(layer.mb),
                          "shift": int(layer.add_shift), "fifo": list(fifo_depths[layer.name])})
        elif layer.op == "avgpool_global":
            c, h, w = shape_of(net, layer.inputs[0])
            units.append({**head, "channels": c, "pixels": h * w,
                          "in_bits": stream_bits(net, layer.inputs[0]),
                          "out_bits": layer.out_bits, "mult": int(layer.pool_mult),
                          "shift": int(layer.pool_shift)})
        else:
            raise ImageError(f"layer {layer.name!r}: no hardware unit for op {layer.op!r}")
    out = net.output_layer
    c, h, w = out.out_shape
    manifest = {
        "format": NETWORK_FORMAT,
        "input": {"name": net.input_name, "channels": net.input_shape[0],
                  "height": net.input_shape[1], "width": net.input_shape[2],
                  "bits": net.input_bits},
        "output": {"name": net.output, "channels": c, "bits": out.out_bits,
                   "signed": not out.relu,
                   "beats_per_image": 1 if out.op in ("linear", "avgpool_global") else h * w},
        "units": units, "reuse": reuse, "lanes": lanes,
    }
    return {"manifest": manifest, "tiles": tiles}


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a network manifest in canonical JSON, without its own `sha256` field."""
    rest = {k: v for k, v in manifest.items() if k != "sha256"}
    return _sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")))


def write_network(compiled: dict, out_dir: str | Path) -> Path:
    """Write the tile images (`tiles/<layer>/`) and `network.json`, whose entries carry each
    tile manifest's SHA-256, so a tile folder from another compile is refused."""
    out_dir = Path(out_dir)
    manifest = json.loads(json.dumps(compiled["manifest"]))
    for unit in manifest["units"]:
        if "folder" in unit:
            path = write_images(compiled["tiles"][unit["name"]], out_dir / unit["folder"])
            unit["manifest_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["units_sha256"] = _sha256(json.dumps(manifest["units"], sort_keys=True,
                                                  separators=(",", ":")))
    # ... and one over everything else too (input, output, reuse, lanes): nothing in the
    # manifest can be edited unnoticed
    manifest["sha256"] = manifest_digest(manifest)
    write_files_atomically(out_dir, {"network.json": json.dumps(manifest, indent=1) + "\n"})
    return out_dir / "network.json"
