"""ONNX exporter and ONNX Runtime runtime: real conversions, run on the real ONNX Runtime (no mocks)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from edgehybrid.drift import compare  # noqa: E402
from edgehybrid.errors import EdgeHybridError, InputError  # noqa: E402
from edgehybrid.runtimes import get_runtime  # noqa: E402
from exporters.base import ExportOptions, get_exporter  # noqa: E402
from models_zoo import get_spec, load_model  # noqa: E402


class Tiny(nn.Module):
    """A small conv + attention-ish net: quick to export, exercises Conv/BN/LayerNorm/Softmax."""

    def __init__(self, tail: nn.Module | None = None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)
        self.tail = tail

    def forward(self, x):
        x = self.stem(x)
        if self.tail is not None:
            return self.tail(x)
        t = self.norm(x.flatten(2).transpose(1, 2))
        t = t.softmax(-1) * t
        return self.head(t.mean(1))


class Eigvals(nn.Module):
    """Uses an op ONNX has no translation for (torch.onnx decomposes it to aten.linalg_eig)."""

    def forward(self, x):
        return torch.linalg.eigvals(x[0, 0, :4, :4]).real.unsqueeze(0)


@pytest.fixture(scope="module")
def exporter():
    exp = get_exporter("onnx")
    exp.check_available()
    return exp


@pytest.fixture(scope="module")
def spec():
    return get_spec("mobilevit_xxs")


@pytest.fixture(scope="module")
def mobilevit(exporter, tmp_path_factory):
    """mobilevit_xxs (random weights) exported at fp32, with its PyTorch reference and input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model("mobilevit_xxs", weights="random")
    torch.manual_seed(0)
    x = torch.rand(2, 3, *loaded.spec.input_size) * 4 - 2
    with torch.no_grad():
        ref = loaded.model(x).numpy()
    out = tmp_path_factory.mktemp("onnx") / "mobilevit_xxs.onnx"
    art = exporter.export(loaded.model, x, loaded.spec, ExportOptions(batch=2), out)
    return art, x, ref


