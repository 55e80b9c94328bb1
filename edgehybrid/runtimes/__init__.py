"""Runtimes that execute artifacts: one module per target's runtime (see ``edgehybrid.targets``).

Each module defines a class with ``name``, ``extra`` and ``load(artifact, threads) -> Session``; a
``Session`` has ``inputs`` / ``outputs`` (``TensorInfo`` lists) and ``run(feeds) -> {name: ndarray}``.
Modules are imported lazily: a missing runtime costs nothing until it is asked for, and then fails with
the extra to install. A runtime that cannot execute on this platform (Core ML off macOS) raises
:class:`RuntimeUnavailable` with the reason, which callers report rather than hide.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgehybrid.errors import EdgeHybridError, InputError
from edgehybrid.targets import Target, get_target, target_for_artifact, target_of_runtime


class RuntimeUnavailable(EdgeHybridError):
    """The runtime cannot execute here (e.g. Core ML on Linux); the message says where it can."""


class Session(Protocol):
    inputs: list  # list[TensorInfo]
    outputs: list

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Runtime(Protocol):
    name: str
    extra: str
    #: whether a loaded session runs with its own thread count (False: one pool per process, sized by the first
    #: load, or no thread count at all)
    threads_per_session: bool

    def load(self, artifact: Path, threads: int = 2) -> Session: ...


def checked_feeds(kind: str, artifact: str, inputs: list, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` as arrays, after checking them against the artifact's input names and shapes.

    ``kind`` and ``artifact`` name it in messages ("the ONNX model", "m.onnx"); a negative dimension in an
    input's shape is dynamic and matches anything. Dtype handling is each runtime's own.
    """
    expected = [i.name for i in inputs]
    if sorted(feeds) != sorted(expected):
        raise InputError(f"{kind} {artifact} takes inputs {expected}, got {sorted(feeds)}")
    arrays = {}
    for info in inputs:
        arr = np.asarray(feeds[info.name])
        if arr.ndim != len(info.shape) or any(e >= 0 and e != g for e, g in zip(info.shape, arr.shape)):
            layout = f" ({info.layout})" if info.layout else ""
            raise InputError(
                f"input {info.name!r} of {artifact} expects shape {tuple(info.shape)}{layout}, "
                f"got {tuple(arr.shape)}"
            )
        arrays[info.name] = arr
    return arrays


def get_runtime(name: str) -> Runtime:
    return importlib.import_module(target_of_runtime(name).runtime_module).RUNTIME


def runtime_for(artifact: Path) -> str:
    """The runtime that runs an artifact, from its suffix."""
    return target_for_artifact(artifact).runtime


@dataclass
class Opened:
    """A session on the artifact's runtime, or, where that runtime cannot execute here (Core ML off macOS),
    the exporter's reference evaluation of the same saved program: ``executed`` False, ``method`` its label
    and ``reason`` why the runtime could not run. Never passed off as the runtime's."""

    session: Session
    executed: bool
    method: str
    reason: str | None = None


def open_session(target: str | Target, artifact: Path, threads: int) -> Opened:
    """The one place that opens an artifact for running, with the fallback its exporter offers."""
    record = get_target(target)
    try:
        return Opened(get_runtime(record.runtime).load(artifact, threads=threads), True, f"{record.runtime} runtime")
    except RuntimeUnavailable as exc:
        from exporters.base import get_exporter

        fallback = getattr(get_exporter(record), "reference_session", None)
        if fallback is None:
            raise
        session = fallback(Path(artifact))
        return Opened(session, False, f"simulated: {session.label}", str(exc))


def nchw_shape(info: dict) -> list[int]:
    """The NCHW shape of a manifest input (``{"shape", "layout"}``), a dynamic dimension (-1) read as 1."""
    shape = [abs(d) for d in info["shape"]]
    return [shape[0], shape[3], shape[1], shape[2]] if info.get("layout") == "NHWC" else shape


def to_layout(x_nchw: np.ndarray, layout: str | None) -> np.ndarray:
    """An NCHW image batch in the artifact's input layout, contiguous and float32."""
    x = x_nchw.transpose(0, 2, 3, 1) if layout == "NHWC" else x_nchw
    return np.ascontiguousarray(x, dtype=np.float32)


def run_batched(session: Session, x_nchw: np.ndarray, batch: int, in_name: str, out_name: str,
                layout: str | None) -> np.ndarray:
    """Feed ``x_nchw`` (N, 3, H, W) through a static-batch artifact in its layout, padding the last batch by
    repetition; returns (N, outputs) float32."""
    from calibration.preprocess import batched

    out = []
    for b in batched(x_nchw, batch):
        result = session.run({in_name: to_layout(b, layout)})
        out.append(np.asarray(result[out_name], dtype=np.float32).reshape(batch, -1))
    return np.concatenate(out)[:len(x_nchw)]
