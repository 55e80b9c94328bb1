"""One INT8 quantization plan for every target: PT2E annotation, calibration, per-layer precision.

The model is captured once with ``torch.export``; :class:`HybridQuantizer` annotates every quantizable node
(convolutions and linears with per-channel symmetric int8 weights; matmuls, adds, muls, sigmoids, softmax,
LayerNorm, GELU, pooling and concatenation with int8 activations) but only for the *layers* the plan keeps
in int8. A layer is the innermost ``nn.Module`` a node was called in (``stages.2.1.transformer.0.attn``), so
the plan reads like the model and a user can name layers to keep in float.

Calibration runs once. The calibrated, observed graph then serves three uses without another pass:
sensitivity (each layer alone in int8, see :mod:`calibration.sensitivity`), the drift-budget search, and
the final graph: observers of float layers are dropped and ``convert_pt2e`` turns the rest into
quantize/dequantize pairs that torch.onnx (QDQ), litert-torch (full int8) and coremltools (W8A8) lower.

SiLU is split into ``x * sigmoid(x)`` before capture, because both halves have int8 kernels (ONNX Runtime
QLinearSigmoid / QLinearMul, TFLite LOGISTIC / MUL) while a SiLU with quantized edges runs in float between a
dequantize and a quantize: on ``mobilevit_s`` those islands cost half the INT8 latency.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgehybrid.errors import EdgeHybridError, MissingBackendError, UnknownNameError

CALIB_METHODS = ("minmax", "percentile", "histogram")
_A = torch.ops.aten

#: op -> kind; a kind decides how the node is annotated
_KINDS = {
    _A.conv2d.default: "conv", _A.conv1d.default: "conv", _A.linear.default: "linear",
    _A.matmul.default: "matmul", _A.bmm.default: "matmul",
    _A.add.Tensor: "add", _A.mul.Tensor: "mul",
    _A.sigmoid.default: "sigmoid", _A.softmax.int: "softmax", _A._softmax.default: "softmax",
    _A.layer_norm.default: "layer_norm", _A.gelu.default: "gelu", _A.hardswish.default: "act",
    _A.silu.default: "act", _A.relu.default: "act", _A.hardtanh.default: "act",
    _A.adaptive_avg_pool2d.default: "pool", _A.avg_pool2d.default: "pool", _A.mean.dim: "pool",
    _A.cat.default: "cat",
}
#: ops that only move or select values: they share their input's quantization parameters
_PASSTHROUGH = {
    _A.reshape.default, _A.view.default, _A.permute.default, _A.transpose.int, _A.flatten.using_ints,
    _A.squeeze.dim, _A.unsqueeze.default, _A.contiguous.default, _A.clone.default, _A.max_pool2d.default,
    _A.split.Tensor, _A.split_with_sizes.default, _A.chunk.default, _A.select.int, _A.slice.Tensor,
    _A.t.default, _A.expand.default, _A.flip.default, _A.pixel_shuffle.default, _A.pixel_unshuffle.default,
}
#: kinds whose output range is fixed: TFLite requires scale 1/256 and zero point -128 for LOGISTIC / SOFTMAX
_FIXED_OUTPUT = {"sigmoid", "softmax"}
#: kinds that carry weights (what int8 buys the most on every runtime)
WEIGHTED = ("conv", "linear")
#: every other kind: what a target that runs only weighted ops in int8 keeps in float
UNWEIGHTED = tuple(k for k in dict.fromkeys(_KINDS.values()) if k not in WEIGHTED)


class SiLUAsSigmoidMul(nn.Module):
    """``x * sigmoid(x)``: SiLU in two ops that every int8 runtime has kernels for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def split_silu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.SiLU`` replaced by :class:`SiLUAsSigmoidMul` (same numbers)."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        for cname, sub in list(child.named_children()):
            if isinstance(sub, nn.SiLU):
                setattr(child, cname, SiLUAsSigmoidMul())
    return model


