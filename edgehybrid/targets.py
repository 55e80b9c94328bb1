"""What a target is, in one place: the :class:`Precision` values and the :class:`Target` registry.

Every table that used to map a suffix, a target or a runtime (which runtime runs a ``.tflite``, which pip
package a device needs for a ``.onnx``, which precisions Core ML takes, how close an fp16 ONNX file must come
to PyTorch) is derived from the records registered at the bottom of this file. Adding a target is one
exporter file (``exporters/<name>.py``), one runtime file (``edgehybrid/runtimes/<name>.py``) and one
:func:`register` call here. This module imports nothing heavy: the profiler, the CLI's argument checks and
``ci``'s config loader read it without loading torch or a converter.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgehybrid.drift import Tolerance
from edgehybrid.errors import InputError, UnknownNameError


class Precision(str, enum.Enum):
    """What the artifact stores and computes in. A ``str`` enum: it serializes as its value ("int8")."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # W8A8: int8 weights and activations from the calibrated plan
    INT8_WEIGHTS = "int8-weights"  # int8 weights, float compute; no calibration

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_int8(self) -> bool:
        return self in (Precision.INT8, Precision.INT8_WEIGHTS)

    @property
    def calibrated(self) -> bool:
        """Whether it needs calibration data and the INT8 plan (only W8A8 does)."""
        return self is Precision.INT8

    @property
    def file_tag(self) -> str:
        """What the artifact's file stem carries: ``mobilevit_s_int8.tflite``; fp32 carries nothing."""
        return {"fp32": "", "int8-weights": "_int8w"}.get(self.value, f"_{self.value}")

    @classmethod
    def parse(cls, text: str | Precision, what: str = "precision", hint: str = "") -> Precision:
        """``"int8"`` -> ``Precision.INT8``; an unknown name is a one-line error with a did-you-mean."""
        if isinstance(text, Precision):
            return text
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise UnknownNameError.for_choice(what, str(text), [p.value for p in cls], hint=hint) from None

    @classmethod
    def from_flags(cls, precision: str | None = None, fp16: bool = False, int8: str | None = None) -> Precision:
        """The CLI's spellings (``--precision P``, ``--fp16``, ``--int8 [full|weights]``) as one value;
        flags that contradict each other are refused here, so every front end refuses them alike."""
        given = [f for f, on in (("--precision", precision is not None), ("--fp16", fp16),
                                 ("--int8", int8 is not None)) if on]
        if len(given) > 1:
            raise InputError(f"{' and '.join(given)} each choose the precision; give one of them")
        if int8 is not None:
            if int8 not in ("full", "weights"):
                raise InputError(f"--int8 takes full or weights, not {int8!r}")
            return cls.INT8 if int8 == "full" else cls.INT8_WEIGHTS
        if fp16:
            return cls.FP16
        return cls.parse(precision, "--precision") if precision is not None else cls.FP32


#: an int8 artifact against the quantized PyTorch graph it was exported from. Both compute the same plan,
#: but runtimes requantize in integer arithmetic (each fused op's output rounded once, sigmoid by lookup
#: table), which moves values by about one quantization step per layer; a wrong scale, a dropped layer or a
#: lost zero point gives cosine < 0.9. Measured on mobilevit_xxs (128 px, random weights): cosine 0.99990
#: (ONNX Runtime), 0.99991 (LiteRT), 0.999996 (Core ML MIL reference evaluation), top-1 agreement 100%.
#: Weight-only int8 is compared with the FP32 model (there is no quantized graph), with the same bound.
#: Calibrated int8 is never held closer to its graph than that graph is to FP32 (``Tolerance.no_tighter_than``):
#: with a coarse plan (--calib synthetic --calib-size 8: graph vs FP32 cosine 0.915) one-step integer rounding
#: moves the logits further (ONNX Runtime vs graph 0.977), and no conversion fault is involved.
INT8_TOLERANCE = Tolerance(atol=1e-3, rtol=0.5, min_cosine=0.98, min_top1_agreement=0.75)


