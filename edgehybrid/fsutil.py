"""Writing files so that a reader never sees half of one.

Everything edgehybrid writes goes to a temporary name beside its destination and is renamed into place
when complete (``os.replace`` is atomic on one file system). Artifacts that are folders (``.mlpackage``)
are staged the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgehybrid.errors import InputError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: what a plain open() would give a new file here: manifests and reports get the same as the artifacts
FILE_MODE = 0o666 & ~_umask()
STAGING_PREFIX = ".edgehybrid-staging-"


def exists(path: Path, what: str = "path") -> bool:
    """``path.exists()``, except that a path the file system refuses (a name too long, a loop of links, no
    permission to look) is a one-line error naming it rather than an OSError."""
    try:
        os.stat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise InputError(f"{what} {str(path)!r} cannot be used: {exc.strerror or exc}") from None


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable, or say why not in one line."""
    path = Path(path)
    if exists(path, "output folder") and not path.is_dir():
        raise InputError(f"output path {str(path)!r} exists and is not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe_write(path)
    except OSError as exc:
        raise InputError(f"output folder {str(path)!r} is not writable ({exc.strerror}); choose another --out") from exc
    return path


def _probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder``: the OSError a real write would meet, before any work."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".edgehybrid-probe-"):
        pass


def check_output_file(path: Path, suffixes: tuple[str, ...], option: str) -> str:
    """Refuse a report path that cannot be written, before any work is done; returns its suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        listed = " or ".join(suffixes) if len(suffixes) < 3 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
        raise InputError(f"{option} {str(path)!r} must end in {listed}")
    if path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{option} {str(path)!r}: {str(parent)!r} {what}; create the folder or choose another path")
    try:
        _probe_write(parent)
    except OSError as exc:
        raise InputError(f"{option} {str(path)!r}: folder {str(parent)!r} is not writable ({exc.strerror})") from exc
    return suffix


def write_report_file(path: Path, text: str, option: str) -> None:
    """Write a report atomically; a full disk or a folder removed meanwhile is a one-line error, not a bug."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise InputError(f"cannot write {option} {str(path)!r}: {exc.strerror or exc}") from exc


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes it 0600; the artifact beside it has the umask's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, document) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A private folder inside ``out_dir`` for work in progress; removed on exit, whatever happens (SIGINT and
    SIGTERM unwind through here). Its name carries this host and process, so the staging folders of processes
    that died without unwinding (SIGKILL, power loss) are recognised and removed by the next run."""
    remove_stale_staging(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{_host()}-{os.getpid()}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _host() -> str:
    import socket

    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders in ``out_dir`` left by dead processes of this host, and only those: a live
    process's (another export running into the same folder) and another host's (a shared file system) stay.
    Safe when several runs sweep at once: a folder already gone is skipped."""
    removed = []
    host = _host()
    for folder in Path(out_dir).glob(STAGING_PREFIX + "*"):
        parts = folder.name[len(STAGING_PREFIX):].split("-")  # host, pid, mkdtemp's suffix (no "-" in either)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


@contextlib.contextmanager
def output_dir(path: Path) -> Iterator[Path]:
    """:func:`ensure_writable_dir` for one command's outputs: the folders it had to create are removed again
    (when still empty) if the command fails, so a failed run leaves no empty output folder behind."""
    path = Path(path)
    created, p = [], path.absolute()
    while not exists(p, "output folder") and p != p.parent:
        created.append(p)  # deepest first
        p = p.parent
    try:
        ensure_writable_dir(path)
        yield path
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty folder goes
        raise


def check_replaceable(dst: Path, is_folder: bool) -> None:
    """Refuse, before any work, to replace a folder with a file or a file with a folder: a user's folder
    that happens to have the artifact's name is theirs, not an older artifact."""
    dst = Path(dst)
    if exists(dst, "output") and dst.is_dir() != is_folder:
        have, want = ("a folder", "a file") if dst.is_dir() else ("a file", "a folder")
        raise InputError(f"{str(dst)!r} is {have}, and the artifact to write there is {want}; move it away or "
                         "choose another --out")


def move_into_place(src: Path, dst: Path) -> None:
    """Rename a finished file or folder onto ``dst``, replacing an older one only once the new one is whole."""
    src, dst = Path(src), Path(dst)
    check_replaceable(dst, src.is_dir())
    if src.is_dir():
        old = None
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
        os.replace(src, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
