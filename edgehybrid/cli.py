"""The ``edgehybrid`` command line: thin, it parses, calls the library and renders with rich.

Exit codes: 0 success; 1 a check that ran and failed (validation, drift, regression); 2 bad usage or
input (unknown names, missing or corrupt files, missing optional backends); 3 an internal error, which is
a bug in edgehybrid (``--debug`` shows its traceback); 4 ``ci`` could not judge latency (an unsteady machine).
"""

from __future__ import annotations


import sys
from pathlib import Path
from typing import Optional

import typer

from edgehybrid import __version__, console
from edgehybrid.cli_errors import (
    CLICK_ABORT,
    CLICK_ERROR,
    CLICK_EXIT,
    EXIT_INTERNAL,  # noqa: F401  (re-exported: the code for a bug)
    Stopped,
    internal_error,
    signals_unwind,
)
from edgehybrid.errors import EXIT_USAGE, EdgeHybridError

app = typer.Typer(
    name="edgehybrid",
    help="Export hybrid attention + convolution vision models to ONNX, Core ML and TFLite, "
    "validate them against PyTorch and profile them on their runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgehybrid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks and third-party warnings (place before the command)."
    ),
) -> None:
    """Export hybrid attention + convolution vision models for edge devices."""
    console.route_warnings(debug)
    console.DEBUG = debug


@app.command("models")
def models_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (a list of models) on stdout."),
    family: Optional[str] = typer.Option(None, "--family", help="Only this family, e.g. mobilevit."),
    tags: bool = typer.Option(False, "--tags", help="List every checkpoint tag instead: bundled (offline) or hub."),
) -> None:
    """List every model in the zoo: family, kind, parameters, MACs, input size, published accuracy and latency."""
    from edgehybrid import zoo_view

    if tags:
        rows = zoo_view.checkpoint_rows()
        rows = [r for r in rows if family is None or r["model"] in {m["name"] for m in zoo_view.model_rows(family)}]
        if json_out:
            console.print_json(rows)
        else:
            zoo_view.render_tags(rows, console.out_console())
        return
    rows = zoo_view.model_rows(family)
    if json_out:
        console.print_json(rows)
    else:
        zoo_view.render_table(rows, console.out_console())


