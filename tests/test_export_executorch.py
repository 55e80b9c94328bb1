"""The ExecuTorch target, end to end through the CLI: export (fp32, and int8 from the one plan), validation
on the ExecuTorch runtime, profile, check, and its bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.runtime")

from edgehybrid.errors import EdgeHybridError, InputError  # noqa: E402
from edgehybrid.runtimes import get_runtime  # noqa: E402
from exporters.base import ExportOptions, get_exporter  # noqa: E402

@pytest.fixture(scope="module")
def fixture_fp32(tmp_path_factory):
    """The bundled MobileViT fixture as an fp32 .pte, exported once for the module."""
    from edgehybrid.cli import main

    out = tmp_path_factory.mktemp("et")
    assert main(["export", "mobilevit_xxs.cifar10", "-t", "executorch", "-o", str(out), "--json"]) == 0
    return out / "mobilevit_xxs.cifar10.pte"


def test_fp32_export_validates_on_the_executorch_runtime(fixture_fp32):
    m = json.loads(fixture_fp32.with_name(fixture_fp32.name + ".manifest.json").read_text())
    assert m["target"] == "executorch" and m["precision"] == "fp32" and m["artifact"].endswith(".pte")
    v = m["validation"]
    assert v["executed"] is True and v["runtime"] == "executorch" and v["passed"]
    assert v["metrics"]["logits"]["cosine"] > 0.99999 and v["metrics"]["logits"]["top1_agreement"] == 1.0
    d = m["details"]["delegation"]
    assert d["delegated_subgraphs"] >= 1 and d["by_operator"]["convolution"]["delegated"] > 0
    # what XNNPACK does not take is named, never hidden
    assert d["portable_nodes"] == sum(d["portable_ops"].values())
    assert all(op in d["by_operator"] for op in d["portable_ops"])
    assert m["inputs"][0] == {"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW",
                              "scale": None, "zero_point": None}
    # runtimes load programs of their release or older: the writer's release is the floor
    assert m["requires"] == {"executorch": ">=1.4"}
    assert m["details"]["requires_from"]["executorch"].endswith("(program schema ET12)")


def test_profile_and_check_run_the_pte(cli, fixture_fp32):
    code, out, err = cli("profile", fixture_fp32, "--runs", "5", "--warmup", "2", "--per-op", "--json")
    assert code == 0, err
    prof = json.loads(out)["profiles"][0]
    assert prof["runtime"] == "executorch" and prof["latency_ms"]["p50"] > 0 and prof["memory"]["peak_rss_mb"] > 0
    assert "ETDump" in prof["per_op"]["missing"]  # said, not faked
    from edgehybrid.drift_check import run_check

    report = run_check(fixture_fp32, Path("bundled:cifar10/eval"), max_images=64)
    assert report["runtime"]["executed"] and report["passed"]
    assert report["metrics"]["top1_agreement_pct"] == 100.0 and report["metrics"]["images"] == 64


TINY = f"{Path(__file__).parent / 'user_models' / 'tiny_hybrid.py'}:build"


@pytest.mark.parametrize("model, floated", [
    # a 16-layer hybrid of the user's own in every run; the MobileViT fixture (112 s on 2 cores) with --runslow
    (TINY, "stem.3"), pytest.param("mobilevit_xxs.cifar10", "stages.0.0.conv2_kxk.conv", marks=pytest.mark.slow)],
    ids=["tiny-hybrid", "mobilevit_xxs"])
def test_int8_keeps_the_plans_float_layers_visible_in_the_delegation_report(cli, tmp_path, model, floated):
    # one convolution kept float by the user
    code, out, err = cli("export", model, "-t", "executorch", "--int8", "--calib-size", "16",
                         "--float-layers", floated, "-o", tmp_path, "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["precision"] == "int8" and m["validation"]["passed"] and m["validation"]["executed"]
    layers = {row["layer"]: row for row in m["quantization"]["layers"]}
    assert layers[floated]["precision"] == "float"
    int8_weighted = sum(1 for row in layers.values() if row["precision"] == "int8"
                        for op in row["ops"] if op in ("conv", "linear"))
    # one int8 weight per convolution / linear the plan keeps int8, all inside XNNPACK: the floated conv is not
    d = m["details"]["delegation"]
    convs_and_linears = sum(sum(1 for op in row["ops"] if op in ("conv", "linear")) for row in layers.values())
    assert d["int8_weighted_ops"] == {"delegated": int8_weighted, "portable": 0}
    assert int8_weighted < convs_and_linears
    assert m["quantization"]["target_float_kinds"] == sorted(k for k in m["quantization"]["target_float_kinds"])
    assert "softmax" in m["quantization"]["target_float_kinds"]


@pytest.mark.parametrize("precision, most", [("fp32", 1e-5), pytest.param("fp16", 1e-2, marks=pytest.mark.slow)])
def test_efficientformer_exports_and_the_softmax_workaround_holds(tmp_path, precision, most):
    from edgehybrid.validate import validate
    from models_zoo import load_model

    # EfficientFormerV2's talking heads put a softmax right after a 1x1 conv, which ExecuTorch 1.4.1's XNNPACK
    # delegate computes over the wrong axis; the exporter keeps such a softmax out of the delegate
    loaded = load_model("efficientformerv2_s0.cifar10")
    x = torch.rand(2, 3, 64, 64)
    art = get_exporter("executorch").export(loaded.model, x[:1], loaded.spec, ExportOptions(precision=precision),
                                            tmp_path / f"e_{precision}.pte")
    assert art.inputs[0].dtype == "float32" and art.details["delegation"]["portable_ops"].get("softmax", 0) > 0
    result = validate("executorch", art, loaded.model, x.numpy(), 1, 2, [Path("a"), Path("b")])
    assert result["passed"], result["failures"]
    # within the precision's error, and not bit-equal: fp16 runs float16 arithmetic behind float32 I/O
    assert 0 < result["metrics"]["logits"]["rel_max_abs"] < most


def test_a_softmax_after_a_conv_is_exact(tmp_path):
    class TalkingHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.mix(x).softmax(dim=-1)

    torch.manual_seed(0)
    model, x = TalkingHead().eval(), torch.randn(1, 4, 16, 16)
    art = get_exporter("executorch").export(model, x, None, ExportOptions(), tmp_path / "t.pte")
    out = get_runtime("executorch").load(art.path).run({"input": x.numpy()})["logits"]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_an_op_with_no_lowering_is_named_with_its_module(tmp_path):
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.fft.rfft(self.head(x), dim=-1).abs().flatten(1)

    with pytest.raises(EdgeHybridError, match=r"ExecuTorch cannot lower .*op aten\.abs\.default in module"):
        get_exporter("executorch").export(Spectral().eval(), torch.randn(1, 3, 8, 8), None, ExportOptions(),
                                          tmp_path / "s.pte")


def test_corrupt_pte_is_one_line_everywhere(cli, tmp_path, fixture_fp32):
    cases = {
        "empty": (b"", "no ExecuTorch file identifier"),
        "random": (bytes(range(256)) * 16, "no ExecuTorch file identifier"),  # random bytes abort ExecuTorch itself
        "truncated": (fixture_fp32.read_bytes()[:50_000], "is truncated"),
    }
    for name, (content, message) in cases.items():
        bad = tmp_path / f"{name}.pte"
        bad.write_bytes(content)
        with pytest.raises(InputError, match=message):
            get_runtime("executorch").load(bad)
    # the profiler's probe checks the same in its own process (on a device too)
    code, out, err = cli("profile", tmp_path / "random.pte", "--runs", "2")
    assert code == 2 and "no ExecuTorch file identifier" in err and "Traceback" not in err and out == ""


def test_executorch_not_installed_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['executorch'] = None\n"
            "from edgehybrid.cli import main\n"
            f"sys.exit(main(['export', 'mobilevit_xxs.cifar10', '-t', 'executorch', '-o', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "edgehybrid[executorch]" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_runtime_reads_io_from_the_program(fixture_fp32):
    session = get_runtime("executorch").load(fixture_fp32, threads=2)
    assert [(i.name, i.shape, i.layout) for i in session.inputs] == [("input", (1, 3, 64, 64), "NCHW")]
    out = session.run({"input": np.zeros((1, 3, 64, 64), np.float32)})["logits"]
    assert out.shape == (1, 10) and np.isfinite(out).all()
    with pytest.raises(InputError, match="expects shape"):
        session.run({"input": np.zeros((1, 64, 64, 3), np.float32)})
