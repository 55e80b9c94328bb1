"""One INT8 quantization plan for every target: capture, calibration, per-layer precision, the final graph.

The model is captured once with ``torch.export`` (SiLU split, BatchNorm and LayerScale folded:
:mod:`calibration.fold`); :mod:`calibration.annotate`'s quantizer puts observers on every quantizable node of
every layer (:mod:`calibration.ops`: a layer is the innermost ``nn.Module`` a node was called in, such as
``stages.2.1.transformer.0.attn``, so the plan reads like the model and a user can name layers to keep in
float). Calibration runs once. The calibrated, observed graph then serves three uses without another pass:
sensitivity (each layer alone in int8, see :mod:`calibration.sensitivity`), the drift-budget search, and the
final graph for one target: observers that serve no int8 node under the target's :class:`QuantPolicy` are
dropped, and ``convert_pt2e`` turns the rest into quantize/dequantize pairs that torch.onnx (QDQ), litert-torch
(full int8), coremltools (W8A8) and ExecuTorch (XNNPACK) lower.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from calibration.annotate import (
    CALIB_METHODS,
    DEFAULT_METHOD,
    CalibrationMethod,
    check_method,
    constant_factor,
    make_quantizer,
    torchao,
)
from calibration.fold import bypass, drop_eval_dropout, fold_channel_scales, split_silu, tidy
from calibration.ops import FUSED, KIND_OF, Layer, OpKind, QuantPolicy, layer_of, layers_of, op_name, passes
from edgehybrid.errors import EdgeHybridError, UnknownNameError

__all__ = ["CALIB_METHODS", "CalibrationMethod", "Calibrated", "QuantizedGraph", "apply_float_layers", "calibrate",
           "capture", "check_method", "finalize", "float_output_nodes", "int8_nodes", "isolate_unaccelerated",
           "keep_edge", "observer_edge", "plan_nodes"]


@dataclass
class Calibrated:
    """A captured graph with observers everywhere the plan could quantize, calibrated once."""

    prepared: torch.fx.GraphModule
    layers: dict[str, Layer]
    samples: int
    method: CalibrationMethod
    batch_size: int = 1
    held_out: torch.Tensor | None = None  # samples kept out of calibration, for sensitivity and drift

    def report(self, float_kinds: Iterable[OpKind] = ()) -> list[dict]:
        """Every layer's precision and why, as the manifest lists them (with the target's float kinds)."""
        skip = set(float_kinds)
        rows = []
        for layer in self.layers.values():
            row = layer.to_dict()
            floated = sorted({k.value for k in layer.kinds if k in skip})
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
    drop_eval_dropout(gm)
    fold_channel_scales(gm)
    return gm


def calibrate(gm: torch.fx.GraphModule, batches: Iterable[torch.Tensor], batch_size: int = 1,
              method: CalibrationMethod | str = DEFAULT_METHOD, holdout: int = 0,
              progress: Callable[[int], None] = lambda _n: None) -> Calibrated:
    """Observe every quantizable layer over ``batches`` (streamed: one batch in memory at a time).

    The first ``holdout`` samples are kept aside (not observed) for sensitivity and drift measurement.
    The captured graph has a static batch size, so samples are fed ``batch_size`` at a time.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    method = CalibrationMethod.parse(method)
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
    freeze_ranges(prepared)
    return Calibrated(prepared, layers, samples, method, batch_size, held_out)


