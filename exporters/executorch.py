"""ExecuTorch exporter: ``torch.export`` -> ``to_edge_transform_and_lower`` (XNNPACK partitioner) -> ``.pte``.

The artifact is one ``.pte`` program with a ``forward`` method: NCHW float32 ``input`` -> float32 ``logits``,
static batch. What XNNPACK takes runs in its delegate; anything else runs on ExecuTorch's portable kernels,
which are reference implementations and slow, so the partition is recorded in ``details["delegation"]``
(per operator: delegated / portable) and every portable op is named in ``details["warnings"]``.

* ``fp16``: the model computes in float16 behind float32 I/O (a cast at each end), on XNNPACK's f16 kernels.
* ``int8``: the graph handed in is the one calibrated plan's (``calibration.quantize.finalize``), lowered as is:
  no second calibration. XNNPACK fuses each dequantize -> op -> quantize into its int8 kernel; the plan's float
  layers stay float (visible as float ops in the delegation report).

The converter is imported lazily (about 5 s): importing this module costs nothing.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from calibration.annotate import torchao
from calibration.ops import UNWEIGHTED, QuantPolicy
from edgehybrid.errors import EdgeHybridError, MissingBackendError, first_line
from edgehybrid.requires import Requirement
from exporters.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    Artifact,
    Exporter,
    ExportOptions,
    Fp16Compute,
    Precision,
    Target,
    TensorInfo,
    get_target,
    quiet_converter,
    register,
    version_of,
)
from models_zoo.registry import ModelSpec

#: graph bookkeeping that is neither delegated nor a kernel: not worth a warning
_BOOKKEEPING = {"alloc", "getitem", "output", "placeholder"}
_OP_NAME = re.compile(r"(?:aten|quantized_decomposed|dim_order_ops)[._:]+([A-Za-z0-9_]+)")


@register
class ExecuTorchExporter(Exporter):
    """Exports a ``.pte`` lowered to XNNPACK, validated on the ExecuTorch Python runtime."""

    target: ClassVar[Target] = get_target("executorch")
    #: as on LiteRT (XNNPACK is LiteRT's CPU path too): the weighted kinds run int8, every other kind stays
    #: float behind a dequantize of the conv's int8 output; an int8 kernel writes int8, weights stored folded
    quant_policy: ClassVar[QuantPolicy] = QuantPolicy(float_kinds=UNWEIGHTED, fold_quantize=True)

    def check_available(self) -> None:
        for module in ("executorch", "executorch.exir"):
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                raise MissingBackendError(module, self.extra, "ExecuTorch export")

    def export(
        self, model: nn.Module, example: torch.Tensor, spec: ModelSpec, options: ExportOptions, out: Path
    ) -> Artifact:
        self.check_available()
        self.tolerance(options.precision)  # rejects an unsupported precision before any work
        if options.channels_last:
            raise EdgeHybridError("ExecuTorch artifacts take NCHW input; drop channels_last")
        out = Path(out)
        module = Fp16Compute(model.eval()) if options.precision is Precision.FP16 else model.eval()
        what = f"{getattr(spec, 'name', 'model')} ({options.precision})"
        timings: dict[str, float] = {}
        with quiet_converter(("executorch", "torch")):
            t = time.perf_counter()
            torchao()  # executorch imports it: its optional-kernel noise stays off the terminal
            from executorch.exir import to_edge_transform_and_lower

            timings["import"] = time.perf_counter() - t
            t = time.perf_counter()
            try:
                ep = torch.export.export(module, (example,))
            except Exception as exc:
                raise EdgeHybridError(f"torch.export could not capture {what} for ExecuTorch: {first_line(exc)}") from exc
            timings["trace"] = time.perf_counter() - t
            t = time.perf_counter()
            try:
                edge = to_edge_transform_and_lower(ep, partitioner=[xnnpack_partitioner()])
            except Exception as exc:
                raise EdgeHybridError(_lowering_error(exc, ep, what)) from exc
            timings["lower"] = time.perf_counter() - t
            t = time.perf_counter()
            try:
                program = edge.to_executorch()
            except Exception as exc:
                raise EdgeHybridError(_lowering_error(exc, ep, what)) from exc
            timings["to_executorch"] = time.perf_counter() - t
            delegation = delegation_report(edge.exported_program().graph_module)
        with open(out, "wb") as fh:
            fh.write(program.buffer)
        portable = delegation["portable_ops"]
        details = {
            "backend": "XnnpackBackend", "batch": int(example.shape[0]), "delegation": delegation,
            "warnings": [f"{sum(portable.values())} op(s) run on ExecuTorch's portable kernels, outside XNNPACK (slow): "
                         + ", ".join(f"{op} x{c}" for op, c in portable.items())] if portable else [],
        }
        n = int(example.shape[0])
        num_classes = int(spec.num_classes) if spec is not None else -1
        return Artifact(
            path=out, target=self.name, precision=options.precision,
            inputs=[TensorInfo(INPUT_NAME, tuple(int(d) for d in example.shape), "float32",
                               "NCHW" if example.ndim == 4 else None)],
            outputs=[TensorInfo(OUTPUT_NAME, (n, num_classes), "float32")],
            versions={"executorch": version_of("executorch")}, details=details, timings_s=timings,
        )

    def requires(self, artifact: Artifact) -> list[Requirement]:
        """The ExecuTorch release that wrote the file, or a later one: ExecuTorch runtimes load programs of
        their own release and older (1.0's compatibility promise), not newer. A .pte does not record its
        writer, so the writer's release is the one fact not read from the file; its schema identifier is."""
        with open(artifact.path, "rb") as fh:
            identifier = fh.read(8)[4:8].decode("ascii", "replace")
        release = ".".join(version_of("executorch").split(".")[:2])
        return [Requirement("executorch", release, f"written by ExecuTorch {version_of('executorch')} "
                            f"(program schema {identifier})")]


def xnnpack_partitioner():
    """XNNPACK's partitioner with every op config, except that a softmax fed (through elementwise ops) by a
    convolution stays out of the delegate.

    ExecuTorch 1.4.1's XNNPACK delegate keeps a convolution's output channels-last and runs the softmax after
    it over the innermost axis of that layout, the channels, instead of the last axis of the NCHW tensor:
    ``conv1x1(x).softmax(-1)`` came out 2.8x max|y| off (EfficientFormerV2's talking-head attention, 9.6% of
    max|logit| on the trained fixture). Outside the delegate the softmax gets NCHW input and is exact."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import SoftmaxConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class LastAxisSoftmaxConfig(SoftmaxConfig):
        def check_constraints(self, node, ep) -> bool:
            return super().check_constraints(node, ep) and not fed_by_conv(node)

    return XnnpackPartitioner(configs=[LastAxisSoftmaxConfig if c is SoftmaxConfig else c
                                       for c in ALL_PARTITIONER_CONFIGS])


#: ops that keep their input's layout inside the delegate (a channels-last tensor stays channels-last)
_LAYOUT_KEEPING = ("add", "mul", "sub", "div", "relu", "hardtanh", "clamp", "gelu", "sigmoid", "tanh",
                   "hardswish", "quantize_per_tensor", "dequantize_per_tensor", "_to_copy", "clone")


def fed_by_conv(node, depth: int = 12) -> bool:
    """Whether a convolution's output reaches ``node`` through layout-keeping ops only."""
    for src in node.all_input_nodes:
        name = str(getattr(src, "target", ""))
        if "convolution" in name:
            return True
        if depth and src.op == "call_function" and any(op in name for op in _LAYOUT_KEEPING):
            if fed_by_conv(src, depth - 1):
                return True
    return False


def delegation_report(graph_module) -> dict:
    """What runs in XNNPACK and what falls back to the portable kernels, per operator."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    by_op: dict[str, dict[str, int]] = {}
    for name, row in info.delegation_by_operator.items():
        op = _short_op(name)
        if op in _BOOKKEEPING:
            continue
        entry = by_op.setdefault(op, {"delegated": 0, "portable": 0})
        entry["delegated"] += int(row.delegated)
        entry["portable"] += int(row.non_delegated)
    portable = Counter({op: e["portable"] for op, e in by_op.items() if e["portable"]})
    quantized = by_op.pop("dequantize_per_channel", {"delegated": 0, "portable": 0})
    for op in [o for o in by_op if o.startswith(("quantize_per", "dequantize_per"))]:
        by_op.pop(op)  # the quantize / dequantize pairs XNNPACK folds into its int8 kernels: not ops that run
    return {
        # one per-channel weight dequantize per convolution / linear that runs int8: the plan's float layers
        # are the weighted ops this count leaves out
        "int8_weighted_ops": {"delegated": quantized["delegated"], "portable": quantized["portable"]},
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_nodes": int(info.num_delegated_nodes),
        "portable_nodes": sum(portable.values()),
        "portable_ops": dict(portable.most_common()),
        "by_operator": dict(sorted(by_op.items())),
    }


def _short_op(name: str) -> str:
    m = _OP_NAME.search(name)
    op = m.group(1) if m else name
    return re.sub(r"_(default|Tensor|int|dim|out|Scalar|tensor)$", "", op)


_EDGE_OP = re.compile(r"(?:EdgeOpOverload: |OpOverload\(op=')?\b((?:aten|quantized_decomposed)\.\w+(?:\.\w+)?)")


def _lowering_error(exc: BaseException, ep, what: str) -> str:
    """One line naming the op that could not be lowered and, where the graph says, the module it came from."""
    text = str(exc)
    head = first_line(exc)
    named = [m.group(1) for m in _EDGE_OP.finditer(text)]
    for node in ep.graph.nodes:
        target = str(getattr(node, "target", ""))
        if node.op != "call_function" or not any(n == target or target.startswith(n + ".") for n in named):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        module = (list(stack.values())[-1][0] if stack else "") or "<root>"
        return (f"ExecuTorch cannot lower {what}: op {target} in module '{module}' ({head.rstrip(':')}); "
                "keep that layer in float with --float-layers, change the op, or export to another target")
    return f"ExecuTorch cannot lower {what}: {head}"