@dataclass(frozen=True)
class Target:
    """Everything a target is. Registered once; every other table is derived from these records."""

    name: str  # the --target value
    title: str  # how people write it: "ONNX", "Core ML"
    suffix: str  # the artifact's suffix
    exporter_module: str  # imported lazily: it registers an exporter class named ``name``
    runtime: str  # the runtime that runs the artifact (its name in ``--runtime`` and in reports)
    runtime_module: str  # ``edgehybrid.runtimes.<x>``, defining ``RUNTIME``
    extra: str  # the pip extra that brings the converter and the runtime
    probe_module: str  # what the profiling probe imports on a device (``ai_edge_litert``)
    device_package: str  # what a device installs to get it (``pip install ai-edge-litert``)
    layout: str  # the native image layout of the artifact's input
    tolerances: Mapping[Precision, Tolerance]  # validation bound per supported precision, in preference order
    artifact_is_folder: bool = False
    other_suffixes: tuple[str, ...] = ()  # also accepted for running and profiling (".mlmodel")
    platforms: tuple[str, ...] | None = None  # sys.platform values where the runtime executes; None: all
    runs_on: str = ""  # where it executes, in words, when ``platforms`` limits it ("macOS")
    converter: str = ""
    # what the manifest's "requires" names for this target's runtime (a package, or an OS) and a
    # --min-runtime example
    requires_key: str = ""
    requires_example: str = ""
    opsets: range | None = None  # the format's operator-set versions --opset takes (ONNX); None: no such option
    per_op_timing: bool = False  # its runtime's Python API times each kernel (--per-op, --sensitivity's latency)

    @property
    def precisions(self) -> tuple[Precision, ...]:
        return tuple(self.tolerances)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (self.suffix,) + self.other_suffixes

    def supports(self, precision: Precision) -> bool:
        return precision in self.tolerances

    def check_precision(self, precision: Precision | str) -> Precision:
        """``precision`` parsed, or a one-line error listing what this target takes."""
        p = Precision.parse(precision)
        if p not in self.tolerances:
            raise InputError(f"{self.name} export does not support precision {p.value!r}; it supports: "
                             f"{', '.join(x.value for x in self.precisions)}")
        return p

    def tolerance(self, precision: Precision | str) -> Tolerance:
        return self.tolerances[self.check_precision(precision)]

    def executes_here(self) -> bool:
        return self.platforms is None or sys.platform in self.platforms


_TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    if target.name in _TARGETS:
        raise ValueError(f"target {target.name!r} is registered twice")
    if not target.tolerances:
        raise ValueError(f"target {target.name!r} supports no precision")
    if not (target.requires_key and target.requires_example):
        raise ValueError(f"target {target.name!r} must name the runtime its artifacts require (requires_key)")
    _TARGETS[target.name] = target
    return target


def all_targets() -> tuple[Target, ...]:
    return tuple(_TARGETS.values())


def target_names() -> list[str]:
    return list(_TARGETS)


def get_target(name: str | Target, what: str = "target", hint: str = "") -> Target:
    """The target called ``name``; an unknown name gets a did-you-mean."""
    if isinstance(name, Target):
        return name
    if name not in _TARGETS:
        raise UnknownNameError.for_choice(what, str(name), _TARGETS, hint=hint)
    return _TARGETS[name]


def runtime_names() -> list[str]:
    return [t.runtime for t in _TARGETS.values()]


def target_of_runtime(runtime: str, what: str = "runtime") -> Target:
    for t in _TARGETS.values():
        if t.runtime == runtime:
            return t
    raise UnknownNameError.for_choice(what, runtime, runtime_names())


def target_for_artifact(artifact: Path | str) -> Target:
    """The target an artifact belongs to, from its suffix; an unknown suffix names the ones we know."""
    suffix = Path(artifact).suffix.lower()
    for t in _TARGETS.values():
        if suffix in t.suffixes:
            return t
    known = [t.suffix for t in _TARGETS.values()]
    raise InputError(f"cannot tell which runtime runs {str(artifact)!r}: expected a {', '.join(known[:-1])} or "
                     f"{known[-1]} artifact")


def all_precisions() -> list[str]:
    return [p.value for p in Precision]


# ----------------------------------------------------------------------------------------- registrations
#
# Tolerances are measured, not chosen: each comment says on what and how much headroom the bound leaves.

register(Target(
    name="onnx", title="ONNX", suffix=".onnx", exporter_module="exporters.onnx",
    runtime="onnxruntime", runtime_module="edgehybrid.runtimes.onnxruntime", extra="onnx",
    probe_module="onnxruntime", device_package="onnxruntime", layout="NCHW",
    converter="torch.export + torch.onnx (dynamo)", requires_key="onnxruntime", requires_example="1.14",
    # 13 (per-axis QuantizeLinear) to 21, the newest whose ONNX Runtime release exporters/onnx_versions.py knows
    opsets=range(13, 22), per_op_timing=True,
    tolerances={
        # fp32, on the seven zoo models at batch 1 and 8: worst max-abs 1.1e-5 of max|logit| (mobilevitv2's
        # GroupNorm as InstanceNormalization sums in another order), so rtol 1e-4 leaves ~10x; a wrong op or
        # a dropped bias errs by 1e-2 or more. Cosine >= 0.9999999 seen; top-1 always agreed.
        Precision.FP32: Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999, min_top1_agreement=1.0),
        # fp16 compute: up to 2.0e-3 of max|logit| and cosine >= 0.999998; rtol 1e-2 leaves 5x. A near-tie
        # (closest top-2 gap 1.2e-3 with random weights) may flip: 0.85 tolerates one in eight images.
        Precision.FP16: Tolerance(atol=1e-3, rtol=1e-2, min_cosine=0.999, min_top1_agreement=0.85),
        Precision.INT8: INT8_TOLERANCE,
    },
))

