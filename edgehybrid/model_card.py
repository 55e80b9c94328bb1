"""What the zoo's spec gives for free, for a model the zoo does not know: input size, preprocessing, classes.

It comes from flags (``--input-size``, ``--mean``, ``--std``, ``--classes FILE``, ``--preprocessing none``) or
from a small model card next to the model (``hybrid.toml`` or ``hybrid.json`` beside ``hybrid.py`` or
``hybrid.pt2``, or ``--card FILE``), flags winning. Keys are strict: a typo is an error, not a silent default.
Nothing that would silently be wrong is guessed: without mean and std (or ``preprocessing = "none"``, the
model takes raw 0..255 RGB pixels and normalizes itself) the export is refused, naming the flags.

    # hybrid.toml
    input_size = [64, 64]
    mean = [0.4914, 0.4822, 0.4465]
    std = [0.2470, 0.2435, 0.2616]
    classes = ["airplane", "automobile", ...]   # or classes_file = "classes.txt"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from edgehybrid.errors import InputError, UnknownNameError

CARD_SUFFIXES = (".toml", ".json")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class ModelCard:
    """Everything optional; :func:`resolve` says what is missing."""

    name: str | None = None
    input_size: tuple[int, int] | None = None
    resize: int | None = None  # shorter side before the centre crop (default: the input height: no crop)
    interpolation: str | None = None  # default bilinear
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    value_scale: float | None = None  # default 255 (pixels / 255, then mean and std)
    channel_order: str | None = None  # RGB (default) or BGR
    preprocessing: str | None = None  # "none": raw 0..255 RGB pixels in
    classes: tuple[str, ...] | None = None
    classes_file: str | None = None
    source: str | None = None  # the card file, for messages

    def over(self, base: "ModelCard") -> "ModelCard":
        """This card's values where set, ``base``'s elsewhere (flags over a card file)."""
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None})


_KEYS = {f.name for f in fields(ModelCard)} - {"source"}


def read_card(path: Path) -> ModelCard:
    """A TOML or JSON card, strictly checked; every problem is one line naming the key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model card {str(path)!r} does not exist; write one (see 'edgehybrid export -h') or drop --card")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        elif path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            doc = tomllib.loads(text)
        else:
            raise InputError(f"model card {path.name} must be .toml or .json")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a decode or parse error of the card
        raise InputError(f"model card {path.name} cannot be read: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"model card {path.name} must be a table of keys")
    for key in doc:
        if key not in _KEYS:
            raise UnknownNameError.for_choice("model card key", key, sorted(_KEYS), hint=f"in {path.name}")
    where = f"{path.name}"
    values = {k: _value(k, v, where) for k, v in doc.items()}
    if "classes_file" in values:
        values["classes"] = read_classes(_relative(values.pop("classes_file"), path.parent))
    return ModelCard(**values, source=str(path))


def _relative(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _value(key: str, v, where: str):
    what = f"{key} in {where}"
    if key in ("input_size",):
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                           for x in v)):
            raise InputError(f"{what} must be [height, width] in pixels, e.g. [64, 64], got {v!r}")
        return tuple(v)
    if key in ("mean", "std"):
        return parse_triple(v, what, positive=key == "std")
    if key == "resize":
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{what} must be a positive whole number of pixels, got {v!r}")
        return v
    if key == "value_scale":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise InputError(f"{what} must be a positive number (255 for 0..255 pixels), got {v!r}")
        return float(v)
    if key == "interpolation":
        if v not in INTERPOLATIONS:
            raise UnknownNameError.for_choice("interpolation", str(v), INTERPOLATIONS, hint=where)
        return v
    if key == "channel_order":
        if str(v).upper() not in ("RGB", "BGR"):
            raise InputError(f"{what} must be RGB or BGR, got {v!r}")
        return str(v).upper()
    if key == "preprocessing":
        if v != "none":
            raise InputError(f"{what} can only be \"none\" (raw 0..255 pixels in); give mean and std otherwise")
        return v
    if key == "classes":
        if not (isinstance(v, list) and v and all(isinstance(c, str) and c for c in v)):
            raise InputError(f"{what} must be a non-empty list of class names")
        return tuple(v)
    if not isinstance(v, str) or not v:
        raise InputError(f"{what} must be a non-empty string, got {v!r}")
    return v


