"""What can honestly be checked about a Core ML package off macOS: its structure, and a reference evaluation.

Core ML itself runs only on Apple platforms. On Linux this module offers two things instead, both working
from the SAVED ``.mlpackage`` (never the in-memory converter object), so they check what ships:

* :func:`inspect_mlpackage` reads the package back with ``MLModel(path, skip_model_load=True)`` and reports
  its I/O, op counts, weight dtypes and spec version, with structural checks (every op is a MIL op of the
  package's opset, no tensor above rank 5, declared I/O shapes match the program's).
* :func:`evaluate_mil` is a MIL reference evaluation (edgehybrid's numpy interpretation of the converted
  program; not the Core ML runtime). It walks the saved program's ``main`` function op by op, using
  coremltools' own ``value_inference`` (its constant-folding code) where that exists and is fast, and
  hand-written torch kernels for the rest. An op it does not implement fails with
  :class:`UnsupportedMILOpError` naming it; nothing is skipped or guessed.

How faithful the evaluation is: fp32 programs are computed in fp32 and agree with PyTorch to about 1e-6
of the logit scale (summation order differs). In an fp16 program every tensor the program holds in fp16
(weights, activations) is held in fp16: each op's output is rounded to its declared dtype. Inside one op
the arithmetic is fp32 -- identical to true fp16 for elementwise ops (an fp32 result of +,-,*,/,sqrt on
fp16 values rounds to the correctly rounded fp16 result), and for reductions (conv, matmul, norms,
softmax) it is what fp32 accumulation would give. It does not model Core ML's op fusion (which may skip
some intermediate roundings), fp16 accumulation on the Neural Engine, or device kernels' approximations
(exp, erf), so the Core ML runtime's fp16 error can be larger or smaller than this one's. The loaded
program's ``Var`` objects are private coremltools internals; this module pins coremltools 9.0 behaviour.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from edgehybrid.errors import EdgeHybridError, InputError
from exporters.base import TensorInfo

#: the label every figure from :func:`evaluate_mil` must carry
REFERENCE_LABEL = (
    "MIL reference evaluation (edgehybrid's numpy interpretation of the converted program; not the Core ML runtime)"
)


def os_minimums(spec_version: int) -> dict[str, int]:
    """The OS releases whose Core ML first runs specification version ``spec_version`` (6: iOS 15 ...)."""
    return {"iOS": spec_version + 9, "macOS": spec_version + 6, "tvOS": spec_version + 9, "watchOS": spec_version + 2}


#: spec version -> the deployment targets that first run it
DEPLOYMENT_TARGETS = {v: " / ".join(f"{k}{n}" for k, n in os_minimums(v).items()) for v in (6, 7, 8, 9)}
MAX_RANK = 5  # Core ML rejects tensors of higher rank
_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}


class UnsupportedMILOpError(EdgeHybridError):
    """The MIL reference evaluation met an op it has no implementation for."""


def _require_ct():
    from exporters.coreml import _import_coremltools  # quiet import: no converter chatter on stdout

    return _import_coremltools("Reading a Core ML package")


def _read(path: str | Path):
    """``(MLModel, spec)`` of a saved package, without compiling it; unreadable -> one-line InputError."""
    ct = _require_ct()
    path = Path(path)
    if not path.exists():
        raise InputError(f"Core ML package {str(path)!r} does not exist")
    try:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
    except Exception as exc:  # protobuf DecodeError, json parse errors from the manifest, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{str(path)!r} is not a readable Core ML package ({type(exc).__name__}: {first})") from exc
    return mlmodel, spec


def io_infos(spec) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The package's declared inputs and outputs as TensorInfo (read from its spec, not assumed)."""
    ct = _require_ct()
    names = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
    layout = dict(spec.description.metadata.userDefined).get("edgehybrid.input_layout", "NCHW")

    def infos(features, is_input):
        out = []
        for f in features:
            shape, dtype = tuple(int(d) for d in f.type.multiArrayType.shape), names(f.type.multiArrayType.dataType)
            lay = layout if is_input and len(shape) == 4 else None
            out.append(TensorInfo(name=f.name, shape=shape, dtype=_DTYPES.get(dtype, dtype.lower()), layout=lay))
        return out

    return infos(spec.description.input, True), infos(spec.description.output, False)


