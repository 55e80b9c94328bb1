"""``edgehybrid ci``: export, check and time a matrix of models x targets x precisions; gate on a baseline.

The matrix comes from a strict TOML file (``edgehybrid.toml``; an unknown key is an error, not a silent
no-op). Every job exports its artifact (validated as ``edgehybrid export`` does), checks its drift on
real images (``edgehybrid check``), and times it against the FP32 PyTorch model in the same process,
alternating the two, so that its latency is a *ratio* that a slower or busier CI machine does not move.
Results are compared with a committed baseline JSON: a top-1 that fell, or a latency ratio that grew,
beyond the configured tolerances fails the run (exit 1) with the job and the figure named.

    [ci]
    out = "edgehybrid-ci"                # reports and artifacts
    baseline = "edgehybrid-baseline.json"
    threads = 2
    latency_tolerance = 0.25             # a latency ratio may grow by 25% over the baseline's
    accuracy_tolerance = 0.5             # top-1 may fall 0.5 points below the baseline's

    [defaults]                           # any [[model]] key, for every model
    data = "bundled:cifar10/eval"        # labelled images (bundled: = inside the package)
    max_top1_drop = 1.0

    [[model]]
    name = "mobilevit_xxs.cifar10"
    targets = ["onnx", "tflite", "coreml"]
    precisions = ["fp32", "int8"]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from edgehybrid.errors import CheckFailedError, InputError, UnknownNameError
from edgehybrid.targets import Precision

SCHEMA = "edgehybrid.ci/1"
BASELINE_SCHEMA = "edgehybrid.ci-baseline/1"
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
    calib_method: str | None = None  # default minmax
    max_top1_drop: float | None = 1.0
    min_agreement: float | None = 95.0
    min_cosine: float | None = 0.98
    max_latency_ms: float | None = None  # an absolute budget for the artifact's median latency (optional)


@dataclass(frozen=True)
class Config:
    path: Path
    models: tuple[ModelConfig, ...]
    out: Path
    baseline: Path
    threads: int = 2
    latency_tolerance: float = 0.25
    accuracy_tolerance: float = 0.5
    latency_rounds: int = 5
    latency_runs: int = 10


@dataclass(frozen=True)
class Job:
    model: ModelConfig
    target: str
    precision: Precision

    @property
    def supported(self) -> bool:
        from edgehybrid.targets import get_target

        return get_target(self.target).supports(self.precision)

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.target}/{self.precision}"


@dataclass
class JobResult:
    job: Job
    status: str = "passed"  # passed | failed | skipped
    failures: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    latency: dict | None = None
    baseline: dict | None = None
    notes: list[str] = field(default_factory=list)
    artifact: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"id": self.job.id, "model": self.job.model.name, "target": self.job.target,
                "precision": self.job.precision, "status": self.status, "failures": self.failures,
                "checks": self.checks, "metrics": self.metrics, "latency": self.latency, "baseline": self.baseline,
                "notes": self.notes, "artifact": self.artifact, "seconds": round(self.seconds, 2)}


# --------------------------------------------------------------------------------------------- config


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
        latency_rounds=_number(ci, "latency_rounds", 5, int, 1),
        latency_runs=_number(ci, "latency_runs", 10, int, 1),
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
    "max_latency_ms": (float, 0.0, None),
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
    from models_zoo.zoo import parse_ref

    where = f"model {d['name']!r} in {fname}"
    _check_model_types(d, where)
    parse_ref(d["name"])  # unknown model or tag: a did-you-mean
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


# --------------------------------------------------------------------------------------------- matrix


def jobs(cfg: Config) -> list[Job]:
    """Every (model, target, precision) in config order: a stable order, so shards are stable too."""
    return [Job(m, t, p) for m in cfg.models for t in m.targets for p in m.precisions]


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 1, 1
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard takes I/N, e.g. 1/3, not {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise InputError(f"--shard {text}: I must be between 1 and N (N >= 1)")
    return i, n


def shard(all_jobs: list[Job], i: int, n: int) -> list[Job]:
    """Jobs ``i-1, i-1+n, ...``: round robin, so each shard gets a mix of cheap and costly targets."""
    return all_jobs[i - 1::n]


# --------------------------------------------------------------------------------------------- running


def select_targets(all_jobs: list[Job], only: str | None) -> list[Job]:
    """``--targets onnx,tflite``: keep those targets' jobs (a Linux runner and a Mac split one config)."""
    if not only:
        return all_jobs
    from edgehybrid.targets import get_target

    wanted = [t.strip() for t in only.split(",") if t.strip()]
    for t in wanted:
        get_target(t, hint="--targets")
    kept = [j for j in all_jobs if j.target in wanted]
    if not kept:
        raise InputError(f"--targets {only} selects no job of the config; its targets are "
                         f"{', '.join(dict.fromkeys(j.target for j in all_jobs))}")
    return kept


