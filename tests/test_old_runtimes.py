"""Artifacts run on the runtimes devices have: the bundled fixture's FP32 and INT8 ONNX and TFLite files, run
by ONNX Runtime 1.15.0 and tflite-runtime 2.14.0 in a virtual environment of their own (the oldest releases
with Python 3.11 wheels; 1.15 also reads what these files declare: opset 18, IR version 8), against the
outputs of the runtimes installed here. The environment is built once per machine (pip caches the wheels)
under ``~/.cache/edgehybrid-tests``; without the package registry these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.preprocess import load_batch, normalize, sample_images
from edgehybrid.cli import main
from edgehybrid.profiling.local import profile_local
from edgehybrid.runtimes import open_session, run_batched
from models_zoo.zoo import load_model

FIXTURE = "mobilevit_xxs.cifar10"
OLD = {"onnxruntime": "1.15.0", "tflite-runtime": "2.14.0"}
PINS = [f"{k}=={v}" for k, v in OLD.items()] + ["numpy==1.26.4"]  # both wheels are built against numpy 1.x
CACHE = Path(os.environ.get("EDGEHYBRID_TEST_CACHE", Path.home() / ".cache" / "edgehybrid-tests"))

# Runs inside the old environment: no edgehybrid there, only the runtime and numpy, as on a device.
RUNNER = r"""
import sys, numpy as np
kind, path, feed, out = sys.argv[1:5]
x = np.load(feed, allow_pickle=False)
if kind == "onnx":
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    y = np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    version = ort.__version__
else:
    from importlib.metadata import version as v
    from tflite_runtime.interpreter import Interpreter
    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    i_d, o_d = runner.get_input_details()["input"], runner.get_output_details()["logits"]
    if i_d["dtype"] != np.float32:  # an int8 model's quantized input: quantize as a device app does
        scale, zp = i_d["quantization"]
        info = np.iinfo(i_d["dtype"])
        x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(i_d["dtype"])
    y = np.concatenate([runner(input=x[i:i + 1])["logits"] for i in range(len(x))])
    if o_d["dtype"] != np.float32:
        scale, zp = o_d["quantization"]
        y = (y.astype(np.float32) - zp) * scale
    version = v("tflite-runtime")
np.save(out, y)
print(version)
"""


@pytest.fixture(scope="module")
def old_python() -> str:
    """The Python of a virtual environment holding only the old runtimes and numpy 1.26."""
    env = CACHE / ("old-runtimes-py%d%d-" % sys.version_info[:2] + "-".join(PINS).replace("==", ""))
    python = env / "bin" / "python"
    if (env / "ready").is_file():
        return str(python)
    staging = env.with_name(env.name + f".building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(staging)], check=True)
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(staging / "bin" / "python"), "install",
                          "--disable-pip-version-check", "--only-binary=:all:", "-q", *PINS],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"could not install {' '.join(PINS)} (no package registry?): {res.stderr.strip()[-300:]}")
    (staging / "ready").write_text("\n".join(PINS) + "\n")
    shutil.rmtree(env, ignore_errors=True)
    os.replace(staging, env)  # the venv's scripts name their folder: built there, they keep working after a rename
    return str(env / "bin" / "python")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """The fixture's FP32 and INT8 (16 calibration images: quick, and as real as any) ONNX and TFLite files."""
    out = tmp_path_factory.mktemp("old-runtimes")
    built = {}
    for target in ("onnx", "tflite"):
        for precision in ("fp32", "int8"):
            extra = ["--int8", "--calib-size", "16"] if precision == "int8" else []
            assert main(["export", FIXTURE, "-t", target, "-o", str(out), *extra]) == 0
            tag = "_int8" if precision == "int8" else ""
            built[f"{target}-{precision}"] = out / f"{FIXTURE}{tag}.{target}"
    return built


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    spec = load_model(FIXTURE).spec
    return normalize(load_batch(sample_images()[:8], spec.preprocessing, normalized=False), spec.preprocessing)


