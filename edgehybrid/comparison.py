"""``edgehybrid compare``: attention vs convolution, measured on the runtime that will run the model.

One row per model x target x precision. Each artifact is exported as ``edgehybrid export`` does (or reused
when an up-to-date one and its manifest are already in ``--out``), checked on ``--data`` as ``edgehybrid
check`` does and timed as ``edgehybrid profile`` does, locally or on ``--device``: the same library calls,
so the table's figures are theirs. Work goes stage by stage (every export, then every check, then every
profile), and each finished measurement is written to ``OUT/.measured/`` as it completes: an interrupted run
keeps what it finished, and the next run with the same options resumes from there (``fresh`` measures again,
reusing only the artifacts). :mod:`edgehybrid.compare_rank` turns the rows into the Pareto front and the
budget's choice; :mod:`edgehybrid.compare_report` writes them.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
import json
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgehybrid import __version__
from edgehybrid.errors import CheckFailedError, EdgeHybridError, InputError
from edgehybrid.targets import Precision

SCHEMA = "edgehybrid.compare/1"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    """The most a chosen candidate may cost: median latency in ms, and the memory the model adds to its
    process (peak RSS above the runtime's own, in MB)."""

    ms: float | None = None
    mb: float | None = None

    def check(self) -> Budget:
        for flag, value in (("--budget-ms", self.ms), ("--budget-mb", self.mb)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise InputError(f"{flag} must be a positive number, got {value!r}")
        return self

    @property
    def given(self) -> bool:
        return self.ms is not None or self.mb is not None

    def to_dict(self) -> dict:
        return {"latency_ms": self.ms, "model_memory_mb": self.mb}


@dataclass(frozen=True)
class Candidate:
    model: str
    target: str
    precision: Precision

    @property
    def id(self) -> str:
        return f"{self.model}/{self.target}/{self.precision}"


@dataclass(frozen=True)
class CompareRequest:
    """One ``edgehybrid compare`` invocation, as the library sees it."""

    models: tuple[str, ...]
    targets: tuple[str, ...]
    precisions: tuple[Precision | str, ...] = (Precision.FP32,)
    data: str | Path | None = None
    out: Path = Path("compare")
    threads: int = 2
    warmup: int = 10
    runs: int = 50
    budget: Budget = Budget()
    device: str | None = None
    device_python: str = "python3"
    identity: Path | None = None
    random_weights: bool = False  # zoo names without a tag get random weights: speed only, no accuracy
    max_images: int | None = None
    fresh: bool = False  # measure again; artifacts are still reused when up to date

    def check(self) -> list[Candidate]:
        """Every rule between the options, before any work: the CLI and the Python API refuse alike."""
        from edgehybrid.targets import get_target
        from exporters.base import get_exporter

        self.budget.check()
        if not self.models:
            raise InputError("give at least one MODEL to compare")
        if not self.targets:
            raise InputError("give at least one --target")
        for flag, value in (("--threads", self.threads), ("--runs", self.runs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{flag} must be at least 1, got {value!r}")
        for what, values in (("model", self.models), ("--target", self.targets), ("--precision", self.precisions)):
            seen = [str(v) for v in values]
            twice = sorted({v for v in seen if seen.count(v) > 1})
            if twice:
                raise InputError(f"{what} {twice[0]} is given twice; give each once")
        targets = [get_target(t, hint="--target").name for t in self.targets]
        for t in targets:
            get_exporter(t).check_available()  # not installed: a setup error (exit 2) before any work
        precisions = [Precision.parse(p, "--precision") for p in self.precisions]
        for model in self.models:
            _check_model(model, self.random_weights)
        if self.data is not None:
            from calibration.sources import data_path

            folder = data_path(self.data)
            if not folder.is_dir():
                raise InputError(f"--data {str(self.data)!r} is not a folder; pass a folder of images (one "
                                 "sub-folder per class for accuracy)")
            check_comparable(self.models, data_classes(folder), self.random_weights)
        return [Candidate(m, t, p) for m in self.models for t in targets for p in precisions]


def _check_model(model: str, random_weights: bool) -> None:
    """A zoo name (did-you-mean on a near miss) or a model of the user's own whose file exists."""
    from edgehybrid.user_model import parse_source
    from models_zoo.zoo import parse_ref

    src = parse_source(model)
    if src is None:
        spec, ckpt = parse_ref(model)
        if ckpt is None and not random_weights and not spec.default_tag:
            raise InputError(f"{model} has no published checkpoint to compare; name a tagged fixture (see "
                             "'edgehybrid models --tags') or pass --random-weights to compare speed only")
    elif src.path is not None and not src.path.is_file():
        raise InputError(f"model file {str(src.path)!r} does not exist; check the path")


def data_classes(folder: Path) -> list[str] | None:
    """The class folders of a labelled ``--data`` (only sub-folders), or None for loose images."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries or any(p.is_file() for p in entries):
        return None
    return sorted(p.name for p in entries if p.is_dir())


def _zoo_classes(model: str, random_weights: bool) -> tuple[str, ...] | None:
    from models_zoo.zoo import parse_ref

    spec, ckpt = parse_ref(model)
    if ckpt is None and not random_weights and spec.default_tag:
        ckpt = spec.checkpoint(spec.default_tag)
    if ckpt is not None and ckpt.classes:
        return tuple(ckpt.classes)
    n = ckpt.num_classes if ckpt is not None and ckpt.num_classes else spec.num_classes
    return ("ImageNet-1k",) if n == 1000 else (f"{n} unnamed classes",)


def check_comparable(models, folders: list[str] | None, random_weights: bool, classes: dict | None = None) -> None:
    """Accuracy on one labelled folder compares only candidates that share their classes: refuse otherwise,
    naming who has which. ``classes``: model -> class names where known (manifests); zoo names are read from
    the zoo; a model of the user's own without them is judged after its export."""
    from edgehybrid.user_model import parse_source

    if folders is None:
        return
    known = dict(classes or {})
    for m in models:
        if m not in known and parse_source(m) is None and not (random_weights and "." not in m):
            known[m] = _zoo_classes(m, random_weights)  # random weights: no accuracy, nothing to compare
    groups: dict[tuple, list[str]] = {}
    for m, c in known.items():
        if c is not None:
            groups.setdefault(tuple(c), []).append(m)
    if len(groups) > 1:
        described = "; ".join(f"{', '.join(ms)}: {_describe(c)}" for c, ms in groups.items())
        raise InputError(f"the candidates do not share their classes ({described}), so their accuracy on one "
                         "labelled --data is not comparable; compare those with the same classes in one run")
    for c, ms in groups.items():
        missing = sorted(set(folders) - set(c))
        if missing:
            raise InputError(f"class folder {missing[0]!r} in --data is not one of {ms[0]}'s classes "
                             f"({_describe(c)}); pass data labelled with the candidates' classes, or a folder "
                             "without sub-folders for agreement figures only")


def _describe(classes: tuple) -> str:
    if len(classes) == 1 and " " in classes[0] or classes == ("ImageNet-1k",):
        return classes[0]
    return f"{len(classes)} classes ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''})"


# --------------------------------------------------------------------------------------------- stages


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def export_stage(req: CompareRequest, cand: Candidate, log: Log, progress=None, step=None) -> tuple[Path, dict, str]:
    """(artifact, manifest, how) for one candidate: ``reused`` when an up-to-date artifact is in ``--out``."""
    from edgehybrid.int8 import Int8Request
    from edgehybrid.pipeline import ExportRequest, run_export
    from edgehybrid.user_model import parse_source
    from exporters.base import ExportOptions

    random = req.random_weights and parse_source(cand.model) is None and "." not in cand.model
    request = ExportRequest(model=cand.model, target=cand.target, out_dir=req.out / _safe(cand.model) / cand.target,
                            weights="random" if random else None, options=ExportOptions(precision=cand.precision),
                            threads=req.threads, int8=Int8Request() if cand.precision.calibrated else None,
                            progress=progress, step=step)
    reused = reusable(request, random)
    if isinstance(reused, tuple):
        return reused[0], reused[1], "reused"
    if reused:
        log(f"  exporting again: {reused}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are what was asked for; the row says so
        manifest = run_export(request, log=lambda _m: None)
    return Path(request.out_dir) / Path(manifest["artifact"]).name, manifest, "exported"


def reusable(request, random: bool):
    """``(artifact, manifest)`` when ``--out`` already holds this export, up to date; else why not (a string,
    empty when there is simply nothing there yet)."""
    from edgehybrid.drift_check import read_manifest
    from edgehybrid.pipeline import artifact_stem
    from edgehybrid.targets import get_target
    from models_zoo.weights import sha256_file

    target = get_target(request.target)
    artifact = Path(request.out_dir) / f"{artifact_stem(request.display_name(), request.precision)}{target.suffix}"
    if not artifact.exists():
        return ""
    try:
        manifest = read_manifest(artifact)
    except EdgeHybridError as exc:
        return str(exc)
    if (manifest.get("versions") or {}).get("edgehybrid") != __version__:
        return f"{artifact.name} was written by another edgehybrid version"
    if manifest.get("target") != target.name or manifest.get("precision") != request.precision.value:
        return f"{artifact.name} is not a {target.name} {request.precision} artifact"
    weights, source = manifest.get("weights") or {}, manifest.get("source") or {}
    if (weights.get("kind") == "random") != random:
        return f"{artifact.name} has {'random' if weights.get('kind') == 'random' else 'trained'} weights"
    quant = manifest.get("quantization") or {}
    calib = quant.get("calibration") or {}
    if request.precision.calibrated and not (
            str(calib.get("source", "")).startswith("the bundled") and calib.get("method") == _default_method()
            and calib.get("seed") == 0 and calib.get("requested_size") is None and quant.get("max_drift") is None):
        return f"{artifact.name} was quantized with other options than compare's defaults"
    for what, doc, key in (("weights", weights, "path"), ("model file", source, "file")):
        path = doc.get(key)
        if path and doc.get("sha256") and (not Path(path).is_file() or sha256_file(Path(path)) != doc["sha256"]):
            return f"its {what} {path} changed since {artifact.name} was exported"
    return artifact, manifest


def _cache_key(kind: str, sha: str, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{sha[:16]}-{kind}-{digest}.json"


def data_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of every file under ``folder``: a changed dataset measures again."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def measured(req: CompareRequest, kind: str, manifest: dict, settings: dict,
             measure: Callable[[], dict]) -> tuple[dict, bool, Path]:
    """A measurement of one artifact, from ``OUT/.measured`` when the same one was made with the same settings
    (and ``fresh`` is off), else made now and stored there atomically; (document, reused, its file)."""
    from edgehybrid.fsutil import write_json_atomic

    path = req.out / ".measured" / _cache_key(kind, manifest["sha256"], {**settings, "version": __version__})
    if not req.fresh and path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")), True, path
        except (OSError, ValueError):
            pass  # a damaged entry: measure again
    doc = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    return doc, False, path


def check_stage(req: CompareRequest, artifact: Path, manifest: dict, progress=None) -> tuple[dict, bool, Path | None]:
    """``edgehybrid check``'s document for the artifact on ``--data`` (no thresholds: compare gates on budgets),
    or ``{"skipped": reason}`` when accuracy cannot be measured."""
    from calibration.sources import data_path
    from edgehybrid.drift_check import Thresholds, run_check

    if req.data is None:
        return {"skipped": "no --data given"}, False, None
    if (manifest.get("weights") or {}).get("kind") == "random":
        return {"skipped": "random weights: accuracy means nothing, and the FP32 model cannot be rebuilt to "
                           "compare with"}, False, None
    folder = data_path(req.data)
    settings = {"data": str(folder.resolve()), "files": data_fingerprint(folder), "threads": req.threads,
                "max_images": req.max_images}
    none = Thresholds(max_top1_drop=None, min_agreement=None, min_cosine=None)
    return measured(req, "check", manifest, settings, lambda: run_check(
        artifact, folder, thresholds=none, threads=req.threads, progress=progress, max_images=req.max_images))


def profile_stage(req: CompareRequest, artifact: Path, manifest: dict, remote) -> tuple[dict, bool, Path | None]:
    """``edgehybrid profile --per-op``'s document for the artifact, or ``{"skipped": reason}`` where its runtime
    cannot run here (Core ML off macOS)."""
    from edgehybrid.profiling.local import RuntimeUnavailable, profile_local, resolve_runtime

    try:
        runtime = resolve_runtime(artifact, "auto", local=remote is None)
    except RuntimeUnavailable as exc:  # Core ML off macOS: the row says so, the others are timed
        return {"skipped": f"not timed: {exc}"}, False, None
    settings = {"runtime": runtime, "threads": req.threads, "warmup": req.warmup, "runs": req.runs,
                "device": remote.url if remote is not None else "local"}

    def measure() -> dict:
        if remote is not None:
            from edgehybrid.profiling.remote import profile_remote

            return profile_remote(remote, artifact, runtime, req.threads, req.warmup, req.runs, None, True,
                                  python=req.device_python, identity=req.identity)
        return profile_local(artifact, runtime, req.threads, req.warmup, req.runs, None, True)

    return measured(req, "profile", manifest, settings, measure)


def macs_stage(req: CompareRequest, manifest: dict) -> tuple[dict, bool, Path | None]:
    """MACs by attention / convolution / other and the parameter count, from the FP32 PyTorch model."""
    def measure() -> dict:
        import torch

        from edgehybrid.macs import mac_breakdown

        from edgehybrid.runtimes import nchw_shape

        model = _fp32_model(manifest)
        shape = nchw_shape(manifest["inputs"][0])
        doc = mac_breakdown(model, torch.zeros(shape))
        batch = max(1, shape[0])
        doc["macs"] //= batch
        doc["by_category"] = {k: v // batch for k, v in doc["by_category"].items()}
        return doc

    try:
        return measured(req, "macs", manifest, {"kind": "macs"}, measure)
    except EdgeHybridError as exc:
        return {"skipped": f"MACs not counted: {exc}"}, False, None


def _fp32_model(manifest: dict):
    from edgehybrid.reference import build_args, reference_model
    from models_zoo import load_model

    if (manifest.get("weights") or {}).get("kind") == "random":  # MACs do not depend on the weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model(manifest["architecture"], weights="random", num_classes=manifest.get("num_classes"),
                              **build_args(manifest["preprocessing"])).model.eval()
    loaded, _ = reference_model(manifest, None)
    return loaded.model.eval()


# --------------------------------------------------------------------------------------------- running


@dataclass
class Done:
    """What the stages produced for one candidate."""

    candidate: Candidate
    artifact: Path | None = None
    manifest: dict | None = None
    export: str = ""  # exported | reused | skipped | failed
    notes: list[str] = field(default_factory=list)
    check: dict | None = None
    profile: dict | None = None
    macs: dict | None = None
    files: dict = field(default_factory=dict)  # kind -> the stored measurement document


def run_compare(req: CompareRequest, *, log: Log = lambda _m: None, progress=None, step=None) -> dict:
    """Export, check and profile every candidate, stage by stage; rank them; return the compare document."""
    from edgehybrid import compare_rank
    from edgehybrid.fsutil import ensure_writable_dir
    from edgehybrid.targets import get_target

    t0 = time.perf_counter()
    candidates = req.check()
    remote = None
    if req.device is not None:
        from edgehybrid.profiling.remote import check_reachable, parse_device

        remote = parse_device(req.device)
        check_reachable(remote, identity=req.identity)
    ensure_writable_dir(req.out)
    done = [Done(c) for c in candidates]
    todo = []
    for d in done:
        target = get_target(d.candidate.target)
        if not target.supports(d.candidate.precision):
            d.export = "skipped"
            d.notes.append(f"{target.title} has no {d.candidate.precision} export (it supports "
                           f"{', '.join(p.value for p in target.precisions)})")
        else:
            todo.append(d)
    log(f"compare: {len(candidates)} candidate(s): " + ", ".join(c.id for c in candidates))

    for k, d in enumerate(todo, 1):  # the export's own bars and spinners show inside each step
        log(f"[{k}/{len(todo)}] export {d.candidate.id}")
        try:
            d.artifact, d.manifest, d.export = export_stage(req, d.candidate, log, progress=progress, step=step)
        except CheckFailedError as exc:  # did not match its own PyTorch graph: a row that says so
            d.export = "failed"
            d.notes.append(f"export failed validation: {exc}")
        else:
            log(f"  {d.export} {d.artifact}")
    ok = [d for d in todo if d.manifest is not None]
    if req.data is not None:
        from calibration.sources import data_path

        own = {d.candidate.model: tuple(d.manifest["classes"]) for d in ok if d.manifest.get("classes")}
        check_comparable([d.candidate.model for d in ok], data_classes(data_path(req.data)), req.random_weights,
                         classes=own)
    reused = 0
    for k, d in enumerate(ok, 1):
        log(f"[{k}/{len(ok)}] check {d.candidate.id}")
        d.check, again, d.files["check"] = check_stage(req, d.artifact, d.manifest, progress=progress)
        reused += again
    for k, d in enumerate(ok, 1):
        log(f"[{k}/{len(ok)}] profile {d.candidate.id}")
        label = f"timing {d.artifact.name}" + (f" on {req.device}" if req.device else "")
        with (step(label) if step else nullcontext()):
            d.profile, again, d.files["profile"] = profile_stage(req, d.artifact, d.manifest, remote)
        reused += again
    for d in ok:
        d.macs, again, d.files["macs"] = macs_stage(req, d.manifest)
        reused += again
    if reused:
        log(f"reused {reused} measurement(s) made earlier with the same artifacts and options, from "
            f"{req.out / '.measured'} (--fresh measures again)")
    rows = [compare_rank.row_of(d) for d in done]
    ranked = compare_rank.rank(rows, req.budget)
    return {
        "schema": SCHEMA, "edgehybrid_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": list(req.models), "targets": list(dict.fromkeys(c.target for c in candidates)),
        "precisions": [str(p) for p in dict.fromkeys(c.precision for c in candidates)],
        "data": None if req.data is None else str(req.data), "device": req.device or "this machine",
        "threads": req.threads, "runs": req.runs, "budget": req.budget.to_dict(),
        "reused_measurements": reused, **ranked, "seconds": round(time.perf_counter() - t0, 1),
    }


def _default_method() -> str:
    from calibration.annotate import DEFAULT_METHOD

    return DEFAULT_METHOD.value