@dataclass
class Layer:
    """One plan entry: the nodes called inside one module."""

    name: str
    kinds: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    macs: int = 0
    precision: str = "int8"
    reason: str = "quantized: int8 kernels on every target"
    sensitivity_sqnr_db: float | None = None

    def to_dict(self) -> dict:
        return {"layer": self.name, "ops": sorted(set(self.kinds)), "precision": self.precision,
                "reason": self.reason, "macs": self.macs, "sensitivity_sqnr_db": self.sensitivity_sqnr_db}


def layer_of(node: torch.fx.Node) -> str:
    """The innermost module path a node was called in ('' for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<root>"
    path = list(stack.values())[-1][0]
    # torch.export spells nested attribute paths with dots, list indices included: 'stages.2.1.conv'
    return path or "<root>"


def layers_of(gm: torch.fx.GraphModule) -> dict[str, Layer]:
    """Every quantizable node grouped by layer, in graph order, with the MACs each layer costs."""
    layers: dict[str, Layer] = {}
    for node in gm.graph.nodes:
        kind = _KINDS.get(node.target) if node.op == "call_function" else None
        if kind is None or not _tensor_inputs(node, kind):
            continue
        name = layer_of(node)
        layer = layers.setdefault(name, Layer(name))
        layer.kinds.append(kind)
        layer.nodes.append(node.name)
        layer.macs += _macs(node, kind)
    return layers


def _tensor_inputs(node: torch.fx.Node, kind: str) -> list[torch.fx.Node]:
    """The activation inputs of a node (weights and scalars excluded)."""
    if kind in ("conv", "linear", "layer_norm", "gelu", "act", "sigmoid", "softmax", "pool"):
        first = node.args[0]
        return [first] if isinstance(first, torch.fx.Node) else []
    if kind == "cat":
        return [a for a in node.args[0] if isinstance(a, torch.fx.Node)]
    tensors = [a for a in node.args[:2] if isinstance(a, torch.fx.Node) and _is_float_tensor(a)]
    return tensors if len(tensors) == 2 or kind == "matmul" else []  # add/mul of a scalar: not worth it


def _is_float_tensor(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point() and val.dim() > 0


def _macs(node: torch.fx.Node, kind: str) -> int:
    out = node.meta.get("val")
    if kind not in ("conv", "linear", "matmul") or not isinstance(out, torch.Tensor):
        return 0
    if kind == "conv":
        w = node.args[1].meta["val"]
        return int(out.numel() * w[0].numel())
    inner = node.args[0].meta["val"].shape[-1]
    return int(out.numel() * inner)


def torchao():
    """Import torchao once, keeping its import-time noise (optional CUDA kernels it cannot load on a CPU
    build, torch deprecation chatter) off the user's terminal."""
    import contextlib
    import logging
    import os
    import sys

    if "torchao.quantization.pt2e" in sys.modules:
        return sys.modules["torchao"]
    saved = os.dup(2)
    level = logging.getLogger("torch").level
    try:
        logging.getLogger("torch").setLevel(logging.ERROR)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stderr(null), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
                except ImportError as exc:
                    raise MissingBackendError("torchao", "all", "INT8 quantization") from exc
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        logging.getLogger("torch").setLevel(level)
    return sys.modules["torchao"]


def check_method(method: str) -> None:
    if method not in CALIB_METHODS:
        raise UnknownNameError.for_choice("--calib-method", method, CALIB_METHODS)


def make_quantizer(int8_layers: Iterable[str], method: str = "minmax"):
    """A PT2E quantizer (torchao's protocol) that annotates only the layers in ``int8_layers``."""
    torchao()
    from torchao.quantization.pt2e.quantizer import Quantizer

    check_method(method)

    class HybridQuantizer(_Annotator, Quantizer):
        pass

    return HybridQuantizer(set(int8_layers), method)


