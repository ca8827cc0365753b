"""The PIM cost model: crossbars, cell area, activations, latency and energy of epitome layers.

Per layer and per network, from shapes alone (a network file, a PyTorch model's shapes, or a
table such as :func:`resnet50`):

- **crossbars**: spec section 3; **cell area**: crossbars x rows x columns x the cell's area;
- **activations** per image: output pixels x IFRT steps, with reuse and without (one step per
  block);
- **latency**: the tile's cycles per image alone (latency of one image, and steady-state cycles
  per image when images stream), from the RTL's own cycle model (`epim.sw.chip.cyclemodel`, the
  replay of the tile's schedule), so the estimate and the hardware cannot drift apart; in
  ns at the digital clock;
- **energy** per image, split into DAC, cell array, ADC, shift-and-add, buffers and tables.

Every constant is in :data:`CONSTANTS` with its source (MNSIM 2.0's default device tables;
`docs/cost.md` has the table); a JSON file overrides any of them (`epim cost --constants F`).

What the model counts, per crossbar activation (one input vector, `n_t` DAC cycles): for each
DAC cycle every crossbar of the layer fires (both polarities, all row chunks and column blocks):
`R * blocks * 2` DAC conversions (`R = Ce_in*k*k` rows, one driver per row of each crossbar),
`R * C * 2` cell reads (`C = Ce_out * n_s` physical columns), `chunks * C * 2` ADC conversions
and as many shift-and-add operations. Buffers: the image loaded into the tile's line buffer,
`R` activations read per crossbar activation, the output written once. Tables: per activation
one IFRT entry, `Ce_in` IFAT entries and `|B| * p_out` OFAT entries (2 bytes each).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from ...contract import geometry
from ...contract.ops import TILE_OPS, Op
from .cyclemodel import TileTiming, replicas_for, row_chunks, schedule, tile_timing
from .epitome import crossbar_count, n_slices, steps
from .netfile import PIM, Epitome, Layer, Network, load


@dataclass(frozen=True)
class Constants:
    """Device and circuit constants. Defaults: MNSIM 2.0 (thu-nics/MNSIM-2.0, `SimConfig.ini`
    and `MNSIM/Hardware_Model/*.py`); `docs/cost.md` lists each source."""

    clock_mhz: float = 100.0  # SimConfig.ini [Digital module] Digital_Frequency
    cell_area_um2: float = 1.44  # [Device level] Device_Area, 1T1R
    read_voltage: float = 0.5  # [Device level] Read_Voltage (high level)
    r_lrs_ohm: float = 3e4  # [Device level] Device_Resistance, low-resistance state
    r_hrs_ohm: float = 1.5e5  # high-resistance state
    cell_read_ns: float = 3.16  # [Device level] Read_Latency
    dac_energy_pj: float = 0.0039  # DAC.py choice 1 (1-bit): 0.0039 mW at 1 GS/s, ISAAC
    dac_area_um2: float = 0.166  # DAC.py choice 1
    adc_power_mw: float = 4.0  # ADC.py choice 3: 8-bit two-step SAR, 1.1 GS/s, 4 mW
    adc_rate_gsps: float = 1.1
    adc_ref_bits: int = 8
    adc_area_um2: float = 1650.0
    shift_add_pj: float = 0.594  # ShiftReg.py 16-bit: 0.124 mW at 65 nm x (45/65)^2, 100 MHz
    buffer_read_pj_per_byte: float = 0.00547  # Buffer.py SRAM: 0.06 mW, 8 B at 1372 MHz
    buffer_write_pj_per_byte: float = 0.00574  # 0.06 mW, 8 B at 1306 MHz (MNSIM's write
    # energy uses the read power)
    table_read_pj_per_byte: float = 0.00547  # assumed: the same SRAM as the buffers

    @property
    def cell_read_pj(self) -> float:
        """One cell read: `V**2 / sqrt(R_lrs * R_hrs)` over the read latency (MNSIM's
        behaviour-level read power, with its default load)."""
        watts = self.read_voltage**2 / math.sqrt(self.r_lrs_ohm * self.r_hrs_ohm)
        return watts * self.cell_read_ns * 1e3  # W x ns = nJ; x 1e3 = pJ

    @property
    def adc_energy_pj(self) -> float:
        """One conversion: power x `(bits + 2) / rate` (MNSIM's ADC latency)."""
        ns = (self.adc_ref_bits + 2) / self.adc_rate_gsps
        return self.adc_power_mw * ns  # mW x ns = pJ

    @classmethod
    def from_file(cls, path: str | Path | None) -> Constants:
        """Defaults, overridden by the numbers of a JSON object in `path` (names as fields)."""
        if not path:
            return cls()
        from ...contract.files import load_json

        obj = load_json(path, "a JSON object of constants", 2**20)
        known = {f.name for f in fields(cls)}
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: must be a JSON object of constants by name "
                             f"(known: {', '.join(sorted(known))}), not a {type(obj).__name__}")
        bad = sorted(set(obj) - known)
        if bad:
            raise ValueError(f"{path}: unknown constant(s) {', '.join(bad)}; known: "
                             f"{', '.join(sorted(known))}")
        for k, v in obj.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1e15:
                raise ValueError(f"{path}: constant {k!r} must be a positive number up to "
                                 f"1e15, got {str(v)[:40]}")
        return replace(cls(), **obj)


