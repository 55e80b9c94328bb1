"""``edgehybrid profile`` through the CLI: several artifacts, a comparison, three report formats, bad inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgehybrid.pipeline import ExportRequest, run_export


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile-artifacts")
    onnx = run_export(ExportRequest(model="mobilevit_xxs", target="onnx", out_dir=out, weights="random"))
    tflite = run_export(ExportRequest(model="mobilevit_xxs", target="tflite", out_dir=out, weights="random"))
    return out / Path(onnx["artifact"]).name, out / Path(tflite["artifact"]).name


def test_profile_two_artifacts_compares_and_reports(artifacts, tmp_path, cli):
    onnx, tflite = artifacts
    html = tmp_path / "report.html"
    code, out, err = cli("profile", onnx, tflite, "--runs", "15", "--warmup", "3", "--per-op", "--report", html,
                         "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [p["runtime"] for p in doc["profiles"]] == ["onnxruntime", "litert"]
    for p in doc["profiles"]:
        lat = p["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert p["runs"] == 15 and len(p["samples_ms"]) == 15 and p["threads"] == 2 and p["warmup"] == 3
        assert p["memory"]["peak_rss_mb"] > p["memory"]["baseline_rss_mb"] > 0
        assert p["machine"]["cores"] >= 1
    onnx_ops = doc["profiles"][0]["per_op"]
    assert onnx_ops["by_op_type"] and onnx_ops["by_category"]["attention"] > 0
    assert doc["profiles"][1]["per_op"]["missing"]  # LiteRT's Python interpreter has no per-op timing
    assert len(doc["comparison"]) == 2
    page = html.read_text()
    assert "<html" in page.lower() and "plot-latency" in page and "http://" not in page.replace("http://www.w3.org", "")


def test_markdown_and_json_reports(artifacts, tmp_path, cli):
    onnx, _ = artifacts
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    for path in (md, js):
        code, out, err = cli("profile", onnx, "--runs", "10", "--warmup", "2", "--report", path)
        assert code == 0, err
        assert path.exists()
    assert "|" in md.read_text() and "p50" in md.read_text()
    assert json.loads(js.read_text())["profiles"][0]["artifact_name"] == onnx.name


@pytest.mark.parametrize("args,expected", [
    (["--runs", "0"], "'--runs': Input should be greater than or equal to 1"),
    (["--runtime", "onnxruntme"], "did you mean 'onnxruntime'"),
    (["--threads", "0"], "'--threads': Input should be greater than or equal to 1"),
    (["--min-time", "-2"], "--min-time must be a positive number of seconds, got -2"),
    (["--warmup", "x"], "'--warmup': Input should be a valid integer"),
    (["--report", "no/such/folder/r.json"], "'no/such/folder' does not exist; create the folder"),
    (["--runs", "5", "--device", "ssh://u@h", "--runs", "0"], "'--runs': Input should be greater than or equal to 1"),
])
def test_bad_options(artifacts, cli, args, expected):
    """Refused before anything is profiled or sent to a device: one line naming the option, exit 2."""
    code, out, err = cli("profile", artifacts[0], *args)
    assert code == 2 and expected in err and out == "", err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "Usage" not in err


def test_bad_artifacts(tmp_path, cli):
    missing = tmp_path / "missing.onnx"
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an onnx model")
    unknown = tmp_path / "model.pt"
    unknown.write_bytes(b"x")
    for path, expected in [(missing, "does not exist"), (corrupt, "corrupt.onnx"), (unknown, "expected a .onnx")]:
        code, out, err = cli("profile", path, "--runs", "5")
        assert code == 2, err
        assert expected in err and "Traceback" not in err and out == ""


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_says_plainly_it_cannot_run_here(tmp_path, cli):
    m = run_export(ExportRequest(model="mobilenetv2_100", target="coreml", out_dir=tmp_path, weights="random"))
    code, _, err = cli("profile", tmp_path / Path(m["artifact"]).name, "--runs", "5")
    assert code == 2 and "cannot be executed on Linux" in err and "macOS" in err
