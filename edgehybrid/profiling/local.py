"""Profile an artifact on this machine: ``probe.py`` in a fresh Python process, its JSON read back.

A fresh process per artifact is the point: the peak RSS it reports then belongs to the runtime and this
one model, not to torch, the exporters or an earlier model loaded by the caller. Everything that can be
refused without running anything (an unknown runtime, a missing file, zero runs, Core ML off macOS) is
refused here, in one line, before a process is spawned; what only the probe can find out (a corrupt
artifact, a runtime missing from the interpreter) comes back as its one-line stderr message, turned into
the matching :class:`~edgehybrid.errors.EdgeHybridError` by :func:`probe_error`. The probe's arguments, its
error lines and its document are :mod:`edgehybrid.profiling.protocol`'s, shared with the SSH path.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

from edgehybrid.errors import EdgeHybridError, InputError, MissingBackendError, UnknownNameError
from edgehybrid.profiling.protocol import PROBE, auto_runtime, parse_document, probe_args, probe_line, runtime_package
from edgehybrid.requires import manifest_requires
from edgehybrid.runtimes import RuntimeUnavailable
from edgehybrid.targets import runtime_names, target_of_runtime

__all__ = ["PROBE", "ProbeCrashed", "probe_command", "probe_error", "profile_local", "resolve_runtime"]


class ProbeCrashed(EdgeHybridError):
    """The probe failed in a way no input explains: a bug, reported with exit code 3 (see ``detail``)."""

    exit_code = 3

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail  # the probe's stderr (its traceback), for --debug


def resolve_runtime(artifact: Path, runtime: str, local: bool = True) -> str:
    """The runtime that will profile ``artifact``: ``auto`` reads the suffix; a mismatch is refused.

    Raises a one-line error for an unknown runtime (with a did-you-mean), a missing artifact, a runtime
    that does not run this kind of file, and (``local``: profiling on this machine) Core ML off macOS.
    Pass ``local=False`` for a device: a Mac reached over SSH runs Core ML whatever this host is.
    """
    artifact = Path(artifact)
    runtimes = runtime_names()
    if runtime != "auto" and runtime not in runtimes:
        raise UnknownNameError.for_choice("runtime", runtime, ["auto"] + runtimes)
    if not artifact.exists():
        raise InputError(f"artifact {str(artifact)!r} does not exist")
    name = auto_runtime(artifact) if runtime == "auto" else runtime
    try:
        expected = auto_runtime(artifact)
    except EdgeHybridError:
        expected = name  # an unusual suffix: trust the explicit runtime, the probe will say if it cannot load it
    if expected != name:
        raise InputError(f"{artifact.name} is a {expected} artifact; profile it with --runtime {expected} "
                         f"(or auto), not {name}")
    target = target_of_runtime(name)
    if local and not target.executes_here():
        system = platform.system() or sys.platform
        raise RuntimeUnavailable(
            f"{target.title} models cannot be executed on {system} ({target.title} runs only on "
            f"{target.runs_on}); run `edgehybrid profile` on {target.runs_on}, or pass --device"
        )
    return name


probe_command = probe_args  # the name the local path has always used


def probe_error(stderr: str, returncode: int, runtime: str, same_python: bool = False) -> EdgeHybridError:
    """The error for a probe that exited with ``returncode``, from its last ``probe error (KIND): ...`` line.

    ``same_python``: the probe ran in edgehybrid's own interpreter, so a missing runtime is fixed by
    installing edgehybrid's extra (:class:`MissingBackendError`); elsewhere the probe's own pip line stands.
    """
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    match = probe_line(lines)
    if returncode < 0:
        return EdgeHybridError(f"the {runtime} probe was killed by signal {-returncode}"
                               + (" (out of memory?)" if returncode == -9 else ""))
    if match is None:  # no line of ours: the interpreter itself failed (e.g. no numpy, a syntax error)
        last = lines[-1] if lines else f"exit code {returncode}, no message"
        return EdgeHybridError(f"the {runtime} probe could not run: {last}")
    kind, message = match
    if kind == "missing-runtime":
        if same_python:
            module, _package, extra = runtime_package(runtime)
            return MissingBackendError(module, extra, f"Profiling with {runtime}")
        return EdgeHybridError(message)
    if kind == "unavailable":
        return RuntimeUnavailable(message)
    if kind in ("usage", "input"):
        return InputError(message)
    return ProbeCrashed(f"the {runtime} probe failed unexpectedly (a bug in edgehybrid): {message}", stderr)


def profile_local(artifact: Path, runtime: str, threads: int, warmup: int, runs: int | None,
                  min_time: float | None, per_op: bool, python: str = sys.executable,
                  timeout: float = 600) -> dict:
    """Profile ``artifact`` in a fresh ``python`` process; the ``edgehybrid.profile/1`` document.

    ``runtime`` is a runtime name or ``auto``; exactly one of ``runs`` / ``min_time`` is given.
    """
    artifact = Path(artifact)
    name = resolve_runtime(artifact, runtime)
    cmd = [python, str(PROBE)] + probe_command(artifact, name, threads, warmup, runs, min_time, per_op,
                                               manifest_requires(artifact))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise InputError(f"cannot run the Python interpreter {python!r}: no such file") from None
    except subprocess.TimeoutExpired:
        raise EdgeHybridError(
            f"profiling {artifact.name} on {name} did not finish within {timeout:g} s; ask for fewer runs "
            "or a shorter --min-time"
        ) from None
    if proc.returncode != 0:
        same = Path(shutil.which(python) or python).resolve() == Path(sys.executable).resolve()
        raise probe_error(proc.stderr, proc.returncode, name, same_python=same)
    try:
        return parse_document(proc.stdout, f"the {name} probe")
    except EdgeHybridError as exc:
        raise ProbeCrashed(f"{exc} (a bug in edgehybrid)", proc.stderr) from None
