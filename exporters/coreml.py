"""Core ML exporter: ``torch.export`` -> coremltools 9.0 -> an ML Program ``.mlpackage``.

The artifact is an ML Program (``convert_to="mlprogram"``) at the lowest deployment target that runs one,
iOS15 / macOS12 (spec version 6, MIL opset CoreML5): everything these models need (conv, layer_norm,
gelu, softmax, matmul ...) exists there, and fp16 compute is a conversion choice, not a newer opset. It
has a static batch, an NCHW float32 input named ``input`` and float32 ``logits``; ``fp16`` sets
``compute_precision=FLOAT16`` (fp16 weights and activations) while keeping float32 I/O, so callers feed
and read float32 on every target. Metadata (author, description, model name, preprocessing as JSON)
travels inside the package.

Core ML executes only on Apple platforms. ``details`` come from the SAVED package read back by
:mod:`exporters.coreml_check` (spec version, opset, op and weight-dtype counts, structural checks); its
MIL reference evaluation is the honest substitute off macOS and is labelled as such wherever it is used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import ClassVar, Iterator

import torch
from torch import nn

from calibration.ops import QuantPolicy
from edgehybrid.errors import ANSI_ESCAPE, EdgeHybridError, first_line
from edgehybrid.requires import Requirement
from exporters.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    Artifact,
    Exporter,
    ExportOptions,
    Precision,
    Target,
    get_target,
    quiet_converter,
    register,
    require,
    version_of,
)
from models_zoo.registry import ModelSpec

#: the lowest target that runs ML Programs (fp32 and fp16 alike); recorded in details
DEPLOYMENT_TARGET = "iOS15"
#: activation quantize/dequantize ops need iOS 17; int8 weights (constexpr_affine_dequantize) need iOS 16
INT8_DEPLOYMENT_TARGETS = {Precision.INT8: "iOS17", Precision.INT8_WEIGHTS: "iOS16"}


def _deployment_target(options) -> str:
    return INT8_DEPLOYMENT_TARGETS.get(options.precision, DEPLOYMENT_TARGET)


def _int8_weights(ct, mlmodel):
    """Weight-only int8 (per-channel symmetric) with coremltools' optimize API; compute stays float."""
    config = ct.optimize.coreml.OptimizationConfig(
        global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                 granularity="per_channel"))
    return ct.optimize.coreml.linear_quantize_weights(mlmodel, config=config)
_UNSUPPORTED = re.compile(r"Unsupported fx node (\w+)")
_LAYER = re.compile(r'Layer "(\w+)", with type "(\w+)"')


