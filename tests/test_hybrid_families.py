"""CvT, BoTNet and EfficientViT: one variant of each family exported to every target and quantized to INT8 on
ONNX Runtime and LiteRT, validated against PyTorch, with the ops its INT8 plan keeps in float named; near-miss
names get a did-you-mean. (Parity with timm / transformers, strict loading of a published-layout checkpoint and
torch.export of every variant run in test_weights.py and test_zoo.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from models_zoo import get_spec
from tests.timm_layout import deterministic_state_dict

# one variant per family; the sizes the architecture allows keep it quick (BoTNet's input size is fixed)
FAMILIES = {"cvt_13": (64, 64), "botnet26t_256": (256, 256), "efficientvit_b0": (64, 64)}
SLOW = pytest.mark.slow  # CI's budget: conversions above ~25 s on 2 cores run with --runslow


def _cases(targets: list[str], fast: set[tuple[str, str]]) -> list:
    return [pytest.param(name, t, marks=() if (name, t) in fast else SLOW, id=f"{name}-{t}")
            for name in FAMILIES for t in targets]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A published-layout checkpoint of each variant with deterministic, non-degenerate weights: random
    initialisation gives nearly equal logits for every image, which proves little about a conversion."""
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name in FAMILIES:
        out[name] = folder / f"{name}.safetensors"
        save_file(deterministic_state_dict(get_spec(name).build().state_dict()), str(out[name]))
    return out


def _export(cli, name, checkpoints, tmp_path, *args) -> dict:
    h, w = FAMILIES[name]
    size = [] if get_spec(name).input_divisor is None else ["--input-size", str(h), str(w)]
    code, out, err = cli("export", name, "--weights", checkpoints[name], *size, "-o", tmp_path, *args, "--json")
    assert code == 0, err[-800:]
    return json.loads(out)


def _metrics(manifest: dict) -> dict:
    return next(iter(manifest["validation"]["metrics"].values()))


@pytest.mark.parametrize("name, target", _cases(
    ["onnx", "tflite", "coreml", "executorch"],
    {("efficientvit_b0", t) for t in ("onnx", "tflite", "coreml", "executorch")}
    | {("botnet26t_256", t) for t in ("onnx", "tflite", "coreml")} | {("cvt_13", "onnx"), ("cvt_13", "coreml")}))
def test_every_family_exports_to_every_target(cli, checkpoints, tmp_path, name, target):
    m = _export(cli, name, checkpoints, tmp_path, "-t", target)
    assert m["validation"]["passed"] and m["family"] == get_spec(name).family and m["kind"] == "hybrid"
    assert _metrics(m)["cosine"] > 0.9999 and _metrics(m)["top1_informative"]


# ExecuTorch INT8 (XNNPACK) validates on every family too, 47 s to 2.4 min each on 2 cores: --runslow; every
# run quantizes to ExecuTorch through test_export_executorch.py
@pytest.mark.parametrize("name, target", _cases(["onnx", "tflite", "executorch"], {("efficientvit_b0", "tflite")}))
def test_every_family_quantizes_to_int8_and_validates(cli, checkpoints, tmp_path, name, target):
    m = _export(cli, name, checkpoints, tmp_path, "-t", target, "--int8", "--calib-size", "16")
    q = m["quantization"]
    assert m["validation"]["passed"] and q["measured"]["plan_sqnr_db"] > 15
    layers = {row["layer"] for row in q["layers"]}
    unplanned = {(r["op"], r["layer"].rsplit(".", 1)[-1]) for r in q["unplanned_ops"]}
    if name == "efficientvit_b0":
        # linear attention's normalizer: the sum of ReLU(k) and the division have no int8 rule, so stay float
        assert any(lay.endswith("context_module.main") for lay in layers)
        assert {("sum", "main"), ("div", "main")} <= unplanned
    if name == "botnet26t_256":
        assert "stages.3.1.self_attn" in layers and any(op == "index_select" for op, _ in unplanned)
    if name == "cvt_13":
        assert "cvt.encoder.stages.2.layers.0.attention.attention" in layers
    if name == "efficientvit_b0" and target == "tflite":
        # XNNPACK has no int8 HARD_SWISH: each depthwise convolution between two HardSwish stays float, so the
        # converter writes none (efficientvit_b1: 30 of them split the delegated graph 31 ways, 0.36x FP32)
        assert m["details"]["op_counts"]["HARD_SWISH"] > 0 and "HARD_SWISH" not in m["details"]["int8_op_counts"]
        kept = [r["layer"] for r in q["layers"] if r["precision"] == "float" and "XNNPACK" in r["reason"]]
        assert kept and all(lay.endswith("depth_conv.conv") for lay in kept)
    if target == "executorch":  # every int8 convolution / linear of the plan runs inside XNNPACK
        weighted = m["details"]["delegation"]["int8_weighted_ops"]
        assert weighted["delegated"] > 0 and weighted["portable"] == 0


@pytest.mark.parametrize("typo, expected", [("efficientvit_bo", "efficientvit_b0"), ("botnet26t", "botnet26t_256"),
                                            ("cvt13", "cvt_13")])
