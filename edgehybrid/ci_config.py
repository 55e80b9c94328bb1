"""``edgehybrid.toml``: the strict config of ``edgehybrid ci``, checked when it loads (an unknown key, a wrong
type or range, a missing path is one line naming the key and the fix, before any job runs)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from edgehybrid.errors import InputError, UnknownNameError
from edgehybrid.targets import Precision

_CI_KEYS = {"out", "baseline", "threads", "latency_tolerance", "accuracy_tolerance", "latency_rounds",
            "latency_runs"}


@dataclass(frozen=True)
class ModelConfig:
    """One ``[[model]]`` table (``[defaults]`` fills what it leaves out)."""

    name: str = ""
    weights: str | None = None
    targets: tuple[str, ...] = ("onnx", "tflite")
    precisions: tuple[Precision | str, ...] = ("fp32", "int8")
    data: str | None = None  # labelled (or unlabelled) evaluation images
    max_images: int | None = None  # evaluate on N images, evenly spread over the sorted files (every class)
    calib: str | None = None  # INT8 calibration data (default: the checkpoint's bundled images)
    calib_size: int | None = None
    calib_method: str | None = None  # default histogram
    max_top1_drop: float | None = 1.0
    min_agreement: float | None = 95.0
    min_cosine: float | None = 0.98
    max_latency_ms: float | None = None  # an absolute budget for the artifact's median latency (optional)
    card: str | None = None  # a model of your own (name = "file.py:factory" or "model.pt2"): its model card
    model_args: dict | None = None  # ... and its factory's keyword arguments


@dataclass(frozen=True)
class Config:
    path: Path
    models: tuple[ModelConfig, ...]
    out: Path
    baseline: Path
    threads: int = 2
    latency_tolerance: float = 0.25
    accuracy_tolerance: float = 0.5
    latency_rounds: int = 7
    latency_runs: int = 20


def load_config(path: Path) -> Config:
    """Parse and check ``edgehybrid.toml``; every problem is one line naming the key and the fix."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if path.is_dir():
        raise InputError(f"config {str(path)!r} is a folder; pass the TOML file, e.g. --config "
                         f"{str(path / 'edgehybrid.toml')!r}")
    if not path.is_file():
        raise InputError(f"config {str(path)!r} does not exist; write an edgehybrid.toml (see docs/ci.md) or pass "
                         "--config FILE")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"config {path.name} is not valid TOML: {exc}") from exc
    _known(doc, {"ci", "defaults", "model"}, "top-level table")
    ci = doc.get("ci", {})
    _known(ci, _CI_KEYS, "[ci] key")
    model_keys = {f.name for f in fields(ModelConfig)}
    defaults = doc.get("defaults", {})
    _known(defaults, model_keys - {"name"}, "[defaults] key")
    entries = doc.get("model", [])
    if not isinstance(entries, list) or not entries:
        raise InputError(f"config {path.name} lists no models; add at least one [[model]] table with a name")
    base = path.parent
    models = []
    for i, entry in enumerate(entries):
        _known(entry, model_keys, f"[[model]] #{i + 1} key")
        merged = {**defaults, **entry}
        if not merged.get("name"):
            raise InputError(f"[[model]] #{i + 1} in {path.name} has no name; add name = \"mobilevit_xxs.cifar10\"")
        models.append(_model_config(merged, base, path.name))
    names = [m.name for m in models]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise InputError(f"model {dup!r} is listed twice in {path.name}; merge its [[model]] tables")
    cfg = Config(
        path=path, models=tuple(models),
        out=_resolve(ci.get("out", "edgehybrid-ci"), base),
        baseline=_resolve(ci.get("baseline", "edgehybrid-baseline.json"), base),
        threads=_number(ci, "threads", 2, int, 1),
        latency_tolerance=_number(ci, "latency_tolerance", 0.25, float, 0.0),
        accuracy_tolerance=_number(ci, "accuracy_tolerance", 0.5, float, 0.0),
        latency_rounds=_number(ci, "latency_rounds", 7, int, 1),
        latency_runs=_number(ci, "latency_runs", 20, int, 1),
    )
    return cfg


def _known(table, allowed: set[str], what: str) -> None:
    if not isinstance(table, dict):
        raise InputError(f"{what.split(' key')[0]} must be a table")
    for key in table:
        if key not in allowed:
            raise UnknownNameError.for_choice(what, key, sorted(allowed))


def _number(table: dict, key: str, default, kind, minimum):
    return _checked_number(table.get(key, default), f"[ci] {key}", kind, minimum)


