"""Minimum runtime versions: what ONNX files declare, how ``requires`` is read and compared, and the rules of
``--opset`` / ``--min-runtime`` (the runs on real old runtimes are in test_old_runtimes.py)."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from edgehybrid.errors import InputError
from edgehybrid.pipeline import ExportRequest
from edgehybrid.requires import manifest_requires, parse_floor, satisfies, unmet
from exporters import onnx_versions as ov
from exporters.base import ExportOptions
from tests.manifests import valid_manifest

FIXTURE = "mobilevit_xxs.cifar10"


def _model(opset: int = 21, ir: int = 10):
    """LayerNormalization (added in 17) -> ReduceMean in its opset-18 form (axes as an input)."""
    nodes = [helper.make_node("LayerNormalization", ["x", "scale"], ["y"], axis=-1),
             helper.make_node("ReduceMean", ["y", "axes"], ["z"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [4], [1.0] * 4),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    mp = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                 helper.make_opsetid("pkg.unused", 1)])
    mp.ir_version = ir
    return mp


def test_stamp_lowest_declares_what_the_nodes_need_and_nothing_more():
    mp = _model()
    assert ov.lowest_opset(mp) == 18  # ReduceMean-18; LayerNormalization-17
    ov.stamp_lowest(mp)
    assert [(o.domain, o.version) for o in mp.opset_import] == [("", 18)] and mp.ir_version == 8
    onnx.checker.check_model(mp, full_check=True)
    kept = _model()
    ov.stamp_lowest(kept, keep_opset=True)  # an opset the user chose stays; the IR version follows it
    assert ov.default_opset(kept) == 21 and kept.ir_version == 10


def test_float8_needs_ir_9():
    mp = _model(opset=18, ir=10)
    mp.graph.initializer.append(helper.make_tensor("f8", TensorProto.FLOAT8E4M3FN, [1], [1.0]))
    assert ov.lowest_ir(mp) == 9


def test_ops_an_opset_cannot_hold_are_named_with_the_opset_that_added_them():
    mp = _model(opset=18, ir=8)
    assert [(b.op, b.since) for b in ov.blockers(mp, 16)] == [("LayerNormalization", 17)]
    assert ov.blockers(mp, 17) == []
    assert [(b.op, b.since) for b in ov.newer_forms(mp, 17)] == [("ReduceMean", 18)]
    assert str(ov.blockers(mp, 16)[0]) == "LayerNormalization (opset 17, ONNX Runtime >= 1.13)"


def test_onnx_runtime_table_reads_both_ways():
    assert ov.ort_requirement(18, 8) == "1.14" and ov.ort_requirement(17, 8) == "1.13"
    assert ov.ort_requirement(18, 10) == "1.18"  # IR 10 is what ONNX Runtime 1.17 refused
    assert ov.ort_requirement(20, 9) == "1.17"
    assert ov.ort_limits((1, 14)) == (18, 8) and ov.ort_limits((1, 16, 3)) == (19, 9)
    with pytest.raises(InputError, match="targets ONNX Runtime 1.6"):
        ov.ort_limits((1, 2))


def test_versions_compare_as_numbers():
    assert satisfies("1.15.0", ">=1.14") and satisfies("1.14", ">=1.14.0") and satisfies("2.14.0rc1", ">=2.3.0")
    assert satisfies("1.9.1", ">=1.14") is False and satisfies("unknown", ">=1.14") is None
    assert unmet({"onnxruntime": ">=1.14"}, "onnxruntime", "1.15.0") is None
    assert unmet({"onnxruntime": ">=1.14"}, "onnxruntime", "1.13.1").startswith("onnxruntime 1.13.1 is older")
    assert unmet({"tflite-runtime": ">=2.3.0"}, "ai-edge-litert", "1.0.1") is None  # TF Lite's successor
    assert unmet({"tflite-runtime": ">=2.15"}, "tflite-runtime", "2.14.0") is not None
    assert unmet({"iOS": ">=15", "macOS": ">=12"}, "macOS", "11.7") is not None


def test_min_runtime_is_parsed_per_target():
    assert parse_floor("onnx", "1.14") == (1, 14) and parse_floor("onnx", "onnxruntime>=1.15") == (1, 15)
    assert parse_floor("coreml", "iOS16") == (16,) and parse_floor("tflite", "2.14") == (2, 14)
    with pytest.raises(InputError, match=r"--min-runtime 'iOS16' is not a version of onnxruntime; give one like 1.14"):
        parse_floor("onnx", "iOS16")


def test_a_malformed_requires_in_a_manifest_is_refused(tmp_path):
    artifact = tmp_path / "m.onnx"
    assert manifest_requires(artifact) == {}  # no manifest: nothing to compare
    manifest = tmp_path / "m.onnx.manifest.json"
    manifest.write_text(json.dumps(valid_manifest()))
    assert manifest_requires(artifact) == {"onnxruntime": ">=1.14"}
    manifest.write_text(json.dumps(valid_manifest(requires={"onnxruntime": 1.14})))
    with pytest.raises(InputError, match="field 'requires' must be an object mapping runtime names to '>=VERSION'"):
        manifest_requires(artifact)


@pytest.mark.parametrize("target, options, message", [
    ("tflite", {"opset": 18}, "--opset applies to --target onnx only"),
    ("onnx", {"opset": 12}, "--opset must be between 13 and 21, got 12"),
    ("onnx", {"opset": 20, "min_runtime": "1.14"}, "--opset 20 needs ONNX Runtime >= 1.17, newer than --min-runtime"),
    ("executorch", {"min_runtime": "one"}, "--min-runtime 'one' is not a version of executorch"),
])
def test_version_options_are_refused_alike_by_the_api_and_the_cli(cli, tmp_path, target, options, message):
    with pytest.raises(InputError, match=message):
        ExportRequest(FIXTURE, target, options=ExportOptions(**options)).check()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    code, _, err = cli("export", FIXTURE, "-t", target, "-o", tmp_path / "out", *flags)
    assert code == 2 and err.count("error:") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_opset_too_old_for_the_model_names_the_op(cli, tmp_path):
    code, _, err = cli("export", FIXTURE, "-t", "onnx", "--opset", "16", "-o", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert ("opset 16 cannot hold mobilevit_xxs (fp32): it uses LayerNormalization (opset 17, ONNX Runtime >= "
            "1.13); use --opset 17 or later") in err
    assert not (tmp_path / "out").exists()


def test_a_floor_below_what_the_file_needs_is_refused_naming_why():
    from edgehybrid.requires import Requirement, check_floor
    from edgehybrid.targets import get_target

    tflite = get_target("tflite")
    needs = [Requirement("tflite-runtime", "2.3.0", "the converter's min_runtime_version; op versions TRANSPOSE v4")]
    check_floor(tflite, needs, (2, 14))  # 2.14 runs a file that needs 2.3: nothing to refuse
    with pytest.raises(InputError, match=r"--min-runtime 2.1: this TFLite artifact needs tflite-runtime >=2.3.0 "
                                         r"\(the converter's min_runtime_version; op versions TRANSPOSE v4\)"):
        check_floor(tflite, needs, (2, 1))
    check_floor(get_target("coreml"), [Requirement("iOS", "15", "Core ML specification version 6")], (16,))
    with pytest.raises(InputError, match="needs iOS >=17"):
        check_floor(get_target("coreml"), [Requirement("iOS", "17", "Core ML specification version 8")], (16,))
