"""``edgehybrid ci``: export, check and time a matrix of models x targets x precisions; gate on a baseline.

The matrix comes from a strict TOML file (``edgehybrid.toml``; an unknown key is an error, not a silent
no-op). Every job exports its artifact (validated as ``edgehybrid export`` does), checks its drift on
real images (``edgehybrid check``), and times it against a fixed reference workload on the same runtime, in
alternating rounds (:mod:`edgehybrid.ci_latency`), so that its latency is a *ratio* that a slower or busier
CI machine does not move. Results are compared with a committed baseline JSON: a top-1 that fell, or a
latency ratio that grew, beyond the configured tolerances fails the run (exit 1) with the job and the figure
named; latency measured while the machine was too unsteady to judge is ``inconclusive`` (exit 4).

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

import re
from contextlib import nullcontext
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


from edgehybrid.ci_config import Config, ModelConfig, load_config  # noqa: F401  (the config, re-exported)
from edgehybrid.errors import CheckFailedError, InputError
from edgehybrid.targets import Precision

SCHEMA = "edgehybrid.ci/1"
BASELINE_SCHEMA = "edgehybrid.ci-baseline/1"


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
    status: str = "passed"  # passed | failed | skipped | inconclusive (latency could not be judged)
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
    results, references = [], {}
    for k, job in enumerate(selected, 1):
        log(f"[{k}/{len(selected)}] {job.id}")
        results.append(run_job(cfg, job, artifacts, baseline.get("jobs", {}) if not update_baseline else {},
                               log, progress, step=step, references=references, recording=update_baseline))
        r = results[-1]
        log(f"  {r.status} in {r.seconds:.1f}s" + (f": {'; '.join(r.failures)}" if r.failures else ""))
    doc = {
        "schema": SCHEMA, "config": str(cfg.path), "shard": f"{i}/{n}", "threads": cfg.threads,
        "tolerances": {"latency": cfg.latency_tolerance, "accuracy_pts": cfg.accuracy_tolerance},
        "baseline": str(cfg.baseline) if not update_baseline else None,
        "baseline_missing": missing and not update_baseline,
        "jobs": [r.to_dict() for r in results],
        "passed": all(r.status != "failed" for r in results),
        "inconclusive": [r.job.id for r in results if r.status == "inconclusive"],
        "host": _host(),
    }
    if update_baseline:
        good = [r for r in results if r.status == "passed"]  # a failing or unjudged job is not the new normal
        write_baseline(cfg.baseline, good, read_baseline(cfg.baseline, missing_ok=True))
        log(f"updated the baseline {cfg.baseline} ({len(good)} jobs"
            + (f"; {len(results) - len(good)} failed jobs not recorded)" if len(good) < len(results) else ")"))
    return doc


def _check_backends(selected: list[Job]) -> None:
    from exporters.base import get_exporter

    for target in dict.fromkeys(j.target for j in selected):
        get_exporter(target).check_available()  # a missing extra is a setup error (exit 2), not a failed job


def run_job(cfg: Config, job: Job, artifacts: Path, baseline_jobs: dict, log, progress, step=None,
            references: dict | None = None, recording: bool = False) -> JobResult:
    from edgehybrid.drift_check import Thresholds, run_check
    from edgehybrid.int8 import Int8Request
    from edgehybrid.pipeline import ExportRequest, run_export
    from edgehybrid.user_model import parse_source
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
    out_dir = artifacts / re.sub(r"[^A-Za-z0-9._-]", "_", m.name) / job.target
    int8 = None
    if job.precision.calibrated:
        int8 = Int8Request(calib=m.calib, calib_size=m.calib_size, method=m.calib_method)
    src = parse_source(m.name, m.model_args, cfg.path.parent)  # a model of your own: paths beside the config
    ref = m.name if src is None or src.path is None else str(src.path) + (f":{src.factory}" if src.factory else "")
    request = ExportRequest(model=ref, target=job.target, out_dir=out_dir, weights=m.weights,
                            model_args=dict(m.model_args or {}), card_file=Path(m.card) if m.card else None,
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
        from edgehybrid import ci_latency

        refs = references if references is not None else {}
        if job.target not in refs:  # one reference workload per target and run, exported once
            with step(f"exporting the reference workload for {job.target}") if step else nullcontext():
                refs[job.target] = ci_latency.reference_artifact(job.target, cfg.out, cfg.threads)
        with step(f"timing {artifact.name} against the reference workload") if step else nullcontext():
            result.latency = ci_latency.measure(artifact, manifest, *refs[job.target], rounds=cfg.latency_rounds,
                                                runs=cfg.latency_runs)
        if m.max_latency_ms is not None and result.latency["artifact_ms"] > m.max_latency_ms:
            result.failures.append(f"max-latency: median {result.latency['artifact_ms']:.2f} ms > budget "
                                   f"{m.max_latency_ms:g} ms")
    else:
        result.notes.append(f"latency not measured: {report['runtime']['reason']}")
    result.baseline = compare_baseline(result, baseline_jobs.get(job.id), cfg)
    result.failures += result.baseline.get("failures", [])
    if recording and result.latency:  # no baseline from an unsteady run
        from edgehybrid.ci_latency import steady

        if not steady(result.latency, cfg.latency_tolerance):
            result.baseline.update(latency_status="inconclusive", latency_note=(
                f"latency inconclusive: the pair ratio {result.latency['ratio']:.3f} and the fastest rounds' "
                f"{result.latency['min_ratio']:.3f} differ by more than the {cfg.latency_tolerance:.0%} tolerance, "
                "too unsteady to record as the baseline; rerun --update-baseline on a quieter runner"))
    if result.baseline.get("latency_note"):
        result.notes.append(result.baseline["latency_note"])
    result.status = ("failed" if result.failures else
                     "inconclusive" if result.baseline.get("latency_status") == "inconclusive" else "passed")
    result.seconds = time.perf_counter() - t0
    return result


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
        entry.update(latency_ratio=r.latency["ratio"], latency_min_ratio=r.latency["min_ratio"],
                     latency_reference=r.latency["reference"])
    return entry


def write_baseline(path: Path, results: list[JobResult], old: dict) -> None:
    from edgehybrid.fsutil import write_json_atomic

    jobs_doc = dict(old.get("jobs", {}))  # other shards' entries stay
    for r in results:
        jobs_doc[r.job.id] = baseline_entry(r)
    write_json_atomic(path, {"schema": BASELINE_SCHEMA, "jobs": dict(sorted(jobs_doc.items()))})


def compare_baseline(r: JobResult, base: dict | None, cfg: Config) -> dict:
    """Top-1 may fall by ``accuracy_tolerance`` points, the latency ratio may grow by ``latency_tolerance``
    (:func:`edgehybrid.ci_latency.judge`, which also says when latency could not be judged)."""
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
    from edgehybrid.ci_latency import judge

    lat = judge(r.latency, base, cfg.latency_tolerance)
    out["latency_status"] = lat["status"]
    out["failures"] += lat["failures"]
    if lat["change"] is not None:
        out["latency_change"] = lat["change"]
    if lat["note"]:
        out["latency_note"] = lat["note"]
    return out


def _host() -> dict:
    import os
    import platform

    return {"platform": sys.platform, "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version()}

