"""The Core ML exporter, runtime and Linux-side checks, with real conversions (coremltools 9.0) and no mocks.

Core ML executes only on macOS: there the runtime is exercised for real; elsewhere the tests check that
it refuses plainly, and compare the MIL reference evaluation (edgehybrid's numpy interpretation of the
converted program; not the Core ML runtime) to PyTorch instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("coremltools")

from edgehybrid.drift import compare  # noqa: E402
from edgehybrid.errors import EdgeHybridError, InputError  # noqa: E402
from edgehybrid.runtimes import RuntimeUnavailable, get_runtime  # noqa: E402
from exporters.base import ExportOptions, get_exporter  # noqa: E402
from exporters.coreml_check import (  # noqa: E402
    REFERENCE_LABEL,
    UnsupportedMILOpError,
    evaluate_mil,
    inspect_mlpackage,
)
from models_zoo import get_spec, load_model  # noqa: E402

ON_MAC = sys.platform == "darwin"
SPEC = get_spec("mobilevit_xxs")  # any spec will do for the tiny modules' metadata


def _export(module: nn.Module, x: torch.Tensor, out: Path, precision: str = "fp32", spec=SPEC):
    return get_exporter("coreml").export(module.eval(), x, spec, ExportOptions(precision=precision), out)


@pytest.fixture(scope="module")
def mobilevit(tmp_path_factory):
    """mobilevit_xxs (random weights) exported once at fp32, with its PyTorch reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model("mobilevit_xxs", weights="random")
    torch.manual_seed(0)
    x = torch.randn(1, 3, *loaded.spec.input_size)
    with torch.no_grad():
        ref = loaded.model(x).numpy()
    out = tmp_path_factory.mktemp("coreml") / "mobilevit_xxs.mlpackage"
    art = get_exporter("coreml").export(loaded.model, x, loaded.spec, ExportOptions(), out)
    return art, x, ref


def test_mobilevit_fp32_artifact_fields(mobilevit):
    art, x, _ = mobilevit
    assert art.path.is_dir() and art.path.suffix == ".mlpackage"
    assert (art.target, art.precision) == ("coreml", "fp32")
    (inp,), (out,) = art.inputs, art.outputs
    assert (inp.name, inp.shape, inp.dtype, inp.layout) == ("input", (1, 3, 256, 256), "float32", "NCHW")
    assert (out.name, out.shape, out.dtype, out.layout) == ("logits", (1, 1000), "float32", None)
    assert set(art.versions) >= {"torch", "coremltools"} and art.versions["coremltools"] == "9.0"
    d = art.details
    assert d["format"] == "mlprogram" and d["minimum_deployment_target"] == "iOS15"
    assert d["spec_version"] == 6 and d["mil_opset"] == "CoreML5" and d["deployment_target"].startswith("iOS15")
    assert d["compute_precision"] == "FLOAT32" and d["io_dtype"] == "float32"
    assert d["ops_in_target_opset"] is True and d["max_rank"] <= 5
    assert {"conv", "layer_norm", "softmax", "matmul"} <= set(d["op_counts"])
    assert "float32" in d["const_dtypes"] and "float16" not in d["const_dtypes"]
    assert d["metadata"]["author"] == "edgehybrid"
    # read back from the saved package's specification version
    reqs = {r.runtime: r.minimum for r in get_exporter("coreml").requires(art)}
    assert reqs == {"iOS": "15", "macOS": "12", "tvOS": "15", "watchOS": "8"}
    assert "mobilevit_xxs" in d["metadata"]["short_description"]
    meta = d["metadata"]["user_defined"]
    assert meta["edgehybrid.model"] == "mobilevit_xxs" and meta["edgehybrid.input_layout"] == "NCHW"
    assert json.loads(meta["edgehybrid.preprocessing"])["crop"] == [256, 256]
    assert set(art.timings_s) >= {"trace", "convert", "save"} and all(v >= 0 for v in art.timings_s.values())


