"""The profile report: comparison figures, JSON/Markdown/HTML rendering, and the HTML as Chromium shows it.

Most tests render synthetic profiles built here to the ``edgehybrid.profile/1`` schema (a renderer only
needs the shape of the data); one renders a real profile of an exported MobileNetV2 measured by probe.py on
ONNX Runtime. The HTML is opened in headless Chromium to prove the plots survive a real browser.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgehybrid.errors import InputError
from edgehybrid.profiling import report
from edgehybrid.profiling.report import comparison, to_html, to_json, to_markdown, write_report

PROBE = Path(report.__file__).with_name("probe.py")
PLOT_SRC = re.compile(r'<img id="(plot-[\w-]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def make_profile(name: str, runtime: str, p50: float, above_mb: float, per_op: bool = True, seed: int = 0) -> dict:
    """A complete profile in the probe's schema, with plausible, reproducible figures."""
    rng = np.random.default_rng(seed)
    samples = (p50 + rng.gamma(2.0, p50 * 0.03, 40)).round(3).tolist()
    ops = [("Conv", 0.55, 52), ("MatMul", 0.18, 24), ("Softmax", 0.07, 9), ("LayerNormalization", 0.06, 18),
           ("Add", 0.05, 40), ("Mul", 0.04, 30), ("Transpose", 0.03, 20), ("Reshape", 0.02, 20)]
    total = p50 * 0.95
    return {
        "schema": "edgehybrid.profile/1", "artifact": f"exports/{name}", "artifact_name": name,
        "size_bytes": 5_600_000 + seed * 1_000_000, "sha256": f"{seed:02d}" * 32, "runtime": runtime,
        "runtime_version": "1.32.0", "backend": f"{runtime} CPU", "threads": 2, "warmup": 10, "runs": 40,
        "min_time_s": None,
        "machine": {"cpu_model": "Test CPU @ 3.0GHz", "cores": 8, "platform": "linux", "python": "3.11.7"},
        "input": {"name": "input", "shape": [1, 3, 256, 256], "dtype": "float32"},
        "load_ms": 40.0 + seed, "first_inference_ms": p50 * 3,
        "latency_ms": {"mean": float(np.mean(samples)), "std": float(np.std(samples)), "min": min(samples),
                       "p50": p50, "p90": float(np.percentile(samples, 90)), "p99": float(np.percentile(samples, 99)),
                       "max": max(samples)},
        "throughput_ips": 1000.0 / float(np.mean(samples)), "samples_ms": samples,
        "memory": {"baseline_rss_mb": 60.0, "peak_rss_mb": 60.0 + above_mb, "peak_above_baseline_mb": above_mb,
                   "arena_mb": None, "arena_note": "not exposed by this runtime", "method": "fresh process"},
        "per_op": None if not per_op else {
            "source": f"{runtime} profiler", "total_ms": total, "runs": 40,
            "by_op_type": [{"op_type": o, "ms": total * s, "share": s, "count": c} for o, s, c in ops],
            "by_category": {"attention": 0.25, "convolution": 0.55, "normalization": 0.06, "other": 0.14},
            "by_module": None, "missing": None},
        "device": "local",
    }


@pytest.fixture
def profiles():
    return [make_profile("mobilevit_s.onnx", "onnxruntime", 20.0, 40.0, seed=1),
            make_profile("mobilevit_s_int8.onnx", "onnxruntime", 10.0, 20.0, seed=2),
            make_profile("mobilevit_s.tflite", "litert", 25.0, 30.0, per_op=False, seed=3),
            {"artifact": "exports/mobilevit_s.mlpackage", "artifact_name": "mobilevit_s.mlpackage",
             "runtime": "coreml", "device": "local", "error": "Core ML runs only on macOS"}]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_comparison_ratios_against_the_first(profiles):
    rows = comparison(profiles)
    assert [r["artifact_name"] for r in rows] == [p["artifact_name"] for p in profiles]
    assert rows[0]["baseline"] and rows[0]["p50_ratio"] == pytest.approx(1.0)
    assert rows[1]["p50_ratio"] == pytest.approx(0.5) and rows[1]["memory_ratio"] == pytest.approx(0.5)
    assert rows[2]["p50_ratio"] == pytest.approx(1.25) and rows[2]["memory_ratio"] == pytest.approx(0.75)
    assert rows[1]["size_mb"] == pytest.approx(7.6) and rows[1]["peak_rss_mb"] == pytest.approx(80.0)
    assert rows[3]["error"] and rows[3]["p50_ms"] is None and rows[3]["p50_ratio"] is None


