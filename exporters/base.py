"""The exporter contract and its registry.

An exporter turns an eval-mode ``nn.Module`` (already wrapped with in-graph normalization when asked)
into one artifact file or folder for its target. It does not validate: the pipeline runs every artifact
on its runtime (``edgehybrid.runtimes``) against the PyTorch reference, with the tolerance the exporter
declares for each precision. Adding a target is one new file that calls :func:`register` at import.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Iterator, Protocol

import torch
from torch import nn

from edgehybrid.drift import Tolerance
from edgehybrid.errors import MissingBackendError, UnknownNameError
from models_zoo.registry import ModelSpec

#: an int8 artifact against the quantized PyTorch graph it was exported from. Both compute the same plan,
#: but runtimes requantize in integer arithmetic (each fused op's output rounded once, sigmoid by lookup
#: table), which moves values by about one quantization step per layer; a wrong scale, a dropped layer or a
#: lost zero point gives cosine < 0.9. Measured on mobilevit_xxs (128 px, random weights): cosine 0.99990
#: (ONNX Runtime), 0.99991 (LiteRT), 0.999996 (Core ML MIL reference evaluation), top-1 agreement 100%.
INT8_TOLERANCE = Tolerance(atol=1e-3, rtol=0.5, min_cosine=0.98, min_top1_agreement=0.75)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked for, target-independent; each exporter honours what applies to it."""

    precision: str = "fp32"  # "fp32" | "fp16" | "int8"
    int8_mode: str = "full"  # with int8: "full" (weights and activations) or "weights" (weight-only)
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
    artifact_is_folder: ClassVar[bool]  # True when the artifact is a folder (.mlpackage)
    extra: ClassVar[str]  # the pip extra that brings its converter
    runtime: ClassVar[str]  # the runtime that validates it (edgehybrid.runtimes)
    precisions: ClassVar[tuple[str, ...]]
    int8_modes: ClassVar[tuple[str, ...]]  # "full" and/or "weights"
    # op kinds (calibration.quantize) this target runs in float even in an int8 layer, because its int8
    # kernel measured slower than float plus the quantize/dequantize around it
    float_kinds: ClassVar[tuple[str, ...]]
    # kinds whose int8 kernel can write a float output, so an int8 op feeding only float ops needs no
    # quantized output there (ONNX Runtime's MatMulIntegerToFloat); elsewhere the output stays int8
    float_output_kinds: ClassVar[tuple[str, ...]]
    fold_quantize: ClassVar[bool]  # int8 weights stored folded (True) or as float + quantize (converter needs)

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


@contextlib.contextmanager
def quiet_converter(loggers: Iterable[str] = (), level: int = logging.ERROR, redirect_fd: bool = True
                    ) -> Iterator[None]:
    """Keep a converter's chatter off stdout (the CLI's ``--json`` owns it) and its logs and warnings quiet.

    Python prints go to stderr; with ``redirect_fd`` so do prints from C++ code, by pointing file descriptor
    1 at 2 for the duration. The named loggers are raised to ``level``: a converter's real errors reach the
    user as the exporter's one-line exception instead.
    """
    named = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in named]
    for lg in named:
        lg.setLevel(level)
    sys.stdout.flush()
    saved_fd = None
    if redirect_fd:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no real fd 1: Python-level only
            saved_fd = os.dup(1)
            os.dup2(2, 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved_fd is not None:
            _flush_c_stdout()
            sys.stdout.flush()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        for lg, lvl in zip(named, levels):
            lg.setLevel(lvl)


def _flush_c_stdout() -> None:
    # C stdio buffers what C++ wrote while fd 1 was stderr; flush it there, not after the fd is restored
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # noqa: BLE001  best effort: platforms without a C library handle
        pass
