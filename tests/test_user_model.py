"""Models the zoo does not know: a research hybrid from a test file (``file.py:factory``), a zoo model with a
replaced head (``package.module:factory``), the same saved as a ``.pt2`` program, and the Python API; every
target, INT8 on two, ``check`` on labelled images, ``ci``, and every bad input refused in one line."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent / "user_models"
HYBRID = f"{HERE / 'tiny_hybrid.py'}:build"
EVAL = "bundled:cifar10/eval"


def _export(cli, *args):
    code, out, err = cli("export", *args, "--json")
    assert code == 0, err[-800:]
    return json.loads(out)


@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml", "executorch"])
def test_a_hybrid_of_your_own_exports_to_every_target(cli, tmp_path, target):
    m = _export(cli, HYBRID, "-t", target, "-o", tmp_path)
    assert m["validation"]["passed"] and m["model"] == HYBRID and m["architecture"] == "tiny_hybrid_build"
    assert m["family"] == "user" and m["classes"][:2] == ["airplane", "automobile"] and m["num_classes"] == 10
    assert m["source"]["kind"] == "factory" and m["source"]["factory"] == "build"
    assert m["source"]["file"] == str(HERE / "tiny_hybrid.py") and len(m["source"]["sha256"]) == 64
    assert m["preprocessing"]["crop"] == [32, 32] and m["preprocessing"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert (tmp_path / Path(m["artifact"]).name).exists()


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_int8_plans_your_module_paths_and_names_the_ops_it_has_no_rule_for(cli, tmp_path, target):
    m = _export(cli, HYBRID, "-t", target, "--int8", "--float-layers", "block.attn.proj", "--sensitivity",
                "-o", tmp_path)
    q = m["quantization"]
    layers = {row["layer"]: row for row in q["layers"]}
    table = (tmp_path / (Path(m["artifact"]).name + ".sensitivity.md")).read_text()
    assert table.count("\n| ") >= len(layers) and "`block.attn.qkv`" in table  # every layer ranked, by its path
    assert {"stem.0", "block.attn.qkv", "block.mlp.0", "head"} <= set(layers)
    assert layers["block.attn.proj"]["precision"] == "float"
    assert {"op": "erf", "layer": "block.mlp.1", "count": 1} in q["unplanned_ops"]  # the hand-written GELU
    assert m["validation"]["passed"] and m["validation"]["metrics"][next(iter(m["validation"]["metrics"]))][
        "cosine"] > 0.99
    # each layer's measured time beside its error: ONNX Runtime's profiler, in the FP32 and the INT8 artifact
    timed, rows = q["layer_latency"], {r["layer"]: r for r in q["sensitivity"]}
    if target == "onnx":
        assert timed["runtime"] == "onnxruntime" and timed["fp32_total_ms"] > 0 and timed["int8_total_ms"] > 0
        for name in ("stem.0", "block.attn.qkv", "block.mlp.0", "head"):  # joined to both artifacts' kernels
            assert rows[name]["fp32_ms"] > 0 and rows[name]["int8_ms"] > 0, rows[name]
        assert sum(r["fp32_ms"] or 0 for r in rows.values()) <= timed["fp32_total_ms"] * 1.001
        assert "| FP32 ms | INT8 ms |" in table and "on onnxruntime on this machine" in table
    else:  # said, not guessed
        assert "no per-op timing" in timed["unavailable"] and "FP32 ms" not in table
        assert "No per-layer time: litert exposes no per-op timing" in table
    code, out, err = cli("check", tmp_path / Path(m["artifact"]).name, "--data", EVAL, "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["reference"].endswith("(your model, from the manifest)") and report["data"]["labelled"]
    assert report["metrics"]["images"] == 500 and report["metrics"]["top1_agreement_pct"] >= 95


def _labelled_subset(tmp_path: Path, per_class: int = 10) -> Path:
    """10 images a class from the bundled CIFAR-10 validation set: accuracy that means something, quickly."""
    from calibration.sources import data_path

    src, dst = data_path(EVAL, Path.cwd()), tmp_path / "eval"
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, dst / cls.name / f.name)
    return dst


def test_a_zoo_model_with_a_new_head_as_module_factory_then_as_pt2(cli, tmp_path, monkeypatch):
    data = _labelled_subset(tmp_path)
    monkeypatch.chdir(HERE)  # package.module:factory imports from the working directory, as python -m does
    m = _export(cli, "finetuned:mobilevit_cifar", "-t", "onnx", "--model-arg", "dropout=0.1", "-o", tmp_path)
    assert m["architecture"] == "mobilevit_xxs_newhead" and m["source"]["module"] == "finetuned"
    assert m["source"]["args"] == {"dropout": 0.1} and m["source"]["file"] == str(HERE / "finetuned.py")
    code, out, err = cli("check", tmp_path / "mobilevit_xxs_newhead.onnx", "--data", data, "--json")
    fp32 = json.loads(out)["metrics"]
    assert code == 0 and fp32["reference_top1_pct"] == fp32["artifact_top1_pct"] > 70, err  # a trained model

    # the same model handed over as a saved program: no Python class needed at export time
    import finetuned

    program = tmp_path / "newhead.pt2"
    torch.export.save(torch.export.export(finetuned.mobilevit_cifar(), (torch.zeros(1, 3, 64, 64),)), program)
    shutil.copy(HERE / "finetuned.toml", tmp_path / "newhead.toml")
    shutil.copy(HERE / "cifar10_classes.txt", tmp_path / "cifar10_classes.txt")
    m = _export(cli, program, "-t", "tflite", "-o", tmp_path / "out")
    assert m["source"]["kind"] == "pt2" and m["validation"]["passed"] and m["inputs"][0]["shape"] == [1, 64, 64, 3]
    code, out, err = cli("check", tmp_path / "out" / "mobilevit_xxs_newhead.tflite", "--data", data, "--json")
    report = json.loads(out)
    assert code == 0 and report["metrics"]["artifact_top1_pct"] == fp32["artifact_top1_pct"], err
    assert report["reference"].startswith(str(program))


def test_the_python_api_exports_checks_and_profiles_a_module(tmp_path):
    import edgehybrid

    assert {"export", "check", "profile", "Preprocessing", "Exported", "CheckReport"} <= set(edgehybrid.__all__)
    import sys

    sys.path.insert(0, str(HERE))
    try:
        import tiny_hybrid
    finally:
        sys.path.remove(str(HERE))
    model = tiny_hybrid.build()
    pre = edgehybrid.Preprocessing(resize=32, crop=(32, 32), interpolation="bilinear",
                                   mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    exported = edgehybrid.export(model, torch.zeros(1, 3, 32, 32), target="tflite", precision="int8",
                                 preprocessing=pre, out=tmp_path, name="tiny", calib_size=16)
    assert exported.path == tmp_path / "tiny_int8.tflite" and exported.path.exists()
    assert exported.validation["passed"] and exported.manifest["source"] == {"kind": "python", "ref": "tiny"}
    report = edgehybrid.check(exported, data=EVAL, max_images=100)
    assert report.passed and report.metrics["images"] == 100 and report.metrics["top1_agreement_pct"] >= 90
    timing = edgehybrid.profile(exported, runs=5, warmup=1)
    assert timing["latency_ms"]["p50"] > 0 and timing["runtime"] == "litert"
    with pytest.raises(edgehybrid.InputError, match="has no mean and std"):
        edgehybrid.export(model, torch.zeros(1, 3, 32, 32), target="onnx", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_ci_runs_a_model_of_your_own_named_beside_its_config(cli, tmp_path):
    shutil.copytree(HERE, tmp_path / "nets", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "ci.toml").write_text(f"""
