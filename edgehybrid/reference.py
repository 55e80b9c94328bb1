"""The FP32 PyTorch model an artifact is checked against: ``--reference``, or what its manifest says it was
exported from (a zoo name and tag, a weights file, a hub checkpoint, or a model of the user's own, rebuilt from
its file when that file is unchanged)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgehybrid.errors import InputError
from models_zoo.weights import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, sha256_file


def build_args(pre: dict) -> dict:
    """``load_model`` keywords that rebuild the model a manifest's ``preprocessing`` describes: its input size for
    an image model; for a speech model, whether its front end is in the graph."""
    if pre.get("kind") == "audio":
        return {"features": pre.get("features")}
    return {"input_size": tuple(pre["crop"])}


def reference_model(manifest: dict, reference: str | None):
    """The FP32 PyTorch model the artifact is compared with: ``--reference`` (a zoo name[.tag] or a weights
    file for the manifest's architecture), else what the manifest says the artifact was exported from."""
    from models_zoo import load_model

    args = build_args(manifest["preprocessing"])
    num_classes = manifest.get("num_classes")
    arch = manifest.get("architecture") or manifest["model"].partition(".")[0]
    own = _user_reference(manifest, reference)
    if own is not None:
        return own
    if reference is not None:
        ref = str(reference)
        if Path(ref).suffix.lower() in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES or Path(ref).exists():
            loaded = load_model(arch, weights=ref, num_classes=num_classes, **args)
        else:
            loaded = load_model(ref, num_classes=num_classes, **args)
        return loaded, f"--reference {ref}"
    weights = manifest.get("weights") or {}
    kind = weights.get("kind")
    if kind == "random":
        raise InputError(f"{manifest['artifact']} was exported from random weights, which cannot be rebuilt; "
                         "pass --reference MODEL or --reference WEIGHTS_FILE")
    if kind == "file":
        path = Path(weights.get("path") or weights.get("source") or "")
        if not path.is_file():
            raise InputError(f"the weights the artifact was exported from ({str(path)!r}) are not here; "
                             "pass --reference WEIGHTS_FILE")
        if weights.get("sha256") and sha256_file(path) != weights["sha256"]:
            raise InputError(f"{str(path)!r} changed since the export (sha256 differs); pass --reference "
                             "with the weights the artifact was exported from")
        loaded = load_model(arch, weights=str(path), num_classes=num_classes, **args)
    elif kind == "hub":
        loaded = load_model(arch, weights=weights["source"], num_classes=num_classes, **args)
    else:  # bundled, or a tagged name
        loaded = load_model(manifest["model"], num_classes=num_classes, **args)
    return loaded, f"{manifest['model']} ({kind or 'checkpoint'} weights, from the manifest)"


def _user_reference(manifest: dict, reference):
    """The reference of a model of the user's own: ``reference`` (an nn.Module from the Python API, or
    file.py:factory / module:factory / .pt2), else the manifest's source, rebuilt if its file is unchanged.
    None when neither is a model of the user's own."""
    from torch import nn

    from edgehybrid.model_card import ModelCard
    from edgehybrid.user_model import ModelSource, load_source, parse_source

    pre = manifest["preprocessing"]
    if pre.get("kind") == "audio":  # models of the user's own take images (the zoo's speech models are the zoo's)
        return None
    card = ModelCard(input_size=tuple(pre["crop"]), resize=pre["resize"], interpolation=pre.get("interpolation"),
                     mean=tuple(pre["mean"]), std=tuple(pre["std"]), value_scale=pre.get("value_scale"),
                     channel_order=pre.get("channel_order"),
                     classes=tuple(manifest["classes"]) if manifest.get("classes") else None)
    batch = int(manifest.get("batch") or 1)
    if isinstance(reference, (nn.Module, torch.export.ExportedProgram)):
        example = torch.zeros(batch, 3, *card.input_size)
        loaded = load_source(ModelSource("python", type(reference).__name__), card, batch, reference, example)
        return loaded, f"the {type(reference).__name__} passed as reference"
    if reference is not None:
        src = parse_source(str(reference))
        if src is None:
            return None
        return load_source(src, card, batch), f"--reference {reference}"
    doc = manifest.get("source")
    if not doc:
        return None
    if doc["kind"] == "python":
        raise InputError(f"{manifest['artifact']} was exported from a Python object, which its manifest cannot "
                         "rebuild; check it from Python (edgehybrid.check(exported, data)) or pass --reference "
                         "file.py:factory or model.pt2")
    path = Path(doc["file"]) if doc.get("file") else None
    src = ModelSource(doc["kind"], doc["ref"], path=None if doc.get("module") else path, module=doc.get("module"),
                      factory=doc.get("factory"), args=dict(doc.get("args") or {}))
    if path is not None:
        if not path.is_file():
            raise InputError(f"the model file the artifact was exported from ({str(path)!r}) is not here; pass "
                             "--reference file.py:factory or model.pt2")
        if doc.get("sha256") and sha256_file(path) != doc["sha256"]:
            raise InputError(f"{str(path)!r} changed since the export (sha256 differs); pass --reference "
                             f"{doc['ref']} to check against it as it is now")
    return load_source(src, card, batch), f"{doc['ref']} (your model, from the manifest)"
