"""The manifest beside every artifact: enough to use the artifact correctly with nothing else at hand.

It says what was built (model, weights and their hash, target, precision), which runtime versions run it
(``requires``, read from the file), how to feed it (input names,
shapes, dtypes, layout, quantization parameters, preprocessing and whether it happens in the graph), what
comes out (names, shapes, classes), how well it matched PyTorch (validation figures and how they were
obtained), and with which tools and how long each step took.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from edgehybrid import __version__
from edgehybrid.requires import to_manifest
from models_zoo.weights import sha256_file

SCHEMA_VERSION = 1


def artifact_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a folder artifact (``.mlpackage``) over its sorted relative paths and bytes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path), path.stat().st_size
    digest, size = hashlib.sha256(), 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
    return digest.hexdigest(), size


def build(*, req, loaded, artifact, final_path: Path, validation: dict, timings: dict,
          quantization: dict | None = None, requires: list | None = None, source: dict | None = None) -> dict:
    spec = loaded.spec
    sha, size = artifact_digest(artifact.path)
    pre = spec.preprocessing.to_dict()
    pre["in_graph"] = bool(req.options.normalize_in_graph)
    import numpy
    import torch

    versions = {"edgehybrid": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, **artifact.versions}
    return {
        "schema_version": SCHEMA_VERSION,
        "model": req.model,
        "architecture": spec.name,
        "family": spec.family,
        "kind": spec.kind,
        "target": artifact.target,
        "precision": artifact.precision,
        "artifact": _display_path(final_path),
        "sha256": sha,
        "size_bytes": size,
        # the oldest runtime that runs the file, read from it: {"onnxruntime": ">=1.14"} (details.requires_from: why)
        "requires": to_manifest(requires or []),
        "weights": loaded.weights.to_dict(),
        # a model of the user's own: where it came from (file.py:factory / module:factory / .pt2, file, sha256)
        **({"source": source} if source is not None else {}),
        "inputs": [t.to_dict() for t in artifact.inputs],
        "outputs": [t.to_dict() for t in artifact.outputs],
        "preprocessing": pre,
        "num_classes": spec.num_classes,
        "classes": list(loaded.classes) if loaded.classes else None,
        "batch": req.options.batch,
        "validation": validation,
        "quantization": quantization if quantization is not None else (
            {"mode": "weights"} if artifact.precision == "int8-weights" else None),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "versions": versions,
        "details": artifact.details,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"platform": sys.platform, "machine": platform.machine(), "cpus": os.cpu_count()},
    }


def _display_path(path: Path) -> str:
    """Relative to the working directory when inside it (as the user typed it), else absolute."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())