def run_ci(cfg: Config, *, shard_spec: str | None = None, update_baseline: bool = False, only_targets: str | None = None,
           log: Callable[[str], None] = lambda _m: None, progress=None, step=None) -> dict:
    """Run the selected jobs. Without a baseline file the jobs run and are reported ``new`` (nothing to compare
    with, nothing fails for it); ``doc["baseline_missing"]`` then tells the caller to say how to record one."""
    i, n = parse_shard(shard_spec)
    matrix = select_targets(jobs(cfg), only_targets)
    selected = shard(matrix, i, n)
    if not selected:  # a workflow matrix wider than the job list must not go green having checked nothing
        raise InputError(f"--shard {i}/{n} selects no job: the matrix has only {len(matrix)} job(s); "
                         f"use at most {len(matrix)} shards")
    baseline = read_baseline(cfg.baseline, missing_ok=True)  # a corrupt one is still refused
    missing = not Path(cfg.baseline).exists()
    _check_backends(selected)
    log(f"ci: {len(selected)} job(s)" + (f" (shard {i}/{n} of {len(matrix)})" if n > 1 else "") + ": "
        + ", ".join(j.id for j in selected))
    if missing and not update_baseline:
        log(f"no baseline at {cfg.baseline}: every job runs and is reported new (compared with nothing)")
    from edgehybrid.fsutil import ensure_writable_dir

    ensure_writable_dir(cfg.out)
    artifacts = cfg.out / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    results = []
    for k, job in enumerate(selected, 1):
        log(f"[{k}/{len(selected)}] {job.id}")
        results.append(run_job(cfg, job, artifacts, baseline.get("jobs", {}) if not update_baseline else {},
                               log, progress, step=step))
        r = results[-1]
        log(f"  {r.status} in {r.seconds:.1f}s" + (f": {'; '.join(r.failures)}" if r.failures else ""))
    doc = {
        "schema": SCHEMA, "config": str(cfg.path), "shard": f"{i}/{n}", "threads": cfg.threads,
        "tolerances": {"latency": cfg.latency_tolerance, "accuracy_pts": cfg.accuracy_tolerance},
        "baseline": str(cfg.baseline) if not update_baseline else None,
        "baseline_missing": missing and not update_baseline,
        "jobs": [r.to_dict() for r in results],
        "passed": all(r.status != "failed" for r in results),
        "host": _host(),
    }
    if update_baseline:
        good = [r for r in results if r.status == "passed"]  # a failing job must not become the new normal
        write_baseline(cfg.baseline, good, read_baseline(cfg.baseline, missing_ok=True))
        log(f"updated the baseline {cfg.baseline} ({len(good)} jobs"
            + (f"; {len(results) - len(good)} failed jobs not recorded)" if len(good) < len(results) else ")"))
    return doc


def _check_backends(selected: list[Job]) -> None:
    from exporters.base import get_exporter

    for target in dict.fromkeys(j.target for j in selected):
        get_exporter(target).check_available()  # a missing extra is a setup error (exit 2), not a failed job


