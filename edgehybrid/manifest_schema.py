"""Reading a manifest back: its schema, checked when it is read, one line naming the first wrong field.

``check`` and ``profile`` run artifacts on what their manifest says (target, input layout and quantization,
preprocessing, classes, the runtime version it needs), so a manifest whose keys exist but whose values have
the wrong type or shape is refused here, before anything runs, as ``ci`` refuses a wrong config.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from edgehybrid.errors import EdgeHybridError, InputError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Field:
    """A check on one value; ``what`` says what it must be, in the error."""

    def __init__(self, what: str, test):
        self.what, self.test = what, test

    def ok(self, value) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


TEXT = _Field("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
SHA = _Field("a sha256 (64 lowercase hex digits)", lambda v: isinstance(v, str) and _SHA256.match(v))
POS_INT = _Field("a positive integer", lambda v: _is_int(v) and v > 0)
POS_NUM = _Field("a positive number", lambda v: _is_num(v) and v > 0)
SHAPE = _Field("a list of positive integers", lambda v: isinstance(v, list) and v and all(_is_int(d) and d > 0 for d in v))
CROP = _Field("a list of two positive integers", lambda v: SHAPE.ok(v) and len(v) == 2)
MEAN = _Field("a list of three numbers", lambda v: isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v))
STD = _Field("a list of three positive numbers", lambda v: MEAN.ok(v) and all(x > 0 for x in v))
ORDER = _Field("'RGB' or 'BGR'", lambda v: isinstance(v, str) and v.upper() in ("RGB", "BGR"))
BOOL = _Field("true or false", lambda v: isinstance(v, bool))
LAYOUT = _Field("'NCHW', 'NHWC' or null", lambda v: v in (None, "NCHW", "NHWC"))
SCALE = _Field("a positive number or null", lambda v: v is None or (_is_num(v) and v > 0))
ZERO_POINT = _Field("an integer or null", lambda v: v is None or _is_int(v))
CLASSES = _Field("a list of strings or null", lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str) for c in v)))
OPT_INT = _Field("a positive integer or null", lambda v: v is None or POS_INT.ok(v))
OBJECT = _Field("an object", lambda v: isinstance(v, dict))
REQUIRES = _Field("an object mapping runtime names to '>=VERSION' strings",
                  lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(s, str)
                                                        and re.match(r"^>=\d+(\.\d+)*$", s) for k, s in v.items()))

#: (field, check, required); lists of tensors are checked per item below
TOP = (("model", TEXT, True), ("target", TEXT, True), ("precision", TEXT, False), ("sha256", SHA, False),
       ("preprocessing", OBJECT, True), ("batch", POS_INT, False), ("num_classes", OPT_INT, False),
       ("classes", CLASSES, False), ("weights", _Field("an object or null", lambda v: v is None or isinstance(v, dict)), False),
       ("requires", REQUIRES, False), ("validation", OBJECT, False), ("source", OBJECT, False))
SOURCE = (("kind", _Field("'factory', 'pt2' or 'python'", lambda v: v in ("factory", "pt2", "python")), True),
          ("ref", TEXT, True), ("file", TEXT, False), ("sha256", SHA, False), ("module", TEXT, False),
          ("factory", TEXT, False), ("args", OBJECT, False))
PREPROCESSING = (("resize", POS_INT, True), ("crop", CROP, True), ("interpolation", TEXT, False),
                 ("value_scale", POS_NUM, False), ("mean", MEAN, False), ("std", STD, False),
                 ("channel_order", ORDER, False), ("in_graph", BOOL, False))
FEATURES = _Field("'inside' or 'outside'", lambda v: v in ("inside", "outside"))
#: a speech model's front end (``"kind": "audio"``): what an app must reproduce to feed it
AUDIO = (("sample_rate", POS_INT, True), ("clip_samples", POS_INT, True), ("n_fft", POS_INT, True),
         ("win_length", POS_INT, True), ("hop_length", POS_INT, True), ("n_mels", POS_INT, True),
         ("window", TEXT, True), ("mel_scale", TEXT, True), ("f_max", POS_NUM, True), ("log_offset", POS_NUM, True),
         ("features", FEATURES, True))
TENSOR = (("name", TEXT, True), ("shape", SHAPE, True), ("dtype", TEXT, True), ("layout", LAYOUT, False),
          ("scale", SCALE, False), ("zero_point", ZERO_POINT, False))


def manifest_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")


def load(path: Path) -> dict:
    """The manifest at ``path``, parsed and checked against the schema; one line naming what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read manifest {str(path)!r}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"manifest {path.name} is not JSON ({type(exc).__name__}: {str(exc)[:80]}); re-export "
                         "the artifact") from None
    if not isinstance(doc, dict):
        raise InputError(f"manifest {path.name} is not an edgehybrid manifest (a JSON object); re-export the artifact")
    _check(doc, TOP, "", path)
    audio = doc["preprocessing"].get("kind") == "audio"
    _check(doc["preprocessing"], AUDIO if audio else PREPROCESSING, "preprocessing.", path)
    if "source" in doc:
        _check(doc["source"], SOURCE, "source.", path)
    for key in ("inputs", "outputs"):
        tensors = doc.get(key)
        if not isinstance(tensors, list) or not tensors or not all(isinstance(t, dict) for t in tensors):
            _refuse(path, key, "a non-empty list of tensor objects", tensors)
        for i, tensor in enumerate(tensors):
            _check(tensor, TENSOR, f"{key}[{i}].", path)
    from edgehybrid.targets import get_target

    try:
        get_target(doc["target"])
    except EdgeHybridError:
        _refuse(path, "target", "a target edgehybrid knows", doc["target"])
    return doc


def _check(doc: dict, fields, prefix: str, path: Path) -> None:
    for name, field, required in fields:
        if name not in doc:
            if required:
                raise InputError(f"manifest {path.name}: field {prefix + name!r} is missing; re-export the artifact")
            continue
        if not field.ok(doc[name]):
            _refuse(path, prefix + name, field.what, doc[name])


def _refuse(path: Path, name: str, what: str, value) -> None:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise InputError(f"manifest {path.name}: field {name!r} must be {what}, got {shown}; re-export the artifact")