register(Target(
    name="coreml", title="Core ML", suffix=".mlpackage", exporter_module="exporters.coreml",
    runtime="coreml", runtime_module="edgehybrid.runtimes.coreml", extra="coreml",
    probe_module="coremltools", device_package="coremltools", layout="NCHW",
    artifact_is_folder=True, other_suffixes=(".mlmodel",), platforms=("darwin",), runs_on="macOS",
    converter="coremltools from torch.export", requires_key="iOS", requires_example="iOS16",
    tolerances={
        # From the MIL reference evaluation of the seven zoo models (Core ML itself needs a Mac). fp32: <= 8.3e-7
        # of max|logit|; Core ML's kernels reorder sums and use fast transcendentals, so 1e-4 leaves > 100x.
        Precision.FP32: Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999, min_top1_agreement=1.0),
        # fp16: up to 2.4e-3 (mobilevitv2_050), cosine >= 0.999997; the Neural Engine may also accumulate in
        # fp16, which the evaluation does not model: rtol 3e-2 is 12x the worst seen. A flip must be heard.
        Precision.FP16: Tolerance(atol=1e-3, rtol=3e-2, min_cosine=0.999, min_top1_agreement=1.0),
        Precision.INT8: INT8_TOLERANCE,
        Precision.INT8_WEIGHTS: INT8_TOLERANCE,
    },
))

register(Target(
    name="tflite", title="TFLite", suffix=".tflite", exporter_module="exporters.tflite",
    runtime="litert", runtime_module="edgehybrid.runtimes.litert", extra="tflite",
    probe_module="ai_edge_litert", device_package="ai-edge-litert", layout="NHWC", converter="litert-torch",
    requires_key="tflite-runtime", requires_example="2.14",
    tolerances={
        # fp32, 7 reference models + recalibrated mobilenetv2/v3: worst 7.7e-6 of max|logit|, cosine 1 - 2e-11;
        # rtol 5e-5 is 6x the worst seen; a lowering or layout bug errs by > 1e-2.
        Precision.FP32: Tolerance(atol=1e-4, rtol=5e-5, min_cosine=0.99999, min_top1_agreement=1.0),
        # fp16 weights: worst 9.6e-3 and cosine 0.99996 (mobilenetv2: 50 layers of rounded weights); 3x headroom.
        Precision.FP16: Tolerance(atol=1e-3, rtol=3e-2, min_cosine=0.9995, min_top1_agreement=0.85),
        Precision.INT8: INT8_TOLERANCE,
    },
))

register(Target(
    name="executorch", title="ExecuTorch", suffix=".pte", exporter_module="exporters.executorch",
    runtime="executorch", runtime_module="edgehybrid.runtimes.executorch", extra="executorch",
    probe_module="executorch", device_package="executorch", layout="NCHW",
    converter="torch.export + ExecuTorch (XNNPACK delegate)", requires_key="executorch", requires_example="1.4",
    tolerances={
        # fp32 on XNNPACK, on both trained fixtures and random mobilevit_s / efficientformer_l1 (8 photos): worst
        # 1.5e-6 of max|logit| (mobilevit_s), so LiteRT's bound (the same XNNPACK kernels) leaves 30x.
        Precision.FP32: Tolerance(atol=1e-4, rtol=5e-5, min_cosine=0.99999, min_top1_agreement=1.0),
        # fp16 compute in XNNPACK's f16 kernels: worst 2.0e-3 of max|logit| and cosine >= 0.999997 on the two
        # fixtures and mobilevit_s, so ONNX's fp16 bound (5x headroom). Random-weight efficientformer_l1 came
        # out 14x max|logit| off (float16 overflow; PyTorch's own float16 stays within 0.1%): validation refuses it.
        Precision.FP16: Tolerance(atol=1e-3, rtol=1e-2, min_cosine=0.999, min_top1_agreement=0.85),
        Precision.INT8: INT8_TOLERANCE,
    },
))