def test_near_miss_names_get_a_did_you_mean(cli, typo, expected):
    code, _, err = cli("info", typo)
    assert code == 2 and "did you mean" in err and f"'{expected}'" in err.split("did you mean", 1)[1], err


def test_a_class_token_sliced_off_before_a_float_concatenation_converts_to_tflite_int8(tmp_path):
    """CvT's attention slices its class token off the normalized tokens and concatenates it back after the
    convolutional projections. On LiteRT the concatenation runs in float, so the plan used to drop the slice's
    quantize: the converter then gave the slice the concatenation's scale, which a slice cannot change, and
    refused the model ("'tfl.slice' op quantization parameters violate the same scale constraint"; every CvT
    INT8 export to TFLite). The slice now keeps its input's step, and the concatenation requantizes it."""
    pytest.importorskip("litert_torch")
    import numpy as np
    import torch

    from calibration.quantize import calibrate, capture, finalize
    from edgehybrid.drift import compare
    from edgehybrid.runtimes import open_session
    from exporters.base import ExportOptions, get_exporter

    model = _class_token_stage(depth=1)
    batches = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    exporter = get_exporter("tflite")
    cal = calibrate(capture(model, batches[0][:1]), batches, holdout=4)
    graph = finalize(cal, exporter.quant_policy)
    sliced = [n for n in graph.quantized.graph.nodes if n.target == torch.ops.aten.slice.Tensor
              and any("quantize" in str(u.target) for u in n.users)]
    assert len(sliced) >= 2  # the class token and the patch tokens both leave the slice int8
    art = exporter.export(graph, batches[0][:1], get_spec("cvt_13"), ExportOptions(precision="int8"),
                          tmp_path / "cls.tflite")
    session = open_session("tflite", art.path, 2).session
    x = cal.held_out[:1]
    got = session.run({art.inputs[0].name: x.permute(0, 2, 3, 1).numpy()})
    with torch.no_grad():
        want = graph(x).numpy()
    assert compare(want, np.asarray(next(iter(got.values())))).cosine > 0.99


def _class_token_stage(depth: int, outlier: float | None = None, seed: int = 0):
    """One CvT stage with a class token (cvt_13's last) and a head, weights N(0, 0.2) (a class token of zeros
    would quantize to one value); ``outlier``: the embedding's LayerNorm scales channel 0 by it, so the residual
    stream carries one channel far wider than the rest (what trained transformers grow, and CvT-13's seeded
    weights show at 224 px)."""
    import torch
    from torch import nn

    from models_zoo.cvt import Stage

    class ClassTokenStage(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage, self.head = Stage(3, 32, depth, 2, (3, 4, 1), cls_token=True), nn.Linear(32, 10)

        def forward(self, x):
            x, cls = self.stage(x)
            return self.head(cls[:, 0] + x.mean((2, 3)))

    torch.manual_seed(seed)
    model = ClassTokenStage().eval()
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.2)
        if outlier is not None:
            model.stage.embedding.convolution_embeddings.normalization.weight[0] = outlier
    return model


@pytest.mark.parametrize("outlier", [None, 50.0])
def test_kind_guard_keeps_float_only_the_kinds_that_multiply_the_error(outlier):
    """On ONNX Runtime every kind but softmax runs int8. With one wide channel in the residual stream, int8
    residual adds and LayerNorm inputs crush the other channels (drift 0.04 -> 0.35); the guard keeps float
    the layers that hold those kinds, says why with the figures, and the plan comes back near the weighted
    ops' drift. Without the outlier nothing moves."""
    import torch

    from calibration.quantize import calibrate, capture
    from calibration.sensitivity import GUARD_RATIO, Simulator, drift_of, guard_kinds
    from exporters.base import get_exporter

    model = _class_token_stage(depth=2, outlier=outlier)
    batches = [torch.randn(4, 3, 16, 16) for _ in range(4)]
    cal = calibrate(capture(model, batches[0][:1]), batches, holdout=4)
    policy = get_exporter("onnx").quant_policy
    sim = Simulator(cal, cal.held_out, policy)
    guard = guard_kinds(sim, policy, sim.plan_sqnr())
    after = drift_of(sim.candidate_sqnr(policy))
    floated = [layer for layer in cal.layers.values() if layer.precision == "float"]
    if outlier is None:
        assert guard["kinds"] == [] and not floated and after == pytest.approx(guard["plan_drift"], abs=1e-5)
        return
    kinds = {e["kind"] for e in guard["kinds"]}
    assert {"add", "layer_norm"} <= kinds and "linear" not in kinds and "conv" not in kinds
    assert all(e["drift"] > GUARD_RATIO * guard["weighted_only_drift"] for e in guard["kinds"])
    assert guard["plan_drift"] > 5 * guard["weighted_only_drift"]
    assert after < 1.5 * guard["weighted_only_drift"]  # the plan is back near the weighted ops' own error
    assert floated and all(set(k.value for k in layer.kinds) & kinds for layer in floated)
    assert all(layer.reason.startswith("kept in float: ") and f"{guard['weighted_only_drift']:.4f}" in layer.reason
               for layer in floated)