def inspect_mlpackage(path: str | Path) -> dict:
    """Read a saved package back and describe it, with structural checks under ``"checks"``."""
    ct = _require_ct()
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    _, spec = _read(path)
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{str(path)!r} is a {spec.WhichOneof('Type')} Core ML model, not an ML Program")
    inputs, outputs = io_infos(spec)
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    dtype_name = ct.proto.MIL_pb2.DataType.Name

    ops, weights, var_shapes, max_rank = Counter(), {}, {}, 0
    for inp in fn.inputs:
        var_shapes[inp.name] = _proto_shape(inp.type)
    for op in block.operations:
        ops[op.type] += 1
        for o in op.outputs:
            var_shapes[o.name] = _proto_shape(o.type)
            if o.type.WhichOneof("type") == "tensorType":
                max_rank = max(max_rank, o.type.tensorType.rank)
        if op.type == "const" and op.attributes["val"].type.WhichOneof("type") == "tensorType":
            val = op.attributes["val"]
            where = "file" if val.WhichOneof("value") == "blobFileValue" else "inline"
            entry = weights.setdefault(dtype_name(val.type.tensorType.dataType).lower(), Counter())
            entry[f"{where}_tensors"] += 1
            entry[f"{where}_elements"] += math.prod(_proto_shape(val.type) or (1,))

    target = ct.target(spec.specificationVersion) if spec.specificationVersion in DEPLOYMENT_TARGETS else None
    outside = sorted(t for t in ops if target is None or target not in SSAOpRegistry.core_ops.get(t, {}))
    problems = []
    if outside:
        problems.append(f"ops not in MIL opset {fn.opset}: {', '.join(outside)}")
    if max_rank > MAX_RANK:
        problems.append(f"a tensor of rank {max_rank} (Core ML allows <= {MAX_RANK})")
    for declared, names in ((inputs, [i.name for i in fn.inputs]), (outputs, list(block.outputs))):
        for info, var in zip(declared, names):
            if var_shapes.get(var) != info.shape:
                problems.append(f"{info.name!r} declared {info.shape} but the program gives {var_shapes.get(var)}")
    meta = spec.description.metadata
    return {
        "spec_version": spec.specificationVersion,
        "deployment_target": DEPLOYMENT_TARGETS.get(spec.specificationVersion, "unknown"),
        "mil_opset": fn.opset,
        "inputs": [i.to_dict() for i in inputs],
        "outputs": [o.to_dict() for o in outputs],
        "op_counts": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "const_dtypes": {k: dict(v) for k, v in sorted(weights.items())},
        "metadata": {"author": meta.author, "short_description": meta.shortDescription,
                     "user_defined": dict(meta.userDefined)},
        "checks": {
            "ops_in_target_opset": not outside,
            "ops_outside_opset": outside,
            "max_rank": max_rank,
            "rank_ok": max_rank <= MAX_RANK,
            "io_shapes_match": not any("declared" in p for p in problems),
            "ok": not problems,
            "problems": problems,
        },
    }


def _proto_shape(value_type) -> tuple[int, ...] | None:
    dims = value_type.tensorType.dimensions if value_type.WhichOneof("type") == "tensorType" else None
    if dims is None or any(d.WhichOneof("dimension") != "constant" for d in dims):
        return None
    return tuple(int(d.constant.size) for d in dims)


# --------------------------------------------------------------------------------------------------
# MIL reference evaluation


