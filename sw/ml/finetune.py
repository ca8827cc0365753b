"""`epim search`: the layer-wise epitome search from a trained dense checkpoint, and the
fine-tuning of its pick."""

from __future__ import annotations

from ...contract import files as owned
from .search import Search, describe


def search_checkpoint(init, out, ratio: float | None = None, budget: int | None = None,
                      bits: tuple = (2, 3, 4), weights: tuple = (1.0, 0.2, 0.2),
                      population: int = 32, generations: int = 40,
                      mutation: float | None = None, seed: int = 0, finetune: int = 0,
                      log=print) -> dict:
    """`epim search`: per-layer epitome shapes for a trained quantized dense checkpoint
    `init` within `budget` crossbars (default: what a uniform `ratio` needs), written to
    `out/search.json` with the Pareto front; with `finetune` epochs, the best network is
    fine-tuned and exported to `out/net.json`. Returns what search.json holds."""
    import json
    from dataclasses import replace

    from . import compress, models
    from .export import export
    from .train import fit, load_checkpoint

    cfg, dense = load_checkpoint(init)
    if not dense.quantized:
        raise ValueError(f"--init {init}: search from a trained quantized dense model "
                         "(the float model has no integer form)")
    owned.check_folder(out)  # (before the search)
    pim = cfg.pim
    if budget is None:
        uni = compress.epitomize(dense, models.nodes(cfg.model, ratio, cfg.width,
                                                     quant=cfg.quant, pim=pim))
        budget = compress.model_crossbars(uni, pim)
    srch = Search(dense, pim, budget, bits_choices=tuple(bits), weights=tuple(weights))
    seeds = [srch.uniform(ratio)] if ratio else []
    res = srch.run(population, generations, mutation=mutation, seed=seed,
                   seeds=seeds, log=log)
    out = owned.check_folder(out)
    obj = {"budget": budget, "evaluated": res.evaluated,
           "best": describe(res.best, srch.slots),
           "front": [describe(c, srch.slots) for c in res.front]}
    log(f"best: {res.best.crossbars} crossbars (budget {budget}), proxy "
        f"{res.best.proxy:.4f}, {res.best.cycles:.0f} cycles/image, "
        f"{res.best.energy_uj:.2f} uJ/image; Pareto front of {len(res.front)} in "
        f"{out / 'search.json'}")
    if finetune:
        model = compress.epitomize(dense, srch.nodes(res.best.genes))
        m = fit(replace(cfg, epochs=finetune), out, model=model)
        owned.write_owned(out, {"net.json": json.dumps(export(m["model"].cpu(), pim)) + "\n"},
                          "search")
        obj["finetuned_test_accuracy"] = m["test_accuracy"]
        log(f"fine-tuned {finetune} epochs: test accuracy {m['test_accuracy']:.4f}; "
            f"wrote {out / 'net.json'}")
    owned.write_owned(out, {"search.json": json.dumps(obj, indent=1) + "\n"}, "search")
    return obj