class _Annotator:
    def __init__(self, int8_layers: set[str], method: str):
        super().__init__()
        self.int8_layers = int8_layers
        self.method = method

    def transform_for_annotation(self, model):
        return model

    def validate(self, model) -> None:
        pass

    def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
        from torchao.quantization.pt2e.quantizer import (
            QuantizationAnnotation,
            SharedQuantizationSpec,
        )

        act, weight, fixed = _specs(self.method)
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            kind = _KINDS.get(node.target)
            if kind is not None and layer_of(node) in self.int8_layers:
                inputs = _tensor_inputs(node, kind)
                if not inputs:
                    continue
                qmap = {a: _shared_or(a, act, SharedQuantizationSpec) for a in inputs}
                output = fixed if kind in _FIXED_OUTPUT else act
                if kind in WEIGHTED:
                    qmap[node.args[1]] = weight
                elif kind == "cat":  # one scale for every input and the output (TFLite CONCATENATION)
                    first = SharedQuantizationSpec((inputs[0], node))
                    qmap = {a: (act if i == 0 else first) for i, a in enumerate(inputs)}
                    output = first
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=qmap, output_qspec=output, _annotated=True)
            elif _passes(node) and _is_float_tensor(node):
                src = node.args[0]
                ann = src.meta.get("quantization_annotation") if isinstance(src, torch.fx.Node) else None
                if ann is None or ann.output_qspec is None:
                    continue
                if node.target is operator.getitem:  # one tensor of a split: shares what was split
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        output_qspec=SharedQuantizationSpec(src.args[0]), _annotated=True)
                    continue
                shared = SharedQuantizationSpec(src) if _is_float_tensor(src) else ann.output_qspec
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={src: shared}, output_qspec=shared, _annotated=True)
        return gm


def _passes(node: torch.fx.Node) -> bool:
    """A value-preserving op: reshapes, transposes, splits and the getitem that picks a split's part."""
    return node.op == "call_function" and (node.target in _PASSTHROUGH or node.target is operator.getitem)


def _shared_or(arg: torch.fx.Node, spec, shared_cls):
    """The producer's own quantization when ``arg`` is already quantized: one scale per tensor, as TFLite
    requires across RESHAPE / TRANSPOSE and after the fixed-range LOGISTIC / SOFTMAX."""
    ann = arg.meta.get("quantization_annotation")
    if ann is not None and ann.output_qspec is not None:
        return shared_cls(arg)
    return spec


def _specs(method: str):
    """(activation, weight, fixed-range output) quantization specs: int8 everywhere, so one plan fits
    every target; ONNX Runtime's uint8 activations are derived at export by shifting zero points."""
    from torchao.quantization.pt2e.observer import (
        HistogramObserver,
        MinMaxObserver,
        PerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import (
        FixedQParamsQuantizationSpec,
        QuantizationSpec,
    )

    observer = percentile_observer() if method == "percentile" else {"minmax": MinMaxObserver,
                                                                    "histogram": HistogramObserver}[method]
    act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                           is_dynamic=False, observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False,
                              observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=2**-12))
    fixed = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=1 / 256, zero_point=-128, quant_min=-128,
                                         quant_max=127, qscheme=torch.per_tensor_affine)
    return act, weight, fixed


_PERCENTILE_CLASS = None


