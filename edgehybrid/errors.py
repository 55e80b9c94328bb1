"""Errors a user can act on.

Every error that stems from what the user asked for (a name, a file, a shape, a missing backend) is an
:class:`EdgeHybridError`. Its message is one line that says what is wrong and how to fix it; the CLI
prints that line and exits with :attr:`EdgeHybridError.exit_code`, showing a traceback only with
``--debug``. Anything else reaching the CLI is a bug in edgehybrid and is reported as such.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

#: exit code for bad usage or input (unknown names, missing files, wrong shapes ...)
EXIT_USAGE = 2
#: exit code for a check that ran and failed (validation, drift, latency regression)
EXIT_CHECK_FAILED = 1
#: exit code for a gate that could not decide (ci latency on a machine too busy to judge): rerun
EXIT_INCONCLUSIVE = 4


class EdgeHybridError(Exception):
    """An error the user can fix; the message is a single line."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str):
        # one line, always: a multi-line message would break the CLI's contract
        super().__init__(" ".join(str(message).split()))


class UnknownNameError(EdgeHybridError):
    """A name (model, target, tag, runtime ...) that is not one of the known ones."""

    @classmethod
    def for_choice(cls, what: str, name: str, choices: Iterable[str], hint: str = "") -> "UnknownNameError":
        choices = list(choices)
        close = suggest(name, choices)
        msg = f"unknown {what} {name!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        elif len(choices) <= 12:
            msg += f"; choose one of: {', '.join(choices)}"
        if hint:
            msg += f" ({hint})"
        return cls(msg)


class WeightsError(EdgeHybridError):
    """A checkpoint that cannot be read or does not fit the model."""


class InputError(EdgeHybridError):
    """A file, folder or tensor given by the user that is missing, unreadable or of the wrong shape."""


class MissingBackendError(EdgeHybridError):
    """An optional dependency that is not installed; names the extra that brings it."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'edgehybrid[{extra}]'"
        )


class CheckFailedError(EdgeHybridError):
    """A check that ran and did not hold (validation tolerance, drift threshold)."""

    exit_code = EXIT_CHECK_FAILED


class InconclusiveError(EdgeHybridError):
    """A gate that ran but could not decide, e.g. latency measured on a machine too busy to judge it."""

    exit_code = EXIT_INCONCLUSIVE


class EdgeHybridWarning(UserWarning):
    """Something the user should know that does not stop the run (random weights, synthetic data)."""


def suggest(name: str, choices: Iterable[str], n: int = 2) -> list[str]:
    """The closest known names to ``name``, for a did-you-mean."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    if not hits:
        # a prefix or substring often beats edit distance for names like "mobilevit" -> "mobilevit_s"
        hits = [c for c in lowered if c.startswith(name.lower()) or name.lower() in c][:n]
    return [lowered[h] for h in hits]


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's text, colour codes removed, for a one-line message."""
    text = ANSI_ESCAPE.sub("", str(exc)).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first[:limit]