@app.command("info")
def info_cmd(
    model: str = typer.Argument(..., help="Zoo name, e.g. mobilevit_s or mobilevit_s.cvnets_in1k."),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w",
        help="Also load these weights and check that they fit: a .safetensors/.pth file, "
        "hf-hub:<org>/<repo>, or 'random'.",
    ),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Build with this many classes."),
    input_size: Optional[tuple[int, int]] = typer.Option(
        None, "--input-size", help="Build for this input height and width.", show_default=False
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Show one model's spec: input, preprocessing, checkpoints and published figures with their sources."""
    from edgehybrid import zoo_view

    doc = zoo_view.model_info(model, weights=weights, num_classes=num_classes, input_size=input_size)
    if json_out:
        console.print_json(doc)
    else:
        zoo_view.render_info(doc, console.out_console())


@app.command("profile")
def profile_cmd(
    artifacts: list[Path] = typer.Argument(..., help="One or more artifacts (.onnx, .tflite, .mlpackage, .pte) to profile."),
    runtime: str = typer.Option("auto", "--runtime", "-r", help="auto (from the suffix), onnxruntime, litert, coreml or executorch."),
    threads: int = typer.Option(2, "--threads", min=1, help="Runtime threads (recorded in the report)."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed runs before timing starts."),
    runs: Optional[int] = typer.Option(
        None, "--runs", min=1, help="Timed runs (default 50, or as many as --min-time allows)."
    ),
    min_time: Optional[float] = typer.Option(None, "--min-time", help="Time for at least this many seconds instead."),
    per_op: bool = typer.Option(False, "--per-op", help="Per-operator time, grouped by op type and model module."),
    device: Optional[str] = typer.Option(
        None, "--device", help="Profile on a device over SSH: ssh://user@host[:port] (its Python and runtime)."
    ),
    device_python: str = typer.Option("python3", "--device-python", help="Python executable on the device."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="SSH private key for --device."),
    report: Optional[Path] = typer.Option(
        None, "--report", help="Also write a report: FILE.json, FILE.md (pull-request comment) or FILE.html (plots)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
) -> None:
    """Measure load time, latency percentiles, throughput and peak memory of artifacts on their runtime."""
    from edgehybrid.errors import InputError
    from edgehybrid.profiling import report as report_mod
    from edgehybrid.profiling.local import profile_local, resolve_runtime

    if runs is not None and min_time is not None:
        raise InputError("give either --runs or --min-time, not both")
    if min_time is not None and not min_time > 0:
        raise InputError(f"--min-time must be a positive number of seconds, got {min_time:g}")
    if runs is None and min_time is None:
        runs = 50
    _progress(json_out)
    if report is not None:
        report_mod.check_report_path(report)  # before minutes of profiling, not after
    remote = None
    if device is not None:
        from edgehybrid.profiling.remote import parse_device, profile_remote

        remote = parse_device(device)
    profiles = []
    for artifact in artifacts:
        name = resolve_runtime(artifact, runtime, local=remote is None)
        where = device or "this machine"
        console.info(f"profiling {artifact} on {name} ({where}, {threads} threads)")
        with console.step(f"timing {artifact.name} on {name}"):
            if remote is not None:
                result = profile_remote(remote, artifact, name, threads, warmup, runs, min_time, per_op,
                                        python=device_python, identity=identity)
            else:
                result = profile_local(artifact, name, threads, warmup, runs, min_time, per_op)
        warning = (result.get("requirement") or {}).get("warning")
        if warning:
            console.warn(warning)
        lat = result["latency_ms"]
        console.info(f"  p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, peak RSS {result['memory']['peak_rss_mb']:.0f} MB")
        profiles.append(result)
    doc = report_mod.to_json(profiles)
    if report is not None:
        report_mod.write_report(doc, report)
        console.info(f"wrote {report}")
    if json_out:
        console.print_json(doc)
    else:
        from edgehybrid import profile_view

        profile_view.render(doc, console.out_console())


@app.command("check")
def check_cmd(
    artifact: Path = typer.Argument(..., help="An exported artifact (.onnx, .tflite, .mlpackage, .pte) with its manifest."),
    data: Path = typer.Option(
        ..., "--data", help="Folder of images (sound files for a speech model): one sub-folder per class (named "
        "as the model's classes) for accuracy, or loose files for agreement figures only. bundled:cifar10/eval and "
        "bundled:speech/eval name the package's own 500 labelled CIFAR-10 images and 200 labelled spoken words.",
    ),
    reference: Optional[str] = typer.Option(
        None, "--reference", help="FP32 reference: a zoo name[.tag] or a weights file (default: the manifest's model)."
    ),
    max_top1_drop: float = typer.Option(1.0, "--max-top1-drop", help="Largest allowed top-1 drop, in points."),
    min_agreement: float = typer.Option(95.0, "--min-agreement", help="Smallest top-1 agreement with the reference, %."),
    min_cosine: float = typer.Option(0.98, "--min-cosine", help="Smallest mean logit cosine with the reference."),
    threads: int = typer.Option(2, "--threads", min=1, help="Runtime and PyTorch threads."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML here (for CI systems)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a Markdown report here (a PR comment)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Check an artifact whose manifest has no sha256 (or no longer matches it)."
    ),
) -> None:
    """Measure an artifact's drift from its FP32 PyTorch model on real data; exit 1 when a threshold fails."""
    from edgehybrid import drift_check as check_mod
    from edgehybrid.errors import CheckFailedError
    from edgehybrid.fsutil import check_output_file, write_report_file

    if junit is not None:
        check_output_file(junit, (".xml",), "--junit")
    if report is not None:
        check_output_file(report, (".md",), "--report")
    thresholds = check_mod.Thresholds(max_top1_drop=max_top1_drop, min_agreement=min_agreement, min_cosine=min_cosine)
    _progress(json_out)
    result = check_mod.run_check(artifact, data, reference=reference, thresholds=thresholds, threads=threads,
                                 progress=console.progress, warn=console.warn, verify=not no_verify)
    console.info(f"checked {artifact.name} on {result['metrics']['images']} {result['data'].get('noun', 'images')} "
                 f"in {result['seconds']:.1f}s")
    if not result["runtime"]["executed"]:
        console.warn(f"{artifact.name} was not executed: {result['runtime']['reason']}; figures are "
                     f"{result['runtime']['method']}")
    if junit is not None:
        write_report_file(junit, check_mod.junit_xml("edgehybrid check", check_mod.junit_cases(result)), "--junit")
    if report is not None:
        write_report_file(report, check_mod.markdown(result), "--report")
    if json_out:
        console.print_json(result)
    else:
        from edgehybrid import check_view

        check_view.render(result, console.out_console())
    if not result["passed"]:
        raise CheckFailedError(check_mod.failure_line(result))


from edgehybrid.cli_export import export_cmd  # noqa: E402  (its own module: the command has many options)

app.command("export")(export_cmd)
from edgehybrid.cli_ci import ci_cmd  # noqa: E402  (its own module, as compare's)

app.command("ci")(ci_cmd)
from edgehybrid.cli_compare import compare_cmd  # noqa: E402  (its own module: the command is long)

app.command("compare")(compare_cmd)


def _progress(json_out: bool) -> None:
    """Progress displays on stderr, but none under --json (whose reader is a program)."""
    console.SHOW_PROGRESS = not json_out


def _int8_default(args: list[str]) -> list[str]:
    """``--int8`` alone means ``--int8 full`` (click has no option with an optional value)."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--int8" and (i + 1 == len(args) or args[i + 1] not in ("full", "weights")):
            out.append("full")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and ``python -m edgehybrid``; returns the exit code."""
    args = _int8_default(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    try:
        with signals_unwind():
            result = app(args=args, prog_name="edgehybrid", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except CLICK_EXIT as exc:
        return exc.exit_code
    except CLICK_ABORT:  # end of input at a prompt
        console.error("aborted")
        return 130
    except Stopped as exc:
        console.error(exc.line)
        return exc.exit_code
    except KeyboardInterrupt:  # a Ctrl-C where our handler could not be installed
        console.error("interrupted")
        return 130
    except CLICK_ERROR as exc:  # a usage error: one line that names the option, as every other error
        ctx = getattr(exc, "ctx", None)
        console.error(exc.format_message() + (f" (see '{ctx.command_path} -h')" if ctx is not None else ""))
        return exc.exit_code
    except EdgeHybridError as exc:
        if debug:
            raise
        console.error(str(exc))
        return exc.exit_code
    except OSError as exc:
        if debug or exc.filename is None:
            if debug:
                raise
            return internal_error(exc)
        # a path the file system refused (too long, no permission, full disk ...): the path's, not a bug
        console.error(f"cannot use {str(exc.filename)!r}: {exc.strerror or exc}; choose another path or free it")
        return EXIT_USAGE
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        if debug:
            raise
        return internal_error(exc)
