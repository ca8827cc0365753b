"""The epitome search study (`python -m epim.sw.studies.searchstudy`): train a dense model,
search per-layer epitomes under the uniform model's crossbar budget, fine-tune both and compare
them."""

from __future__ import annotations

from ...contract import files as owned
from ..chip import cost
from ..ml.search import Search, describe


def compare(data: str = "mnist", epochs: int = 3, ratio: float = 4, seed: int = 0,
            out=None, population: int = 32, generations: int = 40, bits=(2, 3, 4),
            log=print) -> dict:
    """Searched layer-wise epitomes against uniform ones at the same crossbar budget: train a
    dense 3-bit model, then fine-tune (a) the uniform EPIM model at `ratio` and (b) the
    search's pick under the uniform model's crossbar count, each `epochs` epochs from the
    dense weights; report accuracy (integer network), crossbars, cycles and energy of both
    exported files."""
    import json
    from dataclasses import replace

    from ..chip.netfile import parse
    from ..ml import compress, models
    from ..ml.export import export
    from ..ml.train import Config, fit

    base = Config(data=data, epochs=epochs, seed=seed, weight_bits=3, act_bits=4)
    log(f"dense 3-bit, {epochs} epochs")
    dense = fit(base, None, log=lambda m: log("  " + m))["model"]
    pim = base.pim
    uni = compress.epitomize(dense, models.nodes("cnn", ratio, quant=base.quant, pim=pim))
    budget = compress.model_crossbars(uni, pim)
    srch = Search(dense, pim, budget, bits_choices=bits)
    res = srch.run(population, generations, seed=seed, seeds=[srch.uniform(ratio)],
                   log=lambda m: log("  " + m))
    log(f"search: {res.evaluated} candidates, best {res.best.crossbars} crossbars, proxy "
        f"{res.best.proxy:.4f}; Pareto front {len(res.front)}")
    picked = compress.epitomize(dense, srch.nodes(res.best.genes))
    rows = {}
    for name, model in (("uniform", uni), ("searched", picked)):
        log(f"fine-tune {name}, {epochs} epochs")
        m = fit(replace(base, ratio=ratio), None, log=lambda s: log("  " + s), model=model)
        net = export(m["model"].cpu(), pim)
        nc = cost.network_cost(parse(net))
        rows[name] = {"test_accuracy": m["test_accuracy"], **nc.summary(),
                      "net": net}
    result = {"data": data, "epochs": epochs, "ratio": ratio, "seed": seed, "budget": budget,
              "search": {"population": population, "generations": generations,
                         "bits": list(bits), "evaluated": res.evaluated,
                         "best": describe(res.best, srch.slots),
                         "front": [describe(c, srch.slots) for c in res.front],
                         "history": res.history},
              "uniform": {k: v for k, v in rows["uniform"].items() if k != "net"},
              "searched": {k: v for k, v in rows["searched"].items() if k != "net"}}
    if out:
        owned.write_owned(out, {"search.json": json.dumps(result, indent=1), **{
            f"{name}.net.json": json.dumps(rows[name]["net"]) + "\n" for name in rows}},
            "search")
    return result


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description="searched vs uniform epitomes at equal crossbars")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--out", type=Path, default=Path("build/search"))
    args = ap.parse_args(argv)
    r = compare(args.data, args.epochs, args.ratio, args.seed, args.out, args.population,
                args.generations, tuple(args.bits))
    lines = ["| epitomes | crossbars | test accuracy | cycles / image | energy (uJ) |",
             "|---|---|---|---|---|"]
    for name in ("uniform", "searched"):
        x = r[name]
        lines.append(f"| {name} | {x['crossbars']} | {100 * x['test_accuracy']:.2f}% | "
                     f"{x['cycles_per_image']:.0f} | {x['energy_uj']:.2f} |")
    md = "\n".join(lines) + "\n"
    owned.write_owned(args.out, {"search.md": md}, "search")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
