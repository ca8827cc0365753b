"""The layer-wise epitome search: budget, determinism, elitism, the Pareto front, the proxy, and
models with per-layer epitomes, offsets and weight bits that export and run bit-exactly."""

import numpy as np
import pytest
import torch

from epim.sw.chip import cost, reference
from epim.sw.chip.netfile import parse
from epim.sw.ml import compress, export, models, search

PIM = models.DEFAULT_PIM
Q = models.QuantConfig(3, 4)


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    m = models.build("cnn", None, Q)
    m.train()
    m(torch.rand(16, 1, 28, 28))
    return m.eval()


@pytest.fixture(scope="module")
def searched(dense):
    uni = compress.epitomize(dense, models.nodes("cnn", 4, quant=Q, pim=PIM))
    budget = compress.model_crossbars(uni, PIM)
    s = search.Search(dense, PIM, budget, bits_choices=(2, 3, 4))
    return s, s.run(16, 8, seed=3, seeds=[s.uniform(4)]), budget


def test_search_stays_within_budget_and_keeps_its_best(searched):
    s, res, budget = searched
    assert res.best.crossbars <= budget
    seed_fit = s.evaluate(s.uniform(4)).fitness
    assert res.best.fitness <= seed_fit  # elitism: never worse than the uniform seed
    assert [h["best_fitness"] for h in res.history] == sorted(
        (h["best_fitness"] for h in res.history), reverse=True)


def test_search_is_deterministic(dense, searched):
    s, res, budget = searched
    again = search.Search(dense, PIM, budget, bits_choices=(2, 3, 4))
    res2 = again.run(16, 8, seed=3, seeds=[again.uniform(4)])
    assert res2.best.genes == res.best.genes and res2.evaluated == res.evaluated


def test_pareto_front_is_non_dominated(searched):
    _, res, budget = searched
    assert res.front and all(c.crossbars <= budget for c in res.front)
    for a in res.front:
        for b in res.front:
            better = (b.proxy <= a.proxy and b.cycles <= a.cycles
                      and b.energy_uj <= a.energy_uj)
            assert not better or (b.proxy, b.cycles, b.energy_uj) == (a.proxy, a.cycles,
                                                                      a.energy_uj)


def test_proxy_is_zero_for_a_lossless_gene_and_grows_with_compression(searched):
    s, _, _ = searched
    slot = s.slots[1]
    full = search.Gene(slot.cin, slot.cout, slot.cin, slot.cout, 0, 16)
    assert s.proxy(slot, full) < 1e-6
    small = search.Gene(slot.ce_in[0], slot.cout, slot.ce_in[0], slot.cout, 0, 16)
    assert s.proxy(slot, small) > 0.1


def test_picked_model_has_the_searched_costs_and_exports_bit_exactly(dense, searched):
    s, res, _ = searched
    genes = list(res.best.genes)
    # force a mix of bit widths and a shifted row offset rule into the check
    genes[0] = search.Gene(genes[0].ce_in, genes[0].ce_out, genes[0].p_in, genes[0].p_out, 1, 4)
    genes[1] = search.Gene(genes[1].ce_in, genes[1].ce_out, genes[1].p_in, genes[1].p_out, 0, 2)
    cand = s.evaluate(tuple(genes))
    model = compress.epitomize(dense, s.nodes(tuple(genes))).eval()
    assert compress.model_crossbars(model, PIM) == cand.crossbars
    net = parse(export.export(model, PIM))
    assert [la.weight_bits for la in net.layers if la.op == "conv"][1:3] == [4, 2]
    assert cost.network_cost(net).cycles_per_image == cand.cycles
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28))
    logits = reference.run_network(net, x)
    t = model.integer_forward(torch.as_tensor(x, dtype=torch.float32) / 255, keep=True)
    np.testing.assert_array_equal(t["fc"].flatten(1).numpy(), logits)
