"""What ``edgehybrid profile`` shows a person (``--json`` and ``--report`` give the full document)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def render(doc: dict, out: Console) -> None:
    profiles = doc["profiles"]
    first = profiles[0]
    table = Table(title="edgehybrid profile", title_justify="left")
    cols = ["artifact", "runtime", "size MB", "load ms", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak MB", "+model MB"]
    compare = len(profiles) > 1  # one artifact has nothing to be compared with
    for col in cols + (["p50 vs first"] if compare else []):
        table.add_column(col, justify="left" if col in ("artifact", "runtime") else "right")
    for p, row in zip(profiles, doc["comparison"]):
        lat, mem = p["latency_ms"], p["memory"]
        table.add_row(
            p["artifact_name"], p["runtime"], f"{p['size_bytes'] / 1e6:.2f}", f"{p['load_ms']:.1f}",
            f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{p['throughput_ips']:.1f}",
            f"{mem['peak_rss_mb']:.0f}", f"{mem['peak_above_baseline_mb']:.0f}", *([_ratio(row)] if compare else []),
        )
    out.print(table)
    m = first["machine"]
    out.print(f"{m.get('cpu_model') or '?'}, {m.get('cores')} cores; {first['threads']} threads, "
              f"{first['warmup']} warm-up runs, {first['runs']} timed runs; device {first['device']}", markup=False)
    for p in profiles:
        per_op = p.get("per_op")
        if not per_op:
            continue
        if per_op.get("missing"):
            out.print(f"{p['artifact_name']}: per-op timing unavailable: {per_op['missing']}", markup=False)
            continue
        shares = ", ".join(f"{k} {v:.0%}" for k, v in per_op["by_category"].items())
        top = ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in per_op["by_op_type"][:5])
        out.print(f"{p['artifact_name']}: {shares}; top ops: {top}", markup=False)


def _ratio(row: dict) -> str:
    return "-" if row.get("p50_ratio") is None else f"{row['p50_ratio']:.2f}x"
