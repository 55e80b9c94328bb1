"""What the INT8 plan quantizes: op kinds with one table of traits, the plan's layers, a target's policy.

Every aten op the plan can quantize maps to an :class:`OpKind`; what a kind *is* (does it carry weights,
which of its arguments are activations, is its output range fixed, does it cost MACs) is read from
:data:`TRAITS`, never from a list of strings kept beside it. A target says which kinds it runs in float
through a :class:`QuantPolicy`, typed, so a misspelt kind is an error at import instead of a silent no-op.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field

import torch


class OpKind(str, enum.Enum):
    CONV = "conv"
    LINEAR = "linear"
    MATMUL = "matmul"
    ADD = "add"
    MUL = "mul"
    SIGMOID = "sigmoid"
    SOFTMAX = "softmax"
    LAYER_NORM = "layer_norm"
    GELU = "gelu"
    ACT = "act"  # hardswish, silu, relu, relu6 (or hardtanh)
    POOL = "pool"
    CAT = "cat"

    def __str__(self) -> str:
        return self.value


class Inputs(enum.Enum):
    """Which arguments of a node are its activation inputs."""

    FIRST = "first"  # args[0]: convolutions, linears, unary ops
    ALL_LISTED = "all"  # every tensor in args[0]: concatenation
    BINARY = "binary"  # args[0] and args[1] when both are float tensors (a scalar operand is not worth it)
    PAIR = "pair"  # args[0] and args[1], whatever they are (matmul)


@dataclass(frozen=True)
class Traits:
    inputs: Inputs
    weighted: bool = False  # carries a weight in args[1] (per-channel int8, the main win on every runtime)
    fixed_output: bool = False  # TFLite requires scale 1/256, zero point -128 for LOGISTIC / SOFTMAX
    macs: bool = False  # counted in the plan's MACs


TRAITS: dict[OpKind, Traits] = {
    OpKind.CONV: Traits(Inputs.FIRST, weighted=True, macs=True),
    OpKind.LINEAR: Traits(Inputs.FIRST, weighted=True, macs=True),
    OpKind.MATMUL: Traits(Inputs.PAIR, macs=True),
    OpKind.ADD: Traits(Inputs.BINARY),
    OpKind.MUL: Traits(Inputs.BINARY),
    OpKind.SIGMOID: Traits(Inputs.FIRST, fixed_output=True),
    OpKind.SOFTMAX: Traits(Inputs.FIRST, fixed_output=True),
    OpKind.LAYER_NORM: Traits(Inputs.FIRST),
    OpKind.GELU: Traits(Inputs.FIRST),
    OpKind.ACT: Traits(Inputs.FIRST),
    OpKind.POOL: Traits(Inputs.FIRST),
    OpKind.CAT: Traits(Inputs.ALL_LISTED),
}

#: kinds that carry weights, and every other kind (what a target that runs only weighted ops in int8 keeps float)
WEIGHTED = frozenset(k for k, t in TRAITS.items() if t.weighted)
UNWEIGHTED = frozenset(k for k, t in TRAITS.items() if not t.weighted)

_A = torch.ops.aten
#: aten op -> kind
KIND_OF = {
    _A.conv2d.default: OpKind.CONV, _A.conv1d.default: OpKind.CONV, _A.linear.default: OpKind.LINEAR,
    _A.matmul.default: OpKind.MATMUL, _A.bmm.default: OpKind.MATMUL,
    _A.add.Tensor: OpKind.ADD, _A.mul.Tensor: OpKind.MUL,
    _A.sigmoid.default: OpKind.SIGMOID, _A.softmax.int: OpKind.SOFTMAX, _A._softmax.default: OpKind.SOFTMAX,
    _A.layer_norm.default: OpKind.LAYER_NORM, _A.gelu.default: OpKind.GELU, _A.hardswish.default: OpKind.ACT,
    _A.silu.default: OpKind.ACT, _A.relu.default: OpKind.ACT, _A.hardtanh.default: OpKind.ACT,
    _A.relu6.default: OpKind.ACT,
    _A.adaptive_avg_pool2d.default: OpKind.POOL, _A.avg_pool2d.default: OpKind.POOL, _A.mean.dim: OpKind.POOL,
    _A.cat.default: OpKind.CAT,
}
#: ops that only move or select values: they share their input's quantization parameters
PASSTHROUGH = frozenset({
    _A.reshape.default, _A.view.default, _A.permute.default, _A.transpose.int, _A.flatten.using_ints,
    _A.squeeze.dim, _A.unsqueeze.default, _A.contiguous.default, _A.clone.default, _A.max_pool2d.default,
    _A.split.Tensor, _A.split_with_sizes.default, _A.chunk.default, _A.select.int, _A.slice.Tensor,
    _A.t.default, _A.expand.default, _A.flip.default, _A.pixel_shuffle.default, _A.pixel_unshuffle.default,
})


@dataclass(frozen=True)
class QuantPolicy:
    """How a target runs the one plan: part of every exporter's contract (``Exporter.quant_policy``).

    ``float_kinds``: kinds it runs in float even inside an int8 layer, because its int8 kernel measured
    slower than float plus the quantize/dequantize around it. ``float_output_kinds``: kinds whose int8 kernel
    can write a float output (ONNX Runtime's MatMulIntegerToFloat), so an int8 op feeding only float ops
    needs no quantized output. ``fold_quantize``: int8 weights stored folded (True) or as float + quantize.
    ``activation_storage``: how the file stores int8 activations, said in the manifest.
    ``fold_rescales``: a multiply by a positive constant after an int8 tensor is folded into its consumers'
    dequantize step (:func:`calibration.quantize.drop_exact_rescales`); only where the file keeps a scale per
    dequantize (ONNX). LiteRT's converter keeps one scale per tensor and would read the folded step wrongly.
    ``requantize_float_concat``: the target's converter turns a float concatenation between quantized tensors
    into an int8 one that requantizes each input (LiteRT's CONCATENATION); a slice or reshape feeding it then
    keeps its quantize (:func:`calibration.quantize._after_quantized_move`), since a slice cannot take the
    concatenation's scale. Not where int8 concatenation needs one scale everywhere (XNNPACK under ExecuTorch
    refuses the node).
    ``unaccelerated_int8``: (aten op, why) pairs for ops the target's converter turns into an int8 kernel
    whenever their input and output are both quantized, but whose int8 kernel the runtime's accelerator lacks,
    so it runs outside it and splits the accelerated graph. The plan keeps one side of each such op in float
    (:func:`calibration.quantize.isolate_unaccelerated`).
    """

    float_kinds: frozenset[OpKind] = frozenset()
    float_output_kinds: frozenset[OpKind] = frozenset()
    fold_quantize: bool = True
    activation_storage: str = "int8"
    fold_rescales: bool = False
    requantize_float_concat: bool = False
    unaccelerated_int8: tuple[tuple[torch._ops.OpOverload, str], ...] = ()

    def __post_init__(self) -> None:
        for what in ("float_kinds", "float_output_kinds"):
            kinds = getattr(self, what)
            bad = [k for k in kinds if not isinstance(k, OpKind)]
            if bad:
                raise TypeError(f"QuantPolicy.{what} takes OpKind members, got {bad!r}")
            object.__setattr__(self, what, frozenset(kinds))
        bad = [op for op, _why in self.unaccelerated_int8 if not isinstance(op, torch._ops.OpOverload)]
        if bad:
            raise TypeError(f"QuantPolicy.unaccelerated_int8 takes (aten op overload, reason) pairs, got {bad!r}")

    def float_kind_names(self) -> list[str]:
        return sorted(k.value for k in self.float_kinds)


# --------------------------------------------------------------------------------------------- layers


@dataclass
class Layer:
    """One plan entry: the quantizable nodes called inside one module."""

    name: str
    kinds: list[OpKind] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    macs: int = 0
    precision: str = "int8"
    reason: str = "quantized: int8 kernels on every target"
    sensitivity_sqnr_db: float | None = None

    def to_dict(self) -> dict:
        return {"layer": self.name, "ops": sorted({k.value for k in self.kinds}), "precision": self.precision,
                "reason": self.reason, "macs": self.macs, "sensitivity_sqnr_db": self.sensitivity_sqnr_db}


def op_name(op: torch._ops.OpOverload) -> str:
    """An aten overload as people name it: ``hardswish`` for ``aten::hardswish``."""
    return str(op.name()).replace("aten::", "")


def kind_of(node: torch.fx.Node) -> OpKind | None:
    return KIND_OF.get(node.target) if node.op == "call_function" else None


def layer_of(node: torch.fx.Node) -> str:
    """The innermost module path a node was called in (``<root>`` for the model itself)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<root>"
    # torch.export spells nested attribute paths with dots, list indices included: 'stages.2.1.conv'
    return list(stack.values())[-1][0] or "<root>"


def layers_of(gm: torch.fx.GraphModule) -> dict[str, Layer]:
    """Every quantizable node grouped by layer, in graph order, with the MACs each layer costs."""
    layers: dict[str, Layer] = {}
    for node in gm.graph.nodes:
        kind = kind_of(node)
        if kind is None or not tensor_inputs(node, kind):
            continue
        name = layer_of(node)
        layer = layers.setdefault(name, Layer(name))
        layer.kinds.append(kind)
        layer.nodes.append(node.name)
        layer.macs += _macs(node, kind)
    return layers


def tensor_inputs(node: torch.fx.Node, kind: OpKind) -> list[torch.fx.Node]:
    """The activation inputs of a node (weights and scalars excluded), as its kind's traits say."""
    rule = TRAITS[kind].inputs
    if rule is Inputs.FIRST:
        first = node.args[0]
        return [first] if isinstance(first, torch.fx.Node) else []
    if rule is Inputs.ALL_LISTED:
        return [a for a in node.args[0] if isinstance(a, torch.fx.Node)]
    tensors = [a for a in node.args[:2] if isinstance(a, torch.fx.Node) and is_float_tensor(a)]
    return tensors if len(tensors) == 2 or rule is Inputs.PAIR else []


def is_float_tensor(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point() and val.dim() > 0


def passes(node: torch.fx.Node) -> bool:
    """A value-preserving op: reshapes, transposes, splits and the getitem that picks a split's part."""
    return node.op == "call_function" and (node.target in PASSTHROUGH or node.target is operator.getitem)


#: activations that clamp below at zero: fused into the conv / linear before them by every int8 runtime
#: (ONNX Runtime's QLinearConv through a zero point at the bottom of the range, TFLite's fused activation,
#: XNNPACK's output clamp), so that conv / linear is quantized after the activation, not before it
_CLAMPS = (_A.relu.default, _A.relu6.default, _A.hardtanh.default)
#: marks an activation fused into its producer (set by the annotator, read by the plan's edge rules)
FUSED = "edgehybrid_fused_activation"


def fusable_activation(node: torch.fx.Node) -> torch.fx.Node | None:
    """The conv / linear that ``node`` (a ReLU, or a hardtanh clamping at or above zero: ReLU6) can be fused
    into, when that conv / linear feeds nothing else; else None."""
    if node.op != "call_function" or node.target not in _CLAMPS or not node.args:
        return None
    if node.target is _A.hardtanh.default:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        if not isinstance(low, (int, float)) or low < 0:
            return None
    src = node.args[0]
    if not (isinstance(src, torch.fx.Node) and kind_of(src) in (OpKind.CONV, OpKind.LINEAR) and len(src.users) == 1):
        return None
    return src


def _macs(node: torch.fx.Node, kind: OpKind) -> int:
    out = node.meta.get("val")
    if not TRAITS[kind].macs or not isinstance(out, torch.Tensor):
        return 0
    if kind is OpKind.CONV:
        return int(out.numel() * node.args[1].meta["val"][0].numel())
    return int(out.numel() * node.args[0].meta["val"].shape[-1])


#: ops that neither compute nor move values (shape bookkeeping, asserts, no-op copies)
_BOOKKEEPING = ("sym_size", "sym_numel", "sym_stride", "_assert", "alias", "detach", "dropout", "lift_fresh",
                "scalar_tensor", "arange", "zeros", "ones", "full", "empty", "_to_copy")


def unplanned_ops(gm: torch.fx.GraphModule) -> list[dict]:
    """Ops that compute but that the plan has no kind for (``erf``, ``exp``, ``cumsum`` ...): they run in
    float between a dequantize and a quantize, never quantized by guess. One row per (op, layer), with a count,
    in graph order, for the manifest and the log."""
    rows: dict[tuple[str, str], dict] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or kind_of(node) is not None or passes(node):
            continue
        name = getattr(node.target, "__name__", str(node.target))
        op = str(getattr(node.target, "_overloadpacket", name)).replace("aten.", "")
        if any(op.split(".")[0].startswith(b) for b in _BOOKKEEPING) or "quantize" in op:
            continue
        if not is_float_tensor(node):
            continue
        key = (op, layer_of(node))
        rows.setdefault(key, {"op": op, "layer": key[1], "count": 0})["count"] += 1
    return list(rows.values())