def run_job(cfg: Config, job: Job, artifacts: Path, baseline_jobs: dict, log, progress, step=None) -> JobResult:
    from edgehybrid.check import Thresholds, run_check
    from edgehybrid.int8 import Int8Request
    from edgehybrid.pipeline import ExportRequest, run_export
    from exporters.base import ExportOptions

    t0 = time.perf_counter()
    m = job.model
    result = JobResult(job)
    if not job.supported:
        from edgehybrid.targets import get_target

        target = get_target(job.target)
        result.status = "skipped"
        result.notes.append(f"{target.title} has no {job.precision} export (it supports "
                            f"{', '.join(p.value for p in target.precisions)})")
        return result
    out_dir = artifacts / m.name / job.target
    int8 = None
    if job.precision.calibrated:
        int8 = Int8Request(calib=m.calib, calib_size=m.calib_size, method=m.calib_method)
    request = ExportRequest(model=m.name, target=job.target, out_dir=out_dir, weights=m.weights,
                            options=ExportOptions(precision=job.precision), threads=cfg.threads, int8=int8,
                            progress=progress, step=step)
    try:
        manifest = run_export(request, log=lambda _m: None)
    except CheckFailedError as exc:  # the artifact did not match its own PyTorch graph: a real failure
        result.status, result.failures = "failed", [f"export: {exc}"]
        result.seconds = time.perf_counter() - t0
        return result
    artifact = out_dir / Path(manifest["artifact"]).name
    result.artifact = str(artifact)
    thresholds = Thresholds(max_top1_drop=m.max_top1_drop, min_agreement=m.min_agreement, min_cosine=m.min_cosine)
    report = run_check(artifact, Path(m.data), thresholds=thresholds, threads=cfg.threads, progress=progress,
                       max_images=m.max_images)
    result.checks = report["checks"]
    result.metrics = {**report["metrics"], "runtime": report["runtime"]["method"],
                      "executed": report["runtime"]["executed"]}
    if not report["runtime"]["executed"]:
        result.notes.append(f"figures are {report['runtime']['method']} ({report['runtime']['reason']})")
    result.failures += [f"{c['name']}: {c['message']}" for c in report["checks"] if not c["passed"]]

    if report["runtime"]["executed"]:
        with step(f"timing {artifact.name} against FP32 PyTorch") if step else _nothing():
            result.latency = measure_latency(artifact, manifest, cfg)
        if m.max_latency_ms is not None and result.latency["artifact_ms"] > m.max_latency_ms:
            result.failures.append(f"max-latency: median {result.latency['artifact_ms']:.2f} ms > budget "
                                   f"{m.max_latency_ms:g} ms")
    else:
        result.notes.append(f"latency not measured: {report['runtime']['reason']}")
    result.baseline = compare_baseline(result, baseline_jobs.get(job.id), cfg)
    result.failures += result.baseline.get("failures", [])
    result.status = "failed" if result.failures else "passed"
    result.seconds = time.perf_counter() - t0
    return result


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


def measure_latency(artifact: Path, manifest: dict, cfg: Config) -> dict:
    """Median latency of the artifact and of the FP32 PyTorch model on one input, in alternating rounds
    within this process (same threads), and their ratio: the figure that is compared across machines."""
    import torch

    from edgehybrid.check import open_session, reference_model
    from edgehybrid.runtimes import to_layout

    session, _, _, _ = open_session(manifest, artifact, cfg.threads)
    loaded, _ = reference_model(manifest, None)
    model = loaded.model.eval()
    torch.set_num_threads(cfg.threads)
    info = manifest["inputs"][0]
    shape = [abs(d) for d in info["shape"]]
    if info.get("layout") == "NHWC":  # the same image for both, in each one's layout
        shape = [shape[0], shape[3], shape[1], shape[2]]
    nchw = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {info["name"]: to_layout(nchw, info.get("layout"))}
    x = torch.from_numpy(nchw)

    def timed(fn) -> list[float]:
        out = []
        for _ in range(cfg.latency_runs):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return out

    run_artifact = lambda: session.run(feed)
    with torch.no_grad():
        run_torch = lambda: model(x)
        for _ in range(3):  # warm-up: first runs allocate and pick kernels
            run_artifact()
            run_torch()
        art, ref, ratios = [], [], []
        for _ in range(cfg.latency_rounds):
            a, r = statistics.median(timed(run_artifact)), statistics.median(timed(run_torch))
            art.append(a)
            ref.append(r)
            ratios.append(a / r)
    return {"artifact_ms": round(statistics.median(art), 3), "reference_ms": round(statistics.median(ref), 3),
            "ratio": round(statistics.median(ratios), 4), "reference": "FP32 PyTorch eager, same process",
            "rounds": cfg.latency_rounds, "runs_per_round": cfg.latency_runs, "threads": cfg.threads}


