"""The Python API: what the CLI does, for notebooks and training scripts, on any model.

    import edgehybrid
    exported = edgehybrid.export(model, torch.zeros(1, 3, 64, 64), target="tflite", precision="int8",
                                 preprocessing=edgehybrid.Preprocessing(resize=64, crop=(64, 64), mean=..., std=...))
    report = edgehybrid.check(exported, data="val/")      # the same figures and thresholds as the CLI
    timing = edgehybrid.profile(exported)
    table = edgehybrid.compare(["mobilenetv2_100.cifar10", "mobilevit_xxs.cifar10"], targets=["tflite"],
                               data="bundled:cifar10/eval", budget_ms=5.0)   # rows, Pareto front, choice

The CLI is a thin layer over the same library calls (``edgehybrid.pipeline.run_export``,
``edgehybrid.drift_check.run_check``, ``edgehybrid.profiling.local.profile_local``), so both refuse the same inputs
with the same one-line :class:`EdgeHybridError`. The documents they return are the ones the CLI prints with
``--json``; the small types here give their main figures names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgehybrid.errors import InputError


@dataclass(frozen=True)
class Exported:
    """A validated artifact and its manifest (the ``--json`` document of ``edgehybrid export``)."""

    path: Path
    manifest: dict
    model: object = field(default=None, repr=False, compare=False)  # the nn.Module it came from (API exports)

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def validation(self) -> dict:
        """How the artifact matched PyTorch: runtime, figures, whether it executed."""
        return self.manifest["validation"]


@dataclass(frozen=True)
class CheckReport:
    """Drift of an artifact from its FP32 model on real images (the ``--json`` document of ``edgehybrid check``)."""

    doc: dict

    @property
    def passed(self) -> bool:
        return bool(self.doc["passed"])

    @property
    def metrics(self) -> dict:
        return self.doc["metrics"]

    @property
    def checks(self) -> list[dict]:
        return self.doc["checks"]


def export(model, example_input=None, *, target: str, precision: str = "fp32", out: str | Path = "exports",
           calib: str | Path | None = None, preprocessing=None, classes: list[str] | None = None,
           name: str | None = None, images: str | Path | None = None, threads: int = 2, features: str | None = None,
           **int8_options) -> Exported:
    """Export ``model`` to ``target``, validate it against PyTorch and write it with its manifest into ``out``.

    ``model``: an ``nn.Module`` or ``torch.export.ExportedProgram`` (with ``example_input``, one
    ``[batch, 3, H, W]`` tensor), or a string as on the command line (a zoo name, ``file.py:factory``,
    ``model.pt2``). ``preprocessing``: an :class:`edgehybrid.Preprocessing` or ``"none"`` (raw 0..255
    pixels in), required for a model of your own. ``images``: validation inputs (sound files for a speech model);
    ``features``: for a zoo speech model, "inside" (samples in, the default) or "outside" (log-mel features in).
    ``int8_options``: ``calib_size``, ``seed``,
    ``calib_method``, ``sensitivity``, ``max_drift``, ``float_layers``, ``optimize`` as on the command line.
    """
    import torch

    from edgehybrid.int8 import Int8Request
    from edgehybrid.pipeline import ExportRequest, run_export
    from edgehybrid.targets import Precision
    from exporters.base import ExportOptions

    unknown = sorted(set(int8_options) - {"calib_size", "seed", "calib_method", "sensitivity", "max_drift",
                                          "float_layers", "optimize"})
    if unknown:
        raise InputError(f"export() got unknown option(s) {', '.join(unknown)}")
    int8_options = dict(int8_options)
    if "calib_method" in int8_options:
        int8_options["method"] = int8_options.pop("calib_method")
    int8_options["float_layers"] = tuple(int8_options.get("float_layers") or ())
    int8 = Int8Request(calib=None if calib is None else str(calib), **int8_options)
    options = ExportOptions(precision=Precision.parse(precision), batch=1)
    module, ref, card = None, model, None
    if not isinstance(model, str):
        if not isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
            raise InputError(f"model must be an nn.Module, an ExportedProgram or a name, got {type(model).__name__}")
        if not isinstance(example_input, torch.Tensor):
            raise InputError("pass example_input: one [batch, 3, height, width] tensor the model takes")
        module, ref = model, name or type(model).__name__
        options = ExportOptions(precision=options.precision, batch=int(example_input.shape[0]))
    if not isinstance(model, str) or preprocessing is not None or classes is not None:
        card = _card(preprocessing, classes, name)
    request = ExportRequest(model=str(ref), target=target, out_dir=Path(out), options=options, threads=threads,
                            images=None if images is None else Path(images), int8=int8, card=card, module=module,
                            example=example_input, features=features)
    manifest = run_export(request)
    return Exported(Path(out) / Path(manifest["artifact"]).name, manifest, model=module)


def _card(preprocessing, classes, name):
    from edgehybrid.model_card import ModelCard
    from models_zoo.registry import Preprocessing

    if preprocessing == "none":
        return ModelCard(preprocessing="none", classes=tuple(classes) if classes else None, name=name)
    if preprocessing is None:
        return ModelCard(classes=tuple(classes) if classes else None, name=name)
    if not isinstance(preprocessing, Preprocessing):
        raise InputError("preprocessing must be an edgehybrid.Preprocessing or \"none\"")
    p = preprocessing
    return ModelCard(resize=p.resize, interpolation=p.interpolation, mean=tuple(p.mean), std=tuple(p.std),
                     value_scale=p.value_scale, channel_order=p.channel_order, name=name,
                     classes=tuple(classes) if classes else None)


def check(artifact, data: str | Path, *, reference=None, max_top1_drop: float = 1.0, min_agreement: float = 95.0,
          min_cosine: float = 0.98, threads: int = 2, max_images: int | None = None) -> CheckReport:
    """Measure ``artifact``'s drift from its FP32 model on the images in ``data`` (class folders give
    accuracy). ``artifact``: an :class:`Exported` (its model is the reference) or a path with its manifest;
    ``reference``: another ``nn.Module``, ``file.py:factory``, ``.pt2``, zoo name or weights file."""
    from edgehybrid.drift_check import Thresholds, run_check

    if isinstance(artifact, Exported):
        reference = reference if reference is not None else artifact.model
        artifact = artifact.path
    thresholds = Thresholds(max_top1_drop=max_top1_drop, min_agreement=min_agreement, min_cosine=min_cosine)
    return CheckReport(run_check(Path(artifact), Path(data), reference=reference, thresholds=thresholds,
                                 threads=threads, max_images=max_images))


def profile(artifact, *, runtime: str = "auto", threads: int = 2, warmup: int = 10, runs: int = 50) -> dict:
    """Latency percentiles, throughput and peak memory of ``artifact`` on its runtime, in a fresh process (the
    ``edgehybrid.profile/1`` document)."""
    from edgehybrid.profiling.local import profile_local, resolve_runtime

    path = artifact.path if isinstance(artifact, Exported) else Path(artifact)
    return profile_local(path, resolve_runtime(path, runtime), threads, warmup, runs, None, False)


def compare(models, *, targets, precisions=("fp32",), data=None, out: str | Path = "compare", threads: int = 2,
            runs: int = 50, budget_ms: float | None = None, budget_mb: float | None = None, device: str | None = None,
            random_weights: bool = False, max_images: int | None = None, fresh: bool = False) -> dict:
    """Export, check and profile every model x target x precision and rank them (the ``--json`` document of
    ``edgehybrid compare``): ``rows``, ``fronts`` (the Pareto front per target) and ``choice`` (the most
    accurate candidate within the budget, or the closest when none fits; None without a budget)."""
    from edgehybrid.comparison import Budget, CompareRequest, run_compare

    if isinstance(models, str) or isinstance(targets, str) or isinstance(precisions, str):
        raise InputError("models, targets and precisions are lists, e.g. targets=['tflite']")
    return run_compare(CompareRequest(
        models=tuple(models), targets=tuple(targets), precisions=tuple(precisions), data=data, out=Path(out),
        threads=threads, runs=runs, budget=Budget(ms=budget_ms, mb=budget_mb), device=device,
        random_weights=random_weights, max_images=max_images, fresh=fresh))
