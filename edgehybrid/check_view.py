"""What ``edgehybrid check`` shows a person (``--json``, ``--report`` and ``--junit`` give the documents)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgehybrid.drift import points_change


def render(r: dict, out: Console) -> None:
    m, rt = r["metrics"], r["runtime"]
    verdict = "PASS" if r["passed"] else "FAIL"
    title = f"{verdict}: {Path(r['artifact']).name} ({r['target']}, {r['precision']}) on {m['images']} {r['data'].get('noun', 'images')}"
    table = Table(show_header=False, title=title, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value")
    table.add_row("runs on", rt["method"] + ("" if rt["executed"] else f" (not executed: {rt['reason']})"))
    table.add_row("reference", r["reference"])
    if r["data"]["labelled"]:
        table.add_row("top-1", f"reference {m['reference_top1_pct']:.2f}%, artifact {m['artifact_top1_pct']:.2f}% "
                      f"({points_change(m['top1_drop_pts'], 2)})")
        if "artifact_top5_pct" in m:
            table.add_row("top-5", f"reference {m['reference_top5_pct']:.2f}%, artifact {m['artifact_top5_pct']:.2f}%")
    sqnr = "inf" if m["sqnr_db"] is None else f"{m['sqnr_db']:.1f} dB"
    table.add_row("agreement", f"top-1 {m['top1_agreement_pct']:.2f}%, cosine {m['cosine']:.5f}, SQNR {sqnr}")
    for c in r["checks"]:
        table.add_row(c["name"], ("pass: " if c["passed"] else "FAIL: ") + c["message"])
    if r["worst_classes"]:
        table.add_row("worst classes", ", ".join(f"{c['class']} {c['artifact_top1_pct']:.0f}% ({points_change(c['drop_pts'])})"
                                                 for c in r["worst_classes"][:3]))
    out.print(table)
