"""The ``edgehybrid compare`` command: parses, calls :func:`edgehybrid.comparison.run_compare`, renders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgehybrid import console
from edgehybrid.cli_errors import Stopped


def compare_cmd(
    models: list[str] = typer.Argument(..., metavar="MODEL...", help="Candidates: zoo names, tagged fixtures (mobilevit_xxs.cifar10), "
                                       "file.py:factory or model.pt2."),
    target: list[str] = typer.Option(..., "--target", "-t", help="A target to compare on (repeatable): onnx, "
                                     "tflite, coreml, executorch."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="Comma-separated precisions, e.g. fp32,int8."),
    data: Optional[str] = typer.Option(
        None, "--data", help="Images to measure accuracy on: one sub-folder per class (top-1), or loose images "
        "(agreement with FP32); bundled:cifar10/eval is the package's own 500 labelled images."),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="Artifacts and measurements; a second run "
                             "reuses what is up to date there (an interrupted run resumes)."),
    device: Optional[str] = typer.Option(None, "--device", help="Time on a device over SSH: ssh://user@host[:port]."),
    device_python: str = typer.Option("python3", "--device-python", help="Python executable on the device."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="SSH private key for --device."),
    threads: int = typer.Option(2, "--threads", min=1, help="Runtime threads for timing and checking."),
    runs: int = typer.Option(50, "--runs", min=1, help="Timed runs per artifact."),
    budget_ms: Optional[float] = typer.Option(None, "--budget-ms", help="Latency budget: the p50 a choice may take."),
    budget_mb: Optional[float] = typer.Option(
        None, "--budget-mb", help="Memory budget: what the model may add to its process (peak RSS above the runtime's)."),
    random_weights: bool = typer.Option(
        False, "--random-weights", help="Zoo names without a tag get random weights: compare speed and size only."),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="Check on at most N images of --data."),
    fresh: bool = typer.Option(False, "--fresh", help="Measure again instead of reusing measurements in --out."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write FILE.html (plots), FILE.md or FILE.json."),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as one JSON document on stdout."),
) -> None:
    """Compare models on a target: accuracy, latency, memory, size and attention vs convolution, with the Pareto
    front; with --budget-ms/--budget-mb exit 0 when a candidate fits, 1 when none does."""
    from edgehybrid import comparison as compare_mod
    from edgehybrid import compare_report

    request = compare_mod.CompareRequest(
        models=tuple(models), targets=tuple(target),
        precisions=tuple(p.strip() for p in precision.split(",") if p.strip()), data=data, out=out,
        threads=threads, runs=runs, budget=compare_mod.Budget(ms=budget_ms, mb=budget_mb), device=device,
        device_python=device_python, identity=identity, random_weights=random_weights, max_images=max_images,
        fresh=fresh)
    if report is not None:
        compare_report.check_report_path(report)  # before minutes of work, not after
    console.SHOW_PROGRESS = not json_out
    try:
        doc = compare_mod.run_compare(request, log=console.info, progress=console.progress, step=console.step)
    except Stopped:
        if out.is_dir():
            console.info(f"stopped: what was finished is kept in {out}; run the same command again to resume")
        raise
    if report is not None:
        compare_report.write_report(doc, report)
        console.info(f"wrote {report}")
    if json_out:
        console.print_json(doc)
    else:
        from edgehybrid import compare_view

        compare_view.render(doc, console.out_console())
    if doc["choice"] is not None and not doc["choice"]["fits"]:
        if json_out:  # the table said it otherwise
            console.info(f"over budget: {doc['choice']['line']}")
        raise typer.Exit(1)  # a CI job choosing a model: none fits