def _tiny_export(exporter, spec, tmp_path, options=ExportOptions(), model=None):
    torch.manual_seed(0)
    model = (model or Tiny()).eval()
    x = torch.randn(options.batch, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    art = exporter.export(model, x, spec, options, tmp_path / "tiny.onnx")
    return art, x, ref


def test_mobilevit_fp32_matches_pytorch(exporter, mobilevit):
    art, x, ref = mobilevit
    sess = get_runtime(exporter.runtime).load(art.path, threads=2)
    y = sess.run({art.inputs[0].name: x.numpy()})[art.outputs[0].name]
    c = compare(ref, y)
    assert exporter.tolerance("fp32").failures(c, float(np.abs(ref).max())) == []
    assert c.top1_agreement == 1.0 and c.cosine > 0.99999


def test_mobilevit_artifact_fields(exporter, mobilevit):
    art, _, _ = mobilevit
    assert art.target == "onnx" and art.precision == "fp32" and art.path.suffix == ".onnx"
    assert art.path.is_file() and not art.path.with_name(art.path.name + ".data").exists()
    (inp,) = art.inputs
    (out,) = art.outputs
    assert (inp.name, inp.shape, inp.dtype, inp.layout) == ("input", (2, 3, 256, 256), "float32", "NCHW")
    assert (out.name, out.shape, out.dtype) == ("logits", (2, 1000), "float32")
    d = art.details
    assert d["opset"] == 18 and d["ir_version"] >= 8 and d["external_data"] is False
    assert d["simplifier"] in ("onnxsim", "onnxslim", "none")
    assert d["nodes"] == sum(d["op_types"].values()) > 100
    assert "Conv" in d["op_types"] and "LayerNormalization" in d["op_types"]
    assert set(art.versions) >= {"torch", "onnx", "onnxscript", "onnxruntime"}
    assert {"trace", "convert", "simplify", "check", "save"} <= set(art.timings_s)
    # the runtime reads I/O from the artifact, and it agrees with what the exporter described
    sess = get_runtime("onnxruntime").load(art.path)
    assert sess.inputs == art.inputs and sess.outputs == art.outputs
    assert sess.details["graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_fp16_weights_with_float32_io(exporter, spec, tmp_path):
    art, x, ref = _tiny_export(exporter, spec, tmp_path, ExportOptions(precision="fp16"))
    assert art.inputs[0].dtype == "float32" and art.outputs[0].dtype == "float32"
    assert art.details["weight_dtypes"].get("float16", 0) > 0 and "float32" not in art.details["weight_dtypes"]
    y = get_runtime("onnxruntime").load(art.path).run({"input": x.numpy()})["logits"]
    c = compare(ref, y)
    assert exporter.tolerance("fp16").failures(c, float(np.abs(ref).max())) == []
    assert c.max_abs > 0  # really computed in float16


def test_export_keeps_stdout_clean(exporter, spec, tmp_path, capfd):
    _tiny_export(exporter, spec, tmp_path)
    assert capfd.readouterr().out == ""


def test_channels_last_input(exporter, spec, tmp_path):
    art, x, ref = _tiny_export(exporter, spec, tmp_path, ExportOptions(channels_last=True))
    assert art.inputs[0].layout == "NHWC" and art.inputs[0].shape == (1, 16, 16, 3)
    sess = get_runtime("onnxruntime").load(art.path)
    assert sess.inputs[0].layout == "NHWC"
    y = sess.run({"input": x.permute(0, 2, 3, 1).numpy()})["logits"]
    assert np.abs(y - ref).max() < 1e-5


def test_external_data_beyond_threshold(exporter, spec, tmp_path, monkeypatch):
    import exporters.onnx as onnx_exporter

    monkeypatch.setattr(onnx_exporter, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)  # as if past protobuf's 2 GB
    art, x, ref = _tiny_export(exporter, spec, tmp_path)
    assert art.details["external_data"] is True and art.details["simplifier"] == "none"
    assert (tmp_path / art.details["external_data_file"]).is_file()
    y = get_runtime("onnxruntime").load(art.path).run({"input": x.numpy()})["logits"]
    assert np.abs(y - ref).max() < 1e-5


def test_simplifier_fallback_is_recorded(exporter, spec, tmp_path, monkeypatch):
    onnxsim = pytest.importorskip("onnxsim")
    pytest.importorskip("onnxslim")

    def broken(*args, **kwargs):
        raise RuntimeError("shape inference exploded")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    art, x, ref = _tiny_export(exporter, spec, tmp_path)
    assert art.details["simplifier"] == "onnxslim"
    assert "onnxsim: shape inference exploded" in art.details["simplifier_reason"]
    y = get_runtime("onnxruntime").load(art.path).run({"input": x.numpy()})["logits"]
    assert np.abs(y - ref).max() < 1e-5


def test_unsupported_op_is_one_line_naming_op_and_module(exporter, spec, tmp_path):
    with pytest.raises(EdgeHybridError) as info:
        _tiny_export(exporter, spec, tmp_path, model=Tiny(tail=nn.Sequential(nn.Identity(), Eigvals())))
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert "aten.linalg_eig" in msg and "'tail.1'" in msg and "Eigvals" in msg
    assert info.value.__cause__ is not None
    assert not (tmp_path / "tiny.onnx").exists()


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.export cannot trace it."""

    def forward(self, x):
        if x.sum() > 0:
            return x.mean((2, 3))
        return x.amax((2, 3))


def test_untraceable_model_is_one_line_naming_the_call_site(exporter, spec, tmp_path, capfd):
    with pytest.raises(EdgeHybridError) as info:
        _tiny_export(exporter, spec, tmp_path, model=Tiny(tail=DataDependent()))
    msg = str(info.value)
    assert "\n" not in msg and "torch.export could not trace" in msg and "data-dependent" in msg
    assert "test_export_onnx.py" in msg and "in forward" in msg
    assert capfd.readouterr().out == ""


def test_unknown_precision_is_refused(exporter):
    with pytest.raises(EdgeHybridError, match="int4"):
        exporter.tolerance("int4")


def test_corrupt_artifact_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(InputError, match="cannot load .*broken.onnx.*re-export"):
        get_runtime("onnxruntime").load(bad)
    with pytest.raises(InputError, match="does not exist"):
        get_runtime("onnxruntime").load(tmp_path / "missing.onnx")


def test_wrong_feeds_name_expected_and_given(mobilevit):
    art, x, _ = mobilevit
    sess = get_runtime("onnxruntime").load(art.path)
    with pytest.raises(InputError, match=r"takes inputs \['input'\], got \['image'\]"):
        sess.run({"image": x.numpy()})
    with pytest.raises(InputError, match=r"expects shape \(2, 3, 256, 256\) \(NCHW\), got \(2, 256, 256, 3\)"):
        sess.run({"input": x.permute(0, 2, 3, 1).numpy()})
    # float64 is cast, not refused
    assert sess.run({"input": x.numpy().astype(np.float64)})["logits"].dtype == np.float32


def test_imports_are_lazy():
    code = (
        "import sys, exporters.onnx, edgehybrid.runtimes.onnxruntime; "
        "bad = [m for m in ('onnx', 'onnxruntime', 'onnxscript', 'onnxsim', 'onnxslim') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
