"""Minimum runtime versions: what an artifact needs, and whether a runtime has it.

Each exporter reads its artifact back and says which runtime version it needs (``Exporter.requires``),
from the file itself wherever the file says it: an ONNX file's opset and IR version, a ``.tflite``'s
``min_runtime_version`` metadata, a Core ML package's specification version. The manifest records it as
``"requires": {"onnxruntime": ">=1.14"}``, a form scripts and devices read without edgehybrid;
``--min-runtime`` refuses an export whose artifact would need more, and ``check`` and ``profile`` warn when
the runtime they are about to use is older.

The probe (``profiling/probe.py``) runs on devices without edgehybrid, so the version reading lives there
and is imported here: host and device read a manifest's ``requires`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgehybrid.errors import InputError
from edgehybrid.profiling.probe import SUCCESSORS, satisfies, unmet, version_tuple  # noqa: F401  (re-exported)
from edgehybrid.targets import Target, get_target



@dataclass(frozen=True)
class Requirement:
    """One runtime an artifact needs, at least at ``minimum``, and what in the file says so."""

    runtime: str  # the key in the manifest's "requires": a package name ("onnxruntime") or an OS ("iOS")
    minimum: str  # "1.14"
    source: str  # "opset 18, IR version 8"

    @property
    def spec(self) -> str:
        return ">=" + self.minimum


def to_manifest(requirements: list[Requirement]) -> dict[str, str]:
    return {r.runtime: r.spec for r in requirements}


def parse_floor(target: Target | str, text: str) -> tuple[int, ...]:
    """``--min-runtime`` for ``target``: a version of its runtime (``1.14`` for ONNX Runtime, ``2.14`` for the
    TFLite runtime, ``iOS16`` for Core ML); the runtime's name may lead (``onnxruntime1.14``)."""
    t = get_target(target)
    raw = str(text).strip()
    body = raw[len(t.requires_key):] if raw.lower().startswith(t.requires_key.lower()) else raw
    body = body.lstrip("=>").strip()
    version = version_tuple(body) if body[:1].isdigit() else None
    if version is None:
        raise InputError(f"--min-runtime {raw!r} is not a version of {t.requires_key}; give one like "
                         f"{t.requires_example}")
    return version


def check_floor(target: Target, requirements: list[Requirement], floor: tuple[int, ...]) -> None:
    """Refuse an artifact that needs a newer runtime than ``--min-runtime`` allows, naming what needs it."""
    shown = ".".join(map(str, floor))
    for r in requirements:
        if r.runtime != target.requires_key:
            continue
        if satisfies(shown, r.spec) is False:
            raise InputError(f"--min-runtime {shown}: this {target.title} artifact needs {r.runtime} {r.spec} "
                             f"({r.source}); {_floor_hint(target)}")


def _floor_hint(target: Target) -> str:
    if target.opsets is not None:
        return "nothing older holds it"
    return f"the {target.title} converter decides this, so raise --min-runtime or use another target"


def manifest_requires(artifact) -> dict[str, str]:
    """The ``requires`` of the manifest beside ``artifact``: {} when there is none (a bare artifact profiles
    fine) or an older one without the field; a malformed manifest is refused, naming the field."""
    from edgehybrid.manifest_schema import load, manifest_path

    path = manifest_path(artifact)
    return load(path).get("requires", {}) if path.is_file() else {}


def local_warning(requires: dict | None) -> str | None:
    """:func:`unmet` for the runtimes installed here (LiteRT before tflite-runtime: the one edgehybrid uses)."""
    from importlib.metadata import PackageNotFoundError, version

    for key in requires or {}:
        for package in SUCCESSORS.get(key, ()) + (key,):
            try:
                return unmet(requires, package, version(package))
            except PackageNotFoundError:
                continue
    return None
