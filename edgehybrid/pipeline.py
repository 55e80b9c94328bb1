"""load -> export -> validate -> manifest, atomically.

Nothing reaches the output folder until the artifact has been validated against the PyTorch reference:
the exporter writes into a private staging folder, validation runs there, and only then are the artifact
and its manifest renamed into place. A failed export or validation leaves the output folder as it was.
"""

from __future__ import annotations

import re
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from calibration.preprocess import (
    IMAGE_FILES,
    batched,
    files_text,
    find_inputs,
    load_batch,
    model_input,
    sample_images,
)
from edgehybrid import layer_latency
from edgehybrid import manifest as manifest_mod
from edgehybrid.drift import top1_text
from edgehybrid.errors import InputError
from edgehybrid.fsutil import (
    check_replaceable,
    move_into_place,
    output_dir,
    staging_dir,
    write_json_atomic,
    write_text_atomic,
)
from edgehybrid.int8 import Int8Request, quantize_for_target, sensitivity_markdown
from edgehybrid.latency_plan import Optimize
from edgehybrid.latency_trials import trials_for
from edgehybrid.requires import check_floor, parse_floor
from edgehybrid.targets import Precision, Target, all_targets, get_target
from edgehybrid.validate import raise_for, validate
from exporters.base import ExportOptions, get_exporter
from models_zoo import load_model
from models_zoo.zoo import check_features, parse_ref
from models_zoo.registry import Preprocessing
from edgehybrid.model_card import ModelCard
from edgehybrid.user_model import ModelSource, load_source, parse_source, resolve_card

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    """One ``edgehybrid export`` invocation, as the library sees it."""

    model: str
    target: str
    out_dir: Path = Path("exports")
    weights: str | None = None
    options: ExportOptions = field(default_factory=ExportOptions)
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    images: Path | None = None  # validation images (clips for a speech model); the bundled samples when None
    max_images: int = 8
    threads: int = 2
    int8: Int8Request | None = None  # calibration and plan options, for calibrated int8 only
    features: str | None = None  # speech models: "inside" (default: samples in) or "outside" (log-mel features in)
    # total -> a callable advanced with each count done, with close(): a progress bar (edgehybrid.console.progress)
    progress: Callable[[int], Callable[[int], None]] | None = field(default=None, compare=False)
    # a model of the user's own (``model`` is then file.py:factory, package.module:factory or a .pt2):
    model_args: dict = field(default_factory=dict)  # the factory's keyword arguments (--model-arg)
    card: ModelCard | None = None  # input size, preprocessing, classes from flags (over card_file's)
    card_file: Path | None = None  # --card; default: the .toml/.json beside the model file
    module: object = field(default=None, compare=False, repr=False)  # an nn.Module / ExportedProgram (Python API)
    example: object = field(default=None, compare=False, repr=False)  # its example input (Python API)
    # label -> a context manager shown while one long step runs (a spinner: edgehybrid.console.step)
    step: Callable[[str], AbstractContextManager] | None = field(default=None, compare=False)

    def stepping(self, label: str) -> AbstractContextManager:
        return self.step(label) if self.step is not None else nullcontext()

    @property
    def precision(self) -> Precision:
        return self.options.precision

    def source(self) -> ModelSource | None:
        """Where a model of the user's own comes from; None for a zoo name."""
        if self.module is not None:
            return ModelSource("python", self.model)
        return parse_source(self.model, self.model_args)

    def display_name(self) -> str:
        """The model's name in file names and reports: the zoo reference, or the card's / source's name."""
        src = self.source()
        if src is None:
            return self.model
        return self.user_card(src).name or src.name

    def user_card(self, src: ModelSource) -> ModelCard:
        """The card of a model of the user's own: flags (``input_size`` too) over its card file."""
        flags = self.card or ModelCard()
        if self.input_size is not None:
            flags = replace(flags, input_size=tuple(self.input_size))
        return resolve_card(src, flags, self.card_file)

    def check(self) -> Target:
        """Every rule between the options, checked before any work; returns the target. The CLI, ``ci``, the
        benchmarks and the Python API all go through here, so they refuse the same things alike."""
        target = get_target(self.target)
        precision = target.check_precision(self.options.precision)
        for what, value in (("--batch", self.options.batch), ("--threads", self.threads),
                            ("the number of validation images", self.max_images)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{what} must be at least 1, got {value!r}")
        given = self.int8.given() if self.int8 is not None else []
        if given and precision is Precision.INT8_WEIGHTS:
            raise InputError(f"int8-weights quantizes weights only, with no calibration: {', '.join(given)} would "
                             "do nothing; drop it, or use --int8 (full) for calibrated int8 activations")
        if given and not precision.calibrated:
            raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --int8 only; add --int8 "
                             "(or drop the option)")
        if precision.calibrated:
            (self.int8 or Int8Request()).check()
            int8 = self.int8 or Int8Request()
            if int8.optimize_for is Optimize.LATENCY and int8.device is None and not target.executes_here():
                raise InputError(f"--optimize latency times candidate plans on {target.runtime}, which runs on "
                                 f"{target.runs_on} only; run it there, time it there with --device, or drop "
                                 "--optimize")
        _check_versions(target, self.options)
        self._check_model_options()
        return target

    def _check_model_options(self) -> None:
        """A zoo model brings its spec; a model of the user's own brings its weights and classes."""
        src = self.source()
        own = [flag for flag, given in (("--mean/--std/--classes/--preprocessing", self.card is not None),
                                        ("--card", self.card_file is not None)) if given]
        if src is None and own:
            raise InputError(f"{', '.join(own)} appl{'ies' if len(own) == 1 else 'y'} to a model of your own "
                             f"(file.py:factory, package.module:factory or a .pt2); {self.model} brings its own "
                             "preprocessing (see 'edgehybrid info')")
        if src is None:
            self._check_input_kind(parse_ref(self.model)[0])
            return
        if self.features is not None:
            raise InputError(f"--features applies to the zoo's speech models; {self.model} is a model of your own "
                             "(drop --features)")
        for flag, given in (("--weights", self.weights), ("--num-classes", self.num_classes)):
            if given is not None:
                what = "the program holds its weights and classes" if src.kind == "pt2" else \
                    "the factory builds the model with its weights and classes"
                raise InputError(f"{flag} applies to zoo models; for {self.model} {what} (drop {flag})")

    def _check_input_kind(self, spec) -> None:
        """Options that only make sense for images, or only for sound."""
        check_features(spec, self.features, self.model)
        audio = spec.input_kind == "audio"
        if audio and self.options.normalize_in_graph:
            raise InputError(f"--normalize-in-graph is for image models; {self.model} already computes its "
                             "front end in the graph (or takes features with --features outside): drop it")
        if audio and self.options.channels_last:
            raise InputError(f"--channels-last is for image models; {self.model} takes audio (drop it)")


