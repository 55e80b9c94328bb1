"""Rewrites of the exported ONNX graph into the same real values in forms ONNX Runtime runs faster.

Every precision: ``gelu_for_ort`` (exact GELU in the order ONNX Runtime's GeluFusion recognizes).

INT8: ONNX Runtime runs a QDQ graph by fusing each ``DequantizeLinear -> op -> QuantizeLinear`` group into one
integer kernel (QLinearConv, QLinearAdd, QLinearMul, QLinearSigmoid ...). An op with no such kernel runs in
float between a dequantize and a quantize, and on its own layout, so the Transposes of ONNX Runtime's NHWC
integer path come back around it. Each pass here rewrites one pattern into the same real values in a form
ONNX Runtime fuses; each returns how many places it changed, which the artifact's ``details`` record.

- ``uint8_activations``: activations stored as uint8 for the u8 x s8 kernels.
- ``integer_hardswish``: ``HardSwish`` between a dequantize and a quantize as QLinearAdd + QLinearMul.
- ``gelu_for_ort(fused=True)``: GELU as one ``com.microsoft.Gelu`` between its dequantize and quantize.
- ``ort_optimized_ops``: the op counts of the graph ONNX Runtime actually runs, to show what it fused.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

_FLOAT_COMPUTE = ("Conv", "Gemm", "MatMul", "FusedMatMul", "Softmax", "LayerNormalization", "SkipLayerNormalization",
                  "Sigmoid", "Mul", "Add", "Gelu", "QuickGelu", "BiasGelu", "Erf", "HardSigmoid")


def uint8_activations(mp) -> int:
    """Store activation quantization as uint8 (zero point + 128, same scale: the same real values), keeping
    int8 weights: ONNX Runtime's x86 kernels are u8 x s8 (VNNI); with int8 activations most Convs stay
    float (6 of 35 fused on mobilevit_s). Returns the number of QuantizeLinear/DequantizeLinear changed."""
    from onnx import numpy_helper

    inits = {i.name: i for i in mp.graph.initializer}
    weight_dq = {n.input[0] for n in mp.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    shifted: dict[str, str] = {}
    changed = 0
    for node in mp.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in weight_dq:
            continue
        zp = node.input[2]
        if zp not in inits or numpy_helper.to_array(inits[zp]).dtype != np.int8:
            continue
        if zp not in shifted:
            arr = numpy_helper.to_array(inits[zp]).astype(np.int16) + 128
            name = f"{zp}_uint8"
            mp.graph.initializer.append(numpy_helper.from_array(arr.astype(np.uint8), name))
            shifted[zp] = name
        node.input[2] = shifted[zp]
        changed += 1
    # value_info still types the shifted tensors as int8; shape inference on load re-derives them
    del mp.graph.value_info[:]
    _drop_unused_initializers(mp)
    return changed


def integer_hardswish(mp) -> int:
    """Rewrite each ``DequantizeLinear -> HardSwish -> QuantizeLinear`` into ops ONNX Runtime runs on integers.

    ONNX Runtime has no integer HardSwish: it expands it into HardSigmoid and Mul and runs both in float between
    the dequantize and the quantize, with the NHWC Transposes around them. ``hardswish(x) = x * g`` where
    ``g = clip(x + 3, 0, 6) / 6``, so:

    - ``t = Add(x, 3)`` quantized with scale 6/255 and the lowest zero point, which saturates at exactly 0 and 6:
      the clip is the quantizer's own rounding range (ONNX Runtime: QLinearAdd);
    - ``t`` is dequantized with scale 1/255, which divides by 6: ``g`` in [0, 1] in steps of 1/255;
    - ``Mul(x, g)`` into the original quantizer (ONNX Runtime: QLinearMul).

    The only new error is ``g``'s 8-bit step (at most 1/510 of ``x``). Measured on efficientvit_b1 (224 px, 2
    threads, seeded weights, 32 HardSwish): INT8 0.78x -> 1.05x FP32 on ONNX Runtime, cosine 0.99971 to the
    INT8 artifact without the rewrite. A HardSwish fed by anything but a per-tensor dequantize, or read by
    anything but quantizers, is left as it is."""
    from onnx import helper, numpy_helper

    producer, consumers = _index(mp)
    inits = {i.name: i for i in mp.graph.initializer}

    def scalar(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits and not inits[name].dims else None

    nodes, added, changed = [], [], 0
    for node in mp.graph.node:
        dq = producer.get(node.input[0]) if node.op_type == "HardSwish" else None
        readers = consumers.get(node.output[0], []) if dq is not None else []
        if (dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or scalar(dq.input[1]) is None
                or scalar(dq.input[2]) is None or not readers
                or any(r.op_type != "QuantizeLinear" for r in readers)):
            nodes.append(node)
            continue
        dtype = scalar(dq.input[2]).dtype
        lowest = np.iinfo(dtype).min
        p = f"{node.name or node.output[0]}_int8_hardswish"
        added += [
            numpy_helper.from_array(np.array(3 / 255, np.float32), f"{p}_three_scale"),
            numpy_helper.from_array(np.array(lowest + 255, dtype), f"{p}_three"),
            numpy_helper.from_array(np.array(lowest, dtype), f"{p}_zero_point"),
            numpy_helper.from_array(np.array(6 / 255, np.float32), f"{p}_relu6_scale"),
            numpy_helper.from_array(np.array(1 / 255, np.float32), f"{p}_gate_scale"),
        ]
        x = node.input[0]
        nodes += [
            helper.make_node("DequantizeLinear", [f"{p}_three", f"{p}_three_scale", f"{p}_zero_point"],
                             [f"{p}_three_f"], name=f"{p}/three"),
            helper.make_node("Add", [x, f"{p}_three_f"], [f"{p}_shifted"], name=f"{p}/add"),
            helper.make_node("QuantizeLinear", [f"{p}_shifted", f"{p}_relu6_scale", f"{p}_zero_point"],
                             [f"{p}_relu6"], name=f"{p}/relu6"),
            helper.make_node("DequantizeLinear", [f"{p}_relu6", f"{p}_gate_scale", f"{p}_zero_point"],
                             [f"{p}_gate"], name=f"{p}/gate"),
            helper.make_node("Mul", [x, f"{p}_gate"], list(node.output), name=f"{p}/mul"),
        ]
        changed += 1
    if changed:
        del mp.graph.node[:]
        mp.graph.node.extend(nodes)
        mp.graph.initializer.extend(added)
    return changed


def gelu_for_ort(mp, fused: bool) -> int:
    """Exact GELU, ``x * (0.5 * (1 + erf(x / sqrt 2)))`` as torch.onnx writes it, in a form ONNX Runtime runs as
    one kernel instead of five elementwise ops.

    ``fused=False`` (float graphs): reorder the two Muls into ``(x * (1 + erf(x / sqrt 2))) * 0.5``, the pattern
    ONNX Runtime's GeluFusion recognizes; a multiplication by 0.5 is exact, so the numbers are identical and
    the graph stays standard ONNX. ``fused=True`` (INT8 graphs, where ONNX Runtime gives each consumer of a
    dequantize its own copy and the pattern no longer matches): one ``com.microsoft.Gelu`` node, the kernel
    GeluFusion would have made. Measured on efficientformerv2_s0.cifar10 (64 px, 2 threads, 35 GELU): FP32
    2.43 -> 1.77 ms, INT8 2.21 -> 1.68 ms, outputs unchanged (cosine 1.00000). Returns the GELUs rewritten."""
    from onnx import helper

    producer, consumers = _index(mp)
    value = _constants(mp)

    def only(name: str, op: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def other(node, name: str) -> str | None:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None

    drop: set[int] = set()
    replace: dict[int, object] = {}
    for erf in [n for n in mp.graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _near(value.get(div.input[1]), 2 ** 0.5):
            continue
        x = div.input[0]
        add = only(erf.output[0], "Add")
        half = add is not None and only(add.output[0], "Mul")
        if not half or not _near(value.get(other(add, erf.output[0])), 1.0):
            continue
        const_half = other(half, add.output[0])
        outer = only(half.output[0], "Mul") if _near(value.get(const_half), 0.5) else None
        if outer is None or other(outer, half.output[0]) != x:
            continue
        if fused:
            drop.update(id(n) for n in (div, erf, add, half))
            replace[id(outer)] = helper.make_node("Gelu", [x], list(outer.output), name=f"{outer.name}_gelu",
                                                  domain="com.microsoft")
        else:
            half.input[:] = [x, add.output[0]]
            outer.input[:] = [half.output[0], const_half]
        replace.setdefault(id(outer), outer)
    if fused and replace:
        nodes = [replace.get(id(n), n) for n in mp.graph.node if id(n) not in drop]
        del mp.graph.node[:]
        mp.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in mp.opset_import):
            mp.opset_import.add(domain="com.microsoft", version=1)
        _drop_unused_initializers(mp)
    return len(replace)


def ort_optimized_ops(path: Path) -> dict:
    """Op counts of the graph ONNX Runtime actually runs (CPU, all optimizations): shows whether the QDQ pairs
    were fused into integer kernels (QLinearConv, QGemm, ...) or left around float ops."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"error": "onnxruntime not installed"}
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    integer = {k: v for k, v in ops.items() if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger"))}
    return {"integer_kernels": dict(sorted(integer.items())), "quantize": ops.get("QuantizeLinear", 0),
            "dequantize": ops.get("DequantizeLinear", 0),
            "float_compute": {k: v for k, v in ops.most_common() if k in _FLOAT_COMPUTE}}


def _drop_unused_initializers(mp) -> None:
    used = {i for n in mp.graph.node for i in n.input}
    keep = [i for i in mp.graph.initializer if i.name in used]
    del mp.graph.initializer[:]
    mp.graph.initializer.extend(keep)


def _index(mp) -> tuple[dict, dict[str, list]]:
    """The graph's node producing each tensor, and the nodes reading each tensor."""
    producer = {o: n for n in mp.graph.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in mp.graph.node:
        for i in n.input:
            consumers[i].append(n)
    return producer, consumers


def _constants(mp) -> dict[str, float]:
    """Scalar constants by tensor name: initializers and Constant nodes."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in mp.graph.initializer}
    for n in mp.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return {k: float(v) for k, v in out.items() if v.size == 1}


def _near(v: float | None, target: float) -> bool:
    """Equal within float16's precision (an fp16 graph stores sqrt 2 as 1.4140625)."""
    return v is not None and abs(v - target) <= 1e-3 * abs(target)
