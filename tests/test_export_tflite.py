"""TFLite export through litert-torch, validated on LiteRT's real interpreter (no mocks).

One mobilevit_xxs conversion (~25 s on 2 cores) is shared by the module; everything else uses tiny
modules that convert in about a second.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgehybrid.drift import compare
from edgehybrid.errors import EdgeHybridError, InputError
from edgehybrid.runtimes import get_runtime
from exporters.base import ExportOptions, get_exporter

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("litert_torch") is None or importlib.util.find_spec("ai_edge_litert") is None,
    reason="needs the tflite extra: pip install 'edgehybrid[tflite]'",
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class Erfinv(nn.Module):
    def forward(self, x):
        return torch.special.erfinv(x.clamp(-0.5, 0.5))


class Unsupported(nn.Module):
    """erfinv has no litert-torch lowering; it sits in a submodule so the error can name it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.head = nn.Sequential(nn.Identity(), Erfinv())

    def forward(self, x):
        return self.head(self.stem(x)).mean((2, 3))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


@pytest.fixture(scope="module")
def exporter():
    exp = get_exporter("tflite")
    exp.check_available()
    return exp


@pytest.fixture(scope="module")
def mobilevit(exporter, tmp_path_factory):
    from models_zoo import load_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: fine for a numerical comparison
        loaded = load_model("mobilevit_xxs", weights="random")
    h, w = loaded.spec.input_size
    example = torch.randn(1, 3, h, w)
    out = tmp_path_factory.mktemp("tflite") / "mobilevit_xxs.tflite"
    art = exporter.export(loaded.model, example, loaded.spec, ExportOptions(), out)
    return loaded, example, art


def test_mobilevit_fp32_matches_pytorch_on_litert(exporter, mobilevit):
    loaded, example, art = mobilevit
    session = get_runtime(exporter.runtime).load(art.path, threads=2)
    assert session.backend.startswith(("ai-edge-litert", "tflite-runtime"))
    assert session.inputs == art.inputs and session.outputs == art.outputs  # read back from the file
    g = torch.Generator().manual_seed(1)
    feeds = [example] + [torch.randn(example.shape, generator=g) for _ in range(3)]
    with torch.no_grad():
        ref = np.concatenate([loaded.model(x).numpy() for x in feeds])
    got = np.concatenate([session.run({"input": _nhwc(x)})["logits"] for x in feeds])
    comparison = compare(ref, got)
    assert exporter.tolerance("fp32").failures(comparison, float(np.abs(ref).max())) == []
    assert comparison.max_abs < 1e-5  # measured ~1e-7: far inside the tolerance


def test_mobilevit_artifact_fields(mobilevit):
    loaded, example, art = mobilevit
    h, w = loaded.spec.input_size
    assert art.path.is_file() and art.path.stat().st_size == art.details["size_bytes"]
    assert (art.target, art.precision) == ("tflite", "fp32")
    [inp], [out] = art.inputs, art.outputs
    assert (inp.name, inp.shape, inp.dtype, inp.layout) == ("input", (1, h, w, 3), "float32", "NHWC")
    assert (out.name, out.shape, out.dtype) == ("logits", (1, loaded.spec.num_classes), "float32")
    assert art.details["signatures"] == ["serving_default"] and art.details["nhwc"] is True
    ops = art.details["op_counts"]
    assert ops["CONV_2D"] > 0 and ops["BATCH_MATMUL"] > 0 and ops["SOFTMAX"] > 0  # the attention made it
    assert "float16" not in art.details["tensor_dtypes"] and "float32" in art.details["tensor_dtypes"]
    assert {"torch", "litert-torch", "ai-edge-litert"} <= set(art.versions)
    assert "not installed" not in art.versions.values()
    assert set(art.timings_s) >= {"convert", "write"} and all(v >= 0 for v in art.timings_s.values())