def _check_versions(target: Target, options: ExportOptions) -> None:
    """--opset (a target with opsets: ONNX; in range) and --min-runtime (a version of the target's runtime), and
    the two agree."""
    from exporters import onnx_versions

    floor = parse_floor(target, options.min_runtime) if options.min_runtime is not None else None
    limits = onnx_versions.ort_limits(floor) if floor is not None and target.opsets is not None else None
    if options.opset is None:
        return
    if target.opsets is None:
        with_opsets = [t.name for t in all_targets() if t.opsets is not None]
        raise InputError(f"--opset applies to --target {' / '.join(with_opsets)} only; {target.title} has no opset "
                         "(drop it)")
    lo, hi = target.opsets[0], target.opsets[-1]
    if isinstance(options.opset, bool) or not isinstance(options.opset, int) or not lo <= options.opset <= hi:
        raise InputError(f"--opset must be between {lo} and {hi}, got {options.opset!r}")
    if limits is not None and options.opset > limits[0]:
        raise InputError(f"--opset {options.opset} needs ONNX Runtime >= "
                         f"{onnx_versions.ort_requirement(options.opset, 0)}, newer than --min-runtime "
                         f"{options.min_runtime}; drop one of them or lower --opset to {limits[0]}")


class NormalizeInGraph(nn.Module):
    """Raw RGB pixels (floats in 0..255) in; scaling, mean, std and channel order happen inside the graph."""

    def __init__(self, model: nn.Module, pre: Preprocessing):
        super().__init__()
        self.model = model
        scale = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1) * pre.value_scale
        self.register_buffer("scale", 1.0 / scale, persistent=False)
        self.register_buffer("shift", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1) / torch.tensor(
            pre.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.bgr = pre.channel_order.upper() == "BGR"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels * self.scale - self.shift  # == (pixels / value_scale - mean) / std, one mul + one sub
        if self.bgr:
            x = x.flip(1)
        return self.model(x)


def artifact_stem(ref: str, precision: Precision | str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", ref) + Precision.parse(precision).file_tag


def run_export(req: ExportRequest, log: Log = lambda _m: None) -> dict:
    """Export, validate and write the artifact and its manifest; returns the manifest."""
    t_start = time.perf_counter()
    target = req.check()
    exporter = get_exporter(target)
    exporter.check_available()  # before any work: a missing backend is a one-line answer, not a late crash
    images = _validation_inputs(req)  # cheap input checks first: a typo costs no model load
    stem = artifact_stem(req.display_name(), req.precision)
    check_replaceable(Path(req.out_dir) / f"{stem}{target.suffix}", target.artifact_is_folder)
    if req.int8 is not None and req.int8.device is not None and req.precision.calibrated:
        # an unreachable device or a refused key: one line now, not after calibration and six exports
        from edgehybrid.profiling.remote import check_reachable

        check_reachable(req.int8.ssh_device, req.int8.identity, list(req.int8.ssh_options))
    # scratch: the FP32 artifact a latency search and --sensitivity's layer times both use, exported once
    with output_dir(req.out_dir) as out_dir, tempfile.TemporaryDirectory(prefix="edgehybrid-fp32-") as scratch:
        return _export_into(req, exporter, req.int8 or Int8Request(), images, out_dir, stem, log, t_start,
                            Path(scratch))


def _export_into(req: ExportRequest, exporter, int8: Int8Request, images: list[Path], out_dir: Path, stem: str,
                 log: Log, t_start: float, scratch: Path) -> dict:
    options = req.options
    timings: dict[str, float] = {}
    t = time.perf_counter()
    src = req.source()
    with req.stepping(f"loading {req.model}"):
        if src is not None:
            loaded = load_source(src, req.user_card(src), options.batch, req.module, req.example)
        else:
            loaded = load_model(req.model, req.weights, num_classes=req.num_classes, input_size=req.input_size,
                                features=req.features)
    timings["load"] = time.perf_counter() - t
    spec = loaded.spec
    log(f"loaded {spec.name} with {loaded.weights.describe()} in {timings['load']:.2f}s")

    pixels = load_batch(images, spec.preprocessing, normalized=False)  # decode once; normalize only if needed

    def wrap(model: nn.Module) -> nn.Module:  # --normalize-in-graph: raw pixels in, for FP32 and INT8 graphs alike
        return NormalizeInGraph(model, spec.preprocessing) if options.normalize_in_graph else model

    graph = wrap(loaded.model).eval()
    feeds_nchw = pixels if options.normalize_in_graph else model_input(pixels, spec.preprocessing)
    example = torch.from_numpy(batched(feeds_nchw, options.batch)[0])
    fp32_graph, quant = None, None
    if options.precision.calibrated:
        t = time.perf_counter()
        norm_example = torch.from_numpy(batched(model_input(pixels, spec.preprocessing), options.batch)[0])
        ckpt = parse_ref(req.model)[1] if src is None else None
        trials = trials_for(req, exporter, graph, example, spec, scratch, wrap)
        quant = quantize_for_target(loaded.model, spec, norm_example, exporter, int8, log, progress=req.progress,
                                    bundled_calib=ckpt.calibration if ckpt is not None else None, trials=trials)
        timings["quantize"] = time.perf_counter() - t
        fp32_graph = graph
        graph = wrap(quant.graph)

    final_path = out_dir / f"{stem}{exporter.suffix}"
    with staging_dir(out_dir) as stage:
        staged = stage / final_path.name
        t = time.perf_counter()
        with req.stepping(f"converting to {exporter.target.title} ({options.precision})"):
            artifact = exporter.export(graph, example, spec, options, staged)
        timings["export"] = time.perf_counter() - t
        timings.update({f"export.{k}": v for k, v in artifact.timings_s.items()})
        log(f"exported {req.target} ({options.precision}) in {timings['export']:.2f}s: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in artifact.timings_s.items()))
        for warning in artifact.details.get("warnings", []):  # e.g. ops outside the accelerated backend
            log(f"warning: {warning}")
        requirements = exporter.requires(artifact)
        if options.min_runtime is not None:
            check_floor(exporter.target, requirements, parse_floor(exporter.target, options.min_runtime))
        artifact.details["requires_from"] = {r.runtime: r.source for r in requirements}

        t = time.perf_counter()
        with req.stepping(f"validating against PyTorch on {len(images)} {spec.preprocessing.noun}"):
            validation = validate(req.target, artifact, graph, feeds_nchw, options.batch, req.threads, images,
                                  fp32_graph)
        timings["validate"] = time.perf_counter() - t
        log(_describe_validation(validation, timings["validate"], spec.preprocessing.noun))

        if quant is not None and quant.sensitivity and validation["passed"]:  # each layer's time beside its error
            with req.stepping(f"timing each layer on {exporter.target.runtime}"):
                layer_latency.measure(exporter.target, lambda folder: trials.export(fp32_graph, folder, False),
                                      artifact.path, quant.report, req.threads, log, device=int8.device)

        timings["total"] = time.perf_counter() - t_start
        manifest = manifest_mod.build(
            req=req, loaded=loaded, artifact=artifact, final_path=final_path, validation=validation, timings=timings,
            quantization=None if quant is None else quant.report, requires=requirements,
            source=None if src is None else src.to_dict(),
        )
        if quant is not None and quant.sensitivity:
            table = final_path.with_name(final_path.name + ".sensitivity.md")
            write_text_atomic(stage / table.name, sensitivity_markdown(req.model, quant.report))
        raise_for(validation, req.target, req.model, artifact.outputs[0].name)
        manifest_path = final_path.with_name(final_path.name + ".manifest.json")
        staged_manifest = stage / manifest_path.name
        write_json_atomic(staged_manifest, manifest)
        external = artifact.details.get("external_data_file")  # weights beside a >2 GB ONNX graph
        if external:
            move_into_place(stage / external, final_path.with_name(external))
        move_into_place(staged, final_path)
        move_into_place(staged_manifest, manifest_path)
        if quant is not None and quant.sensitivity:
            move_into_place(stage / table.name, table)
            log(f"wrote the sensitivity table {table.name}")
    log(f"wrote {final_path} ({manifest['size_bytes'] / 1e6:.2f} MB) and {manifest_path.name}")
    return manifest


def _validation_inputs(req: ExportRequest) -> list[Path]:
    """The files validation runs on: --images (sound files for a speech model), or the bundled ones."""
    src = req.source()
    pre = parse_ref(req.model)[0].preprocessing if src is None else None
    if req.images is None:
        found = sample_images(pre)
    else:
        what = files_text(pre or IMAGE_FILES)
        if not Path(req.images).is_dir():
            raise InputError(f"--images {str(req.images)!r} is not a folder; pass a folder of {what}")
        found = find_inputs(req.images, pre or IMAGE_FILES)
        if not found:
            raise InputError(f"--images {str(req.images)!r} holds no {what}")
    return found[: max(req.max_images, req.options.batch)]



def _describe_validation(v: dict, seconds: float, noun: str = "images") -> str:
    if v.get("metrics") is None:
        return f"validation: not executed ({v.get('reason')}); structure checked only"
    m = next(iter(v["metrics"].values()))
    head = "validated" if v["passed"] else "VALIDATION FAILED"
    how = "" if v["executed"] else f" [{v['method']}; not executed: {v['reason']}]"
    return (f"{head} on {m['samples']} {noun} in {seconds:.2f}s: max-abs {m['max_abs']:.2e}, "
            f"cosine {m['cosine']:.6f}, {top1_text(m)}{how}")
