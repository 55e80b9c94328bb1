"""ONNX exporter: ``torch.export`` -> ``torch.onnx`` (dynamo) -> onnxsim / onnxslim -> ``onnx.checker``.

The artifact is one ``.onnx`` file with its weights inside, a static batch, an NCHW float32 input named
``input`` and float32 ``logits``. Only a model past protobuf's 2 GB limit gets its weights in a
``<name>.onnx.data`` file beside it (recorded in ``details``). ``fp16`` stores weights *and* computes in
float16 while keeping float32 I/O (a Cast at each end): ONNX Runtime runs it on CPU (its
InsertCastTransformer upcasts nodes that lack a float16 CPU kernel) and natively on GPU / NPU providers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from calibration.ops import OpKind, QuantPolicy
from edgehybrid.errors import ANSI_ESCAPE, EdgeHybridError, first_line
from edgehybrid.requires import Requirement
from exporters import onnx_rewrites, onnx_versions
from exporters.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    Artifact,
    Exporter,
    ExportOptions,
    Fp16Compute,
    Target,
    TensorInfo,
    get_target,
    quiet_converter,
    register,
    require,
    version_of,
)
from models_zoo.registry import ModelSpec

#: protobuf refuses to serialize a message of 2 GiB or more; leave headroom for the graph itself
_PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD_BYTES = 2**31 - 2**27
_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>")
_CALL_SITE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')
_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 2: "uint8", 3: "int8"}


class _ChannelsLastInput(nn.Module):
    """Takes NHWC images (only when ``channels_last=True`` is forced; NCHW is ONNX's convention)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


@register
class OnnxExporter(Exporter):
    """Exports to a single ONNX file validated with ONNX Runtime on CPU."""

    target: ClassVar[Target] = get_target("onnx")
    #: ONNX Runtime's QLinearSoftmax took 3.7 ms per inference on mobilevit_s against 0.5 ms for float Softmax
    #: (2 threads, ORT profiler): softmax stays float, fed by MatMulIntegerToFloat, and is quantized after.
    #: Linears always write int8: a linear on tokens exports as MatMul + bias Add, which ONNX Runtime's
    #: MatMulAddFusion turns into a float Gemm before its QDQ fusion can see it, so a float-output linear ran
    #: in float on weights dequantized every run (9 of 26 Gemms in conformer_kws). Measured, INT8 / FP32, same
    #: run: conformer_kws 0.74x -> 0.89x, mobilevit_s 1.27x -> 1.34x, efficientformer_l1 1.05x -> 1.14x,
    #: mobilevit_xxs at 64 px 0.67x -> 0.67x; cosine to FP32 unchanged.
    quant_policy: ClassVar[QuantPolicy] = QuantPolicy(
        float_kinds={OpKind.SOFTMAX}, float_output_kinds={OpKind.MATMUL}, fold_rescales=True,
        activation_storage="uint8 with zero point +128, for ONNX Runtime's u8s8 kernels")

    def check_available(self) -> None:
        """onnx and onnxscript are needed to convert (the simplifiers are optional: we fall back)."""
        require("onnx", self.extra, "ONNX export")
        require("onnxscript", self.extra, "ONNX export (torch.onnx's dynamo exporter)")

    def export(
        self, model: nn.Module, example: torch.Tensor, spec: ModelSpec, options: ExportOptions, out: Path
    ) -> Artifact:
        """Trace, convert, simplify and check ``model``; write ``out`` and describe it."""
        self.check_available()
        onnx = require("onnx", self.extra, "ONNX export")
        self.tolerance(options.precision)  # rejects an unknown precision before any work
        out = Path(out)
        timings: dict[str, float] = {}
        nhwc = bool(options.channels_last)
        module: nn.Module = model.eval()
        if options.precision == "fp16":
            module = Fp16Compute(module)
        if nhwc:
            module = _ChannelsLastInput(module)
        feed = example.permute(0, 2, 3, 1).contiguous() if nhwc else example
        layout = ("NHWC" if nhwc else "NCHW") if example.ndim == 4 else "none"  # audio: (N, samples) has no layout
        what = f"{spec.name} ({options.precision})"
        opset = onnx_versions.choose_opset(options)

        with _quiet():
            t = time.perf_counter()
            ep = _trace(module, feed, what)
            timings["trace"] = time.perf_counter() - t

            t = time.perf_counter()
            program = _convert(ep, feed, what, opset)
            timings["convert"] = time.perf_counter() - t
            onnx_versions.check_opset(program, opset, what)

            weight_bytes = sum(
                v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None
            )
            details: dict = {"batch": int(feed.shape[0]), "external_data": weight_bytes > EXTERNAL_DATA_THRESHOLD_BYTES}
            program.model.metadata_props.update(_metadata(spec, options, layout))
            pinned = options.opset is not None  # the user's opset is kept; otherwise the lowest that holds it
            if details["external_data"]:
                mp = _write_external(onnx, program, out, what, details, timings)
            elif options.precision == "int8":
                mp = _write_int8(onnx, program.model_proto, out, what, details, timings, pinned)
            else:
                mp = _write_single(onnx, program.model_proto, out, what, details, timings, pinned=pinned)

        ops = Counter(n.op_type for n in mp.graph.node)
        details.update(
            opset=onnx_versions.default_opset(mp),
            opset_converted_at=opset,
            ir_version=mp.ir_version,
            nodes=len(mp.graph.node),
            op_types=dict(ops.most_common()),
            weight_dtypes=dict(Counter(_ONNX_DTYPES.get(i.data_type, str(i.data_type)) for i in mp.graph.initializer)),
            weight_bytes=weight_bytes,
            input_layout=layout,
            compute_dtype="float16" if options.precision == "fp16" else "float32",
        )
        versions = {
            "torch": torch.__version__,
            "onnx": version_of("onnx"),
            "onnxscript": version_of("onnxscript"),
            "onnxruntime": version_of("onnxruntime"),
        }
        if details["simplifier"] != "none":
            versions[details["simplifier"]] = version_of(details["simplifier"])
        return Artifact(
            path=out,
            target=self.name,
            precision=options.precision,
            inputs=[_tensor_info(v, layout=layout) for v in mp.graph.input],
            outputs=[_tensor_info(v) for v in mp.graph.output],
            versions=versions,
            details=details,
            timings_s={k: round(v, 4) for k, v in timings.items()},
        )


    def requires(self, artifact: Artifact) -> list[Requirement]:
        """ONNX Runtime's first release implementing the opset and IR version the file declares."""
        import onnx

        mp = onnx.load(str(artifact.path), load_external_data=False)
        opset = onnx_versions.default_opset(mp)
        return [Requirement("onnxruntime", onnx_versions.ort_requirement(opset, mp.ir_version),
                            f"opset {opset}, IR version {mp.ir_version}")]


def _write_single(onnx, mp, out: Path, what: str, details: dict, timings: dict, no_simplify: str = "",
                  pinned: bool = False, reorder_gelu: bool = True):
    """Simplify (unless ``no_simplify`` gives the reason not to), reorder GELU for ONNX Runtime's fusion (unless
    the caller rewrote it already), declare the lowest opset (unless ``pinned``) and IR version that hold it,
    check and save as one self-contained file; returns the final ModelProto."""
    details["nodes_before_simplify"] = len(mp.graph.node)
    if no_simplify:
        simplified, simplifier, reason = mp, "none", no_simplify
    else:
        t = time.perf_counter()
        simplified, simplifier, reason = _simplify(mp)
        if simplifier != "none" and simplified.ByteSize() >= _PROTOBUF_LIMIT:
            # constant folding can inflate a model near the limit; the unsimplified one still fits
            simplified, reason = mp, f"{simplifier}'s output exceeds protobuf's 2 GB limit"
            simplifier = "none"
        timings["simplify"] = time.perf_counter() - t
        _set_metadata(simplified, {p.key: p.value for p in mp.metadata_props})  # in case a simplifier dropped it
    details["simplifier"] = simplifier
    if reason:
        details["simplifier_reason"] = reason
    if reorder_gelu:
        details["gelu_for_onnxruntime"] = {"reordered": onnx_rewrites.gelu_for_ort(simplified, fused=False)}
    onnx_versions.stamp_lowest(simplified, keep_opset=pinned)
    t = time.perf_counter()
    _check(onnx, simplified, what)
    timings["check"] = time.perf_counter() - t
    t = time.perf_counter()
    onnx.save(simplified, str(out))
    timings["save"] = time.perf_counter() - t
    return simplified


def _write_int8(onnx, mp, out: Path, what: str, details: dict, timings: dict, pinned: bool):
    """QDQ model rewritten for ONNX Runtime's integer kernels (``exporters.onnx_rewrites``), saved like any other
    but not simplified; records what ONNX Runtime fuses it into."""
    t = time.perf_counter()
    details["uint8_activation_edges"] = onnx_rewrites.uint8_activations(mp)
    details["integer_hardswish"] = onnx_rewrites.integer_hardswish(mp)
    details["gelu_for_onnxruntime"] = {"com.microsoft.Gelu": onnx_rewrites.gelu_for_ort(mp, fused=True)}
    timings["int8_rewrites"] = time.perf_counter() - t
    mp = _write_single(onnx, mp, out, what, details, timings,
                       no_simplify="int8: a simplifier would fold int8 weights back to float", pinned=pinned,
                       reorder_gelu=False)
    t = time.perf_counter()
    details["onnxruntime_optimized_ops"] = onnx_rewrites.ort_optimized_ops(out)
    timings["inspect"] = time.perf_counter() - t
    return mp


def _write_external(onnx, program, out: Path, what: str, details: dict, timings: dict):
    """Past protobuf's 2 GB limit: weights go to ``<out>.data``. The simplifiers serialize the model whole,
    so they cannot run; the checker reads the file from its path (the form that supports external data)."""
    t = time.perf_counter()
    # the graph is past protobuf's limit, so the IR version is set on the in-memory model (opset as converted)
    program.model.ir_version = onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid(d, v) for d, v in program.model.opset_imports.items()], True)
    program.save(out, external_data=True)
    timings["save"] = time.perf_counter() - t
    details.update(simplifier="none", simplifier_reason="model exceeds protobuf's 2 GB limit")
    details["external_data_file"] = f"{out.name}.data"
    t = time.perf_counter()
    _check(onnx, str(out), what)
    timings["check"] = time.perf_counter() - t
    return onnx.load(str(out), load_external_data=False)


