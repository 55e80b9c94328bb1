"""The probe protocol, shared by the local and the SSH paths: how ``probe.py`` is called, what it prints.

``probe.py`` is self-contained (it runs in a device's own Python with nothing of edgehybrid installed), so
this module is the one place that knows its arguments, its one-line errors (``probe error (KIND): MESSAGE``
as the last stderr line, KIND one of ``usage``, ``input``, ``missing-runtime``, ``unavailable``,
``internal``) and its document (``edgehybrid.profile/1`` JSON on stdout).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgehybrid.errors import EdgeHybridError, InputError
from edgehybrid.targets import target_for_artifact, target_of_runtime

PROBE = Path(__file__).with_name("probe.py")
SCHEMA = "edgehybrid.profile/1"
_PROBE_LINE = re.compile(r"^probe error \((?P<kind>[\w-]+)\): (?P<message>.+)$")


def probe_args(artifact: str, runtime: str, threads: int, warmup: int, runs: int | None, min_time: float | None,
               per_op: bool, requires: dict[str, str] | None = None) -> list[str]:
    """The probe's arguments (after the interpreter and the script), checked before anything runs."""
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    if warmup < 0:
        raise InputError(f"--warmup cannot be negative, got {warmup}")
    if (runs is None) == (min_time is None):
        raise InputError("give either a number of runs or a minimum time, not both or neither")
    if runs is not None and runs < 1:
        raise InputError(f"--runs must be at least 1, got {runs}")
    if min_time is not None and not min_time > 0:
        raise InputError(f"--min-time must be a positive number of seconds, got {min_time}")
    args = [str(artifact), "--runtime", runtime, "--threads", str(threads), "--warmup", str(warmup)]
    args += ["--runs", str(runs)] if runs is not None else ["--min-time", repr(float(min_time))]
    args += [f"--requires={key}{spec}" for key, spec in (requires or {}).items()]
    return args + (["--per-op"] if per_op else [])


def auto_runtime(artifact: Path) -> str:
    """The runtime for ``--runtime auto``: from the artifact's suffix."""
    return target_for_artifact(artifact).runtime


def runtime_package(runtime: str) -> tuple[str, str, str]:
    """(module the probe imports, pip package a device installs, edgehybrid extra) for a runtime."""
    t = target_of_runtime(runtime)
    return t.probe_module, t.device_package, t.extra


def probe_line(lines: list[str]) -> tuple[str, str] | None:
    """(kind, message) of the probe's last ``probe error`` line, if it printed one."""
    for line in reversed(lines):
        m = _PROBE_LINE.match(line.strip())
        if m:
            return m["kind"], m["message"]
    return None


def parse_document(stdout: str, what: str) -> dict:
    """The probe's profile from its stdout; a chatty login script may print before it. ``what`` names the probe
    in the error for a missing or foreign document (a bug, or a device that printed something else)."""
    doc = None
    try:
        doc = json.loads(stdout)
    except ValueError:
        lines = stdout.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
        if start is not None:
            try:
                doc = json.loads("\n".join(lines[start:]))
            except ValueError:
                doc = None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise EdgeHybridError(f"{what} printed no profile (stdout began {stdout[:80]!r})")
    return doc