def freeze_ranges(prepared: torch.fx.GraphModule) -> None:
    """Replace each calibrated histogram observer with a min/max observer holding the range it chose.

    A histogram observer searches its L2-optimal range every time its parameters are asked for; the plan asks
    once per simulation and once per finalized graph (a latency search finalizes five), 300 observers each.
    The min/max observer computes the same scale and zero point from the stored range (the same
    ``_calculate_qparams``), so the search runs once. Shared observers stay shared."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    frozen: dict[int, nn.Module] = {}
    for name, module in list(prepared.named_children()):
        if not isinstance(module, HistogramObserver):
            continue
        if id(module) not in frozen:
            lo, hi = module._non_linear_param_search() if module.histogram.sum() > 0 else (module.min_val,
                                                                                          module.max_val)
            fixed = MinMaxObserver(dtype=module.dtype, qscheme=module.qscheme, quant_min=module.quant_min,
                                   quant_max=module.quant_max, eps=float(module.eps))
            fixed.min_val.resize_(lo.shape).copy_(lo)
            fixed.max_val.resize_(hi.shape).copy_(hi)
            frozen[id(module)] = fixed
        setattr(prepared, name, frozen[id(module)])
    for module in prepared.children():  # derived ranges (a rescale's) read the frozen observers from now on
        sources = getattr(module, "obs_or_fqs", None)
        if isinstance(sources, list):
            module.obs_or_fqs = [frozen.get(id(m), m) for m in sources]


def apply_float_layers(layers: dict[str, Layer], names: Iterable[str], reason: str) -> None:
    """Mark user-named layers float (``--float-layers``); unknown names get a did-you-mean."""
    for name in names:
        if name not in layers:
            raise UnknownNameError.for_choice("layer", name, layers, hint="see the layer names in the manifest "
                                              "or the --sensitivity table")
        layers[name].precision, layers[name].reason = "float", reason


def isolate_unaccelerated(cal: Calibrated, policy: QuantPolicy, target: str) -> list[str]:
    """Keep one side of each of ``policy.unaccelerated_int8``'s ops in float, so that no such op has both a
    quantized input and a quantized output and the converter never writes its int8 kernel. The side whose int8
    layers cost fewer MACs goes float (in an MBConv: the depthwise convolution between two HardSwish). The
    layers are marked with the reason; returns their names."""
    why_of = dict(policy.unaccelerated_int8)
    marked: list[str] = []
    if not why_of:
        return marked
    layer_of_node = {node: name for name, layer in cal.layers.items() for node in layer.nodes}
    for node in cal.prepared.graph.nodes:
        if node.op != "call_function" or node.target not in why_of or not node.args:
            continue
        int8 = int8_nodes(cal.layers, policy.float_kinds)
        before = _upstream(node.args[0]) & int8
        after = set().union(*(_downstream(user) for user in node.users)) & int8
        if not before or not after:
            continue
        sides = [sorted({layer_of_node[n] for n in side}) for side in (before, after)]
        cheaper = min(sides, key=lambda names: sum(cal.layers[n].macs for n in names))
        for layer in (cal.layers[n] for n in cheaper):
            layer.precision = "float"
            layer.reason = (f"kept in float on {target} beside {op_name(node.target)} ({layer_of(node)}), "
                            f"the cheaper side: {why_of[node.target]}")
            marked.append(layer.name)
    return marked


def int8_nodes(layers: dict[str, Layer], float_kinds: Iterable[OpKind] = ()) -> set[str]:
    """Names of the graph nodes that run in int8: those of int8 layers, less the kinds a target keeps in
    float because its int8 kernel is slower than float (``QuantPolicy.float_kinds``)."""
    skip = set(float_kinds)
    return {node for layer in layers.values() if layer.precision == "int8"
            for node, kind in zip(layer.nodes, layer.kinds) if kind not in skip}


def float_output_nodes(layers: dict[str, Layer], kinds: Iterable[OpKind] = ()) -> set[str]:
    """Nodes of ``kinds`` (``QuantPolicy.float_output_kinds``): int8 ops the target can run with a float output
    (ONNX Runtime's MatMulIntegerToFloat), so one feeding only float ops needs no quantized output."""
    keep = set(kinds)
    return {node for layer in layers.values() for node, kind in zip(layer.nodes, layer.kinds) if kind in keep}


def plan_nodes(layers: dict[str, Layer], policy: QuantPolicy, float_layers: Iterable[str] = ()) -> set[str]:
    """The int8 nodes of the plan on a target with ``policy``, less the layers in ``float_layers`` (a latency
    search's candidate keeps some layers float beyond the plan's own)."""
    skip = set(float_layers)
    return int8_nodes({n: layer for n, layer in layers.items() if n not in skip}, policy.float_kinds)


def finalize(cal: Calibrated, policy: QuantPolicy = QuantPolicy(), float_layers: Iterable[str] = ()) -> nn.Module:
    """The quantized graph of the plan for a target with ``policy`` (and ``float_layers`` kept float too):
    observers that serve no int8 node are removed, the rest become quantize/dequantize pairs
    (``convert_pt2e``). The calibrated graph is untouched."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared = copy.deepcopy(cal.prepared)
    int8 = plan_nodes(cal.layers, policy, float_layers)
    if not int8:
        raise EdgeHybridError("every layer is in float: there is nothing left to quantize; loosen --max-drift "
                              "or drop --float-layers")
    skipped = int8_nodes(cal.layers) - int8  # int8 layers' nodes a target runs in float
    float_out = float_output_nodes(cal.layers, policy.float_output_kinds)
    graph = prepared.graph
    concats = ({n.name for n in graph.nodes if KIND_OF.get(n.target) is OpKind.CAT}
               if policy.requantize_float_concat else set())  # see _after_quantized_move
    removed = 0
    for node in list(graph.nodes):
        edge = observer_edge(node)
        if edge is None:
            continue
        if not keep_edge(*edge, int8, skipped, float_out) and not (edge[1] & concats and _after_quantized_move(node)):
            bypass(prepared, node, node.args[0])
            removed += 1
    tidy(prepared, removed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_pt2e(prepared, fold_quantize=policy.fold_quantize)
    if policy.fold_rescales:
        drop_exact_rescales(converted)
    return QuantizedGraph(converted)


def drop_exact_rescales(gm: torch.fx.GraphModule) -> int:
    """Remove ``quantize(dequantize(q, s, z) * c, s * c, z)``: the int8 values are ``q`` itself, so its
    consumers read ``q`` (their dequantize already carries ``s * c``). The annotator gives a multiply by a
    positive constant that derived range (attention's ``q * scale``); without this, ONNX Runtime runs it as a
    float multiply between a dequantize and a quantize. Only for files that keep a step per dequantize
    (``QuantPolicy.fold_rescales``). Returns how many were dropped."""
    q_ops = (torch.ops.quantized_decomposed.quantize_per_tensor.default,)
    dq_ops = (torch.ops.quantized_decomposed.dequantize_per_tensor.default,)
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in q_ops:
            continue
        mul = node.args[0]
        factor = constant_factor(mul, tensor_checked=False) if isinstance(mul, torch.fx.Node) else None
        dq = mul.args[0] if factor is not None else None
        if not (isinstance(dq, torch.fx.Node) and dq.op == "call_function" and dq.target in dq_ops):
            continue
        (scale, zero, lo, hi, dtype), (dq_scale, dq_zero, dq_lo, dq_hi, dq_dtype) = node.args[1:6], dq.args[1:6]
        if (zero, lo, hi, dtype) != (dq_zero, dq_lo, dq_hi, dq_dtype) or not math.isclose(
                scale, dq_scale * factor, rel_tol=1e-5):
            continue
        node.replace_all_uses_with(dq.args[0])
        dropped += 1
    return tidy(gm, dropped)


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


def _after_quantized_move(observer: torch.fx.Node) -> bool:
    """Whether ``observer`` sits after value-preserving ops (a slice, a reshape) whose input is still quantized.
    Where such an edge feeds a concatenation that runs in float, it stays (``QuantPolicy.requantize_float_concat``):
    converters move the int8 values through the slice either way; without its own quantize they give it the
    concatenation's scale, which a slice cannot change (LiteRT: "'tfl.slice' op quantization parameters violate
    the same scale constraint", CvT's class token). With it, the concatenation requantizes its input as it does
    any other."""
    src = observer.args[0]
    if not (isinstance(src, torch.fx.Node) and passes(src)):
        return False
    while isinstance(src, torch.fx.Node) and passes(src):
        src = src.args[0]
    return isinstance(src, torch.fx.Node) and _is_observer(src)  # else its observer is gone: not quantized


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
    if node.op == "call_function" and node.target in KIND_OF:
        if node.meta.get(FUSED):  # a ReLU fused into its conv: the quantize after it is the conv's output too
            return {node.name} | _upstream(node.args[0], depth + 1)
        return {node.name}
    source = node.args[0] if node.args and node.op in ("call_function", "call_module") else None
    if depth < 16 and isinstance(source, torch.fx.Node) and (_is_observer(node) or passes(node)):
        return _upstream(source, depth + 1)
    return set()


def _downstream(node: torch.fx.Node, depth: int = 0) -> set[str]:
    if node.op == "call_function" and node.target in KIND_OF:
        return {node.name}
    if depth < 16 and (_is_observer(node) or passes(node)):
        out: set[str] = set()
        for user in node.users:
            out |= _downstream(user, depth + 1)
        return out
    return set()