def _trace(module: nn.Module, feed: torch.Tensor, what: str):
    """torch.export the module; its failures (data-dependent control flow ...) become one line."""
    try:
        # on failure torch.export prints the partial FX graph straight to sys.stderr: noise for a CLI user
        # (the graph stays reachable from the chained exception under --debug)
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            return _keep_module_paths(module, torch.export.export(module, (feed,)))
    except Exception as exc:  # noqa: BLE001 - every torch.export failure is reported the same way
        text = str(exc)
        call = _CALL_SITE.search(text[text.find("The following call raised this error") :])
        at = f" (at {call.group(1)}:{call.group(2)} in {call.group(3)})" if call else ""
        raise EdgeHybridError(
            f"torch.export could not trace {what}, so no ONNX graph can be built: {_first_line(exc)}{at}; "
            "the model must be traceable without data-dependent Python control flow"
        ) from exc


def _keep_module_paths(module: nn.Module, ep):
    """An INT8 plan arrives as a converted ``GraphModule`` whose nodes still say which module of the model they
    were called in; tracing it again would record only the GraphModule itself. Carry each node's original
    module path over (nodes keep their names), so the ONNX graph's name scopes, and with them ``profile
    --per-op``'s attention / convolution split, hold for INT8 artifacts too."""
    known = {}
    for sub in module.modules():
        if isinstance(sub, torch.fx.GraphModule):
            known.update({n.name: n.meta["nn_module_stack"] for n in sub.graph.nodes
                          if len(n.meta.get("nn_module_stack") or {}) > 0})
    if known:
        for node in ep.graph.nodes:
            stack = known.get(node.name)
            if stack is not None:
                node.meta["nn_module_stack"] = dict(stack)
    return ep