def _run_old(python: str, kind: str, artifact: Path, feed: np.ndarray, tmp: Path) -> tuple[np.ndarray, str]:
    np.save(tmp / "feed.npy", feed)
    res = subprocess.run([python, "-c", RUNNER, kind, str(artifact), str(tmp / "feed.npy"), str(tmp / "out.npy")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return np.load(tmp / "out.npy", allow_pickle=False), res.stdout.strip()


@pytest.mark.parametrize("key", ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"])
def test_old_runtime_matches_the_current_one(key, artifacts, old_python, images, tmp_path):
    target, precision = key.split("-")
    artifact = artifacts[key]
    manifest = json.loads(artifact.with_name(artifact.name + ".manifest.json").read_text())
    session = open_session(target, artifact, threads=1).session
    layout = manifest["inputs"][0]["layout"]
    current = run_batched(session, images, 1, "input", "logits", layout)
    feed = images.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else images
    old, version = _run_old(old_python, target, artifact, feed, tmp_path)

    assert version == OLD[manifest["target"] == "onnx" and "onnxruntime" or "tflite-runtime"]
    # what the file declares is what this old runtime accepts
    (runtime, spec), = manifest["requires"].items()
    assert runtime == ("onnxruntime" if target == "onnx" else "tflite-runtime")
    assert spec.startswith(">=") and tuple(map(int, spec[2:].split("."))) <= tuple(map(int, version.split(".")))
    err = float(np.abs(old - current).max()) / float(np.abs(current).max())
    cosine = float((old * current).sum() / (np.linalg.norm(old) * np.linalg.norm(current)))
    agree = float((old.argmax(1) == current.argmax(1)).mean())
    print(f"{key}: {version} vs current: {err:.2e} of max|logit|, cosine {cosine:.6f}, top-1 agreement {agree:.0%}")
    if precision == "fp32":
        assert err < 1e-4, f"{key}: {version} differs from the current runtime by {err:.2e} of max|logit|"
    else:  # int8 kernels round differently across releases (requantization, fusions); a conversion fault
        # (a wrong scale, a lost zero point) drops the cosine far below and flips classes
        assert cosine > 0.99 and agree == 1.0, f"{key}: {version} vs current: cosine {cosine:.6f}, agree {agree}"


def test_onnx_files_declare_the_lowest_ir_and_opset(artifacts):
    import onnx

    for key in ("onnx-fp32", "onnx-int8"):
        mp = onnx.load(str(artifacts[key]), load_external_data=False)
        assert mp.ir_version == 8, f"{key}: IR {mp.ir_version}"  # opset 18's own IR version, not onnx's newest
        assert [(o.domain, o.version) for o in mp.opset_import] == [("", 18)]


def test_profile_reports_the_old_runtime_and_warns_below_the_minimum(artifacts, old_python, tmp_path):
    artifact = artifacts["onnx-fp32"]
    doc = profile_local(artifact, "onnxruntime", 1, 1, 3, None, False, python=old_python)
    assert doc["runtime_version"] == OLD["onnxruntime"] and OLD["onnxruntime"] in doc["backend"]
    assert doc["requirement"] == {"requires": {"onnxruntime": ">=1.14"}, "met": True, "warning": None}

    # the same file, with a manifest asking for a newer runtime than the device has
    copy = tmp_path / artifact.name
    shutil.copy(artifact, copy)
    manifest = json.loads(artifact.with_name(artifact.name + ".manifest.json").read_text())
    manifest["requires"] = {"onnxruntime": ">=1.17"}
    copy.with_name(copy.name + ".manifest.json").write_text(json.dumps(manifest))
    doc = profile_local(copy, "onnxruntime", 1, 1, 3, None, False, python=old_python)
    assert doc["requirement"]["met"] is False
    assert doc["requirement"]["warning"].startswith("onnxruntime 1.15.0 is older than the artifact needs "
                                                    "(onnxruntime>=1.17")
