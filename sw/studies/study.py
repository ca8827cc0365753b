"""The EPIM-ResNet50 study: crossbars, latency and energy of ResNet-50 (ImageNet shapes, no
training) dense and with uniform epitomes, with and without IFRT reuse and output channel
wrapping, from the cost model (`epim.sw.chip.cost`). Writes `study.json`, `study.md`, `pareto.png`
and `layers.png`.

    python -m epim.sw.studies.study --out build/study

Epitome shapes follow `epim.sw.chip.epitome.epitome_shape`: the input side shrinks first (crossbar
rows set the row chunks), then the output side (output channel wrapping), each side filling
the crossbars it occupies; the first conv stays dense (the classifier is a 1x1 epitome too).
Without wrapping the output side cannot shrink (`Ce_out = Cout`), so all of the ratio goes to
the input side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..chip import cost
from ..chip.epitome import Fill, epitome_shape
from ..chip.netfile import PIM

PIM_DEFAULT = PIM(32, 32, 2, 1, 8)
PAPER_COMPRESSION = 30.65  # EPIM-ResNet50, 3-bit, DAC 2024


def epitome_rule(ratio: float | None, fill: Fill, split: str):
    """Per-layer epitome shapes at `ratio`: `split="input"` shrinks only the input side
    (`Ce_out = Cout`: no output channel wrapping), `"balanced"` shrinks both sides by
    `sqrt(ratio)` (wrapping), `"epim"` is the training code's rule (input side first). Each side
    then fills the crossbars it occupies. The first conv stays dense."""
    def rule(name, cin, cout, k):
        if name == "conv1" or not ratio or ratio <= 1:
            return None
        if split == "epim":
            return epitome_shape(cin, cout, ratio, k, fill)
        side = ratio if split == "input" else ratio**0.5
        ce_in = fill.grow_in(cin, max(1, round(cin / side)), k)
        ce_out = cout if split == "input" else fill.grow_out(cout, max(1, round(cout / side)))
        return (ce_in, ce_out, ce_in, ce_out)
    return rule


SPLITS = {"input": "input side only (no wrapping)", "balanced": "both sides (wrapping)"}


def configs(ratios: list[float]) -> list[dict]:
    out = [{"name": "dense 8-bit", "bits": 8, "ratio": None, "split": None, "reuse": True},
           {"name": "dense 3-bit", "bits": 3, "ratio": None, "split": None, "reuse": True}]
    for r in ratios:
        out.append({"name": f"EPIM 3-bit r={r:g}, {SPLITS['input']}", "bits": 3, "ratio": r,
                    "split": "input", "reuse": True})
        for reuse in (True, False):
            out.append({"name": f"EPIM 3-bit r={r:g}, {SPLITS['balanced']}"
                        + ("" if reuse else ", no IFRT reuse"),
                        "bits": 3, "ratio": r, "split": "balanced", "reuse": reuse})
    return out


def evaluate(cfg: dict, pim: PIM, consts: cost.Constants) -> tuple[dict, cost.NetworkCost]:
    fill = Fill.of({"xbar_rows": pim.xbar_rows, "xbar_cols": pim.xbar_cols,
                    "cell_bits": pim.cell_bits}, cfg["bits"])
    layers = cost.resnet50(epitome_rule(cfg["ratio"], fill, cfg["split"]),
                           weight_bits=cfg["bits"], act_bits=min(cfg["bits"] + 1, 8))
    nc = cost.network_cost(layers, pim, consts, reuse=cfg["reuse"])
    return {**cfg, **nc.summary()}, nc


def searched(pim: PIM, consts: cost.Constants, dense8: int, args) -> tuple[dict, cost.NetworkCost]:
    """The layer-wise search on ResNet-50's shapes under the paper's crossbar budget
    (`dense8 / 30.65`), seeded with uniform rules; weightless, so its accuracy proxy is the
    share of distinct weights each layer loses (`epim.sw.ml.search.Search.from_layers`)."""
    from ..ml import search

    budget = int(dense8 / PAPER_COMPRESSION)
    pim_d = {"xbar_rows": pim.xbar_rows, "xbar_cols": pim.xbar_cols,
             "cell_bits": pim.cell_bits, "dac_bits": pim.dac_bits, "adc_bits": pim.adc_bits}
    srch = search.Search.from_layers(cost.resnet50(), pim_d, budget, consts=consts)
    fill = Fill.of(pim_d, 3)

    def genes(rule):
        out = []
        for sl in srch.slots:
            e = rule(sl.name, sl.cin, sl.cout, sl.kernel) or (sl.cin, sl.cout, sl.cin, sl.cout)
            out.append(search.Gene(*e, 0, 3))
        return tuple(out)

    seeds = [genes(epitome_rule(r, fill, split)) for r in (8, 12, 16)
             for split in ("epim", "input", "balanced")]
    res = srch.run(args.population, args.generations, seed=args.seed, seeds=seeds)
    nc = srch._cost(res.best.genes)
    row = {"name": f"EPIM 3-bit searched (budget {budget} = dense 8-bit / {PAPER_COMPRESSION})",
           "bits": 3, "ratio": "searched", "split": "searched", "reuse": True,
           **nc.summary(), "search": {"evaluated": res.evaluated, "front": len(res.front),
                                      "proxy": res.best.proxy,
                                      "seed_proxies": [srch.evaluate(s).proxy for s in seeds
                                                       if srch.evaluate(s).crossbars <= budget],
                                      "front_points": [
                                          {"crossbars": c.crossbars, "cycles": c.cycles,
                                           "energy_uj": c.energy_uj, "proxy": c.proxy}
                                          for c in res.front],
                                      "genes": search.describe(res.best, srch.slots)["layers"]}}
    return row, nc


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# EPIM-ResNet50 study (cost model, ImageNet shapes, no training)", "",
             f"ResNet-50 at 224x224 (torchvision's shapes: 53 convs and the classifier) on "
             f"{meta['pim']['xbar_rows']}x{meta['pim']['xbar_cols']} crossbars of "
             f"{meta['pim']['cell_bits']}-bit cells, {meta['pim']['dac_bits']}-bit DACs, "
             f"{meta['clock_mhz']:g} MHz digital clock; 3-bit configurations use 4-bit "
             "activations, 8-bit ones 8-bit. Compression is against dense 8-bit. Cycles per "
             "image: the slowest tile's steady rate (frame-pipelined, one tile per layer). "
             "Energy per image from MNSIM 2.0's device constants (`docs/cost.md`). "
             f"The paper reports {PAPER_COMPRESSION}x for its 3-bit EPIM-ResNet50.", "",
             "| configuration | crossbars | compression | >= 30x | activations / image | "
             "cycles / image | ms / image | energy (uJ) | ADC share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["energy_uj_by_part"]
        lines.append(
            f"| {r['name']} | {r['crossbars']} | {r['compression_vs_dense8']:.2f}x | "
            f"{'yes' if r['compression_vs_dense8'] >= 30 else ''} | {r['activations']} | "
            f"{r['cycles_per_image']:.0f} | {r['ns_per_image'] * 1e-6:.3f} | "
            f"{r['energy_uj']:.0f} | {100 * e['adc'] / r['energy_uj']:.0f}% |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], best: cost.NetworkCost, best_name: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        front = r.get("search", {}).get("front_points", [])
        for ax, key in zip(axes, ("cycles", "energy_uj"), strict=True):
            ax.plot([p["crossbars"] for p in front], [p[key] for p in front], ".",
                    color="tab:orange", ms=3, alpha=0.6,
                    label=f"search's Pareto front ({len(front)})" if front else None)
    for r in rows:
        marker = {None: "s", "balanced": "o", "input": "^", "searched": "*"}[r["split"]]
        fill = "full" if r["reuse"] else "none"
        for ax, key in zip(axes, ("cycles_per_image", "energy_uj"), strict=True):
            ax.plot(r["crossbars"], r[key], marker=marker, fillstyle=fill, ls="",
                    color="tab:blue" if r["ratio"] else "k")
            if r["reuse"]:
                ax.annotate(r["name"].replace("EPIM 3-bit ", "").split(",")[0].split(" (")[0]
                            + ("" if r["split"] != "input" else " in"),
                            (r["crossbars"], r[key]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    axes[0].set_ylabel("cycles per image (slowest tile)")
    axes[1].set_ylabel("energy per image (uJ)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("crossbars")
        ax.axvline(min(r["dense8_crossbars"] for r in rows) / 30, ls="--", lw=0.8, color="r")
    axes[0].set_title("squares dense; circles EPIM with wrapping; triangles input side only; "
                      "hollow: no IFRT reuse",
                      fontsize=8)
    axes[1].set_title("red line: 30x fewer crossbars than dense 8-bit; star: the search's pick",
                      fontsize=8)
    if any("search" in r for r in rows):
        axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)

    fig, axes = plt.subplots(2, 1, figsize=(14, 6), sharex=True)
    names = [c.name for c in best.layers]
    axes[0].bar(range(len(names)), [c.crossbars for c in best.layers], label=best_name)
    axes[0].bar(range(len(names)), [c.dense8_crossbars for c in best.layers], alpha=0.25,
                color="gray", label="dense 8-bit")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("crossbars")
    axes[0].legend(fontsize=8)
    bottom = [0.0] * len(names)
    for part in cost.ENERGY_PARTS:
        vals = [c.energy_pj[part] * 1e-6 for c in best.layers]
        axes[1].bar(range(len(names)), vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    axes[1].set_ylabel("energy per image (uJ)")
    axes[1].legend(fontsize=7, ncol=6)
    axes[1].set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "layers.png", dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", nargs="+", type=float, default=[4, 8, 12, 16, 32])
    ap.add_argument("--constants", help="JSON file overriding cost-model constants")
    ap.add_argument("--population", type=int, default=32, help="search population")
    ap.add_argument("--generations", type=int, default=60,
                    help="search generations (0: no searched configuration)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("build/study"))
    args = ap.parse_args(argv)
    consts = cost.Constants.from_file(args.constants)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, costs = [], {}
    for cfg in configs(args.ratios):
        row, nc = evaluate(cfg, PIM_DEFAULT, consts)
        rows.append(row)
        costs[cfg["name"]] = nc
    if args.generations:
        row, nc = searched(PIM_DEFAULT, consts, rows[0]["dense8_crossbars"], args)
        rows.append(row)
        costs[row["name"]] = nc
    reach = [r for r in rows if r["compression_vs_dense8"] >= 30 and r["reuse"]]
    # the configuration nearest the paper's 30.65x from above (then the least energy)
    best = (min(reach, key=lambda r: (r["compression_vs_dense8"], r["energy_uj"]))
            if reach else rows[-1])
    meta = {"pim": vars(PIM_DEFAULT), "clock_mhz": consts.clock_mhz,
            "constants": vars(consts), "best_at_30x": best["name"] if reach else None}
    (args.out / "study.json").write_text(json.dumps({"meta": meta, "configs": rows},
                                                    indent=1))
    md = markdown(rows, meta)
    if reach:
        md += (f"\nThe configuration nearest the paper's {PAPER_COMPRESSION}x from above is "
               f"**{best['name']}**: "
               f"{best['compression_vs_dense8']:.1f}x, {best['activations']} activations, "
               f"{best['cycles_per_image']:.0f} cycles and {best['energy_uj']:.0f} uJ per image "
               "(`layers.png` shows it per layer).\n")
    srow = next((r for r in rows if r["split"] == "searched"), None)
    if srow:
        sr = srow["search"]
        best_seed = min(sr["seed_proxies"])
        md += (f"\nThe searched row: the layer-wise search (population {args.population}, "
               f"{args.generations} generations, seed {args.seed}, {sr['evaluated']} candidates "
               f"costed) on ResNet-50's shapes under the paper's budget, seeded with the "
               "uniform rules at ratios 8, 12 and 16 (both splits). With no ImageNet weights "
               "its accuracy proxy is the mean share of distinct weights a layer loses, "
               f"`1 - Ce_in*Ce_out/(Cin*Cout)`: {sr['proxy']:.3f} for the pick against "
               f"{best_seed:.3f} for the best seed within budget"
               f" ({'better' if sr['proxy'] < best_seed else 'not better'}). Its Pareto front "
               f"({sr['front']} candidates on proxy, cycles and energy) is the orange dots of "
               "`pareto.png`. The proxy only counts distinct weights; whether they buy accuracy "
               "on ImageNet is not measured here.\n")
    (args.out / "study.md").write_text(md)
    if srow:  # the pick in epim search's format: `epim import resnet50 --epitomes` reads it
        (args.out / "search.json").write_text(json.dumps(
            {"budget": int(rows[0]["dense8_crossbars"] / PAPER_COMPRESSION),
             "best": {"crossbars": srow["crossbars"], "layers": srow["search"]["genes"]}},
            indent=1) + "\n")
    plots(rows, costs[best["name"]], best["name"], args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
