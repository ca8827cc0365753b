"""PIM-aware layer-wise epitome search: an evolutionary search over per-layer epitome shapes,
patches, offset rule and weight bits, under a crossbar budget, against the cost model.

Genome: for every conv after the first (and optionally the classifier), a gene
`(Ce_in, Ce_out, p_in, p_out, d_r, bits)`. `Ce_in` takes the values whose rows `Ce_in*k*k` fill
whole row chunks (and `Cin`), `Ce_out` whole column blocks (and `Cout`); `p_in` is `Ce_in` or
half of it, `p_out` likewise; `d_r` is the row step of the strided offset rule (0: every output
group of an input group shares one activation, the most IFRT reuse; 1: they shift); `bits` comes
from `bits_choices`.

Fitness (lower is better), for candidates within the budget:
`w_acc * proxy + w_lat * cycles / cycles_ref + w_energy * energy / energy_ref`, where `proxy` is
the mean over layers of the relative error `||W - Q(S(P(W)))||^2 / ||W||^2` of the pretrained
dense weight `W` projected onto the candidate epitome (least squares, `P`), sampled back (`S`)
and quantized to the gene's bits (`Q`, the same symmetric rounding as the exported integers,
scale from the largest magnitude); the references are the dense 3-bit model's figures.
Over-budget candidates score `10 + excess`. Evolution: tournament selection (3), uniform
crossover per layer, per-gene mutation to a neighbouring value, elitism; deterministic for a
seed. Every candidate evaluated within budget enters the Pareto front on (proxy, cycles,
energy).

Defaults: population 32, generations 40, elite 2, weights 1/0.2/0.2, and a mutation rate per
gene of `min(0.15, 1 / layers)`: on a deep network (ResNet-50: 52 searched layers) a child then
differs from its parents in about one layer, and the search climbs; with 0.15 per gene every child
changed about eight layers at once and none beat the seeds.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from ...contract import geometry
from ...contract.ops import TILE_OPS, Op
from ..chip import cost
from ..chip.epitome import strided_offsets
from ..chip.netfile import PIM

# PyTorch is imported where weights are used, so that a weightless search (the ResNet-50
# study) runs without it.


@dataclass(frozen=True)
class Gene:
    ce_in: int
    ce_out: int
    p_in: int
    p_out: int
    d_r: int
    bits: int

    def offsets(self, cin: int, cout: int) -> tuple[np.ndarray, np.ndarray]:
        return strided_offsets(cin, cout, self.ce_in, self.ce_out, self.p_in, self.p_out,
                               d_r=self.d_r, d_c=0)


@dataclass
class Slot:
    """One searchable layer: its shape, the pretrained weight and the gene choices."""

    name: str
    op: str
    cin: int
    cout: int
    kernel: int
    stride: int
    hw: tuple[int, int]
    in_bits: int
    weight: object  # a torch.Tensor, or None: weightless (shapes only)
    ce_in: list[int]
    ce_out: list[int]
    out_bits: int = 0  # 0: the search's activation bits (32 for a linear classifier)


@dataclass
class Candidate:
    genes: tuple[Gene, ...]
    crossbars: int = 0
    cycles: float = 0.0
    energy_uj: float = 0.0
    proxy: float = 0.0
    fitness: float = math.inf
    extra: dict = field(default_factory=dict)


def choices(total: int, lanes: int, per: int = 1) -> list[int]:
    """Channel counts that fill whole crossbar units: the most channels whose `c * per`
    rows (or columns) fit `m` units of `lanes`, for every `m`, and `total` itself."""
    vals = {min(total, m * lanes // per) for m in range(1, math.ceil(total * per / lanes) + 1)}
    return sorted(v for v in vals if v >= 1) or [total]


class Search:
    def __init__(self, dense, pim: dict, budget: int, bits_choices=(3,),
                 weights=(1.0, 0.2, 0.2), include_linear: bool = False,
                 consts: cost.Constants = cost.CONSTANTS):
        self.dense, self.pim_d, self.budget = dense, pim, budget
        self.pim = PIM(pim["xbar_rows"], pim["xbar_cols"], pim["cell_bits"], pim["dac_bits"],
                       pim["adc_bits"])
        self.bits_choices, self.weights, self.consts = tuple(bits_choices), weights, consts
        q = dense.quant
        self.act_bits, self.input_bits = q.act_bits or 8, q.input_bits
        self.slots, self.fixed = [], []
        by_name = {nd.name: nd for nd in dense.nodes}
        first = True
        for nd in dense.nodes:
            if nd.op not in TILE_OPS:
                continue
            conv = dense.layer(nd.name)
            src_shape = dense.shapes[nd.inputs[0]]
            in_bits = self.input_bits if nd.inputs[0] == "input" else (
                q.pool_bits if by_name[nd.inputs[0]].op == Op.AVGPOOL_GLOBAL
                else self.act_bits)
            hw = (1, 1) if nd.op == Op.LINEAR else src_shape[1:]
            k = conv.kernel_size
            w = conv.sampled_weight().detach().double()
            out_bits = 0 if nd.relu or nd.op == Op.LINEAR else q.signed_bits
            slot = Slot(nd.name, nd.op, conv.in_channels, conv.out_channels, k, conv.stride,
                        tuple(hw), in_bits, w, [], [], out_bits)
            searchable = not first and (nd.op == Op.CONV or include_linear)
            first = False
            if not searchable:
                self.fixed.append(slot)
                continue
            self.slots.append(slot)
        self._setup()

    @classmethod
    def from_layers(cls, layers, pim: dict, budget: int, bits_choices=(3,),
                    weights=(1.0, 0.2, 0.2), act_bits: int = 4,
                    consts: cost.Constants = cost.CONSTANTS) -> Search:
        """A search over weightless layers (`cost.resnet50()`, `compress.torch_layers`): the
        first layer stays dense, every other is searched, and the accuracy proxy is the share
        of distinct weights lost, `1 - Ce_in*Ce_out / (Cin*Cout)`, for lack of weights."""
        self = cls.__new__(cls)
        self.dense, self.pim_d, self.budget = None, pim, budget
        self.pim = PIM(pim["xbar_rows"], pim["xbar_cols"], pim["cell_bits"], pim["dac_bits"],
                       pim["adc_bits"])
        self.bits_choices, self.weights, self.consts = tuple(bits_choices), weights, consts
        self.act_bits = act_bits
        slots = [Slot(la.name, la.op, la.in_channels, la.out_channels, la.kernel, la.stride,
                      la.in_hw, la.in_bits, None, [], [], la.out_bits) for la in layers]
        self.fixed, self.slots = slots[:1], slots[1:]
        self._setup()
        return self

    def _setup(self) -> None:
        for slot in self.slots:
            k = slot.kernel
            slot.ce_in = choices(slot.cin, self.pim_d["xbar_rows"], k * k)
            slot.ce_out = choices(slot.cout, self.pim_d["xbar_cols"], self._slices(3))
        ref = self._cost([None] * len(self.slots), dense_bits=3)
        self.cycles_ref, self.energy_ref = ref.cycles_per_image, ref.summary()["energy_uj"]
        self.seen: dict[tuple, Candidate] = {}

    def _slices(self, bits: int) -> int:
        return geometry.cell_slices(bits, self.pim_d["cell_bits"])

    def _layer(self, slot: Slot, gene: Gene | None, bits: int):
        epi = None if gene is None else (gene.ce_in, gene.ce_out, gene.p_in, gene.p_out)
        offs = None if gene is None else gene.offsets(slot.cin, slot.cout)
        return cost.shape_layer(slot.name, slot.cin, slot.cout, slot.kernel, slot.stride,
                                slot.hw, epi, slot.in_bits, bits,
                                slot.out_bits or (32 if slot.op == Op.LINEAR else self.act_bits),
                                slot.op, offs)

    def _cost(self, genes, dense_bits: int = 3) -> cost.NetworkCost:
        layers = [self._layer(s, None, dense_bits) for s in self.fixed[:1]]
        layers += [self._layer(s, g, g.bits if g else dense_bits)
                   for s, g in zip(self.slots, genes, strict=True)]
        layers += [self._layer(s, None, dense_bits) for s in self.fixed[1:]]
        return cost.network_cost(layers, self.pim, self.consts)

    def proxy(self, slot: Slot, gene: Gene) -> float:
        if slot.weight is None:
            return 1 - gene.ce_in * gene.ce_out / (slot.cin * slot.cout)
        import torch

        from .layers import project, sample_index

        row, col = gene.offsets(slot.cin, slot.cout)
        idx = torch.as_tensor(sample_index(slot.cin, slot.cout, gene.ce_in, gene.ce_out,
                                           gene.p_in, gene.p_out, row, col))
        shape = (gene.ce_out, gene.ce_in, slot.kernel, slot.kernel)
        e = project(slot.weight, idx, shape)
        qmax = 2 ** (gene.bits - 1) - 1
        scale = e.abs().max().clamp(min=1e-12) / qmax
        eq = torch.clamp(torch.round(e / scale), -qmax, qmax) * scale
        w_hat = eq.reshape(gene.ce_out * gene.ce_in, slot.kernel, slot.kernel)[idx]
        return float((slot.weight - w_hat).square().sum() / slot.weight.square().sum())

    def evaluate(self, genes: tuple[Gene, ...]) -> Candidate:
        if genes in self.seen:
            return self.seen[genes]
        nc = self._cost(genes)
        c = Candidate(genes, nc.crossbars, nc.cycles_per_image, nc.summary()["energy_uj"])
        c.proxy = float(np.mean([self.proxy(s, g) for s, g in zip(self.slots, genes,
                                                                     strict=True)]))
        w_acc, w_lat, w_en = self.weights
        if c.crossbars > self.budget:
            c.fitness = 10 + (c.crossbars - self.budget) / self.budget
        else:
            c.fitness = (w_acc * c.proxy + w_lat * c.cycles / self.cycles_ref
                         + w_en * c.energy_uj / self.energy_ref)
        self.seen[genes] = c
        return c

    # ---- genetic operators --------------------------------------------------------------

    def random_gene(self, rng: random.Random, slot: Slot) -> Gene:
        ce_in, ce_out = rng.choice(slot.ce_in), rng.choice(slot.ce_out)
        return Gene(ce_in, ce_out, ce_in, ce_out, 0, rng.choice(self.bits_choices))

    def mutate_gene(self, rng: random.Random, slot: Slot, g: Gene, p: float) -> Gene:
        def step(vals, v):
            i = vals.index(v) if v in vals else 0
            return vals[max(0, min(len(vals) - 1, i + rng.choice((-1, 1))))]

        ce_in = step(slot.ce_in, g.ce_in) if rng.random() < p else g.ce_in
        ce_out = step(slot.ce_out, g.ce_out) if rng.random() < p else g.ce_out
        p_in = g.p_in if g.p_in <= ce_in else ce_in
        p_out = g.p_out if g.p_out <= ce_out else ce_out
        if rng.random() < p:
            p_in = ce_in if p_in != ce_in else max(1, math.ceil(ce_in / 2))
        if rng.random() < p:
            p_out = ce_out if p_out != ce_out else max(1, math.ceil(ce_out / 2))
        d_r = (1 - g.d_r) if rng.random() < p else g.d_r
        bits = step(list(self.bits_choices), g.bits) if rng.random() < p else g.bits
        return Gene(ce_in, ce_out, p_in, p_out, d_r, bits)

    def run(self, population: int = 32, generations: int = 40, mutation: float | None = None,
            elite: int = 2, seed: int = 0, seeds: list[tuple[Gene, ...]] = (), log=None
            ) -> SearchResult:
        if mutation is None:
            mutation = min(0.15, 1 / len(self.slots))
        rng = random.Random(seed)
        pop = [self.evaluate(tuple(s)) for s in seeds]
        while len(pop) < population:
            pop.append(self.evaluate(tuple(self.random_gene(rng, s) for s in self.slots)))
        history = []
        for gen in range(generations):
            pop.sort(key=lambda c: c.fitness)
            history.append({"generation": gen, "best_fitness": pop[0].fitness,
                            "best_crossbars": pop[0].crossbars})
            if log:
                log(f"generation {gen}: best fitness {pop[0].fitness:.4f}, "
                    f"{pop[0].crossbars} crossbars, proxy {pop[0].proxy:.4f}")
            nxt = pop[:elite]
            while len(nxt) < population:
                a = min(rng.sample(pop, 3), key=lambda c: c.fitness)
                b = min(rng.sample(pop, 3), key=lambda c: c.fitness)
                child = tuple(self.mutate_gene(rng, s, ga if rng.random() < 0.5 else gb,
                                               mutation)
                              for s, ga, gb in zip(self.slots, a.genes, b.genes, strict=True))
                nxt.append(self.evaluate(child))
            pop = nxt
        pop.sort(key=lambda c: c.fitness)
        feasible = [c for c in self.seen.values() if c.crossbars <= self.budget]
        return SearchResult(pop[0], pareto(feasible), history, len(self.seen))

    def uniform(self, ratio: float) -> tuple[Gene, ...]:
        """The genes of the uniform rule (`epitome.epitome_shape`) at `ratio`, 3 bits."""
        from ..chip.epitome import Fill, epitome_shape

        fill = Fill.of(self.pim_d, 3)
        genes = []
        for s in self.slots:
            e = epitome_shape(s.cin, s.cout, ratio, s.kernel, fill) or (s.cin, s.cout, s.cin,
                                                                         s.cout)
            genes.append(Gene(e[0], e[1], e[2], e[3], 0, 3))
        return tuple(genes)

    def nodes(self, genes: tuple[Gene, ...]) -> list:
        """The dense model's graph (`models.Node` list) with the genes' epitomes, offsets and
        bits."""
        from .models import Node

        by = {s.name: g for s, g in zip(self.slots, genes, strict=True)}
        out = []
        for nd in self.dense.nodes:
            g = by.get(nd.name)
            if g is None:
                out.append(Node(nd.name, nd.op, list(nd.inputs), nd.out_channels, nd.kernel,
                                nd.stride, nd.epitome, dict(nd.extra)))
                continue
            s = next(s for s in self.slots if s.name == nd.name)
            extra = {**nd.extra, "offsets": g.offsets(s.cin, s.cout), "weight_bits": g.bits}
            out.append(Node(nd.name, nd.op, list(nd.inputs), nd.out_channels, nd.kernel,
                            nd.stride, (g.ce_in, g.ce_out, g.p_in, g.p_out), extra))
        return out


@dataclass
class SearchResult:
    best: Candidate
    front: list[Candidate]
    history: list[dict]
    evaluated: int


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on proxy, cycles and energy at once."""
    keys = [(c.proxy, c.cycles, c.energy_uj) for c in cands]
    front = []
    for i, a in enumerate(keys):
        if not any(all(b[j] <= a[j] for j in range(3)) and b != a for b in keys):
            front.append(cands[i])
    front.sort(key=lambda c: c.crossbars)
    return front


def describe(c: Candidate, slots: list[Slot]) -> dict:
    return {"crossbars": c.crossbars, "cycles_per_image": c.cycles, "energy_uj": c.energy_uj,
            "proxy": c.proxy, "fitness": c.fitness,
            "layers": {s.name: vars(g) for s, g in zip(slots, c.genes, strict=True)}}