def evaluate_mil(path: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MIL reference evaluation (edgehybrid's numpy interpretation of the converted program; not the Core
    ML runtime) of the saved package at ``path``: ``{output name: array}`` for ``feeds`` given by input name.
    """
    return evaluate_program(_load_program(path), feeds)


class ReferenceSession:
    """A runtime-Session-shaped MIL reference evaluation of one saved package (program loaded once).

    For callers that validate without Core ML: ``label`` says what the figures are; they are NOT Core ML's.
    """

    label = REFERENCE_LABEL

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.inputs, self.outputs = io_infos(_read(self.path)[1])
        self._program = _load_program(self.path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return evaluate_program(self._program, feeds)


def _load_program(path: str | Path):
    """The saved package's MIL program, rebuilt by coremltools' (private) milproto loader."""
    _require_ct()
    from coremltools.converters.mil.frontend.milproto.load import load

    mlmodel, spec = _read(path)
    try:
        return load(spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
    except Exception as exc:  # noqa: BLE001 - a package coremltools wrote but cannot read back
        raise InputError(f"cannot rebuild the MIL program of {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def evaluate_program(prog, feeds: dict[str, np.ndarray], function: str = "main") -> dict[str, np.ndarray]:
    """Evaluate a coremltools MIL ``Program`` (see :func:`evaluate_mil`; same label and caveats)."""
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.operation import Operation

    fn = prog.functions[function]
    env: dict[str, np.ndarray] = {}
    for name, var in fn.inputs.items():
        if name not in feeds:
            raise InputError(f"the program's input is {name!r}; given {sorted(feeds)}")
        arr = np.asarray(feeds[name])
        if tuple(arr.shape) != tuple(var.shape):
            raise InputError(f"input {name!r} expects shape {tuple(var.shape)}, given {tuple(arr.shape)}")
        env[var.name] = arr.astype(types.nptype_from_builtin(var.dtype))

    ops = list(fn.operations)
    outputs = {v.name for v in fn.outputs}
    last_use = {var.name: i for i, op in enumerate(ops) for var in _input_vars(op)}  # later i overwrite

    for i, op in enumerate(ops):
        if op.op_type == "const":
            continue
        if op.op_type in _KERNELS:
            out = _KERNELS[op.op_type](op, lambda n, op=op: _get(op, n, env))
        elif type(op).value_inference is not Operation.value_inference:
            out = _value_inference(op, env)
        else:
            raise UnsupportedMILOpError(
                f"the MIL reference evaluation does not implement op {op.op_type!r} (op {op.name!r}); "
                "the package itself may still be valid: check it with Core ML on macOS"
            )
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for var, val in zip(op.outputs, outs):
            val = np.asarray(val.numpy() if hasattr(val, "numpy") else val)
            # round to the declared dtype: this is where an fp16 program's storage precision is applied
            val = val.astype(types.nptype_from_builtin(var.dtype), copy=False)
            if var.shape and all(isinstance(d, int) for d in var.shape) and val.shape != tuple(var.shape):
                raise EdgeHybridError(
                    f"MIL reference evaluation: op {op.name!r} ({op.op_type}) gave shape {val.shape}, "
                    f"the program declares {tuple(var.shape)}"
                )
            env[var.name] = val
        for var in _input_vars(op):  # free what no later op reads: activations of large models add up
            if last_use.get(var.name) == i and var.name not in outputs:
                env.pop(var.name, None)
    return {var.name: env[var.name] for var in fn.outputs}


def _input_vars(op):
    for v in op.inputs.values():
        yield from (v if isinstance(v, (list, tuple)) else (v,))


def _value(var, env):
    val = var.val if var.name not in env else env[var.name]
    if val is None:
        raise EdgeHybridError(f"MIL reference evaluation: no value for {var.name!r} (evaluation order broken)")
    return val


def _compute_form(val):
    """fp16 -> fp32 for the arithmetic inside an op; numpy scalars -> Python scalars (np.True_ breaks
    ``keepdims=`` in numpy reductions called by value_inference)."""
    if isinstance(val, np.generic):
        return val.item()
    if isinstance(val, np.ndarray) and val.dtype == np.float16:
        return val.astype(np.float32)
    return val


def _value_inference(op, env):
    saved = {}
    try:
        for var in _input_vars(op):
            if var not in saved:
                saved[var] = var._sym_val
                var._sym_val = SimpleNamespace(val=_compute_form(_value(var, env)))  # Var.val reads ._sym_val.val
        return op.value_inference()
    finally:
        for var, old in saved.items():
            var._sym_val = old


def _get(op, name, env):
    """Input ``name`` of ``op`` in compute form, or None where the op does not have it."""
    var = op.inputs.get(name)
    if var is None:
        return None
    if isinstance(var, (list, tuple)):
        return [_compute_form(_value(v, env)) for v in var]
    return _compute_form(_value(var, env))


# --- hand-written kernels (torch, fp32) for ops without value_inference, or whose value_inference is slow


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _opt(g, name, default):
    value = g(name)
    return default if value is None else value


def _unsupported(op, what: str) -> UnsupportedMILOpError:
    return UnsupportedMILOpError(f"the MIL reference evaluation does not implement {what} of op {op.op_type!r}")


def _pads(op, g, x_shape, kernel, strides, dilations):
    """[(before, after)] per spatial dim for MIL's pad_type (valid | same | same_lower | custom)."""
    kind = _opt(g, "pad_type", "valid")
    if kind == "valid":
        return [(0, 0)] * len(kernel)
    if kind == "custom":
        pad = [int(p) for p in g("pad")]
        return list(zip(pad[0::2], pad[1::2]))
    if kind not in ("same", "same_lower"):
        raise _unsupported(op, f"pad_type {kind!r}")
    out = []
    for size, k, s, d in zip(x_shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        out.append((total // 2, total - total // 2) if kind == "same" else (total - total // 2, total // 2))
    return out


def _torch_pad(x, pads, value=0.0):
    flat = [int(p) for pair in reversed(pads) for p in pair]  # F.pad wants the last dim first
    return F.pad(x, flat, value=value) if any(flat) else x


def _geometry(g, n):
    return [int(v) for v in _opt(g, "strides", [1] * n)], [int(v) for v in _opt(g, "dilations", [1] * n)]


def _conv(op, g):
    x, w, bias = _t(g("x")), _t(g("weight")), g("bias")
    n = x.ndim - 2
    strides, dil = _geometry(g, n)
    x = _torch_pad(x, _pads(op, g, x.shape, w.shape[2:], strides, dil))
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return fn(x, w, None if bias is None else _t(bias), strides, 0, dil, int(_opt(g, "groups", 1)))


def _conv_transpose(op, g):
    x, w, bias = _t(g("x")), _t(g("weight")), g("bias")
    n = x.ndim - 2
    strides, dil = _geometry(g, n)
    if _opt(g, "pad_type", "valid") not in ("valid", "custom"):
        raise _unsupported(op, f"pad_type {g('pad_type')!r}")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    y = fn(x, w, None, strides, 0, 0, int(_opt(g, "groups", 1)), dil)  # the full (uncropped) output
    target = g("output_shape")  # pad crops the full output; output_shape (torch's output_padding) sizes it
    index, grow = [slice(None), slice(None)], []
    for i, (before, after) in enumerate(_pads(op, g, x.shape, w.shape[2:], strides, dil)):
        size = int(target[2 + i]) if target is not None else y.shape[2 + i] - before - after
        index.append(slice(before, min(before + size, y.shape[2 + i])))
        grow.append(max(before + size - y.shape[2 + i], 0))  # past the full output no kernel reaches
    y = _torch_pad(y[tuple(index)], [(0, e) for e in grow])
    return y if bias is None else y + _t(bias).reshape((1, -1) + (1,) * n)


def _pool(op, g, kind):
    x = _t(g("x"))
    kernel = [int(k) for k in g("kernel_sizes")]
    n, area = len(kernel), math.prod(kernel)
    strides = [int(s) for s in _opt(g, "strides", [1] * n)]
    pads = _pads(op, g, x.shape, kernel, strides, [1] * n)
    if g("ceil_mode"):
        raise _unsupported(op, "ceil_mode")
    if kind == "max":
        return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1](_torch_pad(x, pads, -math.inf), kernel, strides)
    avg = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    summed = avg(_torch_pad(x, pads), kernel, strides) * area
    if g("exclude_padding_from_average"):  # divide by the count of real (unpadded) values in each window
        return summed / (avg(_torch_pad(torch.ones((1, 1) + tuple(x.shape[2:])), pads), kernel, strides) * area)
    return summed / area


def _norm(op, g, kind):
    """batch_norm (stored statistics) or instance_norm (per sample and channel), then the affine part."""
    x = _t(g("x"))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if kind == "batch":
        mean, var = _t(g("mean")).reshape(shape), _t(g("variance")).reshape(shape)
    else:
        dims = tuple(range(2, x.ndim))
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / (var + float(_opt(g, "epsilon", 1e-5))).sqrt()
    gamma, beta = g("gamma"), g("beta")
    y = y if gamma is None else y * _t(gamma).reshape(shape)
    return y if beta is None else y + _t(beta).reshape(shape)


def _gelu(op, g):
    x, mode = _t(g("x")), _opt(g, "mode", "EXACT")
    if mode == "SIGMOID_APPROXIMATION":
        return x * (1.702 * x).sigmoid()
    return F.gelu(x, approximate="tanh" if mode == "TANH_APPROXIMATION" else "none")


def _upsample(op, g, mode):
    x = _t(g("x"))
    size = tuple(
        math.floor(x.shape[i] * float(_opt(g, f"scale_factor_{s}", 1))) for i, s in ((-2, "height"), (-1, "width"))
    )
    x4 = x.reshape((-1, 1) + tuple(x.shape[-2:]))
    if mode == "nearest":
        y = F.interpolate(x4, size=size, mode="nearest")
    else:
        align = bool(_opt(g, "align_corners", True))
        if not align and g("half_pixel_centers") is not None and not g("half_pixel_centers"):
            raise _unsupported(op, "half_pixel_centers=False")
        y = F.interpolate(x4, size=size, mode="bilinear", align_corners=align)
    return y.reshape(tuple(x.shape[:-2]) + size)


def _crop(op, g):
    x = g("x")
    (top, bottom), (left, right) = [int(v) for v in g("crop_height")], [int(v) for v in g("crop_width")]
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


def _matmul(op, g):
    x, y = _t(g("x")), _t(g("y"))
    x = x.transpose(-1, -2) if g("transpose_x") else x
    y = y.transpose(-1, -2) if g("transpose_y") else y
    return x @ y  # torch broadcasts batch dims as MIL (numpy) matmul does


def _along(param, axis, ndim: int) -> np.ndarray:
    """A per-tensor (scalar) or per-axis (vector) quantization parameter shaped to broadcast."""
    p = np.asarray(param, dtype=np.float32)
    if p.ndim == 0 or p.size == 1 or axis is None:
        return p.reshape(()) if p.size == 1 else p
    shape = [1] * ndim
    shape[int(axis) % ndim] = -1
    return p.reshape(shape)


def _dequantize(op, g, data: str):
    q = np.asarray(g(data))
    zp, scale, axis = g("zero_point"), g("scale"), g("axis")
    zp = 0 if zp is None else _along(zp, axis, q.ndim)
    return (q.astype(np.float32) - zp) * _along(scale, axis, q.ndim)


def _quantize(op, g):
    """iOS17 ``quantize``: round half to even, as Core ML and numpy do, then clamp to the integer type."""
    x = np.asarray(g("input"), dtype=np.float32)
    zp, scale, axis = g("zero_point"), g("scale"), g("axis")
    dtype = np.int8 if str(g("output_dtype")) == "int8" else np.uint8
    zp = 0 if zp is None else _along(zp, axis, x.ndim)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / _along(scale, axis, x.ndim)) + zp, info.min, info.max).astype(dtype)


_KERNELS = {
    # int8: weight-only (iOS16 constexpr) and activation quantize / dequantize pairs (iOS17)
    "constexpr_affine_dequantize": lambda op, g: _dequantize(op, g, "quantized_data"),
    "dequantize": lambda op, g: _dequantize(op, g, "input"),
    "quantize": _quantize,
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "avg_pool": lambda op, g: _pool(op, g, "avg"),
    "max_pool": lambda op, g: _pool(op, g, "max"),
    "batch_norm": lambda op, g: _norm(op, g, "batch"),
    "instance_norm": lambda op, g: _norm(op, g, "instance"),
    "silu": lambda op, g: F.silu(_t(g("x"))),
    "upsample_bilinear": lambda op, g: _upsample(op, g, "bilinear"),
    "upsample_nearest_neighbor": lambda op, g: _upsample(op, g, "nearest"),
    "crop": _crop,
    "pixel_shuffle": lambda op, g: F.pixel_shuffle(_t(g("x")), int(g("upscale_factor"))),
    "pixel_unshuffle": lambda op, g: F.pixel_unshuffle(_t(g("x")), int(g("downscale_factor"))),
    # value_inference exists for these but is slow (gelu EXACT calls math.erf per element; numpy matmul
    # of fp16-valued operands), so they run in torch too
    "gelu": _gelu,
    "linear": lambda op, g: F.linear(_t(g("x")), _t(g("weight")), None if g("bias") is None else _t(g("bias"))),
    "matmul": _matmul,
    "softmax": lambda op, g: _t(g("x")).softmax(int(_opt(g, "axis", -1))),
}
