"""ONNX Runtime on CPU: runs ``.onnx`` artifacts the way a CPU deployment would, reproducibly.

Sessions use the CPU execution provider, ``intra_op_num_threads=threads``, one inter-op thread and
sequential execution (parallel execution only helps branchy graphs and makes timings noisy), with every
graph optimization ORT has (``ORT_ENABLE_ALL``: the level a deployment uses, so validation covers the
fusions it will run). Inputs and outputs are read from the session, never assumed.

Kernels: ``fused`` (the default above: QDQ pairs fused into int8 kernels such as QLinearConv) or ``unfused``
(``ORT_DISABLE_ALL``: every QuantizeLinear / DequantizeLinear runs as written, around float kernels). The same
file run both ways shows how much of an INT8 model's output its integer kernels' rounding decides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgehybrid.errors import EdgeHybridError, InputError, UnknownNameError
from edgehybrid.runtimes import checked_feeds
from exporters.base import TensorInfo, require

KERNELS = ("fused", "unfused")

# ONNX Runtime's type strings -> numpy dtype names (TensorInfo.dtype)
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class OnnxSession:
    """One loaded artifact: ``inputs`` / ``outputs`` as TensorInfo, ``run(feeds) -> {name: ndarray}``."""

    def __init__(self, path: Path, threads: int, kernels: str = "fused"):
        ort = require("onnxruntime", "onnx", "Running ONNX artifacts")
        if kernels not in KERNELS:
            raise UnknownNameError.for_choice("ONNX Runtime kernels", kernels, KERNELS)
        level = "ORT_ENABLE_ALL" if kernels == "fused" else "ORT_DISABLE_ALL"
        self.kernels = kernels
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a folder, not an .onnx file" if self.path.is_dir() else "does not exist"
            raise InputError(f"ONNX artifact {str(self.path)!r} {what}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.log_severity_level = 3  # errors only: ORT's warnings (e.g. fp16 casts inserted) are not ours
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several pybind types for bad files
            raise InputError(
                f"ONNX Runtime cannot load {str(self.path)!r}: not a valid ONNX model, or one whose weights "
                f"file is missing ({_short(exc)}); re-export it"
            ) from exc
        meta = self._session.get_modelmeta().custom_metadata_map
        layout = meta.get("edgehybrid.input_layout")
        self.inputs = [_info(a, layout) for a in self._session.get_inputs()]
        self.outputs = [_info(a, None) for a in self._session.get_outputs()]
        self.metadata = dict(meta)
        self.details = {
            "provider": self._session.get_providers()[0],
            "graph_optimization_level": level,
            "execution_mode": "ORT_SEQUENTIAL",
            "intra_op_num_threads": int(threads),
            "inter_op_num_threads": 1,
            "onnxruntime": ort.__version__,
        }
        if "edgehybrid.preprocessing" in meta:
            try:
                self.details["preprocessing"] = json.loads(meta["edgehybrid.preprocessing"])
            except ValueError:
                pass

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; feeds are checked against the artifact's names and static shapes first."""
        arrays = checked_feeds("the ONNX model", self.path.name, self.inputs, feeds)
        for info in self.inputs:
            # ORT does not convert dtypes; a float64 or uint8 image is cast rather than refused
            dtype = info.dtype if info.dtype in _DTYPES.values() else None
            arrays[info.name] = np.ascontiguousarray(arrays[info.name], dtype=dtype)
        try:
            results = self._session.run(None, arrays)
        except Exception as exc:  # noqa: BLE001 - an ORT kernel failure, reported in one line
            raise EdgeHybridError(f"ONNX Runtime failed running {self.path.name}: {_short(exc)}") from exc
        return {info.name: value for info, value in zip(self.outputs, results)}


class OnnxRuntime:
    """The ``onnxruntime`` runtime: loads ``.onnx`` files into :class:`OnnxSession`."""

    name = "onnxruntime"
    extra = "onnx"
    threads_per_session = True

    kernels = KERNELS

    def load(self, artifact: Path, threads: int = 2, kernels: str = "fused") -> OnnxSession:
        return OnnxSession(Path(artifact), threads, kernels)


def _info(arg, layout: str | None) -> TensorInfo:
    # dynamic dims come back as strings or None: -1 means "any" to run()'s shape check
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    if len(shape) == 4 and layout is None:
        # no edgehybrid metadata (a foreign .onnx): the channel axis tells NCHW from NHWC for images
        layout = "NHWC" if shape[-1] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
    return TensorInfo(
        name=arg.name,
        shape=shape,
        dtype=_DTYPES.get(arg.type, arg.type),
        layout=layout if len(shape) == 4 else None,
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


RUNTIME = OnnxRuntime()