def test_baseline_is_the_first_artifact_that_ran(profiles):
    rows = comparison([profiles[3], profiles[1], profiles[0]])
    assert rows[1]["baseline"] and rows[2]["p50_ratio"] == pytest.approx(2.0)


def test_json_document(profiles):
    doc = to_json(profiles)
    assert doc["schema"] == "edgehybrid.profile-report/1" and doc["created"] and doc["edgehybrid_version"]
    assert doc["profiles"] == profiles and len(doc["comparison"]) == 4
    assert json.loads(json.dumps(doc)) == doc  # plain JSON all the way down


def test_markdown_for_a_pull_request(profiles):
    profiles[0]["artifact_name"] = "a|b.onnx"  # a pipe must not break the table
    md = to_markdown(to_json(profiles))
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| artifact", "| ---"))]
    assert "| a\\|b.onnx | onnxruntime | 6.60 |" in md
    assert "| mobilevit_s_int8.onnx | onnxruntime | 7.60 | 42.0 | 10.00 |" in md and "0.50x" in md
    assert "| mobilevit_s.mlpackage | coreml | — |" in md
    assert "| attention | convolution | normalization | other | top op types |" in md
    assert "| mobilevit_s_int8.onnx | 25% | 55% | 6% | 14% | Conv 55%, MatMul 18%, Softmax 7% |" in md
    assert len(rows) == 4 + 2  # four artifacts, two with per-op
    setup = [line for line in md.splitlines() if line.startswith("Setup:")]
    assert setup == [("Setup: Test CPU @ 3.0GHz (8 cores, linux, Python 3.11.7) on local · threads 2 · warm-up 10 · "
                      "40 runs  ")]
    # what is true for each runtime: ONNX Runtime has per-op time behind --per-op, LiteRT's Python API none
    assert "- mobilevit_s.tflite: no per-op timing: litert's Python API exposes none" in md
    assert "- mobilevit_s.mlpackage (coreml) could not run: Core ML runs only on macOS" in md
    assert "| mean ms | std ms | min ms | max ms |" in md and "p50 vs first" in md


def test_one_artifact_has_no_comparison_columns(profiles):
    md = to_markdown(to_json(profiles[:1]))
    assert "vs first" not in md and "| mean ms | std ms | min ms | max ms |" in md
    assert "vs first" not in to_html(to_json(profiles[:1]))


def test_markdown_setup_per_artifact_when_they_differ(profiles):
    profiles[1]["threads"] = 4
    profiles[2]["per_op"] = {"missing": "LiteRT exposes no per-op timing in Python", "by_op_type": []}
    md = to_markdown(to_json(profiles))
    assert "Setup: mobilevit_s.onnx, mobilevit_s.tflite: " in md and "Setup: mobilevit_s_int8.onnx: " in md
    assert "threads 4" in md and "per-op timing unavailable: LiteRT exposes no per-op timing" in md


def test_html_is_self_contained_with_every_plot(profiles):
    page = to_html(to_json(profiles))
    assert not re.search(r"https?://|<script|<link|@import|url\(", page), "the page must not reach out"
    plots = dict(PLOT_SRC.findall(page))
    assert set(plots) == {"plot-latency", "plot-categories", "plot-per-op-0", "plot-per-op-1"}
    for plot_id, b64 in plots.items():
        data = base64.b64decode(b64)
        width, height = png_size(data)
        assert width >= 600 and height >= 100 and len(data) > 8_000, (plot_id, width, height, len(data))
    assert "Test CPU @ 3.0GHz" in page and "warm-up 10" in page and "could not run" in page
    assert page.count("<tr class=") == 4 and "class='baseline'" in page


