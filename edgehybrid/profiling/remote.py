"""Profiling an artifact on a device over SSH, with the device's own Python and runtime.

Nothing of edgehybrid is installed on the device. Two SSH connections do the whole job:

1. ``mktemp -d`` a private folder on the device and stream the artifact into it over the connection's
   stdin (``cat`` for a file, a tar stream for a folder such as ``.mlpackage``);
2. run the very ``probe.py`` used locally by piping it to ``python3 -`` on the device, inside that folder,
   then remove the folder whatever the probe's outcome.

Only the OpenSSH client is needed here and only ``sh``, ``mktemp``, ``cat``/``tar`` and Python there.
Everything that reaches the remote shell is quoted with :func:`shlex.quote`, and the whole script is run
with ``sh -c`` so the device user's login shell (bash, zsh, fish ...) only ever sees one quoted word.
Every failure becomes one line: unreachable host, refused key, missing Python, the probe's own message.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgehybrid.errors import EdgeHybridError, InputError
from edgehybrid.profiling.protocol import PROBE, auto_runtime, parse_document, probe_args, probe_line, runtime_package
from edgehybrid.requires import manifest_requires

_EXPECTED = "expected ssh://user@host[:port], e.g. ssh://pi@raspberrypi.local:22"
_NO_MODULE = re.compile(r"^(?:ModuleNotFoundError|ImportError): No module named '(?P<module>[\w.]+)'")
_SSH_NOISE = ("Warning: Permanently added", "** ", "Pseudo-terminal")  # informational lines, never the cause


class RemoteError(EdgeHybridError):
    """Profiling on a device failed; the message names the device and what to do."""


class ConnectionFailed(RemoteError):
    """The device could not be reached: refused, timed out, unresolvable, unreachable."""


class AuthenticationFailed(RemoteError):
    """The device was reached but would not let us in (refused key, unknown host key)."""


class DevicePythonMissing(RemoteError):
    """The Python to run the probe with is not on the device."""


class ProbeFailed(RemoteError):
    """The probe ran on the device and reported an error (an unreadable artifact, a crash ...)."""


class RuntimeMissing(ProbeFailed):
    """The device's Python lacks the runtime (or numpy) the probe needs; the message says what to install."""


@dataclass(frozen=True)
class Device:
    """An SSH-reachable device: ``ssh://user@host:port``."""

    user: str
    host: str
    port: int = 22

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"ssh://{self.user}@{host}:{self.port}"

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"


def parse_device(url: str) -> Device:
    """``ssh://user@host[:port]`` as a :class:`Device`; anything else is a one-line :class:`InputError`."""
    bad = InputError(f"--device {url!r} is not an SSH address; {_EXPECTED}")
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port or 22
    except ValueError:  # a port that is not a number or is out of range
        raise bad from None
    user, host = parts.username, parts.hostname
    if (parts.scheme != "ssh" or not user or not host or parts.password is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise bad
    # a user or host starting with '-' would be read by ssh as an option
    if user.startswith("-") or host.startswith("-") or any(c.isspace() for c in user + host):
        raise bad
    return Device(user=user, host=host, port=port)


def _ssh_argv(device: Device, script: str, identity: Path | None, ssh_options: list[str] | None) -> list[str]:
    # the caller's options first: ssh keeps the first value it sees for an option, so they can override ours
    argv = ["ssh", *(ssh_options or []), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(device.port)]
    if identity is not None:
        # only this key: otherwise the agent's or default keys are tried first and may be the ones used
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    return argv + ["--", device.destination, "sh -c " + shlex.quote(script)]


def _meaningful_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith(_SSH_NOISE)]


