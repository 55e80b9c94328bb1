"""What ``edgehybrid ci`` reports: the Markdown (a pull-request comment), JUnit XML and JSON files, and the
table a person reads in the terminal."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgehybrid.drift import points_change, signed


def _cells(j: dict) -> list[str]:
    """One job's row, the same cells for the Markdown and the terminal table."""
    m, lat, b = j["metrics"], j["latency"], j["baseline"] or {}
    acc = (f"{m['reference_top1_pct']:.2f}% / {m['artifact_top1_pct']:.2f}%" if "artifact_top1_pct" in m else "-")
    drop = points_change(m["top1_drop_pts"], 2) if "top1_drop_pts" in m else "-"
    agree = f"{m['top1_agreement_pct']:.1f}%" if m else "-"
    cos = f"{m['cosine']:.5f}" if m else "-"
    lat_ms = f"{lat['artifact_ms']:.2f}" if lat else "not run"
    ratio = f"{lat['ratio']:.3f}x" if lat else "-"
    vs = b.get("status", "-")
    if "latency_change" in b:
        vs = f"latency {b['latency_change']:+.0%}, top-1 {signed(b.get('top1_change_pts', 0))}"
    status = j["status"].upper() if j["status"] == "failed" else j["status"]
    if m and not m.get("executed", True):
        status += " (simulated)"
    return [j["id"], status, acc, drop, agree, cos, lat_ms, ratio, vs]


_HEADER = ["job", "status", "top-1 ref / artifact", "top-1 change", "agreement", "cosine", "latency ms",
           "time / reference", "vs baseline"]


def _title(doc: dict) -> str:
    verdict = "FAIL" if not doc["passed"] else ("INCONCLUSIVE" if doc.get("inconclusive") else "PASS")
    return f"edgehybrid ci: {verdict} (shard {doc['shard']}, {len(doc['jobs'])} jobs)"


def _failures_and_notes(doc: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    failures = [(j["id"], f) for j in doc["jobs"] for f in j["failures"]]
    notes = [(j["id"], n) for j in doc["jobs"] for n in j["notes"]]
    return failures, notes


def markdown(doc: dict) -> str:
    lines = [f"## {_title(doc)}", "", "| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
    lines += ["| " + " | ".join(_cells(j)) + " |" for j in doc["jobs"]]
    failures, notes = _failures_and_notes(doc)
    if failures:
        lines += ["", "Failures:", ""] + [f"- `{i}`: {f}" for i, f in failures]
    if notes:
        lines += ["", "Notes:", ""] + [f"- `{i}`: {n}" for i, n in notes]
    return "\n".join(lines) + "\n"


def render(doc: dict, out: Console) -> None:
    """The same figures as :func:`markdown`, as a terminal table."""
    table = Table(title=_title(doc), title_justify="left")
    for h in _HEADER:
        table.add_column(h, no_wrap=h == "job")
    for j in doc["jobs"]:
        cells = _cells(j)
        style = {"failed": "bold red", "skipped": "dim", "inconclusive": "yellow"}.get(j["status"])
        table.add_row(*cells, style=style)
    out.print(table)
    failures, notes = _failures_and_notes(doc)
    for i, f in failures:
        out.print(f"[bold red]failed[/bold red] {i}: {f}", markup=True, highlight=False)
    for i, n in notes:
        out.print(f"note {i}: {n}", markup=False)


def record_hint(options: list[str]) -> str:
    """How to record a first baseline, with the options this run was given (quoted for a shell)."""
    return ("no baseline yet, so every job is new; record this run's figures as the baseline with: "
            + shlex.join(["edgehybrid", "ci", *options, "--update-baseline"]))


def junit(doc: dict) -> str:
    from edgehybrid.drift_check import junit_xml

    cases = []
    for j in doc["jobs"]:
        cls = j["id"].replace("/", ".")
        if j["status"] == "skipped":  # a precision this target has no export for: said, not run
            cases.append({"classname": cls, "name": "export", "passed": True, "skipped": "; ".join(j["notes"]),
                          "message": "skipped", "seconds": 0.0})
            continue
        per = j["seconds"] / max(1, len(j["checks"]) + 2)
        for c in j["checks"]:
            cases.append({"classname": cls, "name": c["name"], "passed": c["passed"], "message": c["message"],
                          "seconds": per})
        export_fail = [f for f in j["failures"] if f.startswith("export:")]
        cases.append({"classname": cls, "name": "export", "passed": not export_fail,
                      "message": export_fail[0] if export_fail else f"exported {j['artifact']}", "seconds": per})
        base_fail = [f for f in j["failures"] if "regression" in f or f.startswith("max-latency")]
        skipped = (next((n for n in j["notes"] if n.startswith("latency")), None)
                   if not j["latency"] or j["status"] == "inconclusive" else None)
        cases.append({"classname": cls, "name": "baseline", "passed": not base_fail, "skipped": None if base_fail
                      else skipped, "message": "; ".join(base_fail) or (j["baseline"] or {}).get("status", "-"),
                      "seconds": per})
    return junit_xml("edgehybrid ci", cases)


def write_reports(doc: dict, out: Path) -> list[Path]:
    import json

    from edgehybrid.fsutil import write_text_atomic

    suffix = "" if doc["shard"] == "1/1" else "-shard-" + doc["shard"].replace("/", "-of-")
    paths = [out / f"ci-report{suffix}.json", out / f"ci-report{suffix}.md", out / f"ci-junit{suffix}.xml"]
    write_text_atomic(paths[0], json.dumps(doc, indent=2) + "\n")
    write_text_atomic(paths[1], markdown(doc))
    write_text_atomic(paths[2], junit(doc))
    return paths


def failure_line(doc: dict) -> str:
    failed = [j for j in doc["jobs"] if j["status"] == "failed"]
    first = failed[0]
    more = f" (and {len(failed) - 1} more jobs)" if len(failed) > 1 else ""
    return f"ci failed: {first['id']}: {'; '.join(first['failures'])}{more}"




def inconclusive_line(doc: dict) -> str:
    first = next(j for j in doc["jobs"] if j["status"] == "inconclusive")
    note = next((n for n in first["notes"] if n.startswith("latency inconclusive")), "latency inconclusive")
    more = f" (and {len(doc['inconclusive']) - 1} more jobs)" if len(doc["inconclusive"]) > 1 else ""
    return f"ci inconclusive: {first['id']}: {note}{more}"
