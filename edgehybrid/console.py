"""Where output goes: results on stdout, everything a person watches (progress, logs, warnings) on stderr.

Keeping the two apart is what lets ``--json`` print exactly one JSON document on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings

from rich.console import Console

#: progress, logs and warnings
err = Console(stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    """A console on the current stdout (made per call, so captured stdout in tests is honoured).

    Piped into a file or a CI log there is no terminal width to fit; rich would assume 80 columns and
    squeeze wide tables into ellipses, so use a width that keeps every column readable.
    """
    wide = None if sys.stdout.isatty() else 160
    return Console(file=sys.stdout, highlight=False, soft_wrap=True, width=wide)


def print_json(document) -> None:
    """Exactly one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    err.print(message, markup=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {_escape(message)}")


def error(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {_escape(message)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    warn(str(message))


#: set by the CLI's --debug: native libraries' own stderr output is shown, not held back
DEBUG = False


@contextlib.contextmanager
def native_stderr_quiet():
    """What C/C++ libraries write straight to file descriptor 2 (absl's "All log messages before
    absl::InitializeLog()", TensorFlow's "oneDNN custom operations are on", LiteRT's "Created TensorFlow Lite
    XNNPACK delegate") goes to a temporary file for the duration, then is dropped: converter chatter, not
    the user's business. With ``--debug`` (or where fd 2 cannot be redirected) nothing is held back."""
    if DEBUG:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def route_warnings(debug: bool = False) -> None:
    """Our warnings become one ``warning:`` line on stderr, without file and line noise.

    Third-party libraries (torch.export, coremltools, ...) warn a great deal about their own internals;
    those are shown only with ``--debug``.
    """
    from edgehybrid.errors import EdgeHybridWarning

    warnings.showwarning = _show_warning
    if not debug:
        warnings.filterwarnings("ignore")
    warnings.filterwarnings("always", category=EdgeHybridWarning)


#: progress displays (bars and spinners) on stderr; the CLI turns them off for --json
SHOW_PROGRESS = True


def _live() -> bool:
    return SHOW_PROGRESS and err.is_terminal


def progress(total: int, label: str = "calibrating") -> Progress:
    """A progress bar on stderr for ``total`` items: call it with each count done, ``close()`` it at the end
    (also when the work stops early: skipped files or a failure). Quiet when stderr is no terminal."""
    return Progress(total, label)


@contextlib.contextmanager
def step(label: str):
    """A spinner with ``label`` and the seconds elapsed, on stderr, for one step of unknown length (a
    conversion, a validation); it disappears when the step ends, whose caller logs the timing line. Quiet
    when stderr is no terminal or progress is off."""
    if not _live():
        yield
        return
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Bar(SpinnerColumn(), TextColumn(label, markup=False), TimeElapsedColumn(), console=err, transient=True)
    bar.add_task(label, total=None)
    with bar:
        yield


class Progress:
    def __init__(self, total: int, label: str):
        self._bar = None
        if not _live():
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                        transient=True)
        self._task = self._bar.add_task(label, total=total)
        self._bar.start()

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
