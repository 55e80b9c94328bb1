"""``edgehybrid export`` end to end: every family to every target, validated, with a complete manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgehybrid.errors import CheckFailedError
from edgehybrid.pipeline import ExportRequest, run_export
from exporters.base import ExportOptions

# one real-size variant of every family, and the three baselines
MODELS = ["mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1", "efficientformerv2_s0",
          "mobilenetv2_100", "mobilenetv3_large_100", "deit_tiny_patch16_224"]
TARGETS = ["onnx", "tflite", "coreml"]
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}


def _no_staging_left(out: Path) -> bool:
    return not any(p.name.startswith(".edgehybrid-staging-") for p in out.iterdir())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# MobileViT-XXS is exported on every target elsewhere in every run (at 256 px: test_profile_probe.py on ONNX
# and LiteRT; the bundled fixture at 64 px: test_check.py on Core ML, test_old_runtimes.py, test_ci.py,
# test_export_executorch.py), so here it runs with --runslow: CI's 25 minutes
COVERED_ELSEWHERE = {"mobilevit_xxs"}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in COVERED_ELSEWHERE else m
                                   for m in MODELS])
def test_export_validates_against_pytorch(model, target, tmp_path, cli):
    code, out, err = cli("export", model, "--target", target, "--weights", "random", "--out", tmp_path, "--json")
    assert code == 0, err
    m = json.loads(out)  # exactly one JSON document on stdout
    artifact = tmp_path / f"{model}{SUFFIX[target]}"
    assert artifact.exists() and (tmp_path / f"{artifact.name}.manifest.json").exists()
    assert json.loads((tmp_path / f"{artifact.name}.manifest.json").read_text()) == m
    assert _no_staging_left(tmp_path)
    # the manifest gets the permissions the artifact has (the umask's), not mkstemp's private 0600
    manifest_mode = (tmp_path / f"{artifact.name}.manifest.json").stat().st_mode & 0o777
    artifact_file = artifact if artifact.is_file() else next(p for p in artifact.rglob("*") if p.is_file())
    assert manifest_mode == artifact_file.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert m["requires"] and all(spec.startswith(">=") for spec in m["requires"].values())
    assert m["model"] == model and m["target"] == target and m["precision"] == "fp32"
    assert len(m["sha256"]) == 64 and m["size_bytes"] > 100_000
    assert m["inputs"][0]["shape"][0] == 1 and m["outputs"][0]["shape"] == [1, 1000]
    assert m["preprocessing"]["in_graph"] is False
    assert m["versions"]["torch"] and m["timings_s"]["export"] > 0
    v = m["validation"]
    assert v["passed"] is True and v["samples"] == 8
    metrics = v["metrics"]["logits"]
    if target == "coreml" and sys.platform != "darwin":
        # Core ML cannot execute on Linux: the figures come from evaluating the converted program, said so
        assert v["executed"] is False and "macOS" in v["reason"] and "reference" in v["method"]
    else:
        assert v["executed"] is True
    # fp32: the artifact computes what PyTorch computes
    assert metrics["top1_agreement"] == 1.0 and metrics["cosine"] > 0.99999
    assert metrics["max_abs"] <= 1e-4 + 1e-5 * 100, metrics
    if target == "tflite":
        assert m["inputs"][0]["layout"] == "NHWC" and m["inputs"][0]["shape"][3] == 3
    else:
        assert m["inputs"][0]["layout"] == "NCHW"


# the wrapper is target-independent: ONNX runs by default, the others with --runslow
@pytest.mark.parametrize("target", [t if t == "onnx" else pytest.param(t, marks=pytest.mark.slow) for t in TARGETS])
def test_normalize_in_graph_takes_raw_pixels(target, tmp_path):
    m = run_export(ExportRequest(model="mobilevitv2_050", target=target, out_dir=tmp_path, weights="random",
                                 options=ExportOptions(normalize_in_graph=True)))
    assert m["preprocessing"]["in_graph"] is True and m["validation"]["passed"]


def test_batch_and_input_size(tmp_path):
    m = run_export(ExportRequest(model="efficientformerv2_s0", target="onnx", out_dir=tmp_path, weights="random",
                                 options=ExportOptions(batch=3), input_size=(192, 160), num_classes=10))
    assert m["inputs"][0]["shape"] == [3, 3, 192, 160] and m["outputs"][0]["shape"] == [3, 10]
    assert m["preprocessing"]["crop"] == [192, 160] and m["validation"]["passed"]


def test_failed_validation_writes_nothing(tmp_path, monkeypatch):
    from edgehybrid.drift import Tolerance
    from edgehybrid.targets import Target

    # a tolerance no real artifact can meet: the pipeline must refuse and clean up after itself
    impossible = Tolerance(atol=0.0, rtol=0.0, min_cosine=1.5, min_top1_agreement=1.0)
    monkeypatch.setattr(Target, "tolerance", lambda self, precision: impossible)
    (tmp_path / "keep.txt").write_text("unrelated")
    with pytest.raises(CheckFailedError, match=r"failed validation .* on output 'logits': .*cosine"):
        run_export(ExportRequest(model="mobilenetv2_100", target="onnx", out_dir=tmp_path, weights="random"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_bad_inputs_fail_in_one_line(tmp_path, cli):
    cases = [
        (["export", "mobilevit_xxs", "--target", "onxx", "--weights", "random"], "did you mean 'onnx'"),
        (["export", "mobilevit_xxz", "--target", "onnx"], "did you mean 'mobilevit_xxs'"),
        (["export", "mobilevit_xxs", "--target", "onnx", "--weights", "random", "--out", tmp_path / "file.txt"],
         "not a folder"),
        (["export", "mobilevit_xxs", "--target", "onnx", "--weights", "random", "--images", tmp_path / "none"],
         "is not a folder"),
        (["export", "mobilevit_xxs", "--target", "onnx", "--weights", "random", "--input-size", "100", "100"],
         "multiples of 64"),
        (["export", "mobilevit_xxs", "--target", "onnx", "--weights", "random", "--batch", "0"],
         "'--batch': Input should be greater than or equal to 1"),
        # a failed export leaves no new empty folder behind (the model load fails after --out was checked)
        (["export", "mobilevit_xxs", "--target", "onnx", "--weights", tmp_path / "corrupt.safetensors",
          "--out", tmp_path / "new" / "deep"], "corrupt.safetensors"),
        # a folder of the user's that has the artifact's name is not an older artifact: refused, not deleted
        (["export", "mobilevit_xxs", "--target", "onnx", "--weights", "random", "--out", tmp_path / "out"],
         "mobilevit_xxs.onnx' is a folder, and the artifact to write there is a file"),
    ]
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    (tmp_path / "out" / "mobilevit_xxs.onnx").mkdir(parents=True)
    (tmp_path / "out" / "mobilevit_xxs.onnx" / "mine.txt").write_text("the user's")
    for args, expected in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, err)
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert out == ""
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "out" / "mobilevit_xxs.onnx" / "mine.txt").read_text() == "the user's"


def test_empty_and_unreadable_validation_images(tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("export", "mobilevit_xxs", "-t", "onnx", "-w", "random", "--images", empty, "-o", tmp_path)
    assert code == 2 and "holds no JPEG" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, _, err = cli("export", "mobilevit_xxs", "-t", "onnx", "-w", "random", "--images", bad, "-o", tmp_path)
    assert code == 2 and "cannot read image" in err and "broken.jpg" in err
    assert not any(tmp_path.glob("*.onnx"))


def test_missing_backend_names_the_extra(tmp_path):
    # a real interpreter in which coremltools cannot be imported, as on a machine without the [coreml] extra
    blocker = tmp_path / "block"
    (blocker / "coremltools").mkdir(parents=True)
    (blocker / "coremltools" / "__init__.py").write_text("raise ImportError('coremltools is not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(Path.cwd())])}
    res = subprocess.run(
        [sys.executable, "-m", "edgehybrid", "export", "mobilevit_xxs", "--target", "coreml", "--weights", "random",
         "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 2, res.stderr
    assert "pip install 'edgehybrid[coreml]'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_validation_images_are_real_and_preprocessed_per_spec():
    from calibration.preprocess import load_batch, sample_images
    from models_zoo import get_spec

    spec = get_spec("efficientformer_l1")
    batch = load_batch(sample_images(), spec.preprocessing)
    assert batch.shape == (8, 3, 224, 224) and batch.dtype == np.float32
    # ImageNet-normalized photos: roughly zero-mean, unit-spread, and the greyscale one has equal channels
    assert abs(float(batch.mean())) < 1.0 and 0.5 < float(batch.std()) < 1.6
    pixels = load_batch(sample_images(), spec.preprocessing, normalized=False)
    grey = [i for i, p in enumerate(sample_images()) if "pencil_sharpener" in p.name][0]
    assert np.allclose(pixels[grey, 0], pixels[grey, 1]) and pixels.max() <= 255.0


def test_export_summary_for_people(tmp_path, cli):
    code, out, err = cli("export", "mobilenetv2_100", "--target", "onnx", "--weights", "random", "--out", tmp_path)
    assert code == 0 and "validation" in out and "passed" in out
    assert "exported onnx" in err and "validated on 8 images" in err
    # what to do next, with the real path; and where it runs
    artifact = f"{tmp_path}/mobilenetv2_100.onnx"
    assert f"edgehybrid check {artifact} --data DIR_OF_LABELLED_IMAGES" in out
    assert f"edgehybrid profile {artifact}" in out and "runs on" in out and "onnxruntime >=1." in out
    assert "the caller does this before feeding the model" in out
    # stderr is no terminal here: log lines with their timings, no spinner or bar frames
    assert "converting to" not in err and "validating against" not in err and "\x1b[" not in err