def ssh_failure(device: Device, stderr: str, identity: Path | None) -> RemoteError:
    """The one-line error for an SSH-level failure (ssh exited 255), from what ssh printed."""
    lines = _meaningful_lines(stderr)
    text = " ".join(lines).lower()
    where = f"{device.host}:{device.port}"
    key = f"the key {str(identity)!r}" if identity else "your default SSH keys"
    if "permission denied" in text:
        return AuthenticationFailed(
            f"{device.url} refused {key} (permission denied): add its public key to ~/.ssh/authorized_keys "
            f"of {device.user} on the device, or pass the key it accepts")
    if "host key verification failed" in text or "remote host identification has changed" in text:
        return AuthenticationFailed(
            f"the host key of {where} is not known here or has changed: connect once with "
            f"'ssh -p {device.port} {device.destination}' to check and accept it")
    for needle, reason in (("connection refused", "connection refused (is sshd running there, on that port?)"),
                           ("timed out", "connection timed out (is the device on and on this network?)"),
                           ("could not resolve hostname", "the host name cannot be resolved"),
                           ("name or service not known", "the host name cannot be resolved"),
                           ("no route to host", "no route to host"),
                           ("network is unreachable", "the network is unreachable")):
        if needle in text:
            return ConnectionFailed(f"cannot connect to {where}: {reason}")
    return ConnectionFailed(f"ssh to {device.url} failed: {lines[-1] if lines else 'no reason given'}")


def probe_failure(device: Device, python: str, runtime: str, returncode: int, stderr: str) -> RemoteError:
    """The one-line error for a probe run that exited non-zero on the device."""
    lines = _meaningful_lines(stderr)
    last = lines[-1] if lines else f"exit status {returncode}"
    if returncode == 127:  # sh: command not found
        return DevicePythonMissing(f"{python!r} was not found on {device.url}: install Python 3 there "
                                   "(with numpy and the runtime) or give the path of the device's Python")
    if returncode == 126:
        return DevicePythonMissing(f"{python!r} on {device.url} is not executable: {last}")
    probe = probe_line([last])
    if probe:  # the probe's own one-line message: what is wrong and how to fix it
        kind, message = probe
        if kind == "internal":  # a bug in the probe, not the user's to fix: say it was a crash
            return ProbeFailed(f"{device.url}: the probe failed (exit {returncode}): {message}")
        cls = RuntimeMissing if kind == "missing-runtime" else ProbeFailed
        return cls(f"{device.url}: {message}")
    missing = _NO_MODULE.search(last)
    if missing:
        # the probe imports numpy before anything else, so a bare Python fails here, not with its own
        # message; name everything the device needs in one go
        module = missing["module"].split(".")[0]
        package = runtime_package(runtime)[1] if runtime else None
        needs = [module] + [pkg for pkg in [package] if pkg not in (None, module)]
        return RuntimeMissing(f"{device.url}: {module} is not installed for {python!r} on the device: "
                              f"pip install {' '.join(needs)}")
    if returncode > 128:  # sh reports a signal as 128 + N; 9 on Linux is most often the OOM killer
        hint = ", out of memory?" if returncode == 137 else ""
        return ProbeFailed(f"{device.url}: the probe was killed by signal {returncode - 128}{hint}")
    return ProbeFailed(f"{device.url}: the probe failed (exit {returncode}): {last}")


def _run(argv: list[str], stdin, deadline: float, limit: float, device: Device, what: str):
    """Run ssh until ``deadline`` (monotonic); ``limit`` is the whole operation's, for the message."""
    try:
        return subprocess.run(argv, stdin=stdin, capture_output=True, text=True,
                              timeout=max(deadline - time.monotonic(), 1.0))
    except FileNotFoundError:
        raise EdgeHybridError("the OpenSSH client 'ssh' is not installed here; install it to profile on a device"
                              ) from None
    except subprocess.TimeoutExpired:
        raise RemoteError(f"{what} on {device.url} did not finish within {limit:g} s") from None


def check_identity(identity: Path | None) -> None:
    """An SSH key that is not there is the user's typo: one line before any connection."""
    if identity is not None and not Path(identity).is_file():
        raise InputError(f"identity file {str(identity)!r} does not exist")


