"""Runtimes that execute artifacts: ONNX Runtime, LiteRT (TFLite) and Core ML.

Each module defines a class with ``name``, ``extra`` and ``load(artifact, threads) -> Session``; a
``Session`` has ``inputs`` / ``outputs`` (``TensorInfo`` lists) and ``run(feeds) -> {name: ndarray}``.
Modules are imported lazily: a missing runtime costs nothing until it is asked for, and then fails with
the extra to install. A runtime that cannot execute on this platform (Core ML off macOS) raises
:class:`RuntimeUnavailable` with the reason, which callers report rather than hide.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from edgehybrid.errors import EdgeHybridError, InputError, UnknownNameError

_MODULES = {
    "onnxruntime": "edgehybrid.runtimes.onnxruntime",
    "litert": "edgehybrid.runtimes.litert",
    "coreml": "edgehybrid.runtimes.coreml",
}
_BY_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert", ".mlpackage": "coreml", ".mlmodel": "coreml"}


class RuntimeUnavailable(EdgeHybridError):
    """The runtime cannot execute here (e.g. Core ML on Linux); the message says where it can."""


class Session(Protocol):
    inputs: list  # list[TensorInfo]
    outputs: list

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Runtime(Protocol):
    name: str
    extra: str

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
    if name not in _MODULES:
        raise UnknownNameError.for_choice("runtime", name, _MODULES)
    return importlib.import_module(_MODULES[name]).RUNTIME


def runtime_for(artifact: Path) -> str:
    """The runtime that runs an artifact, from its suffix."""
    suffix = Path(artifact).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise EdgeHybridError(
            f"cannot tell which runtime runs {str(artifact)!r}: expected a .onnx, .tflite or .mlpackage artifact"
        )
    return _BY_SUFFIX[suffix]