def test_html_escapes_names(profiles):
    profiles[0]["artifact_name"] = "<b>x</b>.onnx"
    page = to_html(to_json(profiles))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;.onnx" in page


def test_html_with_nothing_that_ran():
    page = to_html(to_json([{"artifact_name": "m.tflite", "runtime": "litert", "error": "ai-edge-litert missing"}]))
    assert "could not run: ai-edge-litert missing" in page and "plot-" not in page


def test_write_report_by_suffix(tmp_path, profiles):
    doc = to_json(profiles)
    assert json.loads(write_report(doc, tmp_path / "r.json").read_text()) == doc
    assert write_report(doc, tmp_path / "r.md").read_text() == to_markdown(doc)
    assert 'id="plot-latency"' in write_report(doc, tmp_path / "R.HTML").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.HTML", "r.json", "r.md"]  # no temporary leftovers
    with pytest.raises(InputError, match=r"must end in \.json, \.md or \.html") as err:
        write_report(doc, tmp_path / "r.txt")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="'.*missing' does not exist; create the folder"):
        write_report(doc, tmp_path / "missing" / "r.md")
    with pytest.raises(InputError, match="'.*r.json' is not a folder"):  # the parent is a file
        write_report(doc, tmp_path / "r.json" / "r.md")


# ------------------------------------------------------------------------------------ real browser

def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("chromium is not installed: the HTML report cannot be rendered in a browser here")
    return exe


def run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # flags that keep a headless run offline and quiet: no sandbox (CI runs as root), no background
    # traffic, a throwaway profile so no state leaks between tests
    argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def check_in_browser(page: Path, tmp: Path, expected_plots: set[str]) -> Path:
    exe = chromium()
    dom = run_chromium(exe, tmp, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "edgehybrid profile" in dom.stdout and "id=\"comparison\"" in dom.stdout
    assert set(re.findall(r'<img id="(plot-[\w-]+)"', dom.stdout)) == expected_plots
    shot = tmp / "screenshot.png"
    res = run_chromium(exe, tmp, f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars",
                       page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1200, 2000)
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
    # a blank or broken page has a handful of colours and next to no ink; text, tables and plots give
    # hundreds of (anti-aliased) colours and a few per cent of non-white pixels
    ink = 1 - max(n for n, c in colours if c == (255, 255, 255)) / (1200 * 2000)
    assert len(colours) > 150 and ink > 0.02, (len(colours), ink)
    return shot


def test_html_renders_in_chromium(tmp_path, profiles):
    page = write_report(to_json(profiles), tmp_path / "report.html")
    check_in_browser(page, tmp_path, {"plot-latency", "plot-categories", "plot-per-op-0", "plot-per-op-1"})


# ------------------------------------------------------------------------------------ real profile

@pytest.fixture(scope="module")
def real_profile(tmp_path_factory):
    """MobileNetV2 exported to ONNX and measured by probe.py in a fresh process, as the CLI does."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from edgehybrid.pipeline import ExportRequest, run_export

    out = tmp_path_factory.mktemp("real")
    manifest = run_export(ExportRequest(model="mobilenetv2_100", target="onnx", out_dir=out, weights="random"))
    artifact = out / Path(manifest["artifact"]).name
    res = subprocess.run([sys.executable, str(PROBE), str(artifact), "--runtime", "onnxruntime", "--threads", "2",
                          "--warmup", "3", "--runs", "20", "--per-op"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def test_real_profile_renders(real_profile, tmp_path):
    doc = to_json([real_profile])
    row = doc["comparison"][0]
    assert row["artifact_name"] == "mobilenetv2_100.onnx" and row["p50_ratio"] == pytest.approx(1.0)
    assert 5 < row["size_mb"] < 30 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["peak_rss_mb"] > row["peak_above_baseline_mb"] > 0
    md = to_markdown(doc)
    assert "| mobilenetv2_100.onnx | onnxruntime |" in md and "threads 2 · warm-up 3 · 20 runs" in md
    assert "| mobilenetv2_100.onnx | 0% |" in md  # a pure CNN: no attention
    page = write_report(doc, tmp_path / "real.html")
    check_in_browser(page, tmp_path, {"plot-latency", "plot-categories", "plot-per-op-0"})
