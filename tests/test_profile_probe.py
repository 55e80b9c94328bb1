"""The profiling probe on real runtimes: ONNX Runtime and LiteRT figures, per-op ONNX, and its refusals.

One MobileViT-XXS (random weights) is exported to ONNX and TFLite once per module; every profile is a
real run of ``probe.py`` in a fresh process (20 timed runs, 3 warmup), as ``edgehybrid profile`` runs it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from edgehybrid.errors import EdgeHybridError, InputError, MissingBackendError, UnknownNameError
from edgehybrid.pipeline import ExportRequest, run_export
from edgehybrid.profiling.local import PROBE, probe_error, profile_local, resolve_runtime
from edgehybrid.runtimes import RuntimeUnavailable

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

RUNS, WARMUP = 20, 3


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("profile")
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: fine for timing
        for target in ("onnx", "tflite"):
            manifest = run_export(ExportRequest(model="mobilevit_xxs", target=target, out_dir=out, weights="random"))
            found[target] = Path(manifest["artifact"])
    return found


@pytest.fixture(scope="module")
def onnx_profile(artifacts) -> dict:
    return profile_local(artifacts["onnx"], "auto", threads=2, warmup=WARMUP, runs=RUNS, min_time=None, per_op=True)


@pytest.fixture(scope="module")
def tflite_profile(artifacts) -> dict:
    return profile_local(artifacts["tflite"], "litert", threads=2, warmup=WARMUP, runs=RUNS, min_time=None,
                         per_op=True)


def _check_figures(doc: dict, artifact: Path) -> None:
    assert doc["schema"] == "edgehybrid.profile/1" and doc["device"] == "local"
    assert doc["artifact_name"] == artifact.name and doc["size_bytes"] == artifact.stat().st_size
    manifest = json.loads(artifact.with_name(artifact.name + ".manifest.json").read_text())
    assert doc["sha256"] == manifest["sha256"]  # the probe hashes the same bytes the export wrote
    assert doc["runs"] == RUNS == len(doc["samples_ms"]) and doc["warmup"] == WARMUP and doc["threads"] == 2
    assert doc["min_time_s"] is None
    lat = doc["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert min(doc["samples_ms"]) == pytest.approx(lat["min"], abs=1e-3)
    assert doc["throughput_ips"] == pytest.approx(1000.0 / lat["mean"])  # batch 1
    assert doc["load_ms"] > 0 and doc["first_inference_ms"] > 0
    mem = doc["memory"]
    assert mem["peak_rss_mb"] > mem["baseline_rss_mb"] > 0
    assert mem["peak_above_baseline_mb"] == pytest.approx(mem["peak_rss_mb"] - mem["baseline_rss_mb"])
    # Every weight must be resident to compute: ORT copies initializers out of the protobuf, LiteRT touches
    # every page of its mmapped flatbuffer at each inference (and XNNPACK repacks them), and activations come
    # on top. So the rise over the baseline is at least about the file size; half of it leaves room for
    # page sharing and for a file that is not all weights.
    assert mem["peak_above_baseline_mb"] > 0.5 * doc["size_bytes"] / 2**20
    assert mem["method"].startswith("fresh process")
    m = doc["machine"]
    assert m["cores"] >= 1 and m["cpu_model"] and m["platform"] == sys.platform


def test_onnx_figures(onnx_profile, artifacts):
    _check_figures(onnx_profile, artifacts["onnx"])
    import onnxruntime

    assert onnx_profile["runtime"] == "onnxruntime"
    assert onnx_profile["backend"] == f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider"
    assert onnx_profile["runtime_version"] == onnxruntime.__version__ 
    # the manifest's minimum reached the probe, and this runtime meets it
    assert onnx_profile["requirement"] == {"requires": {"onnxruntime": ">=1.14"}, "met": True, "warning": None}
    assert onnx_profile["input"] == {"name": "input", "shape": [1, 3, 256, 256], "dtype": "float32"}
    assert onnx_profile["memory"]["arena_mb"] > 0  # from the per-op profile


def test_onnx_per_op(onnx_profile):
    per_op = onnx_profile["per_op"]
    assert per_op["missing"] is None and per_op["source"] == "onnxruntime profiler" and per_op["runs"] == RUNS
    ops = per_op["by_op_type"]
    assert {o["op_type"] for o in ops} >= {"Conv", "Softmax"}
    assert [o["ms"] for o in ops] == sorted((o["ms"] for o in ops), reverse=True)
    assert sum(o["share"] for o in ops) == pytest.approx(1.0)
    assert sum(o["ms"] for o in ops) == pytest.approx(per_op["total_ms"])
    # per inference, not summed over the runs: about one run's time (the profiler's own overhead inflates it
    # a little; a missing division by the 20 runs would not fit under this bound)
    assert 0 < per_op["total_ms"] < 4 * onnx_profile["latency_ms"]["p50"]
    cats = per_op["by_category"]
    assert set(cats) == {"attention", "convolution", "normalization", "other"}
    assert sum(cats.values()) == pytest.approx(1.0)
    assert cats["attention"] > 0.05 and cats["convolution"] > 0.05 and cats["normalization"] > 0
    modules = per_op["by_module"]
    assert sum(m["share"] for m in modules) == pytest.approx(1.0)
    names = {m["module"] for m in modules}
    # MobileViT-XXS: its three MobileViT blocks (the ones with transformers) and the convolutional stem
    assert {"stages.2.1", "stages.3.1", "stages.4.1", "stem"} <= names and "(unmapped)" not in names
    assert per_op["module_source"] in ("name scopes", "weight names (heuristic)")
    # the same kernels by full module path (what --sensitivity's per-layer time sums), cut into blocks above
    paths = per_op["by_path"]
    assert sum(paths.values()) == pytest.approx(per_op["total_ms"])
    assert any(p.startswith("stages.2.1.") and p.count(".") >= 3 for p in paths)
    assert sum(ms for p, ms in paths.items() if p == "stem" or p.startswith("stem.")) == pytest.approx(
        next(m["ms"] for m in modules if m["module"] == "stem"))


def test_tflite_figures(tflite_profile, artifacts):
    _check_figures(tflite_profile, artifacts["tflite"])
    assert tflite_profile["runtime"] == "litert" and tflite_profile["backend"].startswith("ai-edge-litert ")
    assert tflite_profile["input"] == {"name": "input", "shape": [1, 256, 256, 3], "dtype": "float32"}
    assert tflite_profile["memory"]["arena_mb"] is None and tflite_profile["memory"]["arena_note"]
    per_op = tflite_profile["per_op"]
    assert "benchmark_model" in per_op["missing"] and "--enable_op_profiling" in per_op["missing"]
    assert per_op["by_op_type"] is None and per_op["by_category"] is None and per_op["total_ms"] is None


def test_min_time_runs_until_the_time_is_spent(artifacts):
    doc = profile_local(artifacts["onnx"], "onnxruntime", threads=1, warmup=1, runs=None, min_time=0.2,
                        per_op=False)
    assert doc["min_time_s"] == 0.2 and doc["runs"] == len(doc["samples_ms"]) >= 1 and doc["per_op"] is None
    assert doc["memory"]["arena_mb"] is None and "--per-op" in doc["memory"]["arena_note"]


def test_probe_streamed_on_stdin_like_ssh(artifacts):
    # the SSH path runs `python3 - ARGS < probe.py`: nothing may depend on the file's location
    proc = subprocess.run([sys.executable, "-", str(artifacts["onnx"]), "--runtime", "onnxruntime",
                           "--warmup", "0", "--runs", "2", "--device", "ssh://pi@board:22"],
                          stdin=PROBE.open("rb"), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is the one JSON document, nothing else
    assert doc["runs"] == 2 and doc["device"] == "ssh://pi@board:22"


def test_side_by_side_times_the_loadable_artifacts_and_names_the_refused_one(artifacts, tmp_path):
    # a latency search on a device: one candidate the runtime cannot load is skipped, not the whole timing
    bad = tmp_path / "refused.onnx"
    bad.write_bytes(b"not a model" * 10)
    proc = subprocess.run([sys.executable, str(PROBE), str(artifacts["onnx"]), str(bad), "--side-by-side",
                           "--runtime", "onnxruntime", "--threads", "1", "--sessions", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc["side_by_side"]) == {artifacts["onnx"].name} and doc["sessions"] == 2
    timed = doc["side_by_side"][artifacts["onnx"].name]
    assert len(timed["rounds"]) == doc["rounds"] and timed["ms"] == min(timed["rounds"]) > 0
    assert list(doc["refused"]) == ["refused.onnx"] and "not a valid ONNX model" in doc["refused"]["refused.onnx"]
    for extra, said in ((["--sessions", "0"], "--sessions must be at least 1"),
                        (["--runs", "3", "--sessions", "2"], "--sessions applies to --side-by-side only")):
        side = [str(bad), "--side-by-side"] if "--runs" not in extra else []
        proc = subprocess.run([sys.executable, str(PROBE), str(artifacts["onnx"]), *side, "--runtime",
                               "onnxruntime", *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and said in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_probe_is_self_contained():
    from edgehybrid.targets import all_targets

    # numpy, each runtime's own package (from the registry), LiteRT's older wheel, and torch, whose tensors the
    # ExecuTorch Python runtime takes
    allowed = (set(sys.stdlib_module_names) | {"numpy", "tflite_runtime", "torch"}
               | {t.probe_module for t in all_targets()})
    tree = ast.parse(PROBE.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= allowed, imported - allowed


# ------------------------------------------------------------------------------------------- refusals

def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_missing_artifact(tmp_path):
    with pytest.raises(InputError) as info:
        profile_local(tmp_path / "nope.onnx", "auto", 1, 0, 5, None, False)
    assert "does not exist" in _one_line(info.value)


@pytest.mark.parametrize("suffix, runtime, words", [(".onnx", "onnxruntime", "not a valid ONNX model"),
                                                     (".tflite", "litert", "not a valid .tflite file")])
def test_corrupt_artifact(tmp_path, suffix, runtime, words):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"definitely not a model" * 10)
    with pytest.raises(InputError) as info:
        profile_local(bad, "auto", 1, 0, 5, None, False)
    assert words in _one_line(info.value) and "bad" in str(info.value)


def test_zero_runs_and_threads(artifacts):
    with pytest.raises(InputError, match="--runs must be at least 1"):
        profile_local(artifacts["onnx"], "auto", 1, 0, 0, None, False)
    with pytest.raises(InputError, match="--threads must be at least 1"):
        profile_local(artifacts["onnx"], "auto", 0, 0, 5, None, False)
    # the probe refuses the same on its own (the SSH path has no local check in front of it)
    proc = subprocess.run([sys.executable, str(PROBE), str(artifacts["onnx"]), "--runtime", "onnxruntime",
                           "--runs", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == "probe error (usage): --runs must be at least 1, got 0"


def test_unknown_runtime_says_did_you_mean(artifacts):
    with pytest.raises(UnknownNameError) as info:
        resolve_runtime(artifacts["onnx"], "onnxruntim")
    assert "did you mean 'onnxruntime'" in _one_line(info.value)
    with pytest.raises(InputError, match="profile it with --runtime onnxruntime"):
        resolve_runtime(artifacts["onnx"], "litert")


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_off_macos_is_refused_before_and_inside_the_probe(tmp_path):
    package = tmp_path / "m.mlpackage"
    (package / "Data").mkdir(parents=True)
    with pytest.raises(RuntimeUnavailable) as info:
        profile_local(package, "auto", 1, 0, 5, None, False)
    line = _one_line(info.value)
    assert line.startswith("Core ML models cannot be executed on Linux") and "run `edgehybrid profile` on macOS" in line
    proc = subprocess.run([sys.executable, str(PROBE), str(package), "--runtime", "coreml", "--runs", "5"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    err = probe_error(proc.stderr, proc.returncode, "coreml")
    assert isinstance(err, RuntimeUnavailable) and "Core ML models cannot be executed on Linux" in str(err)


def test_missing_runtime_names_the_package(artifacts):
    # a Python without onnxruntime: hide the installed one from the import system, run the real probe
    code = ("import sys; sys.modules['onnxruntime'] = None; sys.argv[0] = 'probe.py'; "
            f"exec(compile(open({str(PROBE)!r}).read(), 'probe.py', 'exec'), {{'__name__': '__main__'}})")
    proc = subprocess.run([sys.executable, "-c", code, str(artifacts["onnx"]), "--runtime", "onnxruntime",
                           "--runs", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("probe error (missing-runtime): onnxruntime is not installed") and "pip install onnxruntime" in last
    assert isinstance(probe_error(proc.stderr, 2, "onnxruntime", same_python=True), MissingBackendError)
    remote = probe_error(proc.stderr, 2, "onnxruntime")
    assert type(remote) is EdgeHybridError and "pip install onnxruntime" in str(remote)


def test_module_mapping_rules():
    from edgehybrid.profiling import probe

    def node(name, op, inputs, outputs, meta=None):
        return {"name": name, "op": op, "inputs": inputs, "outputs": outputs, "meta": meta or {}}

    scoped = {"pkg.torch.onnx.name_scopes": "['', 'blocks', 'blocks.3', 'blocks.3.attn', 'softmax']",
              "pkg.torch.onnx.class_hierarchy": "['m.Net', 'Sequential', 'm.Block', 'm.Attention', 'aten.softmax']"}
    nodes = [
        node("conv", "Conv", ["x", "stem.conv.weight"], ["a"]),
        node("qkv", "MatMul", ["a", "val_7"], ["b"]),  # weight renamed by the exporter: named by its bias Add
        node("bias", "Add", ["b", "blocks.3.attn.qkv.bias"], ["c"]),
        node("scores", "MatMul", ["c", "c"], ["d"]),  # no weight of its own: inherits from its producer
        node("soft", "Softmax", ["d"], ["e"], scoped),  # name scopes win over everything
        node("fc1", "Gemm", ["e", "blocks.3.mlp.fc1.weight"], ["f"]),
        node("ln", "LayerNormalization", ["f", "shared.weight"], ["g"]),  # shared initializer names nothing
        node("ln2", "LayerNormalization", ["g", "shared.weight"], ["h"]),
    ]
    mods = probe.assign_modules(nodes, {"stem.conv.weight", "val_7", "blocks.3.attn.qkv.bias",
                                        "blocks.3.mlp.fc1.weight", "shared.weight"})
    assert {k: v[0] for k, v in mods.items()} == {
        "conv": "stem.conv", "qkv": "blocks.3.attn.qkv", "bias": "blocks.3.attn.qkv", "scores": "blocks.3.attn.qkv",
        "soft": "blocks.3.attn", "fc1": "blocks.3.mlp.fc1", "ln": "blocks.3.mlp.fc1", "ln2": "blocks.3.mlp.fc1"}
    cats = {n["name"]: probe.category(n["op"], mods[n["name"]], False) for n in nodes}
    assert cats == {"conv": "convolution", "qkv": "attention", "bias": "attention", "scores": "attention",
                    "soft": "attention", "fc1": "other", "ln": "normalization", "ln2": "normalization"}
    # a 1x1 conv projecting q/k/v inside an attention module is attention's cost (MobileViTv2, EfficientFormerV2)
    assert probe.category("Conv", ("stages.3.1.transformer.0.attn.qkv_proj", []), False) == "attention"
    # a pooling token mixer (EfficientFormer's 4D blocks) is not attention when its class is known
    assert probe.category("AveragePool", ("stages.0.blocks.1.token_mixer", ["m.Pooling"]), False) == "other"
    # without any module information only the unmistakable ops count as attention
    assert probe.category("Softmax", None, False) == "attention" and probe.category("Gemm", None, True) == "other"
    assert probe.category("MatMul", None, True) == "attention" and probe.category("MatMul", None, False) == "other"
    assert [probe.block_of(p) for p in ("stages.2.1.transformer.0.attn", "blocks.3.attn.qkv", "stem.conv", "")] == [
        "stages.2.1", "blocks.3", "stem", "(root)"]


def test_coreml_for_a_device_is_not_refused_here(tmp_path):
    package = tmp_path / "m.mlpackage"
    package.mkdir()
    assert resolve_runtime(package, "auto", local=False) == "coreml"  # a Mac over SSH can run it