def test_fp16_stores_float16_weights_and_runs(exporter, tmp_path):
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(2, 3, 16, 16)
    art32 = exporter.export(model, x, None, ExportOptions(batch=2), tmp_path / "t32.tflite")
    art16 = exporter.export(model, x, None, ExportOptions(precision="fp16", batch=2), tmp_path / "t16.tflite")
    assert "float16" in art16.details["tensor_dtypes"] and art16.details["op_counts"]["DEQUANTIZE"] >= 2
    assert art16.details["weights"]["float16_elements"] == 8 * 3 * 3 * 3 + 10 * 8  # conv + fc weights
    assert art16.path.stat().st_size < art32.path.stat().st_size
    assert art16.inputs[0].dtype == "float32"  # activations and I/O stay float32
    assert "ai-edge-quantizer" in art16.versions and "quantize" in art16.timings_s
    with torch.no_grad():
        ref = model(x).numpy()
    got = get_runtime("litert").load(art16.path).run({"input": _nhwc(x)})["logits"]
    comparison = compare(ref, got)
    assert exporter.tolerance("fp16").failures(comparison, float(np.abs(ref).max())) == []
    assert comparison.max_abs > 0  # the weights really were rounded


def test_channels_last_false_keeps_nchw(exporter, tmp_path):
    model, x = Tiny().eval(), torch.randn(1, 3, 16, 16)
    art = exporter.export(model, x, None, ExportOptions(channels_last=False), tmp_path / "nchw.tflite")
    assert art.inputs[0].shape == (1, 3, 16, 16) and art.inputs[0].layout == "NCHW"
    assert art.details["nhwc"] is False
    session = get_runtime("litert").load(art.path)
    assert session.inputs[0].layout == "NCHW"
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(session.run({"input": x.numpy()})["logits"], ref, atol=1e-5)


def test_unsupported_op_gives_one_line_error_naming_op_and_module(exporter, tmp_path):
    with pytest.raises(EdgeHybridError) as info:
        exporter.export(Unsupported().eval(), torch.randn(1, 3, 8, 8), None, ExportOptions(), tmp_path / "x.tflite")
    message = str(info.value)
    assert "\n" not in message
    assert "aten.erfinv" in message and "'head.1'" in message and "Erfinv" in message
    assert "--target onnx" in message  # what to try
    assert info.value.__cause__ is not None  # the converter's exception stays chained for --debug


def test_export_keeps_stdout_clean(exporter, tmp_path, capfd):
    exporter.export(Tiny().eval(), torch.randn(1, 3, 16, 16), None, ExportOptions(precision="fp16"), tmp_path / "q.tflite")
    assert capfd.readouterr().out == ""  # ai-edge-quantizer prints a size report; it must not reach stdout


def test_runtime_rejects_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(b"definitely not a flatbuffer" * 20)
    with pytest.raises(InputError, match="not a valid .tflite file") as info:
        get_runtime("litert").load(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="does not exist"):
        get_runtime("litert").load(tmp_path / "missing.tflite")


def test_runtime_rejects_wrong_feeds(exporter, tmp_path):
    art = exporter.export(Tiny().eval(), torch.randn(1, 3, 16, 16), None, ExportOptions(), tmp_path / "f.tflite")
    session = get_runtime("litert").load(art.path)
    good = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(InputError, match=r"takes inputs \['input'\], was given \['image'\]"):
        session.run({"image": good})
    with pytest.raises(InputError, match=r"must have shape \[1, 16, 16, 3\] NHWC, got \[1, 3, 16, 16\]"):
        session.run({"input": np.zeros((1, 3, 16, 16), np.float32)})
    assert session.run({"input": good.astype(np.float64)})["logits"].shape == (1, 10)  # float64 is cast


def test_unknown_precision_is_refused_early(exporter, tmp_path):
    with pytest.raises(EdgeHybridError, match="unknown precision 'int4'; did you mean 'int8'"):
        ExportOptions(precision="int4")
    with pytest.raises(EdgeHybridError, match="does not support precision 'int8-weights'; it supports: fp32, fp16"):
        exporter.export(Tiny().eval(), torch.randn(1, 3, 16, 16), None, ExportOptions(precision="int8-weights"),
                        tmp_path / "x")


def test_importing_the_exporter_does_not_import_litert_torch():
    code = "import sys, exporters.tflite, edgehybrid.runtimes.litert; print('litert_torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.strip() == "False"