def test_mobilevit_fp32_runtime(mobilevit):
    """Core ML for real on macOS; a plain one-line refusal everywhere else (never a pretend run)."""
    art, x, ref = mobilevit
    exp = get_exporter("coreml")
    if not ON_MAC:
        with pytest.raises(RuntimeUnavailable) as info:
            get_runtime(exp.runtime).load(art.path, threads=2)
        msg = str(info.value)
        assert "cannot be executed on" in msg and "run this on macOS with coremltools installed" in msg
        assert "\n" not in msg
        return
    sess = get_runtime(exp.runtime).load(art.path, threads=2)
    assert [i.name for i in sess.inputs] == ["input"] and [o.name for o in sess.outputs] == ["logits"]
    y = sess.run({"input": x.numpy()})["logits"]
    assert not exp.tolerance("fp32").failures(compare(ref, y), float(np.abs(ref).max()))
    with pytest.raises(InputError, match="expects shape"):
        sess.run({"input": x.numpy()[:, :, :8]})


def test_mobilevit_fp32_mil_reference_matches_pytorch(mobilevit):
    """The MIL reference evaluation of the saved package is within the fp32 tolerance of PyTorch."""
    art, x, ref = mobilevit
    assert "not the Core ML runtime" in REFERENCE_LABEL
    y = evaluate_mil(art.path, {"input": x.numpy()})["logits"]
    assert y.shape == ref.shape and y.dtype == np.float32
    c = compare(ref, y)
    assert not get_exporter("coreml").tolerance("fp32").failures(c, float(np.abs(ref).max()))
    assert c.rel_max_abs < 1e-5
    with pytest.raises(InputError, match="expects shape"):
        evaluate_mil(art.path, {"input": x.numpy()[:, :1]})


def test_inspect_reads_the_saved_package(mobilevit):
    info = inspect_mlpackage(mobilevit[0].path)
    assert info["checks"]["ok"] and info["checks"]["problems"] == []
    assert info["inputs"][0]["shape"] == [1, 3, 256, 256] and info["outputs"][0]["name"] == "logits"
    assert info["op_counts"]["conv"] > 10 and info["const_dtypes"]["float32"]["file_tensors"] > 0


class _Tiny(nn.Module):
    """conv + attention + norms: small, but the fp16 path touches conv, matmul, softmax and layer_norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 2, 1)
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = F.silu(self.conv(x)).flatten(2).transpose(1, 2)
        t = self.norm(t)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(t.mean(1))


def test_fp16_keeps_float32_io_and_fp16_weights(tmp_path):
    torch.manual_seed(0)
    model, x = _Tiny().eval(), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    art = _export(model, x, tmp_path / "tiny16.mlpackage", "fp16")
    assert art.precision == "fp16" and art.details["compute_precision"] == "FLOAT16"
    assert art.inputs[0].dtype == "float32" and art.outputs[0].dtype == "float32"
    assert "float16" in art.details["const_dtypes"] and art.details["spec_version"] == 6
    y = evaluate_mil(art.path, {"input": x.numpy()})["logits"]
    c = compare(ref, y)
    assert not get_exporter("coreml").tolerance("fp16").failures(c, float(np.abs(ref).max()))
    assert c.max_abs > 0  # computed with fp16 storage: not bit-equal to the fp32 reference


class _ManyOps(nn.Module):
    """Ops the seven zoo models do not all produce, for the evaluator's hand-written kernels."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.dil = nn.Conv2d(2, 4, 3, padding="same", dilation=2)

    def forward(self, x):
        y = self.inorm(F.hardswish(self.conv(self.bn(x))))
        y = F.max_pool2d(y, 3, 2, 1)
        y = F.avg_pool2d(y, 3, 1, 1) + F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
        y = F.interpolate(y, scale_factor=2, mode="bilinear") + F.interpolate(y, scale_factor=2, mode="nearest")
        y = F.gelu(self.up(y))
        y = self.dil(F.pixel_shuffle(y, 2))
        return y.mean((2, 3)) + y.amax((2, 3))


def test_evaluator_kernels_match_pytorch(tmp_path):
    torch.manual_seed(0)
    model, x = _ManyOps().eval(), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        ref = model(x).numpy()
    art = _export(model, x, tmp_path / "many.mlpackage")
    ops = set(art.details["op_counts"])
    assert {"batch_norm", "instance_norm", "max_pool", "avg_pool", "upsample_bilinear", "conv_transpose"} <= ops
    y = evaluate_mil(art.path, {"input": x.numpy()})["logits"]
    assert compare(ref, y).rel_max_abs < 1e-5


