"""What ``edgehybrid export`` shows a person when it is done (``--json`` prints the manifest instead)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgehybrid.drift import top1_text


def render_summary(m: dict, out: Console) -> None:
    table = Table(show_header=False, title=f"{m['model']} -> {m['target']} ({m['precision']})", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    inp, outp = m["inputs"][0], m["outputs"][0]
    table.add_row("artifact", f"{m['artifact']} ({m['size_bytes'] / 1e6:.2f} MB)")
    table.add_row("input", f"{inp['name']} {inp['shape']} {inp['dtype']} {inp.get('layout') or ''}".strip())
    table.add_row("output", f"{outp['name']} {outp['shape']} {outp['dtype']}")
    pre = m["preprocessing"]
    where = "in the graph (feed raw 0..255 RGB pixels)" if pre["in_graph"] else "before the model"
    table.add_row("preprocessing", f"resize {pre['resize']}, crop {pre['crop']}, /{pre['value_scale']:g}, "
                  f"mean {pre['mean']}, std {pre['std']}, {pre['channel_order']}: {where}")
    v = m["validation"]
    metrics = v.get("metrics")
    if metrics:
        c = next(iter(metrics.values()))
        verdict = "passed" if v["passed"] else "FAILED"
        how = v["method"] if v["executed"] else f"{v['method']} (not executed: {v['reason']})"
        table.add_row("validation", f"{verdict} on {c['samples']} images via {how}: max-abs {c['max_abs']:.2e}, "
                      f"cosine {c['cosine']:.6f}, {top1_text(c)}")
    else:
        table.add_row("validation", f"not executed: {v.get('reason')}")
    d = (m.get("details") or {}).get("delegation")
    if d:  # ExecuTorch: what runs in the accelerated backend and what falls back to slow portable kernels
        portable = ", ".join(f"{op} x{n}" for op, n in d["portable_ops"].items()) or "none"
        int8 = d.get("int8_weighted_ops", {}).get("delegated")
        table.add_row("delegation", f"{d['delegated_nodes']} nodes in {d['delegated_subgraphs']} XNNPACK subgraphs"
                      + (f" ({int8} int8 convolutions / linears)" if int8 else "")
                      + f"; portable kernels: {portable}")
    table.add_row("time", ", ".join(f"{k} {t:.2f}s" for k, t in m["timings_s"].items() if "." not in k))
    table.add_row("manifest", m["artifact"] + ".manifest.json")
    out.print(table)
