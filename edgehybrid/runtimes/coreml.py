"""Core ML: runs ``.mlpackage`` artifacts with Apple's Core ML framework, which exists only on macOS.

On macOS (``sys.platform == "darwin"``) a package is loaded with ``coremltools.models.MLModel(path,
compute_units=...)`` (``ALL`` by default: CPU, GPU and Neural Engine, as an app would run it) and
``run`` predicts for real. Anywhere else :meth:`CoreMLRuntime.load` raises :class:`RuntimeUnavailable`:
nothing here pretends to execute Core ML. What can be checked off macOS (the package's structure, and a
MIL reference evaluation that is explicitly not the Core ML runtime) lives in ``exporters.coreml_check``.

A package is read (not compiled) first on every platform, so a missing or corrupt package is reported as
such even where it could not run anyway. ``threads`` does not apply: Core ML schedules its own work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgehybrid.errors import EdgeHybridError, InputError
from edgehybrid.runtimes import RuntimeUnavailable, checked_feeds

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
_PLATFORMS = {"linux": "Linux", "win32": "Windows", "cygwin": "Windows (Cygwin)", "freebsd": "FreeBSD"}


def _platform_name() -> str:
    return _PLATFORMS.get(sys.platform, next((v for k, v in _PLATFORMS.items() if sys.platform.startswith(k)), sys.platform))


class CoreMLSession:
    """One package loaded into Core ML: ``inputs`` / ``outputs`` (read from the package), ``run(feeds)``."""

    def __init__(self, path: Path, compute_units: str):
        from exporters import coreml_check

        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"Core ML package {str(self.path)!r} does not exist")
        if self.path.suffix.lower() not in (".mlpackage", ".mlmodel"):
            raise InputError(f"{str(self.path)!r} is not a Core ML package (.mlpackage)")
        try:
            ct = _import_ct()
        except EdgeHybridError:
            if sys.platform != "darwin":
                raise RuntimeUnavailable(_unavailable()) from None
            raise
        _, spec = coreml_check._read(self.path)  # corrupt -> one-line InputError, on every platform
        if sys.platform != "darwin":
            raise RuntimeUnavailable(_unavailable())
        self.inputs, self.outputs = coreml_check.io_infos(spec)
        self.metadata = dict(spec.description.metadata.userDefined)
        self.compute_units = compute_units
        try:
            self._model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as exc:  # noqa: BLE001 - Core ML's compile errors come as several types
            raise InputError(
                f"Core ML cannot compile {str(self.path)!r} on this Mac ({_short(exc)}); check that the macOS "
                "version supports its deployment target, or re-export it"
            ) from exc
        self.details = {
            "compute_units": compute_units,
            "spec_version": spec.specificationVersion,
            "coremltools": ct.__version__,
        }

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Predict once; feeds are checked against the package's names and static shapes first."""
        arrays = checked_feeds("the Core ML model", self.path.name, self.inputs, feeds)
        for info in self.inputs:
            arrays[info.name] = np.ascontiguousarray(arrays[info.name], dtype=info.dtype)
        try:
            results = self._model.predict(arrays)
        except Exception as exc:  # noqa: BLE001 - a Core ML prediction failure, reported in one line
            raise EdgeHybridError(f"Core ML failed running {self.path.name}: {_short(exc)}") from exc
        return {info.name: np.asarray(results[info.name], dtype=info.dtype) for info in self.outputs}


class CoreMLRuntime:
    """The ``coreml`` runtime. ``compute_units`` is one of :data:`COMPUTE_UNITS` (default ``ALL``)."""

    name = "coreml"
    extra = "coreml"
    threads_per_session = False  # Core ML schedules its compute units itself

    def __init__(self, compute_units: str = "ALL"):
        if compute_units not in COMPUTE_UNITS:
            raise EdgeHybridError(
                f"unknown Core ML compute units {compute_units!r}; choose one of: {', '.join(COMPUTE_UNITS)}"
            )
        self.compute_units = compute_units

    def load(self, artifact: Path, threads: int = 2, compute_units: str | None = None) -> CoreMLSession:
        """Load ``artifact`` into Core ML (macOS only); ``threads`` is ignored (Core ML schedules itself)."""
        units = compute_units or self.compute_units
        if units not in COMPUTE_UNITS:
            raise EdgeHybridError(f"unknown Core ML compute units {units!r}; choose one of: {', '.join(COMPUTE_UNITS)}")
        return CoreMLSession(Path(artifact), units)


def _unavailable() -> str:
    return (
        f"Core ML models cannot be executed on {_platform_name()} (Core ML exists only on Apple platforms); "
        "run this on macOS with coremltools installed"
    )


def _import_ct():
    from exporters.coreml import _import_coremltools

    return _import_coremltools("Running Core ML packages")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


RUNTIME = CoreMLRuntime()