def test_tanh_gelu_conversion_is_flagged(tmp_path):
    """coremltools 9.0 converts gelu(approximate="tanh") as exact GELU; the evaluator shows what was saved."""
    x = torch.randn(1, 3, 8, 8) * 3
    art = _export(nn.GELU(approximate="tanh"), x, tmp_path / "gelu.mlpackage")
    assert "exact GELU" in " ".join(art.details["converter_notes"])
    y = evaluate_mil(art.path, {"input": x.numpy()})["logits"]
    np.testing.assert_allclose(y, F.gelu(x).numpy(), atol=1e-6)


def test_evaluator_names_an_op_it_does_not_implement(tmp_path):
    from exporters.coreml import _import_coremltools

    ct = _import_coremltools()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 4, 4))], opset_version=ct.target.iOS15)
    def prog(x):
        return mb.space_to_depth(x=x, block_size=2)

    path = tmp_path / "s2d.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15, skip_model_load=True).save(
        str(path)
    )
    with pytest.raises(UnsupportedMILOpError, match="does not implement op 'space_to_depth'"):
        evaluate_mil(path, {"x": np.zeros((1, 4, 4, 4), np.float32)})


class _Eig(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.linalg.eigvals(self.proj(x)[0, 0, :4, :4]).real


class _Rank6(nn.Module):
    def forward(self, x):
        b, c, h, w = x.shape
        return (x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 1, 2, 4, 3, 5) * 2).sum((2, 3))


def test_unsupported_op_gives_one_line_naming_op_and_module(tmp_path):
    model = nn.Sequential(nn.Identity(), _Eig())
    with pytest.raises(EdgeHybridError) as info:
        _export(model, torch.randn(1, 3, 8, 8), tmp_path / "eig.mlpackage")
    msg = str(info.value)
    assert "'linalg_eigvals'" in msg and "in module '1'" in msg and "_Eig" in msg and "\n" not in msg
    assert isinstance(info.value.__cause__, NotImplementedError)


def test_rank6_tensor_gives_one_line_naming_layer(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), _Rank6())
    with pytest.raises(EdgeHybridError) as info:
        _export(model, torch.randn(1, 3, 8, 8), tmp_path / "r6.mlpackage", "fp16")
    msg = str(info.value)
    assert "rank 6" in msg and "PyTorch node 'view'" in msg and "_Rank6" in msg and "\n" not in msg


def test_corrupt_or_missing_package_is_a_clear_error(tmp_path, mobilevit):
    bad = tmp_path / "bad.mlpackage"
    shutil.copytree(mobilevit[0].path, bad)
    spec_file = next(bad.rglob("*.mlmodel"))
    spec_file.write_bytes(spec_file.read_bytes()[:100])
    runtime = get_runtime("coreml")
    for loader in (lambda p: runtime.load(p, threads=2), inspect_mlpackage):
        with pytest.raises(InputError, match="not a readable Core ML package"):
            loader(bad)
        with pytest.raises(InputError, match="does not exist"):
            loader(tmp_path / "missing.mlpackage")


def test_export_keeps_stdout_clean(tmp_path, capfd):
    torch.manual_seed(0)
    _export(_Tiny(), torch.randn(1, 3, 32, 32), tmp_path / "quiet.mlpackage")
    out, _ = capfd.readouterr()
    assert out == ""


def test_unknown_precision_and_channels_last_are_refused():
    exp = get_exporter("coreml")
    with pytest.raises(EdgeHybridError, match="unknown precision 'int4'"):
        exp.tolerance("int4")
    with pytest.raises(EdgeHybridError, match="NCHW"):
        exp.export(_Tiny(), torch.randn(1, 3, 32, 32), SPEC, ExportOptions(channels_last=True), Path("x.mlpackage"))


def test_modules_import_without_coremltools():
    code = (
        "import sys, exporters.coreml, exporters.coreml_check, edgehybrid.runtimes.coreml; "
        "print('coremltools' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_reference_session_for_the_pipeline(mobilevit):
    """The exporter's reference_session: Session-shaped, labelled as not being Core ML."""
    art, x, ref = mobilevit
    sess = get_exporter("coreml").reference_session(art.path)
    assert "not the Core ML runtime" in sess.label
    assert [i.name for i in sess.inputs] == ["input"] and sess.inputs[0].layout == "NCHW"
    y = sess.run({"input": x.numpy()})[sess.outputs[0].name]
    assert compare(ref, y).rel_max_abs < 1e-5
