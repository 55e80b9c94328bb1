"""ci's latency gate holds on a busy machine: a ratio to a reference workload on the same runtime, timed
while busy loops take every core, neither fails an artifact that did not change nor misses one that is twice
as slow; estimates on either side of the tolerance make the job inconclusive (exit 4), not a verdict, and the
rerun that verdict asks for decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgehybrid import ci_latency
from edgehybrid.ci_latency import REFERENCE_ID, judge, steady

pytest.importorskip("onnxruntime")
TOLERANCE = 0.25  # the config's default
ROUNDS, RUNS = 7, 20  # the config's defaults


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The reference workload; the CIFAR-10 MobileViT-XXS fixture (the job that does not change); MobileViT-XS
    at the same size (1.9x the work: the regression)."""
    from edgehybrid.pipeline import ExportRequest, run_export

    out = tmp_path_factory.mktemp("latency")
    ref = ci_latency.reference_artifact("onnx", out, 2)
    made = []
    torch = pytest.importorskip("torch")
    for name, weights in (("mobilevit_xxs.cifar10", None), ("mobilevit_xs", "random")):
        torch.manual_seed(0)  # the same random weights, and the same regression, in every run
        m = run_export(ExportRequest(model=name, target="onnx", out_dir=out / name, weights=weights,
                                     num_classes=None if weights is None else 10,
                                     input_size=None if weights is None else (64, 64)))
        made.append((out / name / Path(m["artifact"]).name, m))
    return ref, made[0], made[1]


def _measure(art, ref):
    return ci_latency.measure(art[0], art[1], *ref, rounds=ROUNDS, runs=RUNS)


@contextmanager
def busy_loops(n: int):
    """``n`` processes spinning on a core each, for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_reference_workload_is_built_once_and_reused(artifacts):
    ref, _, _ = artifacts
    again = ci_latency.reference_artifact("onnx", ref[0].parents[2], 2)
    assert again[0] == ref[0] and again[1]["sha256"] == ref[1]["sha256"]  # reused, not exported again


def test_gate_holds_under_a_cpu_hog(artifacts):
    ref, same, slower = artifacts
    for _ in range(3):  # as --update-baseline does: an unsteady measurement is not recorded, the user reruns
        quiet = _measure(same, ref)
        if steady(quiet, TOLERANCE):
            break
    base = {"latency_ratio": quiet["ratio"], "latency_min_ratio": quiet["min_ratio"],
            "latency_reference": REFERENCE_ID}
    figures = f"quiet {_figures(quiet)}"
    with busy_loops(os.cpu_count() or 2):
        for attempt in range(2):  # an inconclusive verdict tells the user to rerun; a rerun must decide
            loaded = _measure(same, ref)
            regressed = _measure(slower, ref)
            figures += f"; loaded {_figures(loaded)}, 1.9x model {_figures(regressed)}"
            assert judge(loaded, base, TOLERANCE)["failures"] == [], figures  # no false failure, on any run
            verdict = judge(regressed, base, TOLERANCE)
            assert verdict["status"] != "compared" or verdict["failures"], figures  # never passed
            if verdict["status"] == "compared":
                break
    assert verdict["status"] == "compared" and verdict["failures"], figures  # caught, not excused
    assert verdict["failures"][0].startswith("latency regression:")
    assert loaded["threads"] == 1 and loaded["reference_calls_per_pair"] >= 1


def _figures(m: dict) -> str:
    return (f"{m['ratio']}/{m['min_ratio']} ({m['artifact_ms']} vs {m['reference_ms']} ms, "
            f"{m['reference_calls_per_pair']} reference calls per pair, {m['clock']} clock)")


def test_a_regression_needs_both_estimates_and_a_split_verdict_is_inconclusive():
    base = {"latency_ratio": 1.0, "latency_min_ratio": 1.0, "latency_reference": REFERENCE_ID}
    assert judge({"ratio": 1.2, "min_ratio": 0.9}, base, TOLERANCE) == {
        "status": "compared", "failures": [], "change": 0.2, "note": None}
    assert judge({"ratio": 2.0, "min_ratio": 1.9}, base, TOLERANCE)["failures"]
    split = judge({"ratio": 1.4, "min_ratio": 1.1}, base, TOLERANCE)
    assert split["status"] == "inconclusive" and split["failures"] == []
    assert split["note"].startswith("latency inconclusive: the pair ratio changed +40% and the fastest rounds +10%")
    old = judge({"ratio": 1.0, "min_ratio": 1.0}, {"latency_ratio": 0.5}, TOLERANCE)  # timed against PyTorch
    assert old["status"] == "not-compared" and "record it again" in old["note"]
    assert steady({"ratio": 1.1, "min_ratio": 1.0}, TOLERANCE) and not steady({"ratio": 1.5, "min_ratio": 1.0}, TOLERANCE)


def test_ci_exits_4_when_latency_is_inconclusive(cli, tmp_path):
    """A baseline whose two latency figures point opposite ways: the pair ratio says much slower, the fastest
    rounds much faster. Nothing failed, nothing can be concluded."""
    config = tmp_path / "edgehybrid.toml"
    config.write_text('[ci]\nout = "out"\nbaseline = "b.json"\nlatency_rounds = 2\nlatency_runs = 3\n'
                      '[defaults]\ndata = "bundled:cifar10/eval"\nmax_images = 20\n'
                      '[[model]]\nname = "mobilevit_xxs.cifar10"\ntargets = ["onnx"]\nprecisions = ["fp32"]\n')
    baseline = {"schema": "edgehybrid.ci-baseline/1", "jobs": {"mobilevit_xxs.cifar10/onnx/fp32": {
        "latency_ratio": 0.001, "latency_min_ratio": 1000.0, "latency_reference": REFERENCE_ID}}}
    (tmp_path / "b.json").write_text(json.dumps(baseline))
    code, out, err = cli("ci", "--config", config)
    assert code == 4, err
    assert err.strip().splitlines()[-1].startswith(
        "error: ci inconclusive: mobilevit_xxs.cifar10/onnx/fp32: latency inconclusive: the pair ratio changed")
    report = json.loads((tmp_path / "out" / "ci-report.json").read_text())
    assert report["passed"] and report["inconclusive"] == ["mobilevit_xxs.cifar10/onnx/fp32"]
    assert "INCONCLUSIVE" in out