# --------------------------------------------------------------------------------------------- baseline


def read_baseline(path: Path, missing_ok: bool = False) -> dict:
    import json

    path = Path(path)
    if not path.exists():
        if missing_ok:
            return {"schema": BASELINE_SCHEMA, "jobs": {}}
        raise InputError(f"baseline {str(path)!r} does not exist; create it with: edgehybrid ci --update-baseline")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("schema") != BASELINE_SCHEMA or not isinstance(doc.get("jobs"), dict):
            raise ValueError(f"schema is {doc.get('schema')!r}, expected {BASELINE_SCHEMA!r}")
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"baseline {path.name} is not an edgehybrid baseline ({exc}); regenerate it with "
                         "edgehybrid ci --update-baseline") from exc
    return doc


def baseline_entry(r: JobResult) -> dict:
    m = r.metrics
    entry = {k: m[k] for k in ("artifact_top1_pct", "top1_agreement_pct", "cosine") if k in m}
    if r.latency:
        entry["latency_ratio"] = r.latency["ratio"]
    return entry


def write_baseline(path: Path, results: list[JobResult], old: dict) -> None:
    from edgehybrid.fsutil import write_json_atomic

    jobs_doc = dict(old.get("jobs", {}))  # other shards' entries stay
    for r in results:
        jobs_doc[r.job.id] = baseline_entry(r)
    write_json_atomic(path, {"schema": BASELINE_SCHEMA, "jobs": dict(sorted(jobs_doc.items()))})


def compare_baseline(r: JobResult, base: dict | None, cfg: Config) -> dict:
    """Top-1 may fall by ``accuracy_tolerance`` points, the latency ratio may grow by ``latency_tolerance``."""
    if base is None:
        return {"status": "new", "failures": [], "note": "no baseline entry; record one with --update-baseline"}
    out: dict = {"status": "compared", "failures": [], "entry": base}
    now = baseline_entry(r)
    if "artifact_top1_pct" in base and "artifact_top1_pct" in now:
        fall = base["artifact_top1_pct"] - now["artifact_top1_pct"]
        out["top1_change_pts"] = round(-fall, 3)
        if fall > cfg.accuracy_tolerance:
            out["failures"].append(f"accuracy regression: top-1 {now['artifact_top1_pct']:.2f}% vs baseline "
                                   f"{base['artifact_top1_pct']:.2f}% (-{fall:.2f} pts > {cfg.accuracy_tolerance:g})")
    if "latency_ratio" in base and "latency_ratio" in now:
        growth = now["latency_ratio"] / base["latency_ratio"] - 1
        out["latency_change"] = round(growth, 4)
        if growth > cfg.latency_tolerance:
            out["failures"].append(
                f"latency regression: {now['latency_ratio']:.3f}x the FP32 PyTorch time vs baseline "
                f"{base['latency_ratio']:.3f}x (+{growth:.0%} > {cfg.latency_tolerance:.0%})")
    return out


def _host() -> dict:
    import os
    import platform

    return {"platform": sys.platform, "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version()}

