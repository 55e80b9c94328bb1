"""Targets and precisions as types: every table is derived from the registry, and the CLI, ``ci`` and the Python
API refuse the same invalid combinations with the library's own words."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.ops import KIND_OF, TRAITS, UNWEIGHTED, OpKind, QuantPolicy
from edgehybrid import ci as ci_mod
from edgehybrid.errors import InputError, UnknownNameError
from edgehybrid.int8 import Int8Request
from edgehybrid.pipeline import ExportRequest, artifact_stem
from edgehybrid.profiling import probe
from edgehybrid.profiling.protocol import auto_runtime, runtime_package
from edgehybrid.runtimes import runtime_for
from edgehybrid.targets import Precision, all_targets, get_target, target_for_artifact, target_names
from exporters.base import ExportOptions, Exporter, get_exporter, register


def test_every_target_is_one_record_and_every_table_derives_from_it():
    assert target_names() == ["onnx", "coreml", "tflite", "executorch"]
    for t in all_targets():
        assert target_for_artifact(f"m{t.suffix}") is t and runtime_for(Path(f"m{t.suffix}")) == t.runtime
        assert auto_runtime(Path(f"m{t.suffix}")) == t.runtime
        assert runtime_package(t.runtime) == (t.probe_module, t.device_package, t.extra)
        assert t.runtime in probe.RUNTIMES  # the self-contained probe knows every registered runtime
        assert t.precisions[0] is Precision.FP32 and all(t.tolerance(p) for p in t.precisions)
    assert {t.runtime for t in all_targets()} == set(probe.RUNTIMES)
    assert get_target("coreml").supports(Precision.INT8_WEIGHTS)
    assert not get_target("onnx").supports(Precision.INT8_WEIGHTS)


def test_unknown_names_get_a_did_you_mean():
    with pytest.raises(UnknownNameError, match="did you mean 'executorch'"):
        get_target("executorc")
    with pytest.raises(UnknownNameError, match="did you mean 'int8'"):
        Precision.parse("int9")
    with pytest.raises(InputError, match=r"\.pte"):
        target_for_artifact("m.bin")


@pytest.mark.parametrize("text, expected", [("fp32", Precision.FP32), ("FP16", Precision.FP16),
                                            ("int8", Precision.INT8), ("int8-weights", Precision.INT8_WEIGHTS)])
def test_precision_round_trips_as_its_string(text, expected):
    p = Precision.parse(text)
    assert p is expected and str(p) == expected.value and f"{p}" == expected.value
    assert Precision.parse(p.value) is p and ExportOptions(precision=text).precision is p


def test_precision_flags_are_one_value_and_contradictions_are_refused():
    assert Precision.from_flags() is Precision.FP32
    assert Precision.from_flags(int8="weights") is Precision.INT8_WEIGHTS
    assert Precision.from_flags(fp16=True) is Precision.FP16
    with pytest.raises(InputError, match="--fp16 and --int8"):
        Precision.from_flags(fp16=True, int8="full")
    with pytest.raises(InputError, match="--precision and --fp16"):
        Precision.from_flags("int8", fp16=True)


def test_artifact_stems_tell_precisions_apart():
    stems = {artifact_stem("m.tag", p) for p in Precision}
    assert stems == {"m.tag", "m.tag_fp16", "m.tag_int8", "m.tag_int8w"}


def test_every_exporter_declares_a_typed_policy_and_the_contract_is_enforced():
    for name in target_names():
        exp = get_exporter(name)
        assert exp.target is get_target(name) and isinstance(exp.quant_policy, QuantPolicy)
    # LiteRT: weighted ops and a split SiLU's halves in int8 (exporters/tflite.py says why)
    assert get_exporter("tflite").quant_policy.float_kinds == UNWEIGHTED - {OpKind.SIGMOID, OpKind.MUL}
    with pytest.raises(TypeError, match="OpKind"):
        QuantPolicy(float_kinds={"softmx"})  # a typo is an error, not a silent no-op

    class NoPolicy(Exporter):
        target = get_target("onnx")

        def check_available(self):
            pass

        def export(self, *a):
            pass

    with pytest.raises(TypeError, match="quant_policy"):
        register(NoPolicy)


def test_op_kinds_have_one_table_of_traits():
    assert set(TRAITS) == set(OpKind) and set(KIND_OF.values()) == set(OpKind)
    assert {k for k, t in TRAITS.items() if t.weighted} == {OpKind.CONV, OpKind.LINEAR}


# the same invalid combination, refused by the Python API, the CLI and ci in the library's words
_INVALID = [
    ("onnx", "int8-weights", {}, "onnx export does not support precision 'int8-weights'"),
    ("tflite", "fp32", {"calib_size": 8}, "--calib-size applies to --int8 only"),
    ("coreml", "int8-weights", {"calib_size": 8}, "int8-weights quantizes weights only"),
]


@pytest.mark.parametrize("target, precision, int8, message", _INVALID)
def test_python_api_refuses(target, precision, int8, message):
    req = ExportRequest(model="mobilevit_xxs.cifar10", target=target, options=ExportOptions(precision=precision),
                        int8=Int8Request(**int8))
    with pytest.raises(InputError, match=message):
        req.check()


@pytest.mark.parametrize("target, precision, int8, message", _INVALID)
def test_cli_refuses_the_same(cli, tmp_path, target, precision, int8, message):
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in int8.items()]
    code, out, err = cli("export", "mobilevit_xxs.cifar10", "-t", target, "--precision", precision,
                         "-o", tmp_path / "o", *extra)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "edgehybrid.toml"
    path.write_text('[defaults]\ndata = "bundled:cifar10/eval"\n' + body)
    return path


def test_ci_lists_weight_only_int8_and_refuses_what_no_target_builds(tmp_path):
    cfg = ci_mod.load_config(_config(tmp_path, '[[model]]\nname = "mobilevit_xxs.cifar10"\n'
                                               'targets = ["onnx", "coreml"]\nprecisions = ["int8-weights"]\n'))
    jobs = ci_mod.jobs(cfg)
    assert [(j.target, j.precision, j.supported) for j in jobs] == [
        ("onnx", Precision.INT8_WEIGHTS, False), ("coreml", Precision.INT8_WEIGHTS, True)]
    skipped = ci_mod.run_job(cfg, jobs[0], tmp_path / "a", {}, lambda _m: None, None)
    assert skipped.status == "skipped" and "ONNX has no int8-weights export" in skipped.notes[0]
    with pytest.raises(InputError, match="supported by none of its targets"):
        ci_mod.load_config(_config(tmp_path, '[[model]]\nname = "mobilevit_xxs.cifar10"\ntargets = ["onnx"]\n'
                                             'precisions = ["int8-weights"]\n'))
    with pytest.raises(InputError, match="calib_size of model .* applies to calibrated int8 only"):
        ci_mod.load_config(_config(tmp_path, '[[model]]\nname = "mobilevit_xxs.cifar10"\ntargets = ["coreml"]\n'
                                             'precisions = ["int8-weights"]\ncalib_size = 8\n'))
    with pytest.raises(UnknownNameError, match="did you mean 'int8'"):
        ci_mod.load_config(_config(tmp_path, '[[model]]\nname = "mobilevit_xxs.cifar10"\nprecisions = ["int9"]\n'))
    et = ci_mod.load_config(_config(tmp_path, '[[model]]\nname = "mobilevit_xxs.cifar10"\ntargets = ["executorch"]\n'
                                              'precisions = ["fp32", "fp16", "int8"]\n'))
    assert [(j.id, j.supported) for j in ci_mod.jobs(et)] == [
        (f"mobilevit_xxs.cifar10/executorch/{p}", True) for p in ("fp32", "fp16", "int8")]
