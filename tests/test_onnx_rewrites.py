"""The ONNX graph rewrites for ONNX Runtime (``exporters.onnx_rewrites``), run on ONNX Runtime itself: each keeps
the numbers and turns into the kernels it was written for."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.onnx_rewrites import gelu_for_ort, integer_hardswish, ort_optimized_ops

SHAPE = [1, 8, 16, 16]


def _model(nodes, inits, opset: int = 18):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(mp, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(mp.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _save(mp, tmp_path, name: str):
    path = tmp_path / name
    onnx.save(mp, str(path))
    return path


def _hardswish_qdq(scale_in: float, zp_in: int, scale_out: float, zp_out: int):
    """x -> Q -> DQ -> HardSwish -> Q -> DQ -> y, uint8 activations, as the INT8 exporter writes them."""
    inits = [numpy_helper.from_array(np.array(scale_in, np.float32), "s_in"),
             numpy_helper.from_array(np.array(zp_in, np.uint8), "z_in"),
             numpy_helper.from_array(np.array(scale_out, np.float32), "s_out"),
             numpy_helper.from_array(np.array(zp_out, np.uint8), "z_out")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xf"]),
             helper.make_node("HardSwish", ["xf"], ["hs"], name="act"),
             helper.make_node("QuantizeLinear", ["hs", "s_out", "z_out"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_out", "z_out"], ["y"])]
    return _model(nodes, inits)


def test_integer_hardswish_keeps_every_int8_value_and_runs_on_integer_kernels(tmp_path):
    scale_in, zp_in, scale_out, zp_out = 0.05, 120, 0.03, 12  # x in [-6, 6.75], y in [-0.36, 7.29]
    before = _hardswish_qdq(scale_in, zp_in, scale_out, zp_out)
    after = _hardswish_qdq(scale_in, zp_in, scale_out, zp_out)
    assert integer_hardswish(after) == 1
    onnx.checker.check_model(after, full_check=True)
    # every uint8 code of the input, each dequantized exactly
    x = ((np.arange(np.prod(SHAPE)) % 256).astype(np.float32) - zp_in) * scale_in
    x = x.reshape(SHAPE)
    ref, got = _run(before, x), _run(after, x)
    exact = x * np.clip(x + 3, 0, 6) / 6
    assert np.abs(ref - exact).max() <= scale_out / 2 + 1e-6  # the float HardSwish, quantized once
    # the rewrite adds only the gate's 8-bit step (1/255 of |x|, at most 0.027 here): one output step at most
    assert np.abs(got - ref).max() <= scale_out + 1e-6
    assert np.abs(got - exact).max() <= scale_out / 2 + np.abs(x).max() / 510 + 1e-6
    ops = ort_optimized_ops(_save(after, tmp_path, "after.onnx"))
    assert {"QLinearAdd", "QLinearMul"} <= set(ops["integer_kernels"]) and "HardSigmoid" not in ops["float_compute"]
    assert "HardSigmoid" in ort_optimized_ops(_save(before, tmp_path, "before.onnx"))["float_compute"]


def test_integer_hardswish_leaves_a_float_hardswish_alone():
    mp = _model([helper.make_node("HardSwish", ["x"], ["y"])], [])
    assert integer_hardswish(mp) == 0 and [n.op_type for n in mp.graph.node] == ["HardSwish"]


def _torch_gelu(prefix: list, x: str = "x"):
    """GELU as torch.onnx writes it: x * (0.5 * (1 + erf(x / sqrt 2)))."""
    inits = [numpy_helper.from_array(np.array(2 ** 0.5, np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = prefix + [helper.make_node("Div", [x, "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                      helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["h"]),
                      helper.make_node("Mul", [x, "h"], ["y"])]
    return nodes, inits


@pytest.mark.parametrize("fused", [False, True], ids=["float-reordered", "int8-com.microsoft.Gelu"])
def test_gelu_becomes_one_onnxruntime_kernel_with_the_same_numbers(tmp_path, fused):
    nodes, inits = _torch_gelu([])
    before = _model(nodes, inits)
    after = _model(*_torch_gelu([]))
    assert gelu_for_ort(after, fused=fused) == 1
    onnx.checker.check_model(after, full_check=True)
    x = np.random.default_rng(0).normal(0, 3, SHAPE).astype(np.float32)
    ref, got = _run(before, x), _run(after, x)
    exact = x * 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
    assert np.abs(ref - exact).max() < 1e-5 and np.abs(got - exact).max() < 1e-5
    ops = ort_optimized_ops(_save(after, tmp_path, "after.onnx"))["float_compute"]
    assert ops.get("Gelu") == 1 and "Erf" not in ops
    assert "Gelu" not in ort_optimized_ops(_save(before, tmp_path, "before.onnx"))["float_compute"]
    if fused:
        assert [n.op_type for n in after.graph.node] == ["Gelu"] and after.graph.node[0].domain == "com.microsoft"


def test_gelu_rewrite_needs_the_exact_constants():
    nodes, inits = _torch_gelu([])
    inits[2] = numpy_helper.from_array(np.array(0.45, np.float32), "half")  # not a GELU
    mp = _model(nodes, inits)
    assert gelu_for_ort(mp, fused=True) == 0 and len(mp.graph.node) == 5