@register
class CoreMLExporter(Exporter):
    """Exports an ML Program ``.mlpackage`` for Core ML (iOS15 / macOS12 and later)."""

    target: ClassVar[Target] = get_target("coreml")
    #: every kind of the plan in int8 (W8A8 quantize / dequantize ops, iOS 17); weights stored folded
    quant_policy: ClassVar[QuantPolicy] = QuantPolicy()

    def check_available(self) -> None:
        """coremltools converts (on any OS); running needs macOS, which the runtime reports on its own."""
        _import_coremltools()

    def reference_session(self, path: Path):
        """Where Core ML cannot run: a Session-shaped MIL reference evaluation of the saved package, whose
        ``label`` says it is edgehybrid's interpretation of the program, not the Core ML runtime."""
        from exporters.coreml_check import ReferenceSession

        return ReferenceSession(path)

    def export(
        self, model: nn.Module, example: torch.Tensor, spec: ModelSpec, options: ExportOptions, out: Path
    ) -> Artifact:
        """Trace, convert, annotate and save ``model`` as ``out`` (an ``.mlpackage``); describe what was saved."""
        self.tolerance(options.precision)  # rejects an unknown precision before any work
        if options.channels_last:
            raise EdgeHybridError(
                "Core ML export takes NCHW images only (Core ML's own convention); drop the channels-last option"
            )
        ct = _import_coremltools()
        import numpy as np

        from exporters import coreml_check

        out = Path(out)
        what = f"{spec.name} ({options.precision})"
        precision = ct.precision.FLOAT16 if options.precision == "fp16" else ct.precision.FLOAT32
        timings: dict[str, float] = {}
        with _quiet():
            t = time.perf_counter()
            ep = _trace(model.eval(), example, what)
            timings["trace"] = time.perf_counter() - t

            t = time.perf_counter()
            try:
                mlmodel = ct.convert(
                    ep,
                    convert_to="mlprogram",
                    minimum_deployment_target=getattr(ct.target, _deployment_target(options)),
                    compute_precision=precision,
                    # dtype on both ends keeps float32 I/O in fp16 programs (iOS16+ would default to fp16 I/O)
                    inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)],
                    outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                    skip_model_load=True,  # compiling is the runtime's job (and impossible off macOS)
                )
            except Exception as exc:  # noqa: BLE001 - translated into one actionable line
                raise _conversion_error(exc, ep, what) from exc
            timings["convert"] = time.perf_counter() - t
            if options.precision is Precision.INT8_WEIGHTS:
                t = time.perf_counter()
                mlmodel = _int8_weights(ct, mlmodel)
                timings["quantize"] = time.perf_counter() - t

            _annotate(mlmodel, spec, options, example)
            t = time.perf_counter()
            try:
                mlmodel.save(str(out))
            except Exception as exc:  # noqa: BLE001
                raise EdgeHybridError(f"could not save the Core ML package {str(out)!r}: {first_line(exc)}") from exc
            timings["save"] = time.perf_counter() - t

        t = time.perf_counter()
        info = coreml_check.inspect_mlpackage(out)  # describe what was SAVED, not the in-memory object
        inputs, outputs = coreml_check.io_infos(coreml_check._read(out)[1])
        timings["inspect"] = time.perf_counter() - t
        if not info["checks"]["ok"]:
            raise EdgeHybridError(
                f"the Core ML package saved for {what} fails its structural checks: "
                + "; ".join(info["checks"]["problems"])
            )
        details = {
            "format": "mlprogram",
            "source": "torch.export ExportedProgram (run_decompositions({}))",
            "minimum_deployment_target": _deployment_target(options),
            "deployment_target": info["deployment_target"],
            "spec_version": info["spec_version"],
            "mil_opset": info["mil_opset"],
            "compute_precision": precision.name,
            "io_dtype": "float32",
            "input_layout": "NCHW" if example.ndim == 4 else None,
            "batch": int(example.shape[0]),
            "op_counts": info["op_counts"],
            "const_dtypes": info["const_dtypes"],
            "ops_in_target_opset": info["checks"]["ops_in_target_opset"],
            "max_rank": info["checks"]["max_rank"],
            "metadata": info["metadata"],
        }
        notes = _converter_notes(ep)
        if notes:
            details["converter_notes"] = notes
        return Artifact(
            path=out,
            target=self.name,
            precision=options.precision,
            inputs=inputs,
            outputs=outputs,
            versions={"torch": torch.__version__, "coremltools": ct.__version__, "numpy": version_of("numpy")},
            details=details,
            timings_s={k: round(v, 4) for k, v in timings.items()},
        )

    def requires(self, artifact: Artifact) -> list[Requirement]:
        """The OS releases whose Core ML runs the package's specification version (read from the package)."""
        from exporters.coreml_check import os_minimums

        ct = _import_coremltools("reading a Core ML package")
        version = int(ct.utils.load_spec(str(artifact.path)).specificationVersion)
        return [Requirement(os_name, str(release), f"Core ML specification version {version}")
                for os_name, release in os_minimums(version).items()]


def _trace(model: nn.Module, example: torch.Tensor, what: str):
    """torch.export + the default (inference-dialect) decompositions coremltools requires."""
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,)).run_decompositions({})
    except Exception as exc:  # noqa: BLE001 - every torch.export failure is reported the same way
        raise EdgeHybridError(
            f"torch.export could not trace {what}, so Core ML conversion cannot start: {first_line(exc)}; "
            "the model must be traceable without data-dependent Python control flow"
        ) from exc


def _converter_notes(ep) -> list[str]:
    """Known ways coremltools 9.0 departs from the PyTorch graph without failing, found in ``ep``."""
    notes = []
    tanh_gelu = [
        n.name for n in ep.graph.nodes
        if n.op == "call_function" and "gelu" in str(n.target) and n.kwargs.get("approximate") == "tanh"
    ]
    if tanh_gelu:
        # measured: the converted program holds gelu(mode="EXACT"); the two differ by up to ~5e-4 per value
        notes.append(
            f"{len(tanh_gelu)} tanh-approximate GELU(s) were converted as exact GELU by coremltools "
            "(differences up to ~5e-4 per activation)"
        )
    return notes


def _conversion_error(exc: BaseException, ep, what: str) -> EdgeHybridError:
    """One line naming the op (and the module it came from) that coremltools could not convert."""
    text = ANSI_ESCAPE.sub("", str(exc))
    unsupported = _UNSUPPORTED.search(text)
    if unsupported:
        op = unsupported.group(1)
        return EdgeHybridError(
            f"Core ML conversion of {what} failed: coremltools has no translation for the PyTorch op "
            f"{op!r}{_where(ep, op)}; replace that operation in the model, or try --target onnx / tflite"
        )
    layer = _LAYER.search(text)
    if layer and "rank" in text:
        layer_name, op = layer.group(1), layer.group(2)
        node = _node_for(ep, layer_name)
        origin = f" The {op!r} comes from PyTorch node {node.name!r}{_where(ep, node.name)}." if node else ""
        return EdgeHybridError(
            f"Core ML conversion of {what} failed: {first_line(exc)}{origin} Core ML allows at most rank-5 "
            "tensors: reshape so that no intermediate has more than 5 dimensions, or try --target onnx"
        )
    return EdgeHybridError(
        f"Core ML conversion of {what} failed in coremltools: {type(exc).__name__}: {first_line(exc)}"
        f"{_where(ep, _guess_node(text, ep))}; try --target onnx / tflite, or report it with --debug output"
    )


