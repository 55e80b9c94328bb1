"""The ``edgehybrid ci`` command: parses, calls :func:`edgehybrid.ci.run_ci`, renders, picks the exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgehybrid import console


def ci_cmd(
    config: Path = typer.Option(Path("edgehybrid.toml"), "--config", "-c", help="The CI config (strict TOML)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline JSON (default: the config's)."),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="Write this run's figures as the baseline."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Run only shard I of N of the matrix, e.g. 2/3."),
    targets: Optional[str] = typer.Option(None, "--targets", help="Only these targets' jobs, e.g. onnx,tflite."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report and artifact folder (default: the config's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the combined report as one JSON document on stdout."),
) -> None:
    """Export, check and time every model x target x precision of a config; fail on drift or latency regressions."""
    from dataclasses import replace

    from edgehybrid import ci as ci_mod
    from edgehybrid import ci_report
    from edgehybrid.errors import CheckFailedError

    cfg = ci_mod.load_config(config)
    cfg = replace(cfg, baseline=baseline or cfg.baseline, out=out or cfg.out)
    ci_mod.parse_shard(shard)
    ci_mod.select_targets(ci_mod.jobs(cfg), targets)
    console.SHOW_PROGRESS = not json_out  # no progress display for a program reading --json
    doc = ci_mod.run_ci(cfg, shard_spec=shard, update_baseline=update_baseline, only_targets=targets,
                        log=console.info, progress=console.progress, step=console.step)
    for path in ci_report.write_reports(doc, cfg.out):
        console.info(f"wrote {path}")
    if json_out:
        console.print_json(doc)
    else:
        ci_report.render(doc, console.out_console())
    if doc["baseline_missing"]:
        given = [("--config", config), ("--baseline", baseline), ("--out", out), ("--shard", shard),
                 ("--targets", targets)]
        console.info(ci_report.record_hint([str(a) for flag, v in given if v is not None for a in (flag, v)]))
    if not doc["passed"]:
        raise CheckFailedError(ci_report.failure_line(doc))
    if doc["inconclusive"]:
        from edgehybrid.errors import InconclusiveError

        raise InconclusiveError(ci_report.inconclusive_line(doc))