def check_reachable(device: Device, identity: Path | None = None, ssh_options: list[str] | None = None,
                    timeout: float = 30) -> None:
    """Connect once and run nothing (``true``): an unreachable device or a refused key is a one-line
    :class:`RemoteError` before minutes of work that would end on it."""
    check_identity(identity)
    res = _run(_ssh_argv(device, "true", identity, ssh_options), subprocess.DEVNULL, time.monotonic() + timeout,
               timeout, device, "connecting")
    if res.returncode != 0:
        raise ssh_failure(device, res.stderr, identity)


def _tar_of(folder: Path):
    """A folder as an uncompressed tar in a temporary file (a file, not a pipe: no deadlock with ssh's output)."""
    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # local user and group ids mean nothing on the device; extracting as root would try to apply them
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    fh = tempfile.TemporaryFile()
    with tarfile.open(fileobj=fh, mode="w") as tar:
        tar.add(folder, arcname=folder.name, filter=anonymous)
    fh.seek(0)
    return fh


def _copy(device: Device, artifact: Path, deadline: float, limit: float, identity, ssh_options) -> str:
    """Create a private folder on the device, stream the artifact into it; returns the folder's path."""
    if artifact.is_dir():
        receive = 'tar -C "$d" -xf -'
        payload = _tar_of(artifact)
    else:
        receive = f'cat > "$d"/{shlex.quote(artifact.name)}'
        payload = artifact.open("rb")
    script = ('set -e; d=$(mktemp -d "${TMPDIR:-/tmp}/edgehybrid-profile.XXXXXX"); printf "%s\\n" "$d"; '
              f'{receive} || {{ rm -rf -- "$d"; exit 1; }}')
    with payload:
        res = _run(_ssh_argv(device, script, identity, ssh_options), payload, deadline, limit, device,
                   "copying the artifact")
    if res.returncode == 255:
        raise ssh_failure(device, res.stderr, identity)
    remote_dir = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
    if res.returncode != 0 or not remote_dir.startswith("/"):
        if remote_dir.startswith("/"):
            _cleanup(device, remote_dir, identity, ssh_options)
        why = (_meaningful_lines(res.stderr) or [f"exit status {res.returncode}"])[-1]
        raise RemoteError(f"could not copy {artifact.name!r} to a temporary folder on {device.url}: {why}")
    return remote_dir


def _cleanup(device: Device, remote_dir: str, identity, ssh_options) -> None:
    """Best effort: used only when the run itself could not remove the folder (timeout, lost connection)."""
    argv = _ssh_argv(device, f"rm -rf -- {shlex.quote(remote_dir)}", identity, ssh_options)
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _run_probe(device: Device, remote_dir: str, argv: list[str], runtime: str, deadline: float, timeout: float,
               identity, ssh_options, what: str) -> dict:
    """Run ``argv`` (``python - ARGS``, fed probe.py) inside ``remote_dir`` on the device, so anything the runtime
    writes (profiler traces) goes with it, and remove the folder whatever happens; returns the probe's document."""
    q_dir = shlex.quote(remote_dir)
    script = (f"cd {q_dir} || exit 1; {' '.join(shlex.quote(a) for a in argv)}; rc=$?; cd /; "
              f"rm -rf -- {q_dir}; exit $rc")
    try:
        with PROBE.open("rb") as probe:
            res = _run(_ssh_argv(device, script, identity, ssh_options), probe, deadline, timeout, device, what)
    except RemoteError:
        _cleanup(device, remote_dir, identity, ssh_options)
        raise
    if res.returncode == 255:
        _cleanup(device, remote_dir, identity, ssh_options)  # the connection dropped: the folder may remain
        raise ssh_failure(device, res.stderr, identity)
    if res.returncode != 0:
        raise probe_failure(device, argv[0], runtime, res.returncode, res.stderr)
    try:
        return parse_document(res.stdout, f"{device.url}: the probe")
    except EdgeHybridError as exc:
        raise ProbeFailed(str(exc)) from None


