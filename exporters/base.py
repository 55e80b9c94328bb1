"""The exporter contract.

An exporter turns an eval-mode ``nn.Module`` (already wrapped with in-graph normalization when asked, and
already quantized for ``int8``) into one artifact file or folder for its target. It does not validate: the
pipeline runs every artifact on its runtime (``edgehybrid.validate``) against the PyTorch reference, with
the tolerance its :class:`~edgehybrid.targets.Target` record declares for each precision.

Adding a target: a :class:`~edgehybrid.targets.Target` registration (``edgehybrid/targets.py``), an
exporter file whose class subclasses :class:`Exporter` and is decorated with :func:`register`, and a
runtime file (``edgehybrid/runtimes/``). Nothing else names targets.
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
from typing import ClassVar, Iterable, Iterator

import torch
from torch import nn

from calibration.ops import QuantPolicy
from edgehybrid.console import native_stderr_quiet
from edgehybrid.drift import Tolerance
from edgehybrid.errors import MissingBackendError
from edgehybrid.requires import Requirement
from edgehybrid.targets import INT8_TOLERANCE, Precision, Target, get_target  # noqa: F401  (re-exported)
from models_zoo.registry import ModelSpec

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked for, target-independent; each exporter honours what applies to it."""

    precision: Precision = Precision.FP32
    batch: int = 1
    normalize_in_graph: bool = False
    # None: the target's convention (NHWC for TFLite, NCHW elsewhere); True/False forces it
    channels_last: bool | None = None
    opset: int | None = None  # ONNX only; None: the lowest that holds the model
    # the oldest runtime the artifact must run on ("1.14" for ONNX Runtime, "iOS16" ...); None: no floor
    min_runtime: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision.parse(self.precision))


class Fp16Compute(nn.Module):
    """A float16 copy of the model behind float32 I/O (a cast at each end), so callers feed and read float32
    as usual: the fp16 form of the targets that compute in float16 (ONNX, ExecuTorch)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        import copy

        self.model = copy.deepcopy(model).half().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


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
    precision: Precision
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    versions: dict[str, str]
    details: dict = field(default_factory=dict)  # target specifics: opset, deployment target, op counts ...
    timings_s: dict[str, float] = field(default_factory=dict)


class Exporter:
    """The base of every exporter. A subclass sets ``target`` (its registration) and ``quant_policy`` (how it
    runs the INT8 plan), and implements :meth:`check_available` and :meth:`export`. :func:`register` refuses
    a class that leaves one out, at import: a missing policy is an error, not a silent default.

    Optional: ``reference_session(path) -> Session`` with a ``label``, for a target whose runtime cannot
    execute on this platform (Core ML off macOS). Validation then records ``executed: false``, the reason,
    and figures from that session under its label; it never passes them off as the runtime's.
    """

    target: ClassVar[Target]
    quant_policy: ClassVar[QuantPolicy]

    # derived from the registration, so no exporter repeats them
    @property
    def name(self) -> str:
        return self.target.name

    @property
    def suffix(self) -> str:
        return self.target.suffix

    @property
    def extra(self) -> str:
        return self.target.extra

    @property
    def runtime(self) -> str:
        return self.target.runtime

    @property
    def precisions(self) -> tuple[Precision, ...]:
        return self.target.precisions

    @property
    def artifact_is_folder(self) -> bool:
        return self.target.artifact_is_folder

    def tolerance(self, precision: Precision | str) -> Tolerance:
        """How close the artifact must come to the PyTorch reference at ``precision``."""
        return self.target.tolerance(precision)

    def check_available(self) -> None:
        """Raise MissingBackendError naming the extra when the converter is not installed."""
        raise NotImplementedError

    def export(
        self, model: nn.Module, example: torch.Tensor, spec: ModelSpec, options: ExportOptions, out: Path
    ) -> Artifact:
        """Write the artifact at ``out`` (a path ending in the target's suffix) and describe it."""
        raise NotImplementedError

    def requires(self, artifact: Artifact) -> list[Requirement]:
        """The runtime versions the written artifact needs, read from the file wherever the file says it."""
        raise NotImplementedError


_EXPORTERS: dict[str, type[Exporter]] = {}


def register(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: make an exporter available for its target, after checking its contract."""
    target = getattr(cls, "target", None)
    if not isinstance(target, Target):
        raise TypeError(f"{cls.__name__}.target must be a registered Target (edgehybrid.targets.get_target(...))")
    if not isinstance(getattr(cls, "quant_policy", None), QuantPolicy):
        raise TypeError(f"{cls.__name__}.quant_policy must be a calibration.ops.QuantPolicy")
    for method in ("check_available", "export", "requires"):
        if getattr(cls, method) is getattr(Exporter, method):
            raise TypeError(f"{cls.__name__} must implement {method}()")
    _EXPORTERS[target.name] = cls
    return cls


def targets() -> list[str]:
    from edgehybrid.targets import target_names

    return target_names()


def get_exporter(target: str | Target) -> Exporter:
    """The exporter for ``target`` (its module imported lazily, so a missing converter costs nothing)."""
    record = get_target(target)
    if record.name not in _EXPORTERS:
        importlib.import_module(record.exporter_module)
    return _EXPORTERS[record.name]()


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
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), native_stderr_quiet():
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