def _convert(ep, feed: torch.Tensor, what: str, opset: int):
    """ExportedProgram -> ONNXProgram at ``opset``, I/O named per the contract."""
    try:
        return torch.onnx.export(
            ep,
            (feed,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            external_data=False,
            optimize=True,
            verbose=False,
            report=False,
        )
    except Exception as exc:  # noqa: BLE001 - translated into one actionable line below
        match = _NO_FUNCTION.search(str(exc))
        if match is None:
            raise EdgeHybridError(f"ONNX conversion of {what} failed in torch.onnx: {_first_line(exc)}") from exc
        op = f"{match.group(1)}.{match.group(2)}"
        raise EdgeHybridError(
            f"ONNX conversion of {what} failed: torch.onnx has no ONNX translation for operator {op}"
            f"{_where(ep, op)}; replace that operation in the model with supported ones, or try --target "
            "coreml / tflite"
        ) from exc


def _where(ep, op: str) -> str:
    """' (in module PATH (Class))' for the first node calling ``op``, else ''.

    torch.onnx decomposes the graph before translating, so the failing op may only exist after
    decomposition (linalg_eigvals -> linalg_eig); nn_module_stack survives decomposition.
    """
    base = op.rsplit(".", 1)[0]  # aten.linalg_eig
    try:
        graphs = [ep.graph]
        with contextlib.suppress(Exception):
            graphs.append(ep.run_decompositions().graph)
        for graph in reversed(graphs):
            for node in graph.nodes:
                target = str(node.target)
                if node.op == "call_function" and (target == op or target.startswith(base + ".")):
                    stack = node.meta.get("nn_module_stack") or {}
                    if stack:
                        path, cls = list(stack.values())[-1]
                        cls_name = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
                        return f" (in module {path or '<root>'!r} of type {cls_name})"
    except Exception:  # noqa: BLE001 - locating the module is best effort; the op name is what matters
        pass
    return ""


def _simplify(mp):
    """onnxsim with shape inference, else onnxslim, else the model as exported: (model, name, reason)."""
    reasons = []
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(mp, skip_shape_inference=False)
        if ok:
            return simplified, "onnxsim", ""
        reasons.append("onnxsim: its output check failed")
    except Exception as exc:  # noqa: BLE001 - any simplifier failure falls through to the next one
        reasons.append(f"onnxsim: {_first_line(exc)}")
    try:
        import onnxslim

        return onnxslim.slim(mp), "onnxslim", "; ".join(reasons)
    except Exception as exc:  # noqa: BLE001
        reasons.append(f"onnxslim: {_first_line(exc)}")
    return mp, "none", "; ".join(reasons)


def _check(onnx, model, what: str) -> None:
    """onnx.checker with full (strict shape-inference) checks; a failure is a converter bug worth a line."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise EdgeHybridError(f"the ONNX graph exported for {what} fails onnx.checker: {_first_line(exc)}") from exc


def _metadata(spec: ModelSpec, options: ExportOptions, layout: str) -> dict[str, str]:
    """Model metadata a deployer (and our runtime) can read back: layout, preprocessing, precision."""
    import json

    return {
        "edgehybrid.model": spec.name,
        "edgehybrid.precision": options.precision.value,
        "edgehybrid.input_layout": layout,
        "edgehybrid.normalize_in_graph": str(bool(options.normalize_in_graph)).lower(),
        "edgehybrid.preprocessing": json.dumps(spec.preprocessing.to_dict()),
    }


def _set_metadata(mp, props: dict[str, str]) -> None:
    """Set ``props`` on a ModelProto, keeping any other keys it has."""
    keep = [(p.key, p.value) for p in mp.metadata_props if p.key not in props]
    del mp.metadata_props[:]
    for key, value in keep + list(props.items()):
        mp.metadata_props.add(key=key, value=value)


def _tensor_info(value, layout: str | None = None) -> TensorInfo:
    """TensorInfo read from a graph input/output (dynamic dims, which we never emit, read as -1)."""
    tt = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    return TensorInfo(
        name=value.name,
        shape=shape,
        dtype=_ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)),
        layout=layout if len(shape) == 4 else None,
    )


def _first_line(exc: BaseException) -> str:
    """Like :func:`first_line`, but prefers torch.onnx's "## Exception summary" line when there is one."""
    for line in ANSI_ESCAPE.sub("", str(exc)).splitlines():
        if line.startswith("<class ") and ">: " in line:
            return line.split(">: ", 1)[1][:300]
    return first_line(exc)


_QUIET_LOGGERS = (
    "torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes", "onnxscript", "onnx_ir"
)


def _quiet():
    """torch.onnx's and onnxscript's logs and prints kept off stdout for the duration."""
    return quiet_converter(_QUIET_LOGGERS, logging.CRITICAL)