def _checked_number(value, what: str, kind, low, high=None):
    """``value`` as ``kind`` (int or float) within ``low``..``high``, or a one-line InputError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise InputError(f"{what} must be a{'n integer' if kind is int else ' number'}, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise InputError(f"{what} must be {span}, got {value!r}")
    return kind(value)


def _resolve(value: str, base: Path) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


# [[model]] keys and what each must hold: (kind, minimum, maximum); lists are non-empty lists of strings
_MODEL_TYPES = {
    "name": (str,), "weights": (str,), "data": (str,), "calib": (str,), "calib_method": (str,),
    "targets": (list,), "precisions": (list,),
    "max_images": (int, 1, None), "calib_size": (int, 1, None),
    "max_top1_drop": (float, 0.0, 100.0), "min_agreement": (float, 0.0, 100.0), "min_cosine": (float, -1.0, 1.0),
    "max_latency_ms": (float, 0.0, None), "card": (str,), "model_args": (dict,),
}


def _check_model_types(d: dict, where: str) -> None:
    """A wrong type or range is refused when the config loads, not when its job runs, minutes later."""
    from calibration.annotate import CALIB_METHODS

    for key, value in d.items():
        kind, *bounds = _MODEL_TYPES[key]
        if kind is list:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise InputError(f"{key} of {where} must be a non-empty list of names, e.g. {key} = [\"onnx\"], "
                                 f"got {value!r}")
        elif kind is dict:
            if not isinstance(value, dict):
                raise InputError(f"{key} of {where} must be a table, e.g. {key} = {{ num_classes = 10 }}, got {value!r}")
        elif kind is str:
            if not isinstance(value, str) or not value:
                raise InputError(f"{key} of {where} must be a non-empty string, got {value!r}")
        else:
            _checked_number(value, f"{key} of {where}", kind, *bounds)
    if "calib_method" in d and d["calib_method"] not in CALIB_METHODS:
        raise UnknownNameError.for_choice("calib_method", d["calib_method"], CALIB_METHODS, hint=where)


def _model_config(d: dict, base: Path, fname: str) -> ModelConfig:
    from calibration.sources import data_path
    from edgehybrid.targets import get_target
    from edgehybrid.user_model import parse_source
    from models_zoo.zoo import parse_ref

    where = f"model {d['name']!r} in {fname}"
    _check_model_types(d, where)
    src = parse_source(d["name"], d.get("model_args"), base)
    if src is None:
        parse_ref(d["name"])  # unknown model or tag: a did-you-mean
        own = [k for k in ("card", "model_args") if d.get(k) is not None]
        if own:
            raise InputError(f"{', '.join(own)} of {where} appl{'ies' if len(own) == 1 else 'y'} to a model of your "
                             "own (name = \"file.py:factory\" or \"model.pt2\"); drop it")
    else:
        if src.path is not None and not src.path.is_file():
            raise InputError(f"{where}: {src.path} does not exist (paths are relative to {fname}); fix the name")
        if d.get("weights") is not None:
            raise InputError(f"weights of {where} applies to zoo models; your model loads its own; drop it")
        if d.get("card") is not None:
            card = _resolve(d["card"], base)
            if not card.is_file():
                raise InputError(f"card {d['card']!r} of {where} does not exist ({card}); fix the path")
            d = {**d, "card": str(card)}
    if d.get("weights") == "random":
        raise InputError(f"weights = \"random\" of {where} cannot be checked: the check rebuilds the PyTorch "
                         "reference from the weights, and random ones cannot be rebuilt; use a checkpoint or a tag")
    cfg = ModelConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})
    for t in cfg.targets:
        get_target(t, hint=where)
    precisions = tuple(Precision.parse(p, hint=where) for p in cfg.precisions)
    # a precision that none of the model's targets builds is a mistake; one that some do runs there, and the
    # other targets' jobs for it are listed as skipped (int8-weights is Core ML's alone)
    for p in precisions:
        if not any(get_target(t).supports(p) for t in cfg.targets):
            raise InputError(f"precision {p.value!r} of {where} is supported by none of its targets "
                             f"({', '.join(cfg.targets)}); drop it, or add a target that supports it")
    calibrated = [p for p in precisions if p.calibrated]
    given = [k for k in ("calib", "calib_size", "calib_method") if d.get(k) is not None]
    if given and not calibrated:
        raise InputError(f"{', '.join(given)} of {where} appl{'ies' if len(given) == 1 else 'y'} to calibrated int8 "
                         "only, and its precisions have none; add \"int8\" or drop the key")
    cfg = replace(cfg, precisions=precisions)
    if cfg.data is None:
        raise InputError(f"{where} has no data; set data = \"path/to/images\" (in [defaults] or the model)")
    data = data_path(cfg.data, base)
    if not data.is_dir():
        raise InputError(f"data {str(cfg.data)!r} of {where} is not a folder ({data}); fix the path")
    calib = cfg.calib
    if calib is not None and calib != "synthetic":
        cp = data_path(calib, base)
        if not cp.exists():
            raise InputError(f"calib {calib!r} of {where} does not exist ({cp}); fix the path")
        calib = str(cp)
    weights = cfg.weights
    if weights is not None and weights != "random" and not weights.startswith("hf-hub:"):
        weights = str(_resolve(weights, base))
    return replace(cfg, data=str(data), calib=calib, weights=weights)


