"""Pack a layer into memory images: crossbar cells, IFRT, IFAT, OFAT and output-stage words.

The images are the only thing besides the network file that the hardware side reads: `$readmemh`
hex files (one word per line, most significant digit first) plus `manifest.json` with the
layer's shape parameters and every memory's file, width, depth and SHA-256. The word layouts are
documented in `docs/memory-images.md`; all fields are packed least significant first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...contract import beats, geometry
from ...contract.files import write_files_atomically
from ...contract.images import (
    MANIFEST_FORMAT,
    MEMORIES,
    NETWORK_FORMAT,
    ImageError,
    canonical,
    hex_text,
    ifat_fields,
    ifrt_fields,
    manifest_digest,
    ofat_fields,
    ostage_fields,
    pack,
    pack_fields,
    params_digest,
    sha256_text,
    ubits,
)
from ...contract.ops import TILE_OPS
from ...contract.params import (
    TileParams,
    unit_to_dict,
)
from .cyclemodel import cols_for, lanes_for
from .epitome import ifat_sources, n_slices, steps
from .netfile import Layer, Network
from .reference import crossbar_slices

__all__ = ["ImageError", "LayerImage", "compile_layer", "compile_network", "layer_params",
           "manifest_digest", "write_images", "write_network"]


@dataclass(frozen=True)
class LayerImage:
    """Everything the tile generator needs: shape parameters and the memory words."""

    params: TileParams
    words: dict[str, list[int]]

    def manifest(self) -> dict:
        params = self.params.to_dict()
        widths = self.params.widths
        return {"format": MANIFEST_FORMAT, "params": params,
                "params_sha256": params_digest(params),
                "memories": {m: {"file": f"{m}.hex", "width": widths[m],
                                 "depth": len(self.words[m]),
                                 "sha256": sha256_text(hex_text(self.words[m], widths[m]))}
                             for m in MEMORIES}}


def layer_params(net: Network, layer: Layer, max_steps: int | None = None,
                 lanes: int | dict | None = None, n_steps: int = 0,
                 reuse: bool = True) -> TileParams:
    """Shape and PIM parameters of a conv/linear layer's tile (everything but the contents)."""
    if layer.op not in TILE_OPS:
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
    return TileParams(
        name=layer.name, op=layer.op, cin=cin, cout=cout, h=h, w=w, ho=ho, wo=wo, kernel=k,
        stride=layer.stride, padding=layer.padding, in_bits=layer.in_bits,
        out_bits=layer.out_bits, relu=layer.relu, weight_bits=layer.weight_bits,
        ce_in=epi.in_channels, ce_out=epi.out_channels, patch_in=epi.patch_in,
        patch_out=epi.patch_out, g_in=g_in, g_out=g_out, n_slices=ns,
        n_t=geometry.dac_slices(layer.in_bits, pim.dac_bits), max_steps=max_steps,
        acc_bits=acc_bound.bit_length() + 1, src_bits=ubits(cin),
        xbar_rows=pim.xbar_rows, xbar_cols=pim.xbar_cols, cell_bits=pim.cell_bits,
        dac_bits=pim.dac_bits, adc_bits=pim.adc_bits, lanes=lanes_for(layer, pim, lanes),
        cols=cols_for(pim), n_steps=n_steps, reuse=reuse)


def compile_layer(net: Network, layer: Layer, reuse: bool = True,
                  max_steps: int | None = None, lanes: int | dict | None = None,
                  faults=None) -> LayerImage:
    """Memory images of one conv/linear layer (spec sections 3-5). `lanes`: row chunks the tile
    computes in a cycle (`epim.sw.chip.cyclemodel.lanes_for`; default 1). `faults`: the layer's
    stuck cells (`epim.sw.chip.faults`, physical coordinates), written into the crossbar image as
    the levels they are stuck at, to run a faulty chip on the unchanged hardware."""
    epi = layer.epitome
    step_list = steps(epi, reuse)
    limit = max_steps or layer.g_in * layer.g_out
    if len(step_list) > limit:
        raise ImageError(f"layer {layer.name!r}: {len(step_list)} IFRT steps exceed the "
                         f"tile's max_steps={limit}")
    p = layer_params(net, layer, max_steps, lanes, n_steps=len(step_list), reuse=reuse)
    cells = crossbar_slices(layer, p.cell_bits)  # (2, n_s, R, Ce_out)
    if faults is not None:
        from .faults import cell_faults, faulty_levels

        cells = faulty_levels(cells, cell_faults(layer, net.pim, faults), p.cell_bits)
    # a row's cells in the order of `xbar_fields`: polarity, then column, then slice
    per_row = cells.transpose(2, 0, 3, 1).reshape(cells.shape[2], -1).tolist()
    xbar = [pack_fields(row, p.cell_bits) for row in per_row]
    ifrt_l, ifat_l = ifrt_fields(p), ifat_fields(p)
    ifrt, ifat = [], []
    for n, st in enumerate(step_list):
        ifrt.append(pack(ifrt_l, {"last": int(n == len(step_list) - 1),
                                  "mask": sum(1 << go for go in st.reuse), "gi": st.gi}))
        src = ifat_sources(epi, p.cin, st)
        fields = {}
        for e, s in enumerate(src):
            if s >= 0:
                fields[f"active{e}"], fields[f"src{e}"] = 1, s
        ifat.append(pack(ifat_l, fields))
    pad = p.max_steps - len(step_list)
    ifrt += [0] * pad
    ifat += [0] * pad
    ofat_l = ofat_fields(p)
    ofat = [pack(ofat_l, {f"base{go}": b for go, b in enumerate(epi.col_offset[gi])})
            for gi in range(p.g_in)]
    ostage_l = ostage_fields(p)
    ostage = [pack(ostage_l, {"bias": b, "mult": m, "shift": s})
              for b, m, s in zip(layer.bias, layer.mult, layer.shift, strict=True)]
    return LayerImage(p, {"xbar": xbar, "ifrt": ifrt, "ifat": ifat, "ofat": ofat,
                          "ostage": ostage})


