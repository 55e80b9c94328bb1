"""TFLite exporter: PyTorch -> ``.tflite`` through litert-torch (torch.export -> StableHLO -> LiteRT converter).

The artifact has one signature, ``serving_default``, whose input is ``input`` and output ``logits``. The
input is NHWC by default, because that is the layout TFLite users and image pipelines on phones feed;
``ExportOptions.channels_last=False`` keeps NCHW. The NCHW->NHWC transpose lives in the wrapper below, so
the converter sees it and folds it into the first convolution's layout (TFLite kernels are NHWC anyway).
The batch is static (the example's). ``fp16`` stores the conv / depthwise-conv / fully-connected weights
as float16 with DEQUANTIZE ops in front (ai-edge-quantizer's float-casting recipe, the same one
``litert_torch.generative.quantize.quant_recipes.full_fp16_recipe`` builds): half the file size; LiteRT's
CPU path (XNNPACK) runs it in float32, or float16 where the CPU has native float16 arithmetic.

litert-torch is imported lazily (~5 s, ~500 MB): importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from calibration.ops import UNWEIGHTED, OpKind, QuantPolicy
from edgehybrid.errors import EdgeHybridError, InputError, MissingBackendError, first_line
from edgehybrid.requires import Requirement
from exporters.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    Artifact,
    Exporter,
    ExportOptions,
    Target,
    TensorInfo,
    get_target,
    quiet_converter,
    register,
    require,
    version_of,
)
from models_zoo.registry import ModelSpec

SIGNATURE = "serving_default"  # litert-torch's default signature key, what TFLite tooling looks up first

class _Signature(nn.Module):
    """The exported graph: named input ``input`` (NHWC or NCHW), dict output ``{"logits": ...}``.

    litert-torch names signature inputs after forward()'s parameters and outputs after the dict's keys.
    """

    def __init__(self, model: nn.Module, nhwc: bool):
        super().__init__()
        self.model = model
        self.nhwc = nhwc

    def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002  the signature's input name
        x = input.permute(0, 3, 1, 2) if self.nhwc else input
        return {OUTPUT_NAME: self.model(x)}


@register
class TFLiteExporter(Exporter):
    """PyTorch -> TFLite via litert-torch; validated on LiteRT's interpreter (``edgehybrid.runtimes.litert``)."""

    target: ClassVar[Target] = get_target("tflite")
    #: LiteRT runs the weighted ops (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) from the plan in int8, and the
    #: two halves of a split SiLU / GLU (LOGISTIC, MUL); every other kind stays float, fed by a DEQUANTIZE of an
    #: int8 output. XNNPACK's int8 kernels for the rest, and the QUANTIZE / DEQUANTIZE they add at each float
    #: boundary, measured slower than float (2 threads, alternating runs, one process): efficientformer_l1 2.29x
    #: FP32 this way against 1.82x with add / layer_norm / gelu / pooling in int8 and 2.00x for litert-torch's
    #: default recipe; with every kind in int8 mobilevit_s ran at 0.57x. The SiLU is the exception: in float it
    #: is DEQUANTIZE -> LOGISTIC -> MUL -> QUANTIZE on every conv's output, in int8 two byte-wide kernels.
    #: mobilevit_s: 15.1 ms against 25.8 ms with the SiLU in float and 26.3 ms for litert-torch's recipe
    #: (FP32 34.4 ms; cosine to FP32 0.99943 against 0.99944); mobilevit_xxs.cifar10 at 64 px 1.39x FP32
    #: against 1.11x. The converter still fuses a DEQUANTIZE -> op -> QUANTIZE sandwich into the op's int8
    #: kernel where it has one (GELU, PAD). Every int8 LiteRT kernel writes int8 (no float-output kinds);
    #: litert-torch lowers float weights + quantize, not folded int8 weights.
    #: The converter also fuses DEQUANTIZE -> HARD_SWISH -> QUANTIZE into an int8 HARD_SWISH, which XNNPACK does
    #: not take: each one runs on LiteRT's own kernels and splits the delegated graph. efficientvit_b1 (224 px,
    #: 2 threads) had 30 of them in 31 partitions and ran at 0.27-0.36x FP32 (litert-torch's default recipe:
    #: the same); with the depthwise convolutions between the HardSwish in float it is one partition at 1.57x.
    quant_policy: ClassVar[QuantPolicy] = QuantPolicy(
        float_kinds=UNWEIGHTED - {OpKind.SIGMOID, OpKind.MUL}, fold_quantize=False, requantize_float_concat=True,
        unaccelerated_int8=((torch.ops.aten.hardswish.default,
                             "an int8 HARD_SWISH is not run by XNNPACK and splits LiteRT's delegated graph"),))

    def check_available(self) -> None:
        """Fail with the extra to install when litert-torch or the LiteRT interpreter is missing."""
        # find_spec, not import: importing litert-torch takes ~5 s, and export() does that anyway
        for module in ("litert_torch", "ai_edge_litert"):
            if importlib.util.find_spec(module) is None:
                raise MissingBackendError(module, self.extra, "TFLite export")

    def export(
        self, model: nn.Module, example: torch.Tensor, spec: ModelSpec, options: ExportOptions, out: Path
    ) -> Artifact:
        """Convert ``model`` at ``example``'s (static) shape, write ``out`` and describe what is in it."""
        self.tolerance(options.precision)  # rejects an unsupported precision before the slow part
        image = example.ndim == 4  # else sound: (N, samples) or (N, mels, frames), fed as it is
        if not image and options.channels_last:
            raise InputError(f"channels-last applies to image input; this model takes shape {tuple(example.shape)}")
        nhwc = image and options.channels_last is not False  # None: TFLite's convention for images, NHWC
        sample = (example.permute(0, 2, 3, 1) if nhwc else example).contiguous().float()
        wrapper = _Signature(model, nhwc).eval()
        timings: dict[str, float] = {}

        t = time.perf_counter()
        with _quiet():
            litert_torch = require("litert_torch", self.extra, "TFLite export")
        timings["import"] = time.perf_counter() - t

        t = time.perf_counter()
        try:
            with _quiet():
                edge_model = litert_torch.convert(wrapper, sample_kwargs={INPUT_NAME: sample},
                                                  quant_config=_static_int8() if options.precision == "int8" else None)
                flatbuffer = bytes(edge_model.model_content())
        except EdgeHybridError:
            raise
        except Exception as exc:  # the converter raises RuntimeError/ValueError/torch errors alike
            raise _explain(exc, wrapper, {INPUT_NAME: sample}) from exc
        timings["convert"] = time.perf_counter() - t

        details: dict = {}
        if options.precision == "fp16":
            t = time.perf_counter()
            flatbuffer = _fp16_weights(flatbuffer, self.extra)
            timings["quantize"] = time.perf_counter() - t
            details["quantization"] = (
                "float16 weights (conv, depthwise conv, fully connected) with DEQUANTIZE; float32 activations"
            )

        if options.precision == "int8":
            details["quantization"] = (
                "static int8 (edgehybrid's calibrated plan): int8 weights, int8 activations into and out of every "
                "convolution and fully-connected op; the other ops run in float between DEQUANTIZE and QUANTIZE "
                "(see the manifest's quantization.target_float_kinds) unless the converter fused them into an "
                "int8 kernel")
        t = time.perf_counter()
        out = Path(out)
        out.write_bytes(flatbuffer)
        timings["write"] = time.perf_counter() - t

        t = time.perf_counter()
        info = inspect_flatbuffer(flatbuffer)
        timings["inspect"] = time.perf_counter() - t
        sig = info["signatures"].get(SIGNATURE)
        if sig is None or [i.name for i in sig["inputs"]] != [INPUT_NAME]:
            raise EdgeHybridError(
                f"litert-torch wrote no {SIGNATURE!r} signature with input {INPUT_NAME!r} "
                f"(found {sorted(info['signatures'])}); this litert-torch version is not supported"
            )
        layout = ("NHWC" if nhwc else "NCHW") if image else None
        inputs = [TensorInfo(i.name, i.shape, i.dtype, layout, i.scale, i.zero_point) for i in sig["inputs"]]
        details.update(
            signatures=sorted(info["signatures"]),
            nhwc=nhwc,
            op_counts=info["op_counts"],
            int8_op_counts=info["int8_op_counts"],
            tensor_dtypes=info["tensor_dtypes"],
            weights=info["weights"],
            size_bytes=len(flatbuffer),
            min_runtime_version=info["min_runtime_version"],
            op_versions=info["op_versions"],
        )
        versions = {
            "torch": torch.__version__,
            "litert-torch": version_of("litert-torch"),
            "ai-edge-litert": version_of("ai-edge-litert"),
        }
        if options.precision == "fp16":
            versions["ai-edge-quantizer"] = version_of("ai-edge-quantizer")
        return Artifact(
            path=out,
            target=self.name,
            precision=options.precision,
            inputs=inputs,
            outputs=list(sig["outputs"]),
            versions=versions,
            details=details,
            timings_s={k: round(v, 4) for k, v in timings.items()},
        )


    def requires(self, artifact: Artifact) -> list[Requirement]:
        """The TFLite runtime the converter says the file needs (its ``min_runtime_version`` metadata, computed
        from the op versions it chose); nothing when the file does not say."""
        info = inspect_flatbuffer(Path(artifact.path).read_bytes())
        if not info["min_runtime_version"]:
            return []
        newer = ", ".join(f"{op} v{v}" for op, v in sorted(info["op_versions"].items(), key=lambda kv: -kv[1])[:4])
        return [Requirement("tflite-runtime", info["min_runtime_version"],
                            "the converter's min_runtime_version" + (f"; op versions {newer}" if newer else ""))]


