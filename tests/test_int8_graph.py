"""The graph rewrites of the INT8 plan, each checked on a module small enough to read: what capture folds away,
where a concatenation, an attention split and a clamped activation are quantized, and that the numbers stay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from calibration.ops import UNWEIGHTED, QuantPolicy
from calibration.quantize import calibrate, capture, finalize, int8_nodes
from calibration.sensitivity import Simulator


class _ScaledBranch(nn.Module):
    """conv -> BatchNorm -> LayerScale (one value per channel), and a linear -> LayerScale, as in
    EfficientFormer; plus a conv whose output has a second user, which must not be folded."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.shared = nn.Conv2d(8, 8, 1, bias=False)
        self.fc = nn.Linear(8, 5)
        self.fc_gamma = nn.Parameter(torch.rand(5) + 0.5)

    def forward(self, x):
        x = self.bn(self.conv(x)) * self.gamma.view(1, -1, 1, 1)
        y = self.shared(x)
        x = y * self.gamma.view(1, -1, 1, 1) + y
        return self.fc(x.mean((2, 3))) * self.fc_gamma


def test_capture_folds_batchnorm_and_channel_scales_into_convs_and_linears():
    torch.manual_seed(0)
    model = _ScaledBranch().eval()
    model.bn.running_mean.normal_(0, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    model.bn.weight.data.normal_(1, 0.3)
    x = torch.randn(2, 3, 8, 8)
    gm = capture(model, x)
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.batch_norm.default not in ops
    # conv's and fc's scales folded; the second conv feeds both a mul and an add, so its mul stays
    assert ops.count(torch.ops.aten.mul.Tensor) == 1
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class _FusionBlock(nn.Module):
    """MobileViT's fusion: a narrow-range tensor feeds a convolution and, with a wide-range branch, a
    concatenation."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1)
        self.local = nn.Conv2d(8, 8, 3, padding=1)
        self.wide = nn.Conv2d(8, 8, 1)
        self.fuse = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        small = self.proj(x)
        return self.fuse(torch.cat([small, self.wide(self.local(small))], dim=1))


def test_a_concatenation_has_its_own_range_and_leaves_its_inputs_producers_theirs():
    """One wide input of a concatenation must not set the range of a narrow input's producer (and so of its
    other consumers): that cost MobileViT-S output cosine 0.988 against 0.9995 in simulation."""
    torch.manual_seed(0)
    model = _FusionBlock().eval()
    with torch.no_grad():  # a narrow tensor beside one 1000x wider
        model.proj.weight.mul_(0.01), model.proj.bias.mul_(0.01), model.wide.weight.mul_(1000)
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    cal = calibrate(capture(model, batches[0][:1]), batches, holdout=4)
    graph = finalize(cal).quantized.graph
    convs = [n for n in graph.nodes if n.target == torch.ops.aten.conv2d.default]
    cat = next(n for n in graph.nodes if n.target == torch.ops.aten.cat.default)
    narrow_in = cat.args[0][0]  # the dequantize of the narrow tensor, as the concatenation takes it
    local = next(c for c in convs if c.args[0] is narrow_in or c.args[0].args[0] is narrow_in.args[0])
    narrow = float(local.args[0].args[1])  # the narrow tensor's scale, as the 3x3 convolution reads it
    wide = float(next(iter(cat.users)).args[1])  # the concatenation's output quantize
    assert wide > 20 * narrow, (narrow, wide)
    assert float(narrow_in.args[1]) == narrow  # the narrow input arrives at its producer's own scale
    assert Simulator(cal, cal.held_out).plan_sqnr() > 30


class _Tokens(nn.Module):
    """Linear tokens into the zoo's attention (``qkv`` split into q, k, v; ``q * scale``)."""

    def __init__(self):
        super().__init__()
        from models_zoo.layers import Attention

        self.embed = nn.Linear(8, 16)
        self.attn = Attention(16, num_heads=2)

    def forward(self, x):
        return self.attn(self.embed(x))


def test_attention_keeps_its_split_and_query_scale_in_int8():
    """q, k and v read the qkv output's int8 values at its own scale (so converters keep the split int8: ONNX
    Runtime needs equal parameters), and ``q * scale`` leaves the graph: q's dequantize carries ``scale`` in
    its step. Before, each cost a float split and multiply between a dequantize and quantizes on every target."""
    torch.manual_seed(0)
    model = _Tokens().eval()
    batches = [torch.randn(4, 12, 8) for _ in range(3)]
    cal = calibrate(capture(model, batches[0][:1]), batches, holdout=4)
    onnx = QuantPolicy(fold_rescales=True)  # ONNX keeps a step per dequantize; LiteRT one per tensor
    graph = finalize(cal, onnx).quantized.graph
    split = next(n for n in graph.nodes if n.target == torch.ops.aten.split.Tensor)
    step = float(split.args[0].args[1])  # the dequantize the split reads
    parts = [next(iter(g.users)) for g in split.users]  # each part's quantize
    assert [float(q.args[1]) for q in parts] == [step] * 3
    assert not any(n.target == torch.ops.aten.mul.Tensor for n in graph.nodes)
    first = next(n for n in graph.nodes if n.target == torch.ops.aten.matmul.default)
    q_step = float(first.args[0].args[1])
    assert q_step == pytest.approx(step * model.attn.scale, rel=1e-5)
    # the exported graph computes what the simulation of the plan measured
    with torch.no_grad():
        out = torch.cat([finalize(cal, onnx)(cal.held_out[i:i + 1]) for i in range(len(cal.held_out))])
    kept = finalize(cal).quantized.graph  # without folding the multiply stays, between the same two steps
    assert sum(n.target == torch.ops.aten.mul.Tensor for n in kept.nodes) == 1
    sim = Simulator(cal, cal.held_out)
    simulated = sim._run(int8_nodes(cal.layers), set())
    assert torch.allclose(out, simulated, atol=1e-5)
    assert sim.plan_sqnr() > 25