CONSTANTS = Constants()
TABLE_ENTRY_BYTES = 2
ENERGY_PARTS = ("dac", "cells", "adc", "shift_add", "buffers", "tables")


@dataclass
class LayerCost:
    name: str
    op: str
    crossbars: int
    dense8_crossbars: int
    cell_area_mm2: float
    activations: int  # crossbar activations per image, with IFRT reuse
    activations_no_reuse: int
    cycles_latency: int  # one image through the tile alone
    cycles_per_image: float  # steady state, images streaming through the tile alone
    ideal_cycles: int  # crossbar-busy cycles per image (of the busiest copy)
    energy_pj: dict = field(default_factory=dict)
    replicas: int = 1  # copies of the tile (`epim.sw.chip.replication`)

    @property
    def energy_total_pj(self) -> float:
        return sum(self.energy_pj.values())


@lru_cache(maxsize=4096)
def tile_cycles(t: TileTiming) -> tuple[int, float]:
    """(latency, steady cycles per image) of a tile alone, from the tile schedule."""
    s = schedule(t, 3)
    return s.latency[0], (s.last_out[2] - s.last_out[0]) / 2


def layer_cost(layer: Layer, pim: PIM, consts: Constants = CONSTANTS, reuse: bool = True,
               lanes: int | dict | None = None, replicas: int | dict | None = None) -> LayerCost:
    """The cost of one conv or linear layer (spec sections 3 and 4, the tile's cycle model).

    With `R` copies of the tile (`replicas`): `R` times the crossbars and cell area, and every
    input image is loaded into each copy; the activations are the same, shared among the
    copies, and the cycles are those of the busiest copy (at least one per output pixel, the
    rate at which the copies' outputs merge)."""
    epi = layer.epitome
    _, ho, wo = layer.out_shape
    pixels = ho * wo
    st = steps(epi, reuse)
    acts = pixels * len(st)
    acts_plain = pixels * layer.g_in * layer.g_out
    copies = replicas_for(layer, replicas)
    t = tile_timing(layer, pim, reuse, lanes, (0, copies))
    latency, steady = tile_cycles(t)
    if copies > 1:
        steady = max(steady, pixels)
    xbars = crossbar_count(layer, pim.cell_bits, pim.xbar_rows, pim.xbar_cols) * copies
    rows = geometry.epitome_rows(epi.in_channels, layer.kernel)
    cols = epi.out_channels * n_slices(layer, pim.cell_bits)
    chunks = row_chunks(layer, pim)
    blocks = geometry.ceil_div(cols, pim.xbar_cols)
    n_t = t.n_t
    dac = acts * n_t * rows * blocks * 2
    cells = acts * n_t * rows * cols * 2
    adc = acts * n_t * chunks * cols * 2
    h, w = layer.in_hw
    in_bytes = h * w * layer.in_channels * layer.in_bits / 8
    read_bytes = acts * rows * layer.in_bits / 8
    out_bytes = pixels * layer.out_channels * layer.out_bits / 8
    table_entries = sum(1 + epi.in_channels + len(s.reuse) * epi.patch_out for s in st) * pixels
    energy = {
        "dac": dac * consts.dac_energy_pj,
        "cells": cells * consts.cell_read_pj,
        "adc": adc * consts.adc_energy_pj,
        "shift_add": adc * consts.shift_add_pj,
        "buffers": ((in_bytes * copies + out_bytes) * consts.buffer_write_pj_per_byte
                    + read_bytes * consts.buffer_read_pj_per_byte),
        "tables": table_entries * TABLE_ENTRY_BYTES * consts.table_read_pj_per_byte,
    }
    return LayerCost(layer.name, layer.op, xbars,
                     crossbar_count(layer, pim.cell_bits, pim.xbar_rows, pim.xbar_cols,
                                    dense=True, weight_bits=8),
                     xbars * pim.xbar_rows * pim.xbar_cols * consts.cell_area_um2 * 1e-6,
                     acts, acts_plain, latency, steady, t.ideal, energy, copies)