def parse_triple(v, what: str, positive: bool = False) -> tuple[float, float, float]:
    """Three per-channel numbers from a list or ``"0.5,0.5,0.5"``."""
    if isinstance(v, str):
        try:
            v = [float(x) for x in v.split(",")]
        except ValueError:
            v = None
    if not (isinstance(v, (list, tuple)) and len(v) == 3
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
        raise InputError(f"{what} must be three numbers, one per channel (R,G,B), e.g. 0.485,0.456,0.406")
    if positive and not all(x > 0 for x in v):
        raise InputError(f"{what} must be positive (it divides), got {list(v)}")
    return tuple(float(x) for x in v)


def read_classes(path: Path) -> tuple[str, ...]:
    """One class name per line (blank lines ignored), in the model's output order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"classes file {str(path)!r} does not exist; write one class name per line")
    try:
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"classes file {path.name} cannot be read as UTF-8 text: {exc}") from None
    if not names:
        raise InputError(f"classes file {path.name} is empty; write one class name per line")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise InputError(f"classes file {path.name} names {dup!r} twice")
    return names


def card_beside(model_file: Path | None) -> Path | None:
    """``model.toml`` or ``model.json`` next to ``model.py`` / ``model.pt2``, if there is one."""
    if model_file is None:
        return None
    for suffix in CARD_SUFFIXES:
        candidate = Path(model_file).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def preprocessing_of(card: ModelCard, input_size: tuple[int, int], name: str):
    """The :class:`models_zoo.registry.Preprocessing` the card gives, or a one-line error naming the flags."""
    from models_zoo.registry import Preprocessing

    h, w = input_size
    interpolation = card.interpolation or "bilinear"
    resize = card.resize or h
    if card.preprocessing == "none":
        given = [k for k in ("mean", "std", "value_scale") if getattr(card, k) is not None]
        if given:
            raise InputError(f"{name}: --preprocessing none contradicts {', '.join(given)}; drop one of them")
        return Preprocessing(resize=resize, crop=(h, w), interpolation=interpolation, value_scale=1.0,
                             mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order=card.channel_order or "RGB")
    if card.mean is None or card.std is None:
        missing = " and ".join(k for k in ("mean", "std") if getattr(card, k) is None)
        raise InputError(f"{name} has no {missing}: pass --mean R,G,B --std R,G,B as it was trained (e.g. ImageNet "
                         "0.485,0.456,0.406 and 0.229,0.224,0.225), put them in a model card beside it, or pass "
                         "--preprocessing none if it takes raw 0..255 pixels")
    return Preprocessing(resize=resize, crop=(h, w), interpolation=interpolation, value_scale=card.value_scale or 255.0,
                         mean=card.mean, std=card.std, channel_order=card.channel_order or "RGB")


def card_from_flags(*, mean: str | None = None, std: str | None = None, classes: Path | None = None,
                    preprocessing: str | None = None) -> ModelCard | None:
    """The card the export flags give (``--input-size`` travels apart, as it serves zoo models too); None
    when no card flag is given."""
    if all(v is None for v in (mean, std, classes, preprocessing)):
        return None
    return ModelCard(
        mean=None if mean is None else parse_triple(mean, "--mean"),
        std=None if std is None else parse_triple(std, "--std", positive=True),
        classes=None if classes is None else read_classes(classes),
        preprocessing=None if preprocessing is None else _value("preprocessing", preprocessing, "--preprocessing"),
        source="flags",
    )
