"""The exporter contract and its registry.

An exporter turns an eval-mode ``nn.Module`` (already wrapped with in-graph normalization when asked)
into one artifact file or folder for its target. It does not validate: the pipeline runs every artifact
on its runtime (``edgehybrid.runtimes``) against the PyTorch reference, with the tolerance the exporter
declares for each precision. Adding a target is one new file that calls :func:`register` at import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import nn

from edgehybrid.drift import Tolerance
from edgehybrid.errors import MissingBackendError, UnknownNameError
from models_zoo.registry import ModelSpec

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked for, target-independent; each exporter honours what applies to it."""

    precision: str = "fp32"  # "fp32" | "fp16"
    batch: int = 1
    normalize_in_graph: bool = False
    # None: the target's convention (NHWC for TFLite, NCHW elsewhere); True/False forces it
    channels_last: bool | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str | None = None  # "NCHW" | "NHWC" for images, None for logits
    scale: float | None = None
    zero_point: int | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout is not None or self.scale is not None:
            d.update({"layout": self.layout, "scale": self.scale, "zero_point": self.zero_point})
        return d


@dataclass
class Artifact:
    """What an exporter built. ``path`` is inside the pipeline's staging folder until validated."""

    path: Path
    target: str
    precision: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    versions: dict[str, str]
    details: dict = field(default_factory=dict)  # target specifics: opset, deployment target, op counts ...
    timings_s: dict[str, float] = field(default_factory=dict)


class Exporter(Protocol):
    name: ClassVar[str]  # the --target value
    suffix: ClassVar[str]  # ".onnx", ".mlpackage", ".tflite"
    extra: ClassVar[str]  # the pip extra that brings its converter
    runtime: ClassVar[str]  # the runtime that validates it (edgehybrid.runtimes)
    precisions: ClassVar[tuple[str, ...]]

    def check_available(self) -> None:
        """Raise MissingBackendError naming the extra when the converter is not installed."""

    def tolerance(self, precision: str) -> Tolerance:
        """How close the artifact must come to the PyTorch reference at ``precision``."""

    def export(
        self, model: nn.Module, example: torch.Tensor, spec: ModelSpec, options: ExportOptions, out: Path
    ) -> Artifact:
        """Write the artifact at ``out`` (a path ending in :attr:`suffix`) and describe it."""

    # Optional: ``reference_session(path) -> Session`` with a ``label``, for a target whose runtime cannot
    # execute on this platform (Core ML off macOS). The pipeline then records ``executed: false``, the
    # reason, and figures from that session under its label; it never passes them off as the runtime's.


_EXPORTERS: dict[str, type] = {}
_MODULES = {"onnx": "exporters.onnx", "coreml": "exporters.coreml", "tflite": "exporters.tflite"}


def register(cls: type) -> type:
    """Class decorator: make an exporter available under ``cls.name``."""
    _EXPORTERS[cls.name] = cls
    return cls


def targets() -> list[str]:
    return list(_MODULES)


def get_exporter(target: str) -> Exporter:
    """The exporter for ``target`` (its module imported lazily, so a missing converter costs nothing)."""
    if target not in _MODULES:
        raise UnknownNameError.for_choice("target", target, _MODULES)
    if target not in _EXPORTERS:
        importlib.import_module(_MODULES[target])
    return _EXPORTERS[target]()


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or fail with the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingBackendError(module, extra, purpose) from exc


def version_of(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
