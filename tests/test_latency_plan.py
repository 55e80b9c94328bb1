"""--optimize latency: candidate INT8 plans timed on the target's runtime, the choice within the drift budget,
the plain verdict when INT8 is not faster, and the options it refuses. The speed figures themselves live in
benchmarks/int8_bench.py (--optimize latency rows), not in timed tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from calibration.ops import UNWEIGHTED, OpKind, QuantPolicy
from calibration.quantize import calibrate, capture
from calibration.sources import open_source
from edgehybrid.errors import EdgeHybridError, UnknownNameError
from edgehybrid.latency_plan import (
    LIGHT_SHARE,
    STEM_ENDS,
    Optimize,
    _fastest,
    candidates,
    conv_stem,
    fewer_threads,
    paired_ratio,
    time_side_by_side,
    verdict,
)

FIXTURE = "mobilevit_xxs.cifar10"
TINY = f"{Path(__file__).parent / 'user_models' / 'tiny_hybrid.py'}:build"


def test_optimize_parses_and_offers_a_did_you_mean():
    assert Optimize.parse(None) is Optimize.ACCURACY and Optimize.parse("Latency") is Optimize.LATENCY
    with pytest.raises(UnknownNameError, match="did you mean .latency."):
        Optimize.parse("latncy")


@pytest.fixture(scope="module")
def layers():
    import torch

    from models_zoo import load_model

    torch.manual_seed(0)
    loaded = load_model("mobilevit_xxs", weights="random", num_classes=10, input_size=(64, 64))
    src = open_source("synthetic", loaded.spec.preprocessing, (3, 64, 64), size=4)
    return calibrate(capture(loaded.model, torch.zeros(1, 3, 64, 64)), src.batches(4)).layers


def test_candidates_start_with_the_targets_plan_and_hold_no_duplicates(layers):
    onnx = QuantPolicy(float_kinds={OpKind.SOFTMAX}, float_output_kinds={OpKind.MATMUL})
    cands = candidates(layers, onnx)
    assert cands[0].policy == onnx and cands[0].name == "target's plan"
    assert len({c.key() for c in cands}) == len(cands) == 6
    heavy, stem = cands[-2], cands[-1]
    total = sum(layer.macs for layer in layers.values())
    assert heavy.float_layers and all(layers[n].macs / total < LIGHT_SHARE for n in heavy.float_layers)
    # the convolutional stem: every layer before the first transformer's normalization, and nothing after it
    names = list(layers)
    first_end = names.index("stages.2.1.transformer.0.norm1")
    assert stem.float_layers == set(names[:first_end]) and stem.policy == onnx
    assert {"stem.conv", "stages.1.2.conv2_kxk.act", "stages.2.1.conv_1x1"} <= stem.float_layers
    assert not any(STEM_ENDS & set(layers[n].kinds) for n in stem.float_layers)
    # a model that starts with token mixing has no stem to separate, nor has one without any
    assert conv_stem({n: layers[n] for n in names[first_end:]}) == frozenset()
    assert conv_stem({n: layers[n] for n in names[:first_end]}) == frozenset()
    # a target whose own plan already is "weighted ops only" (LiteRT) gets that candidate once
    tflite = candidates(layers, QuantPolicy(float_kinds=UNWEIGHTED, fold_quantize=False))
    assert [c.name for c in tflite].count("weighted ops only") == 0 and len(tflite) == 5
    assert all(c.policy.fold_quantize is False for c in tflite)  # the target's other settings are kept


def test_side_by_side_timing_orders_calls_by_their_cost():
    timed = time_side_by_side({"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.0005)},
                              rounds=3, round_s=0.02)
    assert timed["slow"]["ms"] >= 4.0 and timed["fast"]["ms"] >= 0.5
    assert timed["slow"]["ms"] > 2 * timed["fast"]["ms"]
    assert all(t["spread"] >= 1.0 for t in timed.values())
    assert all(len(t["rounds"]) == 3 and min(t["rounds"]) == t["ms"] for t in timed.values())
    assert paired_ratio(timed["slow"]["rounds"], timed["fast"]["rounds"]) > 2


def test_side_by_side_timing_takes_each_rounds_fastest_session_and_pairs_ratios_by_round():
    # two sessions of one artifact, one of them slow (as ONNX Runtime sessions of one file can settle): the round's
    # figure is the fast one's
    timed = time_side_by_side({"two sessions": [lambda: time.sleep(0.004), lambda: time.sleep(0.001)],
                               "one": lambda: time.sleep(0.002)}, rounds=2, calls=5)
    assert all(1.0 <= r < 2.0 for r in timed["two sessions"]["rounds"]), timed
    # a machine that moves between levels: a round's two figures share one, so the ratio stays 2x
    assert paired_ratio([2.0, 8.0, 4.0], [1.0, 4.0, 2.0]) == 2.0
    # one round where only one side ran fast (the level moved mid-round) moves the median of ratios by nothing
    assert paired_ratio([2.0, 2.0, 2.0], [1.0, 1.0, 0.5]) == 2.0  # the ratio of the minima would read 4x
    with pytest.raises(ValueError, match="same number of rounds"):
        paired_ratio([1.0, 2.0], [1.0])


def test_verdict_never_calls_a_slower_int8_plan_a_speed_up():
    row = {"plan": "every kind", "p50_ms": 1.5, "vs_fp32": 0.8, "drift": 0.01, "size_bytes": 2_000_000}
    report = {"candidates": [row], "chosen": "every kind", "runtime": "onnxruntime", "threads": 2, "fp32_ms": 1.2,
              "fp32_size_bytes": 2_600_000, "int8_faster_than_fp32": False}
    text = verdict(report)
    assert text.startswith("no INT8 plan is faster than FP32 on onnxruntime") and "ship FP32" in text
    assert "2.00 vs 2.60 MB" in text and "written for its size" in text
    bigger = verdict({**report, "fp32_size_bytes": 1_000_000})  # a tiny model: Q/DQ parameters outweigh weights
    assert "not smaller either (2.00 vs 1.00 MB" in bigger and "written for its size" not in bigger
    row.update(p50_ms=0.8, vs_fp32=1.5)
    text = verdict({**report, "fp32_ms": 1.2, "int8_faster_than_fp32": True})
    assert text.startswith("chose 'every kind': 1.50x FP32's speed")


def test_fewer_threads_are_timed_and_named_only_when_they_win_by_the_margin():
    assert fewer_threads(1) == [] and fewer_threads(2) == [1] and fewer_threads(4) == [2, 1]
    assert fewer_threads(8) == [4, 1] and fewer_threads(3) == [1]
    best = {"plan": "every kind", "p50_ms": 0.84, "vs_fp32": 0.95, "drift": 0.01, "size_bytes": 2_000_000}
    # 64x64 on ONNX Runtime: INT8 ties FP32 at 2 threads and leads at 1, where it is the fastest setting of all
    fewer = [{"threads": 1, "fp32_ms": 0.76, "int8_ms": 0.73, "vs_fp32": 1.04}]
    assert _fastest(best, 0.80, 2, fewer) == {"precision": "int8", "threads": 1, "ms": 0.73}
    # within the margin (the two counts are timed seconds apart) the asked count stays the fastest
    assert _fastest(best, 0.80, 2, [{**fewer[0], "int8_ms": 0.79, "fp32_ms": 0.81}])["threads"] == 2
    # at one count the paired ratio decides between INT8 and FP32, not the two minima timed seconds apart
    assert _fastest({**best, "p50_ms": 0.79}, 0.80, 2, [])["precision"] == "fp32"
    assert _fastest(best, 0.80, 2, []) == {"precision": "fp32", "threads": 2, "ms": 0.80}
    report = {"candidates": [best], "chosen": "every kind", "runtime": "onnxruntime", "threads": 2, "fp32_ms": 0.80,
              "fp32_size_bytes": 2_600_000, "int8_faster_than_fp32": False, "fewer_threads": fewer,
              "fastest": _fastest(best, 0.80, 2, fewer)}
    text = verdict(report)
    assert text.startswith("no INT8 plan is faster than FP32 on onnxruntime with 2 threads")
    assert "for speed here, run INT8 with 1 thread (0.730 ms, INT8 1.04x FP32 at that count" in text
    assert "ship FP32" not in text
    # FP32 at 1 thread the fastest: said, and FP32 is what to ship
    fp32_wins = [{"threads": 1, "fp32_ms": 0.70, "int8_ms": 0.75, "vs_fp32": 0.93}]
    text = verdict({**report, "fewer_threads": fp32_wins, "fastest": _fastest(best, 0.80, 2, fp32_wins)})
    assert "run FP32 with 1 thread (0.700 ms" in text
    faster = {**best, "p50_ms": 0.70, "vs_fp32": 1.14}
    text = verdict({**report, "candidates": [faster], "int8_faster_than_fp32": True,
                    "fastest": _fastest(faster, 0.80, 2, [{**fewer[0], "int8_ms": 0.60}])})
    assert text.startswith("chose 'every kind': 1.14x FP32's speed") and "Fastest here: INT8 with 1 thread" in text


def test_optimize_latency_measures_candidates_and_records_the_choice(cli, tmp_path, monkeypatch):
    # a small hybrid of the user's own (conv stem, attention, MLP, 16 layers): seven real exports and timings on
    # ONNX Runtime in 25 s; the fixture takes 3 min (the --max-drift variant below runs on it, with --runslow)
    from exporters.onnx import OnnxExporter

    precisions, export = [], OnnxExporter.export

    def counted(self, graph, example, spec, options, path):
        precisions.append(str(options.precision))
        artifact = export(self, graph, example, spec, options, path)
        if path.parent.name == "trial4":  # 'every kind' written, but not a program its runtime loads (as
            path.write_bytes(path.read_bytes()[:200])  # XNNPACK refused one of ExecuTorch's): skipped, and said
        return artifact

    monkeypatch.setattr(OnnxExporter, "export", counted)
    out = tmp_path / "out"
    code, stdout, stderr = cli("export", TINY, "-t", "onnx", "--int8", "--optimize", "latency", "--sensitivity",
                               "--calib-size", "32", "--out", str(out), "--json")
    assert code == 0, stderr
    # FP32 is exported once: the search times it and --sensitivity profiles its layers; six plans and the artifact
    assert precisions.count("fp32") == 1 and precisions.count("int8") == 7, precisions
    (refused,) = json.loads(stdout)["quantization"]["latency_search"]["not_convertible"]
    assert refused["plan"] == "every kind" and refused["error"].startswith("onnxruntime cannot load it: "), refused
    assert "every kind: refused by the target's converter or runtime, skipped (onnxruntime cannot load it" in stderr
    assert json.loads(stdout)["quantization"]["layer_latency"]["fp32_total_ms"] > 0
    quant = json.loads(stdout)["quantization"]
    search = quant["latency_search"]
    assert quant["optimize"] == "latency" and search["runtime"] == "onnxruntime" and search["threads"] == 2
    rows = search["candidates"]
    assert rows[0]["plan"] == "target's plan" and len(rows) == 5 and "every kind" not in {r["plan"] for r in rows}
    assert all(r["p50_ms"] > 0 and r["size_bytes"] > 0 and 0 <= r["drift"] < 1 for r in rows)
    # without --max-drift the budget is the target's own plan's drift: speed is never bought with fidelity
    assert search["budget_from"].startswith("the target's own plan")
    assert search["drift_budget"] >= rows[0]["drift"] and rows[0]["within_budget"]
    chosen = next(r for r in rows if r["plan"] == search["chosen"])
    assert chosen["within_budget"]
    assert chosen["vs_fp32"] == max(r["vs_fp32"] for r in rows if r["within_budget"])
    assert search["int8_faster_than_fp32"] == (chosen["vs_fp32"] > 1)
    # every speed-up is the median of the rounds' ratios, whose figures the manifest keeps
    for r in rows:
        assert r["vs_fp32"] == pytest.approx(paired_ratio(search["fp32_rounds_ms"], r["rounds_ms"]), abs=1e-3)
        assert r["p50_ms"] == min(r["rounds_ms"]) and len(r["rounds_ms"]) == search["rounds"]
    # FP32 and the chosen plan timed again with 1 thread; the fastest setting is one of the measured figures
    (one,) = search["fewer_threads"]
    assert one["threads"] == 1 and one["fp32_ms"] > 0 and one["int8_ms"] > 0
    fastest = search["fastest"]
    measured = {(2, "int8"): chosen["p50_ms"], (2, "fp32"): search["fp32_ms"], (1, "int8"): one["int8_ms"],
                (1, "fp32"): one["fp32_ms"]}
    assert fastest["ms"] == measured[fastest["threads"], fastest["precision"]]
    ratio = chosen["vs_fp32"] if fastest["threads"] == 2 else one["vs_fp32"]
    assert (fastest["precision"] == "int8") == (ratio > 1)  # at its count, the one the paired ratio favours
    # the plan the manifest describes is the chosen one: its extra float layers are said, with the reason
    by_search = [r for r in quant["layers"] if "--optimize latency" in r["reason"]]
    assert len(by_search) == chosen["float_layers"]
    assert quant["measured"]["plan_drift"] == pytest.approx(chosen["drift"], abs=2e-3)
    said = "chose '" if search["int8_faster_than_fp32"] else "no INT8 plan is faster than FP32"
    assert said in stderr
    stem = "tiny_hybrid_build_int8.onnx"
    assert sorted(p.name for p in out.iterdir()) == [stem, f"{stem}.manifest.json", f"{stem}.sensitivity.md"]


@pytest.mark.slow  # a second full search (seven exports): the default-budget search above runs in every CI
def test_optimize_latency_with_a_drift_budget_keeps_every_choice_within_it(cli, tmp_path):
    code, stdout, stderr = cli("export", FIXTURE, "-t", "onnx", "--int8", "--optimize", "latency", "--max-drift", "0.5",
                               "--calib-size", "32", "--out", str(tmp_path), "--json")
    assert code == 0, stderr
    search = json.loads(stdout)["quantization"]["latency_search"]
    assert search["budget_from"] == "--max-drift" and search["drift_budget"] == 0.5
    chosen = next(r for r in search["candidates"] if r["plan"] == search["chosen"])
    assert chosen["drift"] <= 0.5
    assert chosen["p50_ms"] == min(r["p50_ms"] for r in search["candidates"] if r["drift"] <= 0.5)


def test_optimize_latency_needs_held_out_samples(cli, tmp_path):
    code, _, stderr = cli("export", FIXTURE, "-t", "onnx", "--int8", "--optimize", "latency", "--calib", "synthetic",
                          "--calib-size", "2", "--out", str(tmp_path / "o"))
    assert code == 2 and "need held-out samples" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("vary", "counts"), [(True, [4, 2, 1]), (False, [4])])
def test_fewer_threads_are_timed_only_where_a_session_keeps_its_own_count(vary, counts):
    # ExecuTorch sizes one thread pool per process at the first load, and Core ML has no thread count: timing
    # them "at 1 thread" in the same process would time the asked count again under another name
    from edgehybrid.latency_plan import Candidate, search
    from edgehybrid.runtimes import get_runtime

    assert get_runtime("onnxruntime").threads_per_session and get_runtime("litert").threads_per_session
    assert not get_runtime("executorch").threads_per_session and not get_runtime("coreml").threads_per_session

    class Artifact:
        def __init__(self, path):
            path.write_bytes(b"x" * 10)
            self.path = path

    asked = []

    def time_all(artifacts, threads):  # a fixed cost per artifact: this checks which counts are asked for
        asked.append(threads)
        return {name: {"ms": 1.0 if name == "FP32" else 0.9, "spread": 1.0, "rounds": [1.0 if name == "FP32" else 0.9]}
                for name in artifacts}

    plan = Candidate("target's plan", QuantPolicy())
    choice = search([plan], lambda c: 0.01, lambda c: None, lambda g, folder, int8: Artifact(folder), None,
                    time_all, None, "onnxruntime", 4, lambda line: None, vary_threads=vary)
    assert asked == counts
    assert [f["threads"] for f in choice.report["fewer_threads"]] == counts[1:]


def test_a_plan_the_devices_runtime_refuses_is_skipped_and_fp32_refused_stops_the_search():
    # on a device the probe loads the candidates only when it times them: its refusals come back as entries
    from edgehybrid.latency_plan import Candidate, search

    class Artifact:
        def __init__(self, path):
            path.write_bytes(b"x" * 10)
            self.path = path

    def timer(refuse: str):
        def time_all(artifacts, threads):
            return {name: {"error": "XNNPACK: Failed to create static slice node"} if name == refuse else
                    {"ms": 1.0, "spread": 1.0, "rounds": [1.0 if name == "FP32" else 0.8]} for name in artifacts}
        return time_all

    plans = [Candidate("target's plan", QuantPolicy()), Candidate("every kind", QuantPolicy())]
    lines: list[str] = []
    args = (lambda c: 0.01, lambda c: None, lambda g, folder, int8: Artifact(folder), None)
    choice = search(plans, *args, timer("every kind"), None, "executorch", 2, lines.append, where="ssh://pi@b",
                    vary_threads=False)
    assert [r["plan"] for r in choice.report["candidates"]] == ["target's plan"]
    (refused,) = choice.report["not_convertible"]
    assert refused["plan"] == "every kind" and refused["error"].startswith("executorch on ssh://pi@b cannot load it")
    assert any("every kind: refused" in line for line in lines)
    for needed in ("FP32", "target's plan"):
        with pytest.raises(EdgeHybridError, match=f"'{needed}' is needed for the comparison"):
            search(plans, *args, timer(needed), None, "executorch", 2, lines.append, vary_threads=False)