# The network cycle model (`epim.sw.chip.netcycles`) runs event by event, its work grows with
# the handshakes (about 17 microseconds each in CPython): `epim cost` runs it only below this
# many estimated handshakes (`EPIM_COST_MODEL_LIMIT` overrides), else it shows the slowest
# tile's rate alone. (The CIFAR-10 ResNet-20 example: about 6e5 estimated, sized and modelled
# in about 10 s; an EPIM-ResNet-50 at 224 x 224: 4e6 estimated, about 70 s.)
NETWORK_MODEL_IMAGES = 6  # images streamed back to back, as the FIFO sizing does
NETWORK_MODEL_LIMIT = 1_500_000


@dataclass
class NetworkCost:
    layers: list[LayerCost]
    consts: Constants
    reuse: bool
    net: Network | None = None  # the network, when costed from one (for the network model)
    lanes: int | dict | None = None
    replicas: int | dict | None = None

    @property
    def crossbars(self) -> int:
        return sum(c.crossbars for c in self.layers)

    @property
    def dense8_crossbars(self) -> int:
        return sum(c.dense8_crossbars for c in self.layers)

    @property
    def cycles_per_image(self) -> float:
        """Frame-pipelined: the slowest tile sets the rate."""
        return max(c.cycles_per_image for c in self.layers)

    @property
    def cycles_latency(self) -> int:
        """Upper bound for one image: the tiles' latencies in sequence (tiles overlap in the
        hardware, so the network model of `epim cosim` gives less)."""
        return sum(c.cycles_latency for c in self.layers)

    def ns(self, cycles: float) -> float:
        return cycles * 1e3 / self.consts.clock_mhz

    @property
    def energy_pj(self) -> dict:
        return {p: sum(c.energy_pj[p] for c in self.layers) for p in ENERGY_PARTS}

    def model_handshakes(self) -> int:
        """Estimated handshakes of the network model's runs: per image the input's beats and
        every layer's output beats once per reader and once out, times
        `NETWORK_MODEL_IMAGES`, times the runs (with skip FIFOs: two more to size them)."""
        from .netcycles import layer_beats

        net = self.net
        _, h, w = net.input_shape
        readers = {la.name: 0 for la in net.layers}
        for la in net.layers:
            for src in la.inputs:
                if src in readers:
                    readers[src] += 1
        per_image = h * w + sum(layer_beats(net, la.name) * (1 + readers[la.name])
                                for la in net.layers)
        runs = 3 if any(la.op == Op.ADD for la in net.layers) else 1
        return int(per_image * NETWORK_MODEL_IMAGES * runs)

    @cached_property
    def network(self) -> dict:
        """The whole accelerator's cycles from the network cycle model (`epim.sw.chip.netcycles`:
        every unit's handshakes, stalls included, with the skip FIFO depths `epim generate`
        writes; what `epim cosim` measures on the RTL for as many images): steady cycles per
        image (mean distance of successive images' last output beats) and the first and last
        images' latencies (a latency that grows means the pipeline was still filling: images
        entered faster than the slowest stage passes them, and the mean can then lie below that
        stage's rate). Skipped, with the reason in `status`, without a network or when the estimated
        work exceeds `NETWORK_MODEL_LIMIT`."""
        out = {"images": NETWORK_MODEL_IMAGES, "steady_cycles_per_image": None,
               "latency_cycles": None}
        if self.net is None:
            return {**out, "status": "skipped: no network file (layer shapes only)"}
        est = self.model_handshakes()
        limit = float(os.environ.get("EPIM_COST_MODEL_LIMIT", NETWORK_MODEL_LIMIT))
        if est > limit:
            return {**out, "handshakes_estimated": est,
                    "status": f"skipped: too large (about {est:.2g} handshakes, limit "
                              f"{limit:.2g}, EPIM_COST_MODEL_LIMIT); the slowest tile is "
                              "shown"}
        from .netcycles import predict

        t = predict(self.net, NETWORK_MODEL_IMAGES, reuse=self.reuse, lanes=self.lanes,
                    replicas=self.replicas)
        return {**out, "handshakes_estimated": est, "steady_cycles_per_image": t.steady,
                "latency_cycles": t.latency[0], "last_latency_cycles": t.latency[-1],
                "status": "modelled"}

    def summary(self) -> dict:
        e = self.energy_pj
        nw = self.network
        steady = nw["steady_cycles_per_image"]
        return {"crossbars": self.crossbars, "dense8_crossbars": self.dense8_crossbars,
                "compression_vs_dense8": self.dense8_crossbars / self.crossbars,
                "cell_area_mm2": sum(c.cell_area_mm2 for c in self.layers),
                "activations": sum(c.activations for c in self.layers),
                "activations_no_reuse": sum(c.activations_no_reuse for c in self.layers),
                "cycles_per_image": self.cycles_per_image,
                "ns_per_image": self.ns(self.cycles_per_image),
                "latency_cycles_bound": self.cycles_latency,
                "network_steady_cycles_per_image": steady,
                "network_ns_per_image": self.ns(steady) if steady is not None else None,
                "network_latency_cycles": nw["latency_cycles"],
                "network_model": nw,
                "energy_uj": sum(e.values()) * 1e-6,
                "energy_uj_by_part": {k: v * 1e-6 for k, v in e.items()},
                "reuse": self.reuse}


