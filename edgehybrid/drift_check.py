"""``edgehybrid check``: how far an exported artifact drifted from its FP32 PyTorch model, on real images.

The artifact runs on its own runtime (ONNX Runtime, LiteRT; Core ML where it can run) and the FP32
reference in PyTorch, over the same decoded images. A labelled folder (one sub-folder per class, named
as the model's classes) gives the accuracy of both, the drop and the per-class drops; an unlabelled one
gives agreement figures only. Each threshold is checked and named when it fails, so CI can gate on the
result (exit 1) and tell a broken artifact (drop) from bad input (exit 2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from calibration.preprocess import IMAGE_FILES, files_text, load_sample, model_input, suffixes_of
from calibration.sources import data_path
from edgehybrid.drift import compare, points_change
from edgehybrid.errors import InputError, suggest
from edgehybrid.requires import local_warning
from edgehybrid.runtimes import run_batched
from edgehybrid.reference import reference_model
from edgehybrid.user_model import forward_batched
from models_zoo.registry import AudioFrontEnd, Preprocessing, preprocessing_from_dict

SCHEMA = "edgehybrid.check/1"
CHUNK = 32  # images decoded at a time: memory stays flat whatever the folder holds


@dataclass(frozen=True)
class Thresholds:
    """What an artifact must hold against its FP32 reference; ``None`` switches a check off.

    Defaults fit an INT8 artifact of a well-calibrated model: a drop of more than one point of top-1 or
    fewer than 95% of images keeping their class is a regression worth stopping a release for.
    """

    max_top1_drop: float | None = 1.0  # accuracy points (labelled data only)
    min_agreement: float | None = 95.0  # percent of images whose top-1 class matches the reference's
    min_cosine: float | None = 0.98  # mean logit cosine

    def check(self) -> Thresholds:
        if self.max_top1_drop is not None and not (0 <= self.max_top1_drop <= 100):
            raise InputError(f"--max-top1-drop is in accuracy points, 0..100; got {self.max_top1_drop}")
        if self.min_agreement is not None and not (0 <= self.min_agreement <= 100):
            raise InputError(f"--min-agreement is a percentage, 0..100; got {self.min_agreement}")
        if self.min_cosine is not None and not (-1 <= self.min_cosine <= 1):
            raise InputError(f"--min-cosine is a cosine, -1..1; got {self.min_cosine}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    paths: list[Path]
    labels: np.ndarray | None  # class index per image, None when unlabelled
    classes: list[str] | None  # the model's classes, when labelled
    root: Path

    @property
    def labelled(self) -> bool:
        return self.labels is not None


# --------------------------------------------------------------------------------------------- inputs


def read_manifest(artifact: Path, verify: bool = True) -> dict:
    """The manifest written beside ``artifact`` by ``edgehybrid export``, checked against its schema; with
    ``verify`` (the default) the artifact must be the one it describes (same sha256), so a truncated or
    replaced file is refused before it runs, and a manifest without a sha256 is refused too."""
    from edgehybrid.manifest import artifact_digest
    from edgehybrid.manifest_schema import load, manifest_path

    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"artifact {str(artifact)!r} does not exist; check the path")
    path = manifest_path(artifact)
    if not path.is_file():
        raise InputError(f"{artifact.name} has no manifest ({path.name}); check needs the manifest "
                         "that 'edgehybrid export' writes beside the artifact: re-export it")
    manifest = load(path)
    if not verify:
        return manifest
    if "sha256" not in manifest:
        raise InputError(f"manifest {path.name} has no sha256, so {artifact.name} cannot be verified against it; "
                         "re-export the artifact, or pass --no-verify to check it unverified")
    try:
        sha, _ = artifact_digest(artifact)
    except OSError as exc:
        raise InputError(f"cannot read artifact {str(artifact)!r}: {exc.strerror or exc}") from None
    if sha != manifest["sha256"]:
        raise InputError(f"{artifact.name} does not match its manifest (sha256 {sha[:12]}... vs "
                         f"{manifest['sha256'][:12]}...): the file is corrupt or was replaced; re-export it")
    return manifest


def read_dataset(data: Path, classes: list[str] | None, pre=None) -> Dataset:
    """Images (or, for a speech model's ``pre``, sound files) under ``data``: labelled when it holds only class
    sub-folders, unlabelled otherwise."""
    pre = pre or IMAGE_FILES
    data = data_path(data)
    if not data.is_dir():
        raise InputError(f"--data {str(data)!r} is not a folder; pass a folder of {pre.noun} (one sub-folder per "
                         "class for accuracy figures)")
    suffixes = suffixes_of(pre)

    def images_in(folder: Path, recursive: bool) -> list[Path]:
        found = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes)

    top = images_in(data, recursive=False)
    subdirs = sorted(d for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_dir = {d.name: images_in(d, recursive=True) for d in subdirs}
    per_dir = {k: v for k, v in per_dir.items() if v}
    if not top and not per_dir:
        raise InputError(f"--data {str(data)!r} holds no {files_text(pre)}")
    if top or not classes:  # loose images, or a model without class names: agreement figures only
        return Dataset(images_in(data, recursive=True), None, None, data)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [name for name in per_dir if name not in index]
    if unknown:
        name = unknown[0]
        close = suggest(name, classes)
        hint = f"; did you mean {close[0]!r}?" if close else f"; the model's classes are: {', '.join(classes[:12])}"
        raise InputError(f"class folder {name!r} in {str(data)!r} is not one of the model's classes{hint} "
                         "(rename it, or pass a folder without sub-folders for agreement figures only)")
    paths, labels = [], []
    for name, files in per_dir.items():
        paths += files
        labels += [index[name]] * len(files)
    return Dataset(paths, np.asarray(labels, dtype=np.int64), list(classes), data)


def preprocessing_of(manifest: dict) -> tuple[Preprocessing | AudioFrontEnd, bool]:
    """The artifact's preprocessing, and whether its normalization runs in the graph (images only)."""
    doc = manifest["preprocessing"]
    return preprocessing_from_dict(doc), bool(doc.get("in_graph", False))


def open_session(manifest: dict, artifact: Path, threads: int):
    """(session, executed, method, reason) for the manifest's target (:func:`edgehybrid.runtimes.open_session`)."""
    from edgehybrid.runtimes import open_session as open_runtime

    opened = open_runtime(manifest["target"], artifact, threads)
    return opened.session, opened.executed, opened.method, opened.reason


# --------------------------------------------------------------------------------------------- running


def run_check(artifact: Path, data: Path, *, reference: str | None = None, thresholds: Thresholds = Thresholds(),
              threads: int = 2, progress: Callable[[int, str], object] | None = None,
              max_images: int | None = None, warn: Callable[[str], object] | None = None,
              verify: bool = True) -> dict:
    """Run the artifact and its FP32 reference over ``data``; return the report (``passed`` and ``checks``).
    ``warn`` hears, before the runtime opens the file, that the runtime is older than the manifest requires."""
    t0 = time.perf_counter()
    thresholds.check()
    artifact = Path(artifact)
    manifest = read_manifest(artifact, verify=verify)
    old_runtime = local_warning(manifest.get("requires"))
    if old_runtime and warn is not None:
        warn(old_runtime)
    classes = manifest.get("classes")
    pre, in_graph = preprocessing_of(manifest)
    dataset = read_dataset(data, classes, pre)
    paths, labels = dataset.paths, dataset.labels
    if max_images and max_images < len(paths):  # evenly spread over the sorted files: every class keeps its share
        keep = np.unique(np.linspace(0, len(paths) - 1, max_images).round().astype(int))
        paths = [paths[i] for i in keep]
        labels = None if labels is None else labels[keep]
    loaded, ref_label = reference_model(manifest, reference)
    session, executed, method, reason = open_session(manifest, artifact, threads)
    in_info, out_info = manifest["inputs"][0], manifest["outputs"][0]
    batch = int(manifest.get("batch") or 1)

    torch.set_num_threads(threads)
    model = loaded.model.eval()  # a loaded program's eval() is a no-op (edgehybrid.user_model)
    refs, outs = [], []
    bar = progress(len(paths), "checking") if progress else None
    try:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            pixels = np.stack([load_sample(p, pre) for p in chunk])
            normed = model_input(pixels, pre)
            with torch.no_grad():
                refs.append(forward_batched(model, torch.from_numpy(normed), loaded.fixed_batch).numpy())
            feeds = pixels if in_graph else normed
            outs.append(run_batched(session, feeds, batch, in_info["name"], out_info["name"], in_info.get("layout")))
            if bar:
                bar(len(chunk))
    finally:
        if bar:
            bar.close()
    ref = np.concatenate(refs).reshape(len(paths), -1)
    act = np.concatenate(outs).reshape(len(paths), -1)
    if ref.shape != act.shape:
        raise InputError(f"{artifact.name} gives {act.shape[1]} outputs per image but its reference gives "
                         f"{ref.shape[1]}; pass the --reference it was exported from")

    agreement = compare(ref, act)
    metrics: dict = {
        "images": len(paths),
        "top1_agreement_pct": round(100 * agreement.top1_agreement, 3),
        "cosine": round(agreement.cosine, 6),
        "sqnr_db": round(agreement.sqnr_db, 3) if math.isfinite(agreement.sqnr_db) else None,
        "max_abs": agreement.max_abs,
    }
    per_class: list[dict] = []
    if labels is not None:
        metrics.update(_accuracy(ref, act, labels))
        per_class = _per_class(ref, act, labels, dataset.classes)
    checks = _evaluate(thresholds, metrics, labelled=labels is not None)
    return {
        "schema": SCHEMA,
        "artifact": str(artifact),
        "sha256": manifest.get("sha256"),
        "model": manifest["model"],
        "target": manifest["target"],
        "precision": manifest.get("precision"),
        "runtime": {"name": manifest.get("validation", {}).get("runtime") or manifest["target"], "executed": executed,
                    "method": method, "reason": reason, "threads": threads, "requirement_warning": old_runtime},
        "reference": ref_label,
        # "images" counts the samples of either kind (the key predates sound); "kind" says which they are
        "data": {"path": str(dataset.root), "labelled": labels is not None, "images": len(paths), "kind": pre.kind,
                 "noun": pre.noun, "classes": len(dataset.classes) if dataset.classes else None},
        "metrics": metrics,
        "per_class": per_class,
        "worst_classes": sorted(per_class, key=lambda c: (-c["drop_pts"], c["artifact_top1_pct"]))[:5],
        "thresholds": thresholds.to_dict(),
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _topk_acc(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def _accuracy(ref: np.ndarray, act: np.ndarray, labels: np.ndarray) -> dict:
    out = {
        "reference_top1_pct": round(100 * _topk_acc(ref, labels, 1), 3),
        "artifact_top1_pct": round(100 * _topk_acc(act, labels, 1), 3),
    }
    out["top1_drop_pts"] = round(out["reference_top1_pct"] - out["artifact_top1_pct"], 3)
    if ref.shape[1] > 10:  # top-5 of ten classes says little
        out["reference_top5_pct"] = round(100 * _topk_acc(ref, labels, 5), 3)
        out["artifact_top5_pct"] = round(100 * _topk_acc(act, labels, 5), 3)
    return out


def _per_class(ref: np.ndarray, act: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[dict]:
    rows = []
    for c in sorted(set(labels.tolist())):
        m = labels == c
        r = 100 * float((ref[m].argmax(1) == c).mean())
        a = 100 * float((act[m].argmax(1) == c).mean())
        rows.append({"class": classes[c], "images": int(m.sum()), "reference_top1_pct": round(r, 2),
                     "artifact_top1_pct": round(a, 2), "drop_pts": round(r - a, 2)})
    return rows


def _evaluate(t: Thresholds, m: dict, labelled: bool) -> list[dict]:
    checks = []

    def add(name: str, value: float, limit: float, ok: bool, text: str) -> None:
        checks.append({"name": name, "value": value, "limit": limit, "passed": bool(ok),
                       "message": text if ok else text.replace(" <= ", " > ").replace(" >= ", " < ")})

    if t.max_top1_drop is not None and labelled:
        v = m["top1_drop_pts"]
        both = f"(reference {m['reference_top1_pct']:.2f}%, artifact {m['artifact_top1_pct']:.2f}%)"
        ok = v <= t.max_top1_drop
        # one convention with words: a gain is never written as a negative drop
        add("max-top1-drop", v, t.max_top1_drop, ok,
            f"top-1 {points_change(v, 2)}; a loss of up to {t.max_top1_drop:g} pts passes {both}" if ok else
            f"top-1 drop {v:.2f} pts <= {t.max_top1_drop:g} {both}")
    if t.min_agreement is not None:
        v = m["top1_agreement_pct"]
        add("min-agreement", v, t.min_agreement, v >= t.min_agreement,
            f"top-1 agreement {v:.2f}% >= {t.min_agreement:g}%")
    if t.min_cosine is not None:
        v = m["cosine"]
        add("min-cosine", v, t.min_cosine, v >= t.min_cosine, f"logit cosine {v:.5f} >= {t.min_cosine:g}")
    return checks


def failure_line(report: dict) -> str:
    failed = [c for c in report["checks"] if not c["passed"]]
    what = "; ".join(f"{c['message']} (--{c['name']})" for c in failed)
    return f"check failed for {Path(report['artifact']).name} on {report['data']['images']} {report['data'].get('noun', 'images')}: {what}"


# --------------------------------------------------------------------------------------------- reports


def markdown(report: dict) -> str:
    """A pull-request comment: verdict, figures, failing thresholds, worst classes."""
    m, rt = report["metrics"], report["runtime"]
    verdict = "PASS" if report["passed"] else "FAIL"
    lines = [f"### edgehybrid check: {verdict} - `{Path(report['artifact']).name}`", "",
             f"{report['model']} · {report['target']} · {report['precision']} · {rt['method']}"
             + ("" if rt["executed"] else f" (not executed: {rt['reason']})"),
             (f"reference: {report['reference']}; data: `{report['data']['path']}` ({m['images']} {report['data'].get('noun', 'images')}, "
             f"{'labelled' if report['data']['labelled'] else 'unlabelled'})"), "",
             "| figure | value |", "| --- | --- |"]
    if report["data"]["labelled"]:
        lines += [f"| top-1 reference | {m['reference_top1_pct']:.2f}% |",
                  f"| top-1 artifact | {m['artifact_top1_pct']:.2f}% |",
                  f"| top-1 change | {points_change(m['top1_drop_pts'], 2)} |"]
        if "artifact_top5_pct" in m:
            lines.append(f"| top-5 reference / artifact | {m['reference_top5_pct']:.2f}% / {m['artifact_top5_pct']:.2f}% |")
    sqnr = "inf" if m["sqnr_db"] is None else f"{m['sqnr_db']:.1f} dB"
    lines += [f"| top-1 agreement | {m['top1_agreement_pct']:.2f}% |", f"| logit cosine | {m['cosine']:.5f} |",
              f"| SQNR | {sqnr} |", "", "| check | result |", "| --- | --- |"]
    lines += [f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'}: {c['message']} |" for c in report["checks"]]
    if report["worst_classes"]:
        lines += ["", "Worst classes:", "", "| class | images | reference | artifact | change |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['class']} | {c['images']} | {c['reference_top1_pct']:.1f}% | {c['artifact_top1_pct']:.1f}% | "
                  f"{points_change(c['drop_pts'])} |" for c in report["worst_classes"]]
    return "\n".join(lines) + "\n"


def junit_xml(suite: str, cases: list[dict]) -> str:
    """JUnit XML: one ``<testcase>`` per dict with classname, name, passed, message, seconds and,
    optionally, skipped (a reason)."""
    from xml.sax.saxutils import escape, quoteattr

    failures = sum(1 for c in cases if not c["passed"] and not c.get("skipped"))
    skipped = sum(1 for c in cases if c.get("skipped"))
    total = sum(c.get("seconds", 0.0) for c in cases)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           (f'<testsuites><testsuite name={quoteattr(suite)} tests="{len(cases)}" failures="{failures}" '
           f'errors="0" skipped="{skipped}" time="{total:.3f}">')]
    for c in cases:
        head = (f'<testcase classname={quoteattr(c["classname"])} name={quoteattr(c["name"])} '
                f'time="{c.get("seconds", 0.0):.3f}"')
        if c.get("skipped"):
            out.append(f'{head}><skipped message={quoteattr(c["skipped"])}/></testcase>')
        elif c["passed"]:
            out.append(f"{head}><system-out>{escape(c['message'])}</system-out></testcase>")
        else:
            out.append(f'{head}><failure message={quoteattr(c["message"])}>{escape(c["message"])}</failure></testcase>')
    out.append("</testsuite></testsuites>")
    return "\n".join(out) + "\n"


def junit_cases(report: dict) -> list[dict]:
    cls = f"{report['model']}.{report['target']}.{report['precision']}"
    return [{"classname": cls, "name": c["name"], "passed": c["passed"], "message": c["message"],
             "seconds": report["seconds"] / max(1, len(report["checks"]))} for c in report["checks"]]


