"""``edgehybrid compare``: the table's figures are check's and profile's, the front and the budget decide as
documented (exit 0 / 1), the HTML renders in Chromium, an interrupted run resumes, bad input is one line."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgehybrid.comparison import Budget, check_comparable
from edgehybrid.compare_rank import choose, kind_of, pareto, rank
from edgehybrid.errors import InputError

pytest.importorskip("onnxruntime")

# the convolution baseline and a hybrid, both trained on CIFAR-10 at 64x64
MODELS = ("mobilenetv2_100.cifar10", "mobilevit_xxs.cifar10")
DATA = "bundled:cifar10/eval"
IMAGES = "100"


def run_cli(*args, timeout=900, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgehybrid", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


# ---------------------------------------------------------------------------------- ranking, on given figures


def row(id_, acc, p50, model_mb=10.0, target="onnx"):
    return {"id": id_, "model": id_, "target": target, "status": "measured",
            "accuracy": {"metric": None if acc is None else "top1", "value": acc},
            "latency_ms": {"p50": p50, "p90": p50 * 1.1}, "memory_mb": {"peak": 80.0, "model": model_mb},
            "on_front": False, "within_budget": None}


def test_pareto_front_keeps_only_the_undominated():
    rows = [row("fast", 70.0, 1.0), row("accurate", 90.0, 5.0), row("dominated", 69.0, 2.0),
            row("tie", 70.0, 1.0), row("middle", 80.0, 3.0), row("slower-same", 90.0, 6.0)]
    front = {r["id"] for r in pareto(rows)}
    assert front == {"fast", "tie", "accurate", "middle"}  # equal points do not dominate each other


def test_front_is_per_target_and_unmeasured_rows_are_off_it():
    rows = [row("a", 80.0, 1.0), row("b", 90.0, 2.0, target="tflite"), row("c", 70.0, 3.0, target="tflite"),
            row("no-acc", None, 0.5)]
    doc = rank(rows, Budget())
    assert doc["fronts"] == {"onnx": ["a"], "tflite": ["b"]} and doc["choice"] is None
    assert [r["on_front"] for r in rows] == [True, True, False, False]


def test_budget_picks_the_most_accurate_within_it():
    rows = [row("fast", 70.0, 1.0, 5.0), row("accurate", 90.0, 5.0, 5.0), row("fat", 95.0, 2.0, 50.0)]
    doc = rank(rows, Budget(ms=3.0, mb=20.0))
    assert doc["choice"]["fits"] and doc["choice"]["id"] == "fast"
    assert [r["within_budget"] for r in rows] == [True, False, False]
    assert rank(rows, Budget(ms=10.0))["choice"]["id"] == "fat"  # no memory budget: the most accurate
    tie = [row("slow", 90.0, 4.0), row("quick", 90.0, 2.0)]
    assert rank(tie, Budget(ms=10.0))["choice"]["id"] == "quick"  # equal accuracy: the faster


def test_budget_that_nothing_fits_names_the_closest():
    rows = [row("a", 70.0, 2.0, 5.0), row("b", 90.0, 1.5, 40.0)]
    choice = rank(rows, Budget(ms=1.0, mb=30.0))["choice"]
    assert not choice["fits"] and choice["id"] is None and choice["closest"] == "b"  # 50% over beats 100% over
    assert choice["line"].startswith("no candidate fits p50 <= 1 ms and +model <= 30 MB; the closest is b")
    assert "50% over" in choice["line"]


def test_budget_without_accuracy_picks_the_fastest_and_says_so():
    rows = [row("a", None, 2.0), row("b", None, 1.0)]
    assert choose(rows, Budget()) is None  # no budget, no choice
    doc = rank(rows, Budget(ms=5.0))
    assert doc["choice"]["id"] == "b" and "fastest (accuracy not measured)" in doc["choice"]["line"]


@pytest.mark.parametrize("ms", [0, -1.0, math.nan, math.inf, True])
def test_budget_must_be_a_positive_number(ms):
    with pytest.raises(InputError, match="--budget-ms must be a positive number"):
        Budget(ms=ms).check()


def test_kind_is_declared_else_read_from_the_macs():
    assert kind_of("hybrid", None) == "hybrid"
    assert kind_of(None, {"attention": 0.0, "convolution": 0.9, "other": 0.1}) == "convolution"
    assert kind_of("custom", {"attention": 0.5, "convolution": 0.005, "other": 0.495}) == "attention"
    assert kind_of(None, {"attention": 0.3, "convolution": 0.6, "other": 0.1}) == "hybrid"


def test_classes_must_match_for_labelled_data():
    check_comparable(["mobilevit_xxs.cifar10", "efficientformerv2_s0.cifar10"], ["airplane", "truck"], False)
    with pytest.raises(InputError, match="do not share their classes.*mobilevit_s: ImageNet-1k"):
        check_comparable(["mobilevit_xxs.cifar10", "mobilevit_s"], ["airplane"], False)
    check_comparable(["mobilevit_xxs.cifar10", "mobilevit_s"], None, False)  # unlabelled: agreement only
    check_comparable(["mobilevit_xxs.cifar10", "mobilevit_s"], ["airplane"], True)  # random: no accuracy
    with pytest.raises(InputError, match="class folder 'tench' in --data is not one of"):
        check_comparable(["mobilevit_xxs.cifar10"], ["tench"], False)


def test_mac_breakdown_of_a_convolution_and_a_hybrid():
    import torch

    from edgehybrid.macs import mac_breakdown
    from models_zoo import load_model

    cnn = mac_breakdown(load_model("mobilenetv2_100.cifar10").model, torch.zeros(1, 3, 64, 64))
    assert cnn["by_category"]["attention"] == 0 and cnn["share"]["convolution"] > 0.99
    hybrid = mac_breakdown(load_model("mobilevit_xxs.cifar10").model, torch.zeros(1, 3, 64, 64))
    assert 0.1 < hybrid["share"]["attention"] < 0.4 and hybrid["attention_modules"] == 9  # 2 + 4 + 3 layers
    assert sum(hybrid["by_category"].values()) == hybrid["macs"]


# ---------------------------------------------------------------------------------- a real run, interrupted


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Compare the two fixtures on ONNX Runtime: first interrupted (SIGINT) once the first artifact is written,
    then run again to the end, which must resume from what the first run finished."""
    out = tmp_path_factory.mktemp("compare")
    report = out / "compare.html"
    args = ["compare", *MODELS, "--target", "onnx", "--data", DATA, "--max-images", IMAGES, "--runs", "20",
            "--out", out / "work", "--report", report]
    first = out / "work" / MODELS[0] / "onnx" / f"{MODELS[0]}.onnx.manifest.json"
    proc = subprocess.Popen([sys.executable, "-m", "edgehybrid", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stopped_err = proc.communicate(timeout=300)
    second = run_cli(*args, "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    return {"out": out / "work", "report": report, "stopped_rc": proc.returncode, "stopped_err": stopped_err,
            "first": first, "doc": json.loads(second.stdout), "err": second.stderr, "args": args}


def test_interrupted_run_keeps_what_is_done_and_resumes(run):
    assert run["stopped_rc"] == 130, run["stopped_err"][-2000:]
    last = run["stopped_err"].strip().splitlines()[-1]
    assert last == "error: interrupted" and "Traceback" not in run["stopped_err"]
    assert "run the same command again to resume" in run["stopped_err"]
    doc = run["doc"]
    exports = {r["model"]: r["export"] for r in doc["rows"]}
    assert exports == {MODELS[0]: "reused", MODELS[1]: "exported"}
    leftovers = [p for p in run["out"].rglob("*") if p.name.startswith(".") and p.name != ".measured"
                 or ".tmp" in p.name or ".partial" in p.name]
    assert leftovers == []


def test_rows_carry_every_figure(run):
    doc = run["doc"]
    assert doc["schema"] == "edgehybrid.compare/1" and doc["accuracy_metric"] == "top1"
    by = {r["model"]: r for r in doc["rows"]}
    cnn, hybrid = by[MODELS[0]], by[MODELS[1]]
    assert cnn["kind"] == "convolution" and hybrid["kind"] == "hybrid"
    for r in (cnn, hybrid):
        assert r["status"] == "measured" and r["accuracy"]["images"] == int(IMAGES)
        assert 50 < r["accuracy"]["value"] <= 100 and r["accuracy"]["drop_pts"] == 0.0  # fp32 keeps its top-1
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"]
        assert r["memory_mb"]["peak"] > r["memory_mb"]["model"] > 0 and r["size_mb"] > 0.5
        assert r["params"] > 5e5 and r["macs"] > 1e7 and r["int8_mac_share"] == 0.0
        assert set(r["time_share"]) == {"attention", "convolution", "normalization", "other"}
    assert cnn["time_share"]["attention"] == 0 and cnn["mac_share"]["attention"] == 0
    assert hybrid["time_share"]["attention"] > 0.05 and hybrid["mac_share"]["attention"] > 0.1
    front = doc["fronts"]["onnx"]
    assert front and all(by[m]["on_front"] == (by[m]["id"] in front) for m in MODELS)


def test_figures_equal_check_and_profile_run_separately(run):
    import edgehybrid

    for r in run["doc"]["rows"]:
        artifact = Path(r["artifact"])
        alone = edgehybrid.check(artifact, DATA, max_images=int(IMAGES)).metrics
        acc = r["accuracy"]
        assert (acc["value"], acc["fp32_top1_pct"], acc["drop_pts"], acc["agreement_pct"], acc["cosine"]) == (
            alone["artifact_top1_pct"], alone["reference_top1_pct"], alone["top1_drop_pts"],
            alone["top1_agreement_pct"], alone["cosine"])
        res = run_cli(*["profile", artifact, "--runs", "20", "--per-op", "--json"], timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        prof = json.loads(res.stdout)["profiles"][0]
        assert prof["size_bytes"] == r["size_bytes"] and prof["sha256"] == json.loads(
            Path(str(artifact) + ".manifest.json").read_text())["sha256"]
        assert prof["runtime"] == "onnxruntime" and r["runtime"] == prof["backend"]
        # latency is measured twice on a shared machine: the same order of magnitude, not the same figure
        assert 0.2 < prof["latency_ms"]["p50"] / r["latency_ms"]["p50"] < 5
        # the row's figures are the stored profile document's, exactly
        stored = json.loads(Path(r["measurements"]["profile"]).read_text())
        assert r["latency_ms"] == {"p50": round(stored["latency_ms"]["p50"], 4),
                                   "p90": round(stored["latency_ms"]["p90"], 4)}
        assert stored["sha256"] == prof["sha256"]


def test_budgets_choose_and_exit(run):
    args = run["args"][:-2]  # no report
    tight = run_cli(*args, "--budget-ms", "0.001")
    assert tight.returncode == 1, tight.stderr[-2000:]
    assert "over budget: no candidate fits p50 <= 0.001 ms; the closest is" in tight.stdout.replace("\n", " ")
    loose = run_cli(*args, "--budget-ms", "100000", "--budget-mb", "100000", "--json")
    assert loose.returncode == 0, loose.stderr[-2000:]
    doc = json.loads(loose.stdout)
    best = max(doc["rows"], key=lambda r: r["accuracy"]["value"])
    assert doc["choice"]["fits"] and doc["choice"]["id"] == best["id"]
    assert "reused 6 measurement(s)" in loose.stderr  # nothing measured again


def test_html_report_renders_in_chromium(run, tmp_path):
    from tests.test_profile_report import chromium, run_chromium

    page = run["report"]
    assert page.is_file()
    exe = chromium()
    dom = run_chromium(exe, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "edgehybrid compare" in dom.stdout and "id=\"compare\"" in dom.stdout
    import re

    assert set(re.findall(r'<img id="(plot-[\w-]+)"', dom.stdout)) == {"plot-front-onnx", "plot-time-share",
                                                                        "plot-mac-share"}
    shot = tmp_path / "shot.png"
    res = run_chromium(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars",
                       page.as_uri())
    assert res.returncode == 0 and shot.exists()
    from PIL import Image

    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
    ink = 1 - max(n for n, c in colours if c == (255, 255, 255)) / (1200 * 2000)
    assert len(colours) > 150 and ink > 0.02


def test_random_weights_compare_speed_and_say_why_accuracy_is_missing(cli, tmp_path):
    code, out, err = cli("compare", "mobilevit_xxs", "--random-weights", "--target", "onnx", "--data", DATA,
                         "--runs", "5", "--out", tmp_path / "o", "--json")
    assert code == 0, err[-2000:]
    (r,) = json.loads(out)["rows"]
    assert r["accuracy"]["value"] is None and r["accuracy"]["reason"].startswith("random weights")
    assert any(n.startswith("accuracy not measured: random weights") for n in r["notes"])
    assert r["latency_ms"]["p50"] > 0 and r["kind"] == "hybrid" and r["mac_share"]["attention"] > 0.1
    assert not r["on_front"]  # no accuracy, no front


# ---------------------------------------------------------------------------------- bad input: one line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, words", [
    (["--budget-ms", "0"], "--budget-ms must be a positive number, got 0.0"),
    (["--budget-mb", "-5"], "--budget-mb must be a positive number, got -5.0"),
    (["--budget-ms", "nan"], "--budget-ms must be a positive number, got nan"),
    (["--budget-ms", "fast"], "Invalid value for '--budget-ms'"),
    (["--precision", "int9"], "did you mean 'int8'"),
    (["--report", "r.txt"], "--report"),
])
def test_bad_options_are_one_line(cli, tmp_path, args, words):
    code, out, err = cli("compare", "mobilevit_xxs.cifar10", "--target", "onnx", "--out", tmp_path / "o", *args)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_target_get_a_did_you_mean(cli, tmp_path):
    code, _, err = cli("compare", "mobilevit_xxs.cifar10", "mobilevit_xs.cifar1O", "--target", "onnx")
    assert code == 2 and "did you mean" in err
    code, _, err = cli("compare", "mobilevit_xxs.cifar10", "--target", "tfilte")
    assert code == 2 and "did you mean 'tflite'" in err


def test_candidates_with_other_classes_are_refused(cli, tmp_path):
    code, _, err = cli("compare", "mobilevit_xxs.cifar10", "mobilevit_s", "--target", "onnx", "--data", DATA,
                       "--out", tmp_path / "o")
    assert code == 2 and "do not share their classes" in err and "compare those with the same classes" in err
    assert not (tmp_path / "o").exists()


def test_unreachable_device_is_one_line_before_any_work(cli, tmp_path):
    import shutil

    if not shutil.which("ssh"):
        pytest.skip("no OpenSSH client here")
    port = _free_port()
    code, _, err = cli("compare", "mobilevit_xxs.cifar10", "--target", "onnx", "--out", tmp_path / "o",
                       "--device", f"ssh://nobody@127.0.0.1:{port}")
    assert code == 2 and f"cannot connect to 127.0.0.1:{port}: connection refused" in err
    assert not (tmp_path / "o").exists()


def test_target_not_installed_is_one_line(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "coremltools").mkdir(parents=True)
    (blocker / "coremltools" / "__init__.py").write_text("raise ImportError('coremltools is not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(Path.cwd())])}
    res = run_cli("compare", "mobilevit_xxs.cifar10", "--target", "onnx", "--target", "coreml", "--out",
                     tmp_path / "o", env=env, timeout=300)
    assert res.returncode == 2 and "pip install 'edgehybrid[coreml]'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_python_api_refuses_as_the_cli_does(tmp_path):
    import edgehybrid

    with pytest.raises(InputError, match="lists"):
        edgehybrid.compare(["mobilevit_xxs.cifar10"], targets="onnx")
    with pytest.raises(InputError, match="--budget-mb must be a positive number"):
        edgehybrid.compare(["mobilevit_xxs.cifar10"], targets=["onnx"], budget_mb=0, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()
