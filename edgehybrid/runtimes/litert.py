"""LiteRT (TFLite) runtime: runs ``.tflite`` artifacts on the CPU interpreter.

Uses ai-edge-litert's ``Interpreter`` (the maintained package), or the older ``tflite_runtime`` where that
is what is installed; the session records which in :attr:`LiteRTSession.backend`. Inputs and outputs are
read from the artifact: from its first signature when it has one (names like ``input`` / ``logits``), from
the interpreter's tensor details otherwise.

Kernels: ``xnnpack`` (the default: the interpreter applies its XNNPACK delegate, as deployments on Android
and desktop CPUs do) or ``builtin`` (TFLite's own kernels, no delegate: what a device without XNNPACK runs).
The two compute int8 ops with different integer rounding; running one file both ways measures how much of an
INT8 model's output is decided by kernel arithmetic rather than by its quantization plan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehybrid.console import native_stderr_quiet
from edgehybrid.errors import EdgeHybridError, InputError, MissingBackendError, UnknownNameError
from exporters.base import TensorInfo, version_of

EXTRA = "tflite"
KERNELS = ("xnnpack", "builtin")


def _interpreter_module() -> tuple[object, str]:
    """The interpreter module and the package it came from (name and version)."""
    try:
        from ai_edge_litert import interpreter

        return interpreter, f"ai-edge-litert {version_of('ai-edge-litert')}"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter

        return interpreter, f"tflite-runtime {version_of('tflite-runtime')}"
    except ImportError as exc:
        raise MissingBackendError("ai_edge_litert", EXTRA, "Running a TFLite model") from exc


def _kernel_options(module, kernels: str) -> dict:
    """Interpreter keyword arguments for ``kernels`` (see the module docstring)."""
    if kernels not in KERNELS:
        raise UnknownNameError.for_choice("LiteRT kernels", kernels, KERNELS)
    if kernels == "xnnpack":
        return {}
    resolver = getattr(module, "OpResolverType", None)
    if resolver is None:
        raise InputError("this LiteRT interpreter cannot run without its default delegate (no OpResolverType); "
                         "install ai-edge-litert for builtin kernels")
    return {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


def _layout(shape: tuple[int, ...]) -> str | None:
    """Image layout of a 4-D input, from where its colour axis (1 or 3 channels) sits; None if unclear."""
    if len(shape) != 4:
        return None
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if last and not first:
        return "NHWC"
    if first and not last:
        return "NCHW"
    return None


def _info(detail: dict, name: str, image: bool) -> TensorInfo:
    shape = tuple(int(d) for d in detail["shape"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantized = bool(scale)  # the interpreter reports scale 0.0 for float tensors
    return TensorInfo(
        name=name,
        shape=shape,
        dtype=np.dtype(detail["dtype"]).name,
        layout=_layout(shape) if image else None,
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )


def _dequantized(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    """An int8 output as the real values it stands for (float32); float outputs unchanged."""
    if info.scale is None or array.dtype.kind == "f":
        return array
    return ((array.astype(np.float32) - info.zero_point) * np.float32(info.scale)).astype(np.float32)


class LiteRTSession:
    """One loaded ``.tflite`` model; ``run({name: array}) -> {name: array}``.

    A full-integer model (int8 input and output) takes float inputs, quantized with the input's scale and
    zero point (raw integer arrays pass through), and returns its outputs dequantized to float32.
    """

    def __init__(self, path: Path, threads: int = 2, kernels: str = "xnnpack"):
        module, self.backend = _interpreter_module()
        options = _kernel_options(module, kernels)
        self.kernels = kernels
        path = Path(path)
        if not path.is_file():
            raise InputError(f"TFLite model {str(path)!r} does not exist or is not a file")
        try:
            with native_stderr_quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self._interpreter = module.Interpreter(model_path=str(path), num_threads=max(1, int(threads)),
                                                       **options)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise InputError(f"cannot load TFLite model {str(path)!r}: not a valid .tflite file ({reason})") from exc
        self.path = path
        signatures = self._interpreter.get_signature_list() if hasattr(self._interpreter, "get_signature_list") else {}
        self.signature: str | None = next(iter(signatures), None)
        if self.signature is not None:
            self._runner = self._interpreter.get_signature_runner(self.signature)
            in_details = self._runner.get_input_details()
            out_details = self._runner.get_output_details()
            self.inputs = [_info(d, n, image=True) for n, d in in_details.items()]
            self.outputs = [_info(d, n, image=False) for n, d in out_details.items()]
        else:
            # a bare flatbuffer (no SignatureDef): address tensors by index, name them as the file does
            self._runner = None
            self._in_index = {d["name"]: d["index"] for d in self._interpreter.get_input_details()}
            self._out_index = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
            self.inputs = [_info(d, d["name"], image=True) for d in self._interpreter.get_input_details()]
            self.outputs = [_info(d, d["name"], image=False) for d in self._interpreter.get_output_details()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` must name every input, with its exact shape (the batch is static)."""
        expected = {i.name: i for i in self.inputs}
        unknown = sorted(set(feeds) - set(expected))
        missing = sorted(set(expected) - set(feeds))
        if unknown or missing:
            raise InputError(
                f"TFLite model {self.path.name!r} takes inputs {sorted(expected)}, "
                f"was given {sorted(feeds)}" + (f" (missing {missing})" if missing else "")
            )
        arrays = {}
        for name, info in expected.items():
            array = np.asarray(feeds[name])
            if tuple(array.shape) != info.shape:
                layout = f" {info.layout}" if info.layout else ""
                raise InputError(
                    f"input {name!r} of {self.path.name!r} must have shape {list(info.shape)}{layout}, "
                    f"got {list(array.shape)}"
                )
            want = np.dtype(info.dtype)
            if info.scale is not None and array.dtype.kind == "f":
                # a full-integer model: float values are quantized with the input's own scale / zero point
                info_range = np.iinfo(want)
                array = np.clip(np.round(array / info.scale) + info.zero_point, info_range.min,
                                info_range.max).astype(want)
            elif array.dtype != want:
                # float64 -> float32 is what callers mean; anything that changes kind is a mistake
                if array.dtype.kind != want.kind and not (array.dtype.kind in "iu" and want.kind in "iu"):
                    raise InputError(f"input {name!r} must be {info.dtype}, got {array.dtype.name}")
                array = array.astype(want)
            arrays[name] = np.ascontiguousarray(array)
        try:
            if self._runner is not None:
                outs = self._runner(**arrays)
                return {o.name: _dequantized(np.asarray(outs[o.name]), o) for o in self.outputs}
            for name, array in arrays.items():
                self._interpreter.set_tensor(self._in_index[name], array)
            self._interpreter.invoke()
            return {o.name: _dequantized(self._interpreter.get_tensor(self._out_index[o.name]), o) for o in self.outputs}
        except (ValueError, RuntimeError) as exc:
            raise EdgeHybridError(f"LiteRT failed to run {self.path.name!r}: {' '.join(str(exc).split())}") from exc


class LiteRTRuntime:
    """The ``litert`` runtime: :meth:`load` returns a :class:`LiteRTSession`."""

    name = "litert"
    extra = EXTRA
    threads_per_session = True

    kernels = KERNELS

    def load(self, artifact: Path, threads: int = 2, kernels: str = "xnnpack") -> LiteRTSession:
        return LiteRTSession(Path(artifact), threads, kernels)


RUNTIME = LiteRTRuntime()
