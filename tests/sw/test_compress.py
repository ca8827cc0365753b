"""Compression of a dense model: least-squares epitomes and crossbar-aware pruning."""

from __future__ import annotations

import torch

from epim.sw.ml import compress, export, models

PIM = {"xbar_rows": 32, "xbar_cols": 32, "cell_bits": 2, "dac_bits": 1, "adc_bits": 8}


def trained_like(width=16, seed=0):
    torch.manual_seed(seed)
    model = models.build("cnn", width=width)
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        model(export.quantize_inputs(x))
    return model, x


def test_crossbar_count_follows_the_spec():
    model, _ = trained_like()
    # c1 1x9 rows, 16 cols; c2 144x32; c3 288x32; c4 288x64; fc 64x10 (32x32 arrays, 2 bits/cell)
    assert compress.model_crossbars(model, PIM, 8, dense=True) == 4 + 40 + 72 + 144 + 8
    assert compress.model_crossbars(model, PIM, 3) == 2 + 10 + 18 + 36 + 4


def test_epitomize_keeps_what_it_can():
    dense, _ = trained_like()
    epi = compress.epitomize(dense, models.plain_cnn(4, 16))
    assert compress.model_crossbars(epi, PIM) < compress.model_crossbars(dense, PIM)
    for name, conv in epi.epitome_layers():
        ref = dict(dense.epitome_layers())[name].sampled_weight()
        best = conv.sampled_weight()
        # the projection beats the plain truncation of the dense weight to the epitome shape
        ce_out, ce_in = conv.E.shape[:2]
        naive = conv.sampled_weight(ref[:ce_out, :ce_in].contiguous())
        assert (best - ref).square().sum() <= (naive - ref).square().sum() + 1e-6, name
    torch.testing.assert_close(epi.units["c2"].bn.running_mean, dense.units["c2"].bn.running_mean)


def test_prune_reaches_the_budget_and_keeps_weights():
    dense, x = trained_like()
    budget = 40
    pruned = compress.prune(dense, budget, PIM)
    assert compress.model_crossbars(pruned, PIM) <= budget
    widths = {n: pruned.units[n].conv.out_channels for n in ("c1", "c2", "c3", "c4")}
    assert all(w < f for w, f in zip(widths.values(), (16, 32, 32, 64), strict=True))
    # a kept channel keeps its filter (restricted to kept inputs) and batch-norm statistics
    kept = torch.sort(torch.topk(compress.channel_scores(dense, "c1"), widths["c1"]).indices)
    torch.testing.assert_close(pruned.units["c1"].conv.sampled_weight(),
                               dense.units["c1"].conv.sampled_weight()[kept.values])
    torch.testing.assert_close(pruned.units["c1"].bn.running_var,
                               dense.units["c1"].bn.running_var[kept.values])
    pruned.eval()
    assert pruned(export.quantize_inputs(x)).shape == (16, 10)