def percentile_observer(percentile: float = 99.99):
    """A min/max observer that clips each batch to its [100-p, p] percentiles (averaged over batches):
    one outlier activation no longer stretches the range of every other value."""
    global _PERCENTILE_CLASS
    if _PERCENTILE_CLASS is not None:
        return _PERCENTILE_CLASS
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class PercentileObserver(MinMaxObserver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.batches = 0

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            x = x_orig.detach().float().flatten()
            if x.numel() > 1 << 22:  # torch.quantile's input limit; an even subsample keeps the estimate
                x = x[:: -(-x.numel() // (1 << 22))]
            q = torch.quantile(x, torch.tensor([1 - percentile / 100, percentile / 100]))
            n = self.batches
            lo = q[0] if n == 0 else (self.min_val * n + q[0]) / (n + 1)
            hi = q[1] if n == 0 else (self.max_val * n + q[1]) / (n + 1)
            self.min_val.resize_(lo.shape).copy_(lo)
            self.max_val.resize_(hi.shape).copy_(hi)
            self.batches = n + 1
            return x_orig

    _PERCENTILE_CLASS = PercentileObserver
    return PercentileObserver


@dataclass
class Calibrated:
    """A captured graph with observers everywhere the plan could quantize, calibrated once."""

    prepared: torch.fx.GraphModule
    layers: dict[str, Layer]
    samples: int
    method: str
    batch_size: int = 1
    held_out: torch.Tensor | None = None  # samples kept out of calibration, for sensitivity and drift

    def report(self, float_kinds: Iterable[str] = ()) -> list[dict]:
        """Every layer's precision and why, as the manifest lists them (with the target's float kinds)."""
        skip = set(float_kinds)
        rows = []
        for layer in self.layers.values():
            row = layer.to_dict()
            floated = sorted({k for k in layer.kinds if k in skip})
            if layer.precision == "int8" and floated:
                row["float_ops"] = floated
                row["reason"] += f"; {', '.join(floated)} in float on this target (its int8 kernel is slower)"
            rows.append(row)
        return rows


def capture(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.export`` of the model with SiLU split, as a GraphModule PT2E can annotate."""
    torchao()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gm = torch.export.export(split_silu(model).eval(), (example,)).module()
        except Exception as exc:
            raise EdgeHybridError(f"torch.export could not capture the model for INT8 quantization: "
                                  f"{str(exc).splitlines()[0][:300]}") from exc
    fold_channel_scales(gm)
    return gm


_BN = _A.batch_norm.default


def fold_channel_scales(gm: torch.fx.GraphModule) -> int:
    """Fold eval-mode BatchNorm and per-channel constant scales (LayerScale's ``x * gamma``) into the conv or
    linear that feeds them, when that conv / linear has no other user. Returns how many ops were folded.

    Same numbers (to float rounding), fewer ops on every target. It also keeps the conv int8 on LiteRT:
    a float ``MUL`` by a constant behind an int8 conv's QUANTIZE / DEQUANTIZE is folded back into the conv by
    the converter, which then runs the conv in float on dequantized weights."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (_A.conv2d.default, _A.linear.default):
            continue
        if len(node.args) < 2 or _constant(gm, node.args[1]) is None or (
                len(node.args) > 2 and node.args[2] is not None and _constant(gm, node.args[2]) is None):
            continue  # weights computed at run time: nothing to fold into
        while len(node.users) == 1:
            user = next(iter(node.users))
            scale_shift = _bn_affine(gm, user, node) or _scale_affine(gm, user, node)
            if scale_shift is None:
                break
            _fold_affine(gm, node, *scale_shift)
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
            folded += 1
    if folded:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return folded


def _channels(node: torch.fx.Node) -> int | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        return None
    return int(val.shape[1] if node.target is _A.conv2d.default else val.shape[-1])


def _bn_affine(gm, user: torch.fx.Node, prod: torch.fx.Node):
    """(scale, shift) of an eval-mode BatchNorm right after a conv, else None."""
    if (user.target is not _BN or prod.target is not _A.conv2d.default or len(user.args) < 8
            or user.args[0] is not prod):
        return None
    _, w, b, mean, var, training, _momentum, eps = user.args[:8]
    if training or mean is None or var is None:
        return None
    consts = [_constant(gm, a) if a is not None else None for a in (w, b, mean, var)]
    if any(c is None for c, a in zip(consts, (w, b, mean, var)) if a is not None):
        return None
    w, b, mean, var = consts
    scale = torch.rsqrt(var.double() + eps) * (w.double() if w is not None else 1.0)
    shift = (b.double() if b is not None else 0.0) - mean.double() * scale
    return scale, shift


def _scale_affine(gm, user: torch.fx.Node, prod: torch.fx.Node):
    """(scale, 0) of ``prod * c`` / ``c * prod`` with ``c`` a constant of one value per output channel."""
    if user.target is not _A.mul.Tensor or len(user.args) != 2 or prod not in user.args:
        return None
    other = user.args[1] if user.args[0] is prod else user.args[0]
    c = _constant(gm, other) if isinstance(other, torch.fx.Node) else None
    channels, out = _channels(prod), prod.meta["val"]
    if c is None or channels is None or c.dim() > out.dim():
        return None
    shape = [1] * (out.dim() - c.dim()) + list(c.shape)
    axis = 1 if prod.target is _A.conv2d.default else out.dim() - 1
    if any(n != 1 for i, n in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return c.reshape(-1).double().expand(channels), 0.0


def _constant(gm, node: torch.fx.Node, depth: int = 0) -> torch.Tensor | None:
    """The value of a parameter / buffer, or of views of one; None for anything computed from the input."""
    if node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, torch.Tensor) else None
    if depth > 4 or node.op != "call_function" or node.target not in _PASSTHROUGH:
        return None
    src = _constant(gm, node.args[0], depth + 1) if isinstance(node.args[0], torch.fx.Node) else None
    return None if src is None else node.target(src, *node.args[1:], **node.kwargs)


def _fold_affine(gm, node: torch.fx.Node, scale: torch.Tensor, shift) -> None:
    """Rewrite conv / linear ``node`` to compute ``node(x) * scale + shift`` (per output channel)."""
    args = list(node.args) + [None] * (3 - len(node.args))
    weight = _constant(gm, args[1])
    bias = _constant(gm, args[2]) if args[2] is not None else None
    scale = scale.to(torch.float64)
    new_w = (weight.double() * scale.reshape(-1, *[1] * (weight.dim() - 1))).to(weight.dtype)
    new_b = (bias.double() if bias is not None else torch.zeros_like(scale)) * scale + shift
    with gm.graph.inserting_before(node):
        for i, value in ((1, new_w), (2, new_b.to(weight.dtype))):
            name = f"_folded_{node.name}_{'weight' if i == 1 else 'bias'}"
            gm.register_buffer(name, value.contiguous())
            args[i] = gm.graph.get_attr(name)
            args[i].meta["val"] = value
    node.args = tuple(args)


def calibrate(gm: torch.fx.GraphModule, batches: Iterable[torch.Tensor], batch_size: int = 1,
              method: str = "minmax", holdout: int = 0,
              progress: Callable[[int], None] = lambda _n: None) -> Calibrated:
    """Observe every quantizable layer over ``batches`` (streamed: one batch in memory at a time).

    The first ``holdout`` samples are kept aside (not observed) for sensitivity and drift measurement.
    The captured graph has a static batch size, so samples are fed ``batch_size`` at a time.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    layers = layers_of(gm)
    if not layers:
        raise EdgeHybridError("the model has no layer INT8 can quantize (no conv, linear or matmul found)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(gm, make_quantizer(layers, method))
    samples, kept = 0, []
    pending = torch.empty(0)
    with torch.no_grad():
        for batch in batches:
            pending = torch.cat([pending, batch]) if len(pending) else batch
            while len(pending) >= batch_size:
                chunk, pending = pending[:batch_size], pending[batch_size:]
                if sum(len(k) for k in kept) < holdout:
                    kept.append(chunk)
                else:
                    prepared(chunk)
                    samples += batch_size
                progress(len(chunk))
    if samples == 0:
        raise EdgeHybridError(f"the calibration set has too few samples ({sum(len(k) for k in kept)} held out for "
                              "measurement, none left to calibrate on); pass more images with --calib")
    held_out = torch.cat(kept) if kept else None
    return Calibrated(prepared, layers, samples, method, batch_size, held_out)


def apply_float_layers(layers: dict[str, Layer], names: Iterable[str], reason: str) -> None:
    """Mark user-named layers float (``--float-layers``); unknown names get a did-you-mean."""
    for name in names:
        if name not in layers:
            raise UnknownNameError.for_choice("layer", name, layers, hint="see the layer names in the manifest "
                                              "or the --sensitivity table")
        layers[name].precision, layers[name].reason = "float", reason


def int8_nodes(layers: dict[str, Layer], float_kinds: Iterable[str] = ()) -> set[str]:
    """Names of the graph nodes that run in int8: those of int8 layers, less the kinds a target keeps in
    float because its int8 kernel is slower than float (see ``Exporter.float_kinds``)."""
    skip = set(float_kinds)
    return {node for layer in layers.values() if layer.precision == "int8"
            for node, kind in zip(layer.nodes, layer.kinds) if kind not in skip}


def float_output_nodes(layers: dict[str, Layer], kinds: Iterable[str] = ()) -> set[str]:
    """Nodes of ``kinds`` (``Exporter.float_output_kinds``): int8 ops the target can run with a float output
    (ONNX Runtime's MatMulIntegerToFloat), so one feeding only float ops needs no quantized output."""
    keep = set(kinds)
    return {node for layer in layers.values() for node, kind in zip(layer.nodes, layer.kinds) if kind in keep}


def finalize(cal: Calibrated, float_kinds: Iterable[str] = (), fold_quantize: bool = True,
             float_output_kinds: Iterable[str] = ()) -> torch.fx.GraphModule:
    """The quantized graph for the plan: observers that serve no int8 node are removed, the rest become
    quantize/dequantize pairs (``convert_pt2e``). The calibrated graph itself is left untouched."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = copy.deepcopy(cal.prepared)
    int8 = int8_nodes(cal.layers, float_kinds)
    if not int8:
        raise EdgeHybridError("every layer is in float: there is nothing left to quantize; loosen --max-drift "
                              "or drop --float-layers")
    skipped = int8_nodes(cal.layers) - int8  # int8 layers' nodes a target runs in float
    float_out = float_output_nodes(cal.layers, float_output_kinds)
    graph = prepared.graph
    for node in list(graph.nodes):
        edge = observer_edge(node)
        if edge is None:
            continue
        if not keep_edge(*edge, int8, skipped, float_out):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.eliminate_dead_code()
    prepared.recompile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return QuantizedGraph(convert_pt2e(prepared, fold_quantize=fold_quantize))


class QuantizedGraph(nn.Module):
    """A converted PT2E graph behind a plain module: exporters may call ``.eval()`` (which PT2E graphs
    refuse; the graph has no train-mode behaviour left to switch) and re-export it."""

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__()
        self.quantized = graph

    def train(self, mode: bool = True) -> QuantizedGraph:
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized(x)


def keep_edge(producers: set[str], consumers: set[str], int8: set[str], skipped: set[str],
              float_out: set[str] = frozenset()) -> bool:
    """Whether an observed edge is quantized: an int8 node consumes it, or an int8 node produces it, unless
    every consumer is a node the target keeps in float and every int8 producer can hand it a float output
    (``float_out``). Elsewhere an int8 op needs its int8 output: without it, converters fall back to a
    float kernel for the op itself (LiteRT's CONV_2D / FULLY_CONNECTED run on dequantized weights)."""
    if consumers & int8:
        return True
    made = producers & int8
    return bool(made) and not (consumers <= skipped and made <= float_out)


def observer_edge(node: torch.fx.Node) -> tuple[set[str], set[str]] | None:
    """For an observer node: (producer nodes, consumer nodes) of the edge it observes, looking through
    reshapes and other value-preserving ops; None for any other node."""
    if not _is_observer(node):
        return None
    consumers: set[str] = set()
    for user in node.users:
        consumers |= _downstream(user)
    return _upstream(node.args[0]), consumers


def _is_observer(node: torch.fx.Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith("activation_post_process_")


def _upstream(node: torch.fx.Node, depth: int = 0) -> set[str]:
    if node.op == "call_function" and node.target in _KINDS:
        return {node.name}
    if depth < 16 and node.op in ("call_function", "call_module") and node.args and isinstance(node.args[0], torch.fx.Node):
        if _is_observer(node) or _passes(node):
            return _upstream(node.args[0], depth + 1)
    return set()


def _downstream(node: torch.fx.Node, depth: int = 0) -> set[str]:
    if node.op == "call_function" and node.target in _KINDS:
        return {node.name}
    if depth < 16 and (_is_observer(node) or _passes(node)):
        out: set[str] = set()
        for user in node.users:
            out |= _downstream(user, depth + 1)
        return out
    return set()