def profile_remote(device: Device, artifact: Path, runtime: str, threads: int, warmup: int, runs: int | None,
                   min_time: float | None, per_op: bool, python: str = "python3", identity: Path | None = None,
                   ssh_options: list[str] | None = None, timeout: float = 600) -> dict:
    """Profile ``artifact`` on ``device`` with probe.py and the device's ``python``; returns the profile.

    ``min_time`` (seconds), when given, replaces ``runs``. ``timeout`` bounds the whole operation. The
    profile is the probe's, with ``device`` set to the device's URL and ``artifact`` to the local path.
    """
    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"artifact {str(artifact)!r} does not exist")
    check_identity(identity)
    if not PROBE.is_file():
        raise EdgeHybridError(f"the profiling probe {str(PROBE)!r} is missing from this installation")
    if runtime == "auto":  # the probe takes a runtime name: settle it here, from the artifact's suffix
        runtime = auto_runtime(artifact)
    requires = manifest_requires(artifact)  # the device's runtime version is checked against it there
    probe_args("-", runtime, threads, warmup, runs, min_time, per_op)  # refused here, before any copy
    deadline = time.monotonic() + timeout
    remote_dir = _copy(device, artifact, deadline, timeout, identity, ssh_options)
    args = [python, "-"] + probe_args(f"{remote_dir}/{artifact.name}", runtime, threads, warmup, runs, min_time,
                                      per_op, requires)
    doc = _run_probe(device, remote_dir, args, runtime, deadline, timeout, identity, ssh_options, "profiling")
    doc["device"] = device.url
    doc["artifact"] = str(artifact)  # the path the user gave, not the temporary copy's
    return doc


def time_side_by_side_remote(device: Device, artifacts: dict[str, Path], runtime: str, threads: int,
                             python: str = "python3", identity: Path | None = None,
                             ssh_options: list[str] | None = None, timeout: float = 900,
                             sessions: int = 1) -> dict[str, dict]:
    """``--optimize latency`` on a device: copy every artifact there in one folder, load them all in one probe
    process, each in ``sessions`` sessions, and time them in alternating rounds (``probe.py --side-by-side``);
    returns ``{name: {"ms", "spread", "rounds"}}`` keyed like ``artifacts``, or ``{name: {"error": reason}}`` for
    one the device's runtime cannot load or run. The folder is removed whatever happens."""
    check_identity(identity)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="edgehybrid-trials-") as tmp:
        folder = Path(tmp) / "trials"
        folder.mkdir()
        names = {}
        for i, (name, path) in enumerate(artifacts.items()):
            copy = folder / f"{i}{Path(path).suffix}"  # the artifacts share a file name; the probe keys by name
            if Path(path).is_dir():
                shutil.copytree(path, copy, copy_function=_link_or_copy)
            else:
                _link_or_copy(path, copy)
            names[copy.name] = name
        remote_dir = _copy(device, folder, deadline, timeout, identity, ssh_options)
    argv = [python, "-", *(f"{remote_dir}/trials/{n}" for n in names), "--side-by-side", "--runtime", runtime,
            "--threads", str(int(threads)), "--sessions", str(int(sessions)), "--device", device.url]
    doc = _run_probe(device, remote_dir, argv, runtime, deadline, timeout, identity, ssh_options,
                     "timing the candidate plans")
    try:
        refused = doc.get("refused") or {}
        return {names[n]: {"error": refused[n]} if n in refused else doc["side_by_side"][n] for n in names}
    except (KeyError, TypeError) as exc:
        raise ProbeFailed(f"{device.url}: the probe's side-by-side timing is incomplete ({exc})") from None


def _link_or_copy(src, dst) -> None:
    """A hard link where the file system allows one (the staging folder only renames files for the tar), else a
    copy: candidate artifacts can be hundreds of MB each."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