[ci]
out = "out"
latency_rounds = 1
latency_runs = 2

[[model]]
name = "nets/tiny_hybrid.py:build"
model_args = {{ dim = 16 }}
targets = ["onnx"]
precisions = ["fp32"]
data = "{EVAL}"
max_images = 50
""")
    code, out, err = cli("ci", "--config", tmp_path / "ci.toml", "--json")
    assert code == 0, err[-800:]
    job = json.loads(out)["jobs"][0]
    assert job["id"] == "nets/tiny_hybrid.py:build/onnx/fp32" and job["status"] == "passed"
    assert job["metrics"]["images"] == 50 and job["baseline"]["status"] == "new"


# ------------------------------------------------------------------------------------------- bad input


def _pt2(tmp_path: Path, change=None, stem: str = "m") -> Path:
    import tiny_hybrid  # noqa: F401  (on sys.path through the fixture below)

    path = tmp_path / f"{stem}.pt2"
    model = tiny_hybrid.build()
    if change is not _TRAINING:
        model.eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 32, 32),)), path)
    (tmp_path / f"{stem}.toml").write_text("mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n")
    if change not in (None, _TRAINING):
        with zipfile.ZipFile(path) as z:
            items = {n: z.read(n) for n in z.namelist()}
        for name in list(items):
            items[name] = change(name, items[name])
        with zipfile.ZipFile(path, "w") as z:
            for name, data in items.items():
                z.writestr(name, data)
    return path


_TRAINING = object()  # save the program traced in training mode


def _other_schema(name: str, data: bytes) -> bytes:
    if re.search(r"models/[^/]+\.json$", name):
        doc = json.loads(data)
        doc["schema_version"]["major"] += 1
        return json.dumps(doc).encode()
    return data


def _pickled_weight(name: str, data: bytes) -> bytes:
    if name.endswith("model_weights_config.json"):
        doc = json.loads(data)
        first = next(iter(doc["config"]))
        doc["config"][first]["use_pickle"] = True
        return json.dumps(doc).encode()
    return data


def _bad(case: str, tmp: Path) -> list:
    src = tmp / "src"
    src.mkdir()
    shutil.copy(HERE / "tiny_hybrid.py", src / "nocard.py")
    nocard = src / "nocard.py"
    pt2 = {  # built only for the case that uses it
        "pt2-other-torch": lambda: [_pt2(tmp, _other_schema)],
        "pt2-pickled": lambda: [_pt2(tmp, _pickled_weight)],
        "pt2-batch": lambda: [_pt2(tmp), "--batch", "2"],
        "pt2-training-mode": lambda: [_pt2(tmp, _TRAINING)],
        "pt2-model-arg": lambda: [_pt2(tmp), "--model-arg", "dim=4"],
    }
    if case in pt2:
        return pt2[case]()
    cases = {
        "missing-file": [f"{tmp / 'nope.py'}:build"],
        "not-a-py": [f"{HERE / 'tiny_hybrid.toml'}:build"],
        "factory-raises": [f"{HERE / 'tiny_hybrid.py'}:broken"],
        "factory-unknown": [f"{HERE / 'tiny_hybrid.py'}:biuld"],
        "not-a-module": [f"{HERE / 'tiny_hybrid.py'}:not_a_model"],
        "bad-model-arg": [HYBRID, "--model-arg", "dim"],
        "factory-rejects-arg": [HYBRID, "--model-arg", "depth=4"],
        "no-preprocessing": [f"{nocard}:build", "--input-size", "32", "32"],
        "no-input-size": [f"{nocard}:build", "--preprocessing", "none"],
        "size-rejected": [f"{nocard}:fixed_size", "--input-size", "48", "48", "--preprocessing", "none"],
        "weights-on-own-model": [HYBRID, "--weights", "random"],
        "mean-on-zoo-model": ["mobilevit_xxs.cifar10", "--mean", "0.5,0.5,0.5"],
        "bad-mean": [HYBRID, "--mean", "0.5,0.5"],
        "bad-card-key": [HYBRID, "--card", _card(tmp, "input_sise = [32, 32]\n")],
        "card-missing": [HYBRID, "--card", tmp / "missing.toml"],
        "pt2-missing": [tmp / "nope.pt2"],
        "classes-count": [HYBRID, "--classes", _card(tmp, "a\nb\n", "classes.txt")],
        "pt2-corrupt": [_write(tmp / "bad.pt2", b"PK\x03\x04 not really")],
    }
    return cases[case]


def _card(tmp: Path, text: str, name: str = "card.toml") -> Path:
    return _write(tmp / name, text.encode())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD = {
    "missing-file": "does not exist", "not-a-py": "is not a .py file", "factory-raises":
    "RuntimeError: checkpoint 'runs/best.ckpt' not found", "factory-unknown": "did you mean 'build'",
    "not-a-module": "returned a dict, not a torch.nn.Module", "bad-model-arg": "expected key=value",
    "factory-rejects-arg": "unexpected keyword argument 'depth'", "no-preprocessing": "has no mean and std",
    "no-input-size": "has no input size", "size-rejected": "rejects a 1x3x48x48 input",
    "weights-on-own-model": "--weights applies to zoo models", "mean-on-zoo-model": "appl",
    "bad-mean": "three numbers", "card-missing": "model card", "pt2-missing": "does not exist", "bad-card-key": "did you mean 'input_size'", "classes-count":
    "10 outputs but 2 class names", "pt2-corrupt": "not a torch.export program", "pt2-other-torch":
    "saved by a torch whose export schema", "pt2-pickled": "holds a pickled object", "pt2-batch":
    "exported for batch 1; pass --batch 1", "pt2-training-mode": "was exported in training mode", "pt2-model-arg": "--model-arg applies to a factory",
}


@pytest.fixture
def on_path():
    import sys

    sys.path.insert(0, str(HERE))
    yield
    sys.path.remove(str(HERE))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_of_your_own_model_is_one_line(cli, tmp_path, on_path, case):
    args = _bad(case, tmp_path)
    code, out, err = cli("export", *args, "-t", "onnx", "-o", tmp_path / "out")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and BAD[case] in errors[0], err[-600:]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_debug_shows_the_factorys_own_traceback(tmp_path):
    from edgehybrid.cli import main

    with pytest.raises(RuntimeError, match="runs/best.ckpt"):
        main(["--debug", "export", f"{HERE / 'tiny_hybrid.py'}:broken", "-t", "onnx", "-o", str(tmp_path / "o")])