def write_images(image: LayerImage, out_dir: str | Path) -> Path:
    """Write the hex files and `manifest.json` atomically (all or nothing) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    widths = image.params.widths
    files = {f"{m}.hex": hex_text(image.words[m], widths[m]) for m in MEMORIES}
    files["manifest.json"] = json.dumps(image.manifest(), indent=1) + "\n"
    write_files_atomically(out_dir, files)
    return out_dir / "manifest.json"


# --- Whole networks ---------------------------------------------------------------------------

def stream_bits(net: Network, name: str) -> int:
    """Bits per value of a tensor's stream (the producer's `out_bits`, or the input's bits)."""
    return net.input_bits if name == net.input_name else net.layer(name).out_bits


def compile_network(net: Network, reuse: bool = True,
                    fifo_depths: dict[str, list[int]] | None = None,
                    lanes: int | dict | None = None,
                    replicas: int | dict | None = None,
                    faults: dict | None = None) -> dict:
    """Memory images of a whole network: `{"manifest": ..., "tiles": {layer: LayerImage}}`.

    The network manifest lists every unit of the accelerator with its parameters (tiles by
    folder and manifest checksum; `add` with its skip FIFO depths from the network cycle model
    and which inputs are signed; `avgpool_global`; `maxpool`), the input and the output beat.
    A tile's `replicas` is the number of copies of it (`epim.sw.chip.replication`). `faults`: stuck
    cells per layer (`compile_layer`). :func:`write_network` writes it.
    """
    from .netcycles import fifo_depths as measure_depths

    if fifo_depths is None:
        fifo_depths = measure_depths(net, reuse, lanes=lanes, replicas=replicas)
    from .ops import chip_op, context

    tiles: dict[str, LayerImage] = {}
    ctx = context(reuse=reuse, lanes=lanes, replicas=replicas, faults=faults,
                  fifo_depths=fifo_depths, tiles=tiles)
    # each op's unit parameters (`epim.sw.chip.ops`)
    units = [chip_op(layer.op).unit(net, layer, ctx) for layer in net.layers]
    out = net.output_layer
    c = out.out_shape[0]
    manifest = {
        "format": NETWORK_FORMAT,
        "input": {"name": net.input_name, "channels": net.input_shape[0],
                  "height": net.input_shape[1], "width": net.input_shape[2],
                  "bits": net.input_bits},
        "output": {"name": net.output, "channels": c, "bits": out.out_bits,
                   "signed": not out.relu,
                   "beats_per_image": beats.beats_per_image(out.op, out.out_shape)},
        "units": [unit_to_dict(u) for u in units], "reuse": reuse, "lanes": lanes,
    }
    return {"manifest": manifest, "tiles": tiles}


def write_network(compiled: dict, out_dir: str | Path) -> Path:
    """Write the tile images (`tiles/<layer>/`) and `network.json`, whose entries carry each
    tile manifest's SHA-256, so a tile folder from another compile is refused."""
    out_dir = Path(out_dir)
    manifest = json.loads(json.dumps(compiled["manifest"]))
    for unit in manifest["units"]:
        if "folder" in unit:
            path = write_images(compiled["tiles"][unit["name"]], out_dir / unit["folder"])
            unit["manifest_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["units_sha256"] = sha256_text(canonical(manifest["units"]))
    # ... and one over everything else too (input, output, reuse, lanes): nothing in the
    # manifest can be edited unnoticed
    manifest["sha256"] = manifest_digest(manifest)
    write_files_atomically(out_dir, {"network.json": json.dumps(manifest, indent=1) + "\n"})
    return out_dir / "network.json"
