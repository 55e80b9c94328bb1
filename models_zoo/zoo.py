"""Looking up zoo names and building models with their weights.

A model reference is ``NAME`` or ``NAME.TAG``: ``mobilevit_s`` uses its default published checkpoint,
``mobilevit_s.cvnets_in1k`` names one, and a bundled fixture such as ``mobilevit_xxs.cifar10`` uses the
trained weights shipped inside the package. ``weights=`` overrides the tag with a file, a hub id or
``random``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from edgehybrid.errors import EdgeHybridError, EdgeHybridWarning, InputError, UnknownNameError
from models_zoo.registry import Checkpoint, ModelSpec, registered
from models_zoo.weights import (
    HF_PREFIX,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    WeightsError,
    WeightsInfo,
    fetch_from_hub,
    fit_state_dict,
    read_state_dict,
    sha256_file,
)

FIXTURES_DIR = Path(__file__).parent / "fixtures"
RANDOM = "random"


class RandomWeightsWarning(EdgeHybridWarning):
    """Raised as a warning when a model is built without trained weights."""


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec  # with the class count and input size the model was built for
    weights: WeightsInfo
    classes: tuple[str, ...] | None = None
    fixed_batch: int | None = None  # a loaded .pt2 program takes only the batch it was exported with


def list_models() -> list[str]:
    """Every zoo name, in family order."""
    return list(registered())


def get_spec(name: str) -> ModelSpec:
    """The spec of a bare zoo name (no tag); unknown names get a did-you-mean."""
    specs = registered()
    if name not in specs:
        raise UnknownNameError.for_choice("model", name, specs, hint="run 'edgehybrid models' to list the zoo")
    return specs[name]


def parse_ref(ref: str) -> tuple[ModelSpec, Checkpoint | None]:
    """``NAME[.TAG]`` -> (spec, checkpoint or None for a bare name)."""
    ref = ref.strip()
    name, _, tag = ref.partition(".")
    spec = get_spec(name)
    return spec, (spec.checkpoint(tag) if tag else None)


def load_model(
    ref: str,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    features: str | None = None,
) -> LoadedModel:
    """Build ``ref`` in eval mode and load its weights.

    ``weights`` is ``None`` (the tag's checkpoint, or the default published one for a bare name),
    ``"random"``, ``"hf-hub:<repo>"`` or a local file. ``num_classes`` / ``input_size`` override the
    spec where the architecture allows; a checkpoint that then no longer fits fails with the keys that
    differ. ``features="outside"`` (speech models only) builds the model without its in-graph front end: it
    then takes the log-mel features the spec describes.
    """
    spec, ckpt = parse_ref(ref)
    explicit_tag = ckpt is not None
    if ckpt is None and weights is None and spec.default_tag:
        ckpt = spec.checkpoint(spec.default_tag)
    if ckpt is not None and (explicit_tag or weights is None):
        # a tag brings its own class count, size and preprocessing (e.g. the CIFAR-10 fixtures, the 384 px
        # fine-tunes), also when other weights for that configuration are loaded into it
        spec = spec.with_overrides(num_classes=ckpt.num_classes, input_size=ckpt.input_size)
        if ckpt.preprocessing is not None:
            spec = replace(spec, preprocessing=ckpt.preprocessing)
    spec = spec.with_overrides(num_classes=_check_classes(num_classes), input_size=_check_size(spec, input_size))
    spec = _with_features(spec, features)
    model = spec.build()

    # a tag's class names also hold for other weights loaded into its configuration (a fine-tune, a test copy)
    classes = ckpt.classes if (ckpt is not None and (explicit_tag or weights is None)) else None
    if weights is not None and str(weights) == RANDOM:
        warnings.warn(
            f"{spec.name} has random weights: accuracy and drift figures mean nothing; "
            "pass --weights FILE or a tagged name for trained weights",
            RandomWeightsWarning,
            stacklevel=2,
        )
        return LoadedModel(model, spec, WeightsInfo(kind="random", source=RANDOM))

    info = _resolve(weights, ckpt, spec)
    fit_state_dict(model, read_state_dict(Path(info.path)), model_name=spec.name, source=info.source)
    model.eval()
    if classes is not None and len(classes) != spec.num_classes:
        classes = None
    return LoadedModel(model, spec, info, classes)


def _resolve(weights: str | Path | None, ckpt: Checkpoint | None, spec: ModelSpec) -> WeightsInfo:
    if weights is None:
        if ckpt is None:
            raise EdgeHybridError(
                f"{spec.name} has no published checkpoint; pass --weights FILE or --weights random"
            )
        if ckpt.bundled_file:
            path = FIXTURES_DIR / ckpt.bundled_file
            if not path.exists():
                raise EdgeHybridError(
                    f"bundled weights {ckpt.bundled_file!r} are missing from the installed package; reinstall edgehybrid"
                )
            return WeightsInfo("bundled", f"{spec.name}.{ckpt.tag}", str(path), sha256_file(path))
        if ckpt.hf_hub_id:
            weights = HF_PREFIX + ckpt.hf_hub_id
    weights = str(weights)
    if weights.startswith(HF_PREFIX):
        repo_id = weights[len(HF_PREFIX):].strip("/")
        if repo_id.count("/") != 1:
            raise EdgeHybridError(f"hub id {weights!r} is not of the form hf-hub:<org>/<repo>")
        path = fetch_from_hub(repo_id)
        return WeightsInfo("hub", weights, str(path), sha256_file(path))
    path = Path(weights).expanduser()
    if not path.exists() and path.suffix.lower() in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise WeightsError(f"weights file {weights!r} does not exist; check the path")
    if not path.exists():
        raise WeightsError(
            f"weights {weights!r} are neither a file, a hub id (hf-hub:<org>/<repo>) nor 'random'; "
            "pass an existing .safetensors or .pth file"
        )
    state_path = str(path.resolve())
    return WeightsInfo("file", str(path), state_path, sha256_file(path) if path.is_file() else None)


def check_features(spec: ModelSpec, features: str | None, name: str | None = None) -> None:
    """``features`` ("inside": samples in, log-mel in the graph; "outside": log-mel features in) suits speech
    models only; the one rule ``load_model`` and ``ExportRequest.check`` both apply."""
    if features is None:
        return
    if spec.input_kind != "audio":
        raise InputError(f"--features applies to speech models; {name or spec.name} takes images "
                         "(drop --features)")
    if features not in ("inside", "outside"):
        raise InputError(f"--features must be 'inside' (samples in, log-mel in the graph) or 'outside' (the "
                         f"model takes log-mel features), got {features!r}")


def _with_features(spec: ModelSpec, features: str | None) -> ModelSpec:
    """The spec of a speech model whose front end runs inside its graph ("inside") or in the app ("outside")."""
    check_features(spec, features)
    if features is None:
        return spec
    return replace(spec, preprocessing=replace(spec.preprocessing, features=features))


def _check_classes(num_classes: int | None) -> int | None:
    if num_classes is not None and num_classes < 1:
        raise EdgeHybridError(f"--num-classes must be at least 1, got {num_classes}")
    return num_classes


def _check_size(spec: ModelSpec, input_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if spec.input_kind == "audio":
        if tuple(input_size) == tuple(spec.input_size):
            return None
        raise EdgeHybridError(f"{spec.name} takes a fixed {spec.input_size[0]}-sample clip; drop --input-size")
    h, w = (int(v) for v in input_size)
    if (h, w) == tuple(spec.input_size):
        return None
    if spec.input_divisor is None:
        raise EdgeHybridError(
            f"{spec.name} takes a fixed input size {spec.input_size[0]}x{spec.input_size[1]}; drop --input-size"
        )
    d = spec.input_divisor
    if h <= 0 or w <= 0 or h % d or w % d:
        raise EdgeHybridError(
            f"input size {h}x{w} does not suit {spec.name}: height and width must be positive multiples of {d} "
            f"(e.g. {max(d, round(h / d) * d)}x{max(d, round(w / d) * d)})"
        )
    return (h, w)