def network_cost(net: Network | list[Layer], pim: PIM | None = None,
                 consts: Constants = CONSTANTS, reuse: bool = True,
                 lanes: int | dict | None = None,
                 replicas: int | dict | None = None,
                 max_steps: int | None = None) -> NetworkCost:
    """Costs of every conv and linear layer of a network (or a list of layers); from a
    network, `NetworkCost.network` adds the whole accelerator's cycles (computed when first
    read). A network whose tile schedules would take more than `max_steps` slot steps
    (`workload.check_schedule`) is refused before any is replayed."""
    whole = net if isinstance(net, Network) else None
    if whole is not None:
        from . import workload

        workload.check_schedule(net, max_steps)
        pim, layers = net.pim, net.layers
    else:
        layers = net
    if not any(la.op in TILE_OPS for la in layers):
        raise ValueError(f"{getattr(net, 'source', 'the network')}: no conv or linear layer, "
                         "so no crossbars to cost")
    return NetworkCost([layer_cost(la, pim, consts, reuse, lanes, replicas) for la in layers
                        if la.op in TILE_OPS], consts, reuse, whole, lanes, replicas)


def cost_file(path: str | Path, consts: Constants = CONSTANTS, reuse: bool = True,
              lanes=None) -> NetworkCost:
    return network_cost(load(path), consts=consts, reuse=reuse, lanes=lanes)


# ---- layers from shapes alone ------------------------------------------------------------

