"""How the CLI ends: the exit code and the one line for each way a command can stop.

Usage errors of click (and of the copy typer vendors), Ctrl-C, SIGTERM, a path the file system refuses, an
:class:`~edgehybrid.errors.EdgeHybridError`, or a bug; ``edgehybrid.cli.main`` maps each to its code here.
"""

from __future__ import annotations

import contextlib
import importlib
import signal

import click
import typer

from edgehybrid import console

EXIT_INTERNAL = 3


def click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(Exit, Abort, ClickException) classes of click and of the copy of click that typer >= 0.2x vendors
    (``typer._click``, with ``typer.Exit`` / ``typer.Abort`` of its own): a usage error raised by either must
    map to its exit code, not to "internal error"."""
    errors = [click.ClickException]
    try:
        errors.append(importlib.import_module("typer._click.exceptions").ClickException)
    except (ImportError, AttributeError):  # an older typer uses click itself
        pass
    return ((click.exceptions.Exit, typer.Exit), (click.exceptions.Abort, typer.Abort),
            tuple(dict.fromkeys(errors)))


CLICK_EXIT, CLICK_ABORT, CLICK_ERROR = click_exceptions()


class Stopped(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM (``timeout``, a cancelled CI job, a container stopping), raised in the main
    thread so that every ``finally`` runs (staging folders go). Not a KeyboardInterrupt: typer turns that into
    a silent exit 130, and the CLI promises one line saying why it stopped."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def line(self) -> str:
        return "interrupted" if self.signum == signal.SIGINT else f"terminated ({signal.Signals(self.signum).name})"


def _raise_stopped(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Stopped(signum)


@contextlib.contextmanager
def signals_unwind():
    """SIGINT and SIGTERM raise :class:`Stopped` for the duration, where they have their default action (a
    shell's background job ignores SIGINT, and keeps ignoring it); the main thread only."""
    saved = {}
    try:
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(sig) is default:
                saved[sig] = signal.signal(sig, _raise_stopped)
    except ValueError:  # not the main thread: signals cannot be set here
        pass
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def internal_error(exc: BaseException) -> int:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    console.error(
        f"internal error ({type(exc).__name__}: {first}); this is a bug in edgehybrid, "
        "rerun with --debug for the traceback and report it"
    )
    return EXIT_INTERNAL