def _guess_node(text: str, ep) -> str:
    """The longest graph node name mentioned in an error text ('' if none)."""
    names = sorted((n.name for n in ep.graph.nodes if n.op == "call_function"), key=len, reverse=True)
    return next((n for n in names if re.search(rf"\b{re.escape(n)}", text)), "")


def _node_for(ep, layer: str):
    """The fx node a MIL layer was named after: coremltools adds suffixes ("view_cast_fp16"), so the
    longest node name equal to ``layer`` or prefixing it with "_" is the one meant (None if none)."""
    nodes = [n for n in ep.graph.nodes if n.op == "call_function"]
    hits = [n for n in nodes if layer == n.name or layer.startswith(n.name + "_")]
    return max(hits, key=lambda n: len(n.name), default=None)


def _where(ep, name: str) -> str:
    """' (in module PATH, a Class)' for the graph node named ``name`` (or the first calling aten.<name>)."""
    if not name:
        return ""
    try:
        nodes = [n for n in ep.graph.nodes if n.op == "call_function"]
        hits = [n for n in nodes if n.name == name] + [n for n in nodes if str(n.target).split(".")[1:2] == [name]]
        for node in hits:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                cls_name = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
                return f" (in module {path or '<root>'!r}, a {cls_name})"
    except Exception:  # noqa: BLE001 - locating the module is best effort; the op name is what matters
        pass
    return ""


def _annotate(mlmodel, spec: ModelSpec, options: ExportOptions, example: torch.Tensor) -> None:
    """Metadata a deployer (and our runtime) reads back from the package."""
    pre = spec.preprocessing
    mlmodel.author = "edgehybrid"
    if pre.kind == "audio":
        from calibration.audio import describe

        mlmodel.short_description = (f"{spec.name}: {spec.family} keyword classifier ({spec.num_classes} classes), "
                                     f"exported by edgehybrid ({options.precision})")
        what = "samples in -1..1" if pre.features == "inside" else "log-mel features (mels x frames)"
        mlmodel.input_description[INPUT_NAME] = f"float32 {what}, shape {tuple(example.shape)}: {describe(pre)}"
    else:
        h, w = int(example.shape[2]), int(example.shape[3])
        mlmodel.short_description = (f"{spec.name}: {spec.family} image classifier ({spec.num_classes} classes, "
                                     f"{h}x{w}), exported by edgehybrid ({options.precision})")
        if options.normalize_in_graph:
            feed = f"RGB pixels 0..{pre.value_scale:g} (normalization is inside the model)"
        else:
            feed = f"RGB pixels / {pre.value_scale:g}, then (x - mean) / std per channel"
        mlmodel.input_description[INPUT_NAME] = f"NCHW float32 image, shape {tuple(example.shape)}: {feed}"
    mlmodel.output_description[OUTPUT_NAME] = f"float32 class logits, shape ({example.shape[0]}, {spec.num_classes})"
    meta = mlmodel.user_defined_metadata
    meta["edgehybrid.model"] = spec.name
    meta["edgehybrid.precision"] = options.precision.value
    meta["edgehybrid.input_layout"] = "NCHW" if example.ndim == 4 else "none"
    meta["edgehybrid.normalize_in_graph"] = str(bool(options.normalize_in_graph)).lower()
    meta["edgehybrid.preprocessing"] = json.dumps(pre.to_dict())


_QUIET_LOGGERS = ("coremltools", "torchao", "torch.export", "torch._export", "torch.utils._pytree")


def _import_coremltools(purpose: str = "Core ML export"):
    """Import coremltools without its import-time chatter ("Torch ... has not been tested", "Failed to
    load _MLModelProxy" on Linux, torchao's missing-kernel lines): real problems surface as exceptions."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    with quiet_converter(_QUIET_LOGGERS, logging.CRITICAL, redirect_fd=False):
        return require("coremltools", "coreml", purpose)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep converter chatter off stdout (the CLI's --json owns it), progress bars off stderr, and
    coremltools' / torch.export's warnings and logs quiet for the duration."""
    # coremltools draws tqdm bars in its torch frontend and pass pipeline; bind them to disable=True
    patched = []
    for modname, attr in (
        ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
        ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
    ):
        mod = sys.modules.get(modname)
        if mod is not None and callable(getattr(mod, attr, None)):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, functools.partial(getattr(mod, attr), disable=True))
    try:
        with quiet_converter(_QUIET_LOGGERS, logging.ERROR):  # C++ prints (MIL passes, protobuf) too
            yield
    finally:
        for mod, attr, original in patched:
            setattr(mod, attr, original)