class _HalfStep(nn.Module):
    """A Conformer's feed-forward half step: ``x + 0.5 * dropout(linear(x))``."""

    def __init__(self):
        super().__init__()
        self.fc, self.drop = nn.Linear(8, 8), nn.Dropout(0.1)

    def forward(self, x):
        return x + 0.5 * self.drop(self.fc(x))


def test_capture_drops_eval_dropout_and_folds_a_constant_step_into_the_linear():
    """The dropout torch.export keeps (the identity in eval) hid the linear from the ``* 0.5`` after it, which
    then ran in float between a dequantize and a quantize on ONNX Runtime, 8 times in ``conformer_kws``."""
    torch.manual_seed(0)
    model = _HalfStep().eval()
    x = torch.randn(1, 5, 8)
    plain = torch.export.export(model, (x,)).module()
    assert torch.ops.aten.dropout.default in {n.target for n in plain.graph.nodes}  # what capture must remove
    gm = capture(model, x)
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.dropout.default not in ops and torch.ops.aten.mul.Tensor not in ops
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)


class _Clamped(nn.Module):
    """conv -> ReLU, conv -> ReLU6, and a conv whose output feeds an add beside its ReLU (not fusable)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1),
                                          nn.Conv2d(8, 4, 1))

    def forward(self, x):
        x = nn.functional.relu6(self.b(torch.relu(self.a(x))))
        y = self.c(x)
        return self.d(torch.relu(y) + y)


def _after(graph, conv):
    return [u.target for u in next(n for n in graph.nodes if n.name == conv).users]


def test_a_clamp_after_a_conv_is_quantized_once_after_it():
    """Quantized before the ReLU too, ONNX Runtime requantizes between the conv and the clamp (a dequantize and
    a quantize over the whole tensor), and the conv's int8 range spends half its codes on negatives."""
    torch.manual_seed(0)
    model = _Clamped().eval()
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    cal = calibrate(capture(model, batches[0][:1]), batches, holdout=4)
    convs = [n.name for n in cal.prepared.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    relu, clamp6 = torch.ops.aten.relu.default, torch.ops.aten.relu6.default  # nn.ReLU6 is a hardtanh
    onnx = QuantPolicy(fold_rescales=True)
    for policy in (onnx, QuantPolicy(float_kinds=UNWEIGHTED)):  # and ExecuTorch's: the clamps run in float
        graph = finalize(cal, policy).quantized.graph
        assert _after(graph, convs[0]) == [relu] and _after(graph, convs[1]) == [clamp6]
        assert _after(graph, convs[2]) == [quantize]  # c feeds the add too: quantized as it leaves
        for clamp in (n for n in graph.nodes if n.target in (relu, clamp6) and n.args[0].name in convs[:2]):
            (q,) = clamp.users
            assert q.target == quantize and q.args[2] == -128  # the range starts at zero: no code spent below
    graph = finalize(cal, onnx)
    sim = Simulator(cal, cal.held_out)
    with torch.no_grad():
        out = torch.cat([graph(cal.held_out[i:i + 1]) for i in range(len(cal.held_out))])
    assert torch.allclose(out, sim._run(int8_nodes(cal.layers), set()), atol=1e-5)
    assert sim.plan_sqnr() > 30


def test_onnx_runtime_runs_a_clamped_conv_as_one_int8_kernel(tmp_path):
    """The plan as ONNX Runtime optimizes it: each fused clamp leaves one QLinearConv and no requantize."""
    import onnx
    import onnxruntime as ort

    import edgehybrid

    torch.manual_seed(0)
    pre = edgehybrid.Preprocessing(resize=16, crop=(16, 16), interpolation="bilinear", mean=(0.5,) * 3,
                                   std=(0.25,) * 3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU6(), nn.Conv2d(8, 4, 1),
                          nn.ReLU(), nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    exported = edgehybrid.export(model, torch.zeros(1, 3, 16, 16), target="onnx", precision="int8",
                                 preprocessing=pre, out=tmp_path, name="clamped", calib_size=16)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(exported.path), opts, providers=["CPUExecutionProvider"])
    nodes = onnx.load(tmp_path / "optimized.onnx").graph.node
    made = {o: n.op_type for n in nodes for o in n.output}
    requantized = [n.name for n in nodes if n.op_type == "QuantizeLinear"
                   and made.get(n.input[0]) == "DequantizeLinear"]
    assert exported.validation["passed"]
    ops = [n.op_type for n in nodes]
    assert ops.count("QLinearConv") == 4 and not requantized and "Relu" not in ops and "Clip" not in ops, ops