def shape_layer(name: str, cin: int, cout: int, kernel: int, stride: int, hw: tuple[int, int],
                epitome: tuple[int, int, int, int] | None = None, in_bits: int = 4,
                weight_bits: int = 3, out_bits: int = 4, op: str = Op.CONV,
                offsets: tuple[np.ndarray, np.ndarray] | None = None,
                wrap: bool = True, padding: int | None = None) -> Layer:
    """A weightless :class:`Layer` for costing: `epitome = (Ce_in, Ce_out, p_in, p_out)` or
    None (dense). Default offsets: the strided rule with `d_r = 0` (one activation per input
    group), and with `wrap` the output groups of an input group take distinct column rotations;
    `wrap=False` requires `Ce_out = Cout` (no output channel wrapping)."""
    from .epitome import strided_offsets

    padding = kernel // 2 if padding is None else padding
    h, w = hw
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    dense = epitome is None
    ce_in, ce_out, p_in, p_out = epitome or (cin, cout, cin, cout)
    if not wrap and ce_out < cout:
        raise ValueError(f"layer {name!r}: Ce_out {ce_out} < Cout {cout} needs output channel "
                         "wrapping")
    if offsets is None:
        offsets = strided_offsets(cin, cout, ce_in, ce_out, p_in, p_out)
    epi = Epitome(ce_in, ce_out, p_in, p_out, offsets[0], offsets[1],
                  np.zeros((0,), np.int64), dense)
    if op == Op.LINEAR:
        in_shape, out_shape = (cin, 1, 1), (cout, 1, 1)
    else:
        in_shape, out_shape = (cin, h, w), (cout, ho, wo)
    return Layer(name, op, ("x",), in_shape, out_shape, in_bits, out_bits, kernel=kernel,
                 stride=stride, padding=padding if op == Op.CONV else 0,
                 weight_bits=weight_bits, epitome=epi)


def resnet50(epitome=None, weight_bits: int = 3, act_bits: int = 4, input_bits: int = 8,
             wrap: bool = True, pool_bits: int = 8) -> list[Layer]:
    """ResNet-50 (torchvision's shapes, 224x224 input): the 53 convs and the classifier, as
    weightless layers. `epitome(name, cin, cout, k)` gives each layer's
    `(Ce_in, Ce_out, p_in, p_out)` or None (dense). As `epim import` writes it: the last conv
    of each block and the downsample convs end in batch norm alone, so their outputs are
    signed, `act_bits + 1` wide (the adder reads them); the classifier reads the pooled
    features at `pool_bits`."""
    spec = []  # (name, cin, cout, k, stride, hw)
    spec.append(("conv1", 3, 64, 7, 2, (224, 224)))
    cin, hw = 64, (56, 56)  # after the 3x3 stride-2 max pool
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                     (512, 3, 2)], 1):
        for b in range(blocks):
            s = stride if b == 0 else 1
            tag = f"layer{stage}.{b}"
            spec.append((f"{tag}.conv1", cin, width, 1, 1, hw))
            spec.append((f"{tag}.conv2", width, width, 3, s, hw))  # torchvision v1.5
            out_hw = (hw[0] // s, hw[1] // s)
            spec.append((f"{tag}.conv3", width, 4 * width, 1, 1, out_hw))
            if b == 0:
                spec.append((f"{tag}.downsample.0", cin, 4 * width, 1, s, hw))
            cin, hw = 4 * width, out_hw
    spec.append(("fc", 2048, 1000, 1, 1, (1, 1)))
    layers = []
    for name, ci, co, k, s, hwi in spec:
        epi = epitome(name, ci, co, k) if epitome else None
        in_bits = input_bits if name == "conv1" else pool_bits if name == "fc" else act_bits
        op = Op.LINEAR if name == "fc" else Op.CONV
        signed = name.endswith((".conv3", ".downsample.0"))
        out_bits = 32 if op == Op.LINEAR else act_bits + 1 if signed else act_bits
        layers.append(shape_layer(name, ci, co, k, s, hwi, epi, in_bits, weight_bits, out_bits,
                                  op, wrap=wrap))
    return layers