def _static_int8():
    """litert-torch's switch for lowering a PT2E graph's quantize/dequantize pairs into int8 kernels.
    The graph is already quantized by edgehybrid's plan; litert-torch reads only the mode (static) from the
    quantizer it is given, so its own default config is passed just to say "static"."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    return QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))


def _fp16_weights(flatbuffer: bytes, extra: str) -> bytes:
    """Store conv / FC weights as float16 (ai-edge-quantizer float casting, weight-only, fp32 compute)."""
    aeq = require("ai_edge_quantizer", extra, "TFLite float16 export")
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.add_quantization_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        op_config=qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,  # DEQUANTIZE ops keep every kernel float32: runs on any LiteRT CPU
        ),
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    try:
        # ai-edge-quantizer 0.10 drops enable_progress_bar on the way to its transformation step, whose
        # tqdm bar then shows for any model over 100 tensors: swallow stderr for this short call
        with _quiet(), contextlib.redirect_stderr(io.StringIO()):
            result = aeq.Quantizer(flatbuffer, rm.get_quantization_recipe()).quantize(
                enable_progress_bar=False, enable_progress_report=False
            )
    except Exception as exc:
        raise EdgeHybridError(f"float16 weight conversion failed in ai-edge-quantizer: {first_line(exc)}") from exc
    return bytes(result.quantized_model)


def inspect_flatbuffer(buf: bytes) -> dict:
    """Signatures (name -> inputs/outputs as TensorInfo), op-type counts, tensor dtypes and weight figures.

    Reads the flatbuffer with ai-edge-litert's generated schema, so no TensorFlow is needed.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(buf, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    type_names[schema.TensorType.FLOAT32] = "float32"

    ops: Counter = Counter()
    op_versions: dict[str, int] = {}  # ops past version 1: what sets the runtime the file needs
    int8_ops: Counter = Counter()  # ops whose output is int8: the ones that run an int8 kernel
    dtypes: Counter = Counter()
    weight_elems: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.OperatorsLength()):
            operator = sg.Operators(i)
            code = model.OperatorCodes(operator.OpcodeIndex())
            # builtin codes above 127 live in BuiltinCode(); older files only fill the deprecated byte
            op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = op_names.get(op, str(op))
            if op == schema.BuiltinOperator.CUSTOM and code.CustomCode():
                name = "CUSTOM:" + code.CustomCode().decode()
            ops[name] += 1
            if code.Version() > 1:
                op_versions[name] = max(op_versions.get(name, 1), int(code.Version()))
            if operator.OutputsLength() and sg.Tensors(operator.Outputs(0)).Type() == schema.TensorType.INT8:
                int8_ops[name] += 1
        for i in range(sg.TensorsLength()):
            tensor = sg.Tensors(i)
            dtype = type_names.get(tensor.Type(), str(tensor.Type()))
            dtypes[dtype] += 1
            buffer = model.Buffers(tensor.Buffer()) if tensor.Buffer() < model.BuffersLength() else None
            if buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0):
                weight_elems[dtype] += math.prod(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else 1

    signatures = {}
    for k in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(k)
        sg = model.Subgraphs(sd.SubgraphIndex())

        def _info(entry, sg=sg):
            tensor = sg.Tensors(entry.TensorIndex())
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            q = tensor.Quantization()
            scale = zp = None
            if q is not None and q.ScaleLength() == 1:  # per-tensor quantized I/O (int8 models)
                scale, zp = float(q.Scale(0)), int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
            return TensorInfo(entry.Name().decode(), shape, type_names.get(tensor.Type(), str(tensor.Type())), None, scale, zp)

        signatures[sd.SignatureKey().decode()] = {
            "inputs": [_info(sd.Inputs(j)) for j in range(sd.InputsLength())],
            "outputs": [_info(sd.Outputs(j)) for j in range(sd.OutputsLength())],
        }
    return {
        "signatures": signatures,
        "op_counts": dict(ops.most_common()),
        "int8_op_counts": dict(int8_ops.most_common()),
        "tensor_dtypes": sorted(dtypes),
        "weights": {f"{dtype}_elements": n for dtype, n in sorted(weight_elems.items())},
        "min_runtime_version": _metadata_text(buf, model, "min_runtime_version"),
        "op_versions": dict(sorted(op_versions.items())),
    }


def _metadata_text(buf: bytes, model, name: str) -> str | None:
    """A metadata entry of the flatbuffer as text (its buffer is NUL-padded), or None when absent."""
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is None or entry.Name().decode() != name:
            continue
        buffer = model.Buffers(entry.Buffer())
        data = bytes(buffer.DataAsNumpy()) if buffer.DataLength() else b""
        if not data and buffer.Offset():  # stored past the flatbuffer (files over 2 GB)
            data = buf[buffer.Offset(): buffer.Offset() + buffer.Size()]
        text = data.split(b"\0", 1)[0].decode("ascii", "replace").strip()
        return text or None
    return None


@contextlib.contextmanager
def _quiet():
    """Keep converter chatter off stdout (the CLI's --json owns it) and its warnings out of the log.

    litert-torch prints progress with rich (off with LITERT_TORCH_SHOW_PROGRESS=n), ai-edge-quantizer
    prints a size report; C++ code may write to file descriptor 1 directly, which quiet_converter points
    at stderr as well for the duration.
    """
    old_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        # import-time notices ("Failed to load _C_mxfp8.so", a pytree deprecation) go through these loggers
        with quiet_converter(("torchao", "torch.utils._pytree", "absl"), logging.ERROR):
            yield
    finally:
        if old_env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old_env


def _explain(exc: Exception, wrapper: nn.Module, kwargs: dict) -> EdgeHybridError:
    """One line naming what could not be converted, where it is in the model, and what to try."""
    text = str(exc)
    missing = re.search(r"Lowering not found: (\S+)", text)
    if missing:
        op = missing.group(1)
        return EdgeHybridError(
            f"TFLite conversion failed: litert-torch has no lowering for {op}{_module_of(op, wrapper, kwargs)}; "
            "rewrite that part of the model with supported ops, or export with --target onnx instead"
        )
    illegal = re.search(r"failed to legalize operation '([^']+)'", text)
    if illegal:
        ranks = [t.count("x") for t in re.findall(r"tensor<([0-9x?]+x[a-z]+\d*)>", text)]
        rank = f" on a rank-{max(ranks)} tensor" if ranks else ""
        loc = re.search(r"([\w.\-/]+\.py):(\d+)", text)
        where = f" (from {Path(loc.group(1)).name}:{loc.group(2)})" if loc else ""
        hint = (
            "TFLite kernels stop at rank 5 or 6: reshape to fewer dimensions"
            if ranks and max(ranks) > 5
            else "the LiteRT converter has no kernel for it: rewrite that part with common ops"
        )
        return EdgeHybridError(f"TFLite conversion failed: cannot lower {illegal.group(1)}{rank}{where}; {hint}")
    if "torch.export" in text or type(exc).__module__.startswith(("torch.fx", "torch._dynamo", "torch.export")):
        return EdgeHybridError(
            f"TFLite conversion failed: torch.export could not trace the model ({type(exc).__name__}: "
            f"{first_line(exc)}); make forward() free of data-dependent Python control flow"
        )
    return EdgeHybridError(f"TFLite conversion failed: {type(exc).__name__}: {first_line(exc)}")


def _module_of(op: str, wrapper: nn.Module, kwargs: dict) -> str:
    """' in module PATH (Type)' for the first node calling ``op``, from torch.export's nn_module_stack.

    Only runs after a failure: re-exporting costs a few seconds, which a failed conversion can spare.
    """
    try:
        with _quiet():
            program = torch.export.export(wrapper, (), kwargs, strict=False)
            # litert-torch lowers the decomposed graph, so the op may only appear after decomposition
            for stage in (program.graph, None):
                graph = stage if stage is not None else program.run_decompositions().graph
                for node in graph.nodes:
                    if node.op == "call_function" and str(node.target) == op:
                        stack = list((node.meta.get("nn_module_stack") or {}).values())
                        if not stack:
                            return ""
                        path, kind = stack[-1]
                        path = re.sub(r"^(L\['self'\]\.)?model\.?", "", str(path))
                        kind = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1].strip("'>")
                        return f" in module {path!r} ({kind})" if path else f" in the model's own forward ({kind})"
    except Exception:  # noqa: BLE001  the location is a courtesy; the op name is already in the message
        pass
    return ""
