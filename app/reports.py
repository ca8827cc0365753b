"""Reports for the command line: the tables and summaries the commands print."""

from __future__ import annotations


def cost_table(nc, consts) -> str:
    """`epim cost`: a row per layer, then the network's totals."""
    out = []
    out.append(f"{'layer':14} {'copies':>6} {'xbars':>6} {'dense8':>7} {'area mm2':>9} "
          f"{'activ.':>8} {'no reuse':>9} {'latency':>8} {'cyc/img':>8} {'energy nJ':>10}")
    for c in nc.layers:
        out.append(f"{c.name:14} {c.replicas:6d} {c.crossbars:6d} {c.dense8_crossbars:7d} "
              f"{c.cell_area_mm2:9.4f} {c.activations:8d} {c.activations_no_reuse:9d} "
              f"{c.cycles_latency:8d} {c.cycles_per_image:8.0f} "
              f"{c.energy_total_pj * 1e-3:10.1f}")
    s = nc.summary()
    parts = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in s["energy_uj_by_part"].items())
    out.append(f"network: {s['crossbars']} crossbars ({s['compression_vs_dense8']:.2f}x fewer than "
          f"dense 8-bit: {s['dense8_crossbars']}), {s['cell_area_mm2']:.4f} mm2 of cells, "
          f"{s['activations']} activations per image ({s['activations_no_reuse']} without "
          f"reuse), {s['cycles_per_image']:.0f} cycles per image = {s['ns_per_image']:.0f} ns "
          f"at {consts.clock_mhz:g} MHz, energy {s['energy_uj'] * 1e3:.1f} nJ per image "
          f"({parts})")
    nw = s["network_model"]
    if nw["status"] == "modelled":
        out.append(f"network cycle model ({nw['images']} images back to back, the skip FIFOs "
                   f"'epim generate' sizes): {nw['steady_cycles_per_image']:g} cycles per image "
                   f"(mean distance of their last output beats, as 'epim cosim' measures) = "
                   f"{s['network_ns_per_image']:.0f} ns (slowest tile alone: "
                   f"{s['cycles_per_image']:.0f}), latency {nw['latency_cycles']} cycles for the "
                   f"first image, {nw['last_latency_cycles']} for the last")
    else:
        out.append(f"network cycle model {nw['status']}")
    return "\n".join(out)


def network_report(rep: dict) -> str:
    """`epim cosim` of a network: bit-exactness, cycles against the model, a row per layer."""
    out = []
    n = rep["images"]
    steady = rep["steady_cycles_per_image"]
    out.append(f"{rep['network']}: {n} image(s), {rep['matching_images']}/{n} bit-exact "
          f"against the reference; latency {rep['cycles'][0]} cycles "
          f"(model {rep['predicted_cycles'][0]})"
          + (f"; steady {steady:g} cycles/image (model "
             f"{rep['predicted_steady_cycles_per_image']:g})" if steady else "")
          + f"; every handshake cycle {'equals' if rep['cycles_match'] else 'DIFFERS FROM'} "
            "the model")
    if rep.get("tiles") == "programmable":
        how = (f"programmed through the network's port ({rep['prog_beats']} words)"
               if rep["programmed_via_port"] else "images loaded at start-up ($readmemh)")
        out.append(f"  programmable tiles, {how}; Verilog "
                   f"{rep['verilog_bytes'] / 1e6:.1f} MB")
    elif rep.get("tiles") == "fixed":
        out.append(f"  fixed (weight-baked) tiles; Verilog {rep['verilog_bytes'] / 1e6:.1f} MB")
    out.append(f"  {'layer':12} {'op':15} {'cycles/image':>12} {'busy/image':>10} "
          f"{'alone':>8} {'utilisation':>11}")
    for name, row in rep["layers"].items():
        sc = row["steady_cycles_per_image"]
        util = row.get("utilisation")
        out.append(f"  {name:12} {row['op']:15} {(f'{sc:g}' if sc else '-'):>12} "
              f"{row.get('ideal_cycles_per_image', '-')!s:>10} "
              f"{row.get('alone_cycles_per_image', '-')!s:>8} "
              + (f"{util:11.3f}" if util is not None else f"{'-':>11}"))
    return "\n".join(out)


def tile_report(report: dict) -> str:
    """`epim cosim --program`: one tile's bit-exactness and cycles against the model."""
    out = []
    steady = report["steady_cycles_per_image"]
    out.append(f"{report['layer']}: {report['images']} image(s), "
          f"{'bit-exact' if report['match'] else 'MISMATCH'} against the reference; "
          f"latency {report['cycles'][0]} cycles (model {report['predicted_cycles'][0]})"
          + (f"; steady {steady:g} cycles/image (model "
             f"{report['predicted_steady_cycles_per_image']:g})" if steady else "")
          + (f", crossbar utilisation {report['utilisation']:.3f}"
             if report["utilisation"] is not None else ""))
    return "\n".join(out)
