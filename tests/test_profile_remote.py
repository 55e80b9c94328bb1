"""Profiling over SSH against a real sshd started by the test on 127.0.0.1 (no mocks).

The "device" is this machine reached through its own OpenSSH server: a throwaway host key, a client key in
a throwaway authorized_keys, password logins off. Its Python for the happy path is this test's Python
(which has ONNX Runtime); the system Python, which has not, plays a device without the runtime.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgehybrid.errors import EdgeHybridError, InputError
from edgehybrid.profiling import remote
from edgehybrid.profiling.remote import (AuthenticationFailed, ConnectionFailed, Device, DevicePythonMissing,
                                         ProbeFailed, RuntimeMissing, parse_device, probe_failure, profile_remote,
                                         ssh_failure)

# a throwaway server's host key changes every run: never record or check it
NO_HOST_KEYS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


@dataclass
class Server:
    device: Device
    key: Path
    other_key: Path  # a valid key that is not in authorized_keys
    remote_tmp: Path  # $TMPDIR of every session: where the probe's temporary folders must come and go
    root: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
                                             if os.access(p, os.X_OK)), None)
    missing = [name for name, found in (("sshd", sshd_bin), ("ssh", shutil.which("ssh")),
                                        ("ssh-keygen", shutil.which("ssh-keygen"))) if not found]
    if missing:
        pytest.skip(f"OpenSSH {' and '.join(missing)} not installed: cannot start a local sshd to profile over")
    root = tmp_path_factory.mktemp("sshd")
    host_key, key, other_key = keygen(root / "host_key"), keygen(root / "client_key"), keygen(root / "other_key")
    authorized = root / "authorized_keys"
    authorized.write_text((root / "client_key.pub").read_text())
    authorized.chmod(0o600)
    remote_tmp = root / "remote-tmp"
    remote_tmp.mkdir()
    port = free_port()
    cfg = root / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {root / 'sshd.pid'}
PermitRootLogin prohibit-password
SetEnv TMPDIR={remote_tmp}
""")
    if os.geteuid() == 0:
        # sshd refuses to start as root without its privilege-separation folder, which the service unit
        # normally creates at boot; a container that never ran the service lacks it
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (root / "sshd.log").open("w")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.skip(f"sshd could not start: {(root / 'sshd.log').read_text().strip()[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("sshd did not accept connections within 10 s")
                time.sleep(0.05)
        yield Server(Device(getpass.getuser(), "127.0.0.1", port), key, other_key, remote_tmp, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small real ONNX model (Conv, Relu, LayerNormalization-free pooling): fast to copy and to run."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("artifacts") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def recording_python(tmp: Path, python: str) -> tuple[str, Path]:
    """A 'device Python' that logs its arguments (and the artifact folder's files) before running ``python``."""
    log = tmp / "args.log"
    wrapper = tmp / "python-wrapper"
    wrapper.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" > '{log}'
[ -d "$2" ] && (cd "$2" && find . -type f | sort) >> '{log}'
exec '{python}' "$@"
""")
    wrapper.chmod(0o755)
    return str(wrapper), log


def run(server: Server, artifact: Path, **kw) -> dict:
    args = dict(runtime="onnxruntime", threads=1, warmup=2, runs=10, min_time=None, per_op=False,
                python=sys.executable, identity=server.key, ssh_options=NO_HOST_KEYS, timeout=120)
    return profile_remote(server.device, artifact, **(args | kw))


def leftovers(server: Server) -> list[str]:
    # only our folders: the device user's login scripts may keep their own files in $TMPDIR
    return sorted(p.name for p in server.remote_tmp.glob("edgehybrid-profile.*"))


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# --------------------------------------------------------------------------------------- addresses

@pytest.mark.parametrize("url,expected", [
    ("ssh://pi@raspberrypi.local", Device("pi", "raspberrypi.local", 22)),
    ("ssh://root@10.0.0.7:2222", Device("root", "10.0.0.7", 2222)),
    ("ssh://me@[fe80::1]:22/", Device("me", "fe80::1", 22)),
])
def test_parse_device(url, expected):
    device = parse_device(url)
    assert device == expected and parse_device(device.url) == device


@pytest.mark.parametrize("url", ["pi@host", "ssh://host", "http://pi@host", "ssh://pi@host:99999", "ssh://pi@host:x",
                                 "ssh://pi:pw@host", "ssh://pi@host/dir", "ssh://-oProxyCommand=x@host", ""])
def test_parse_device_refuses_anything_else(url):
    with pytest.raises(InputError, match=r"expected ssh://user@host\[:port\]") as err:
        parse_device(url)
    one_line(err.value)


@pytest.mark.parametrize("stderr,cls,words", [
    ("ssh: connect to host 10.0.0.7 port 22: Connection timed out", ConnectionFailed, "timed out"),
    ("ssh: Could not resolve hostname nope: Name or service not known", ConnectionFailed, "cannot be resolved"),
    ("ssh: connect to host 10.0.0.7 port 22: No route to host", ConnectionFailed, "no route"),
    ("Host key verification failed.", AuthenticationFailed, "host key"),
    ("kex_exchange_identification: read: Connection reset by peer", ConnectionFailed, "Connection reset"),
])
def test_ssh_failure_lines(stderr, cls, words):
    err = ssh_failure(Device("pi", "10.0.0.7"), "Warning: Permanently added x\n" + stderr + "\n", None)
    assert isinstance(err, cls) and words in one_line(err)


@pytest.mark.parametrize("rc,stderr,cls,text", [
    (2, "loading\nprobe error (missing-runtime): onnxruntime is not installed: pip install onnxruntime",
     RuntimeMissing, "ssh://pi@10.0.0.7:22: onnxruntime is not installed: pip install onnxruntime"),
    (2, "probe error (input): cannot read 'm.onnx': truncated", ProbeFailed, "ssh://pi@10.0.0.7:22: cannot read"),
    (1, "Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'numpy'", RuntimeMissing,
     "numpy is not installed for 'python3' on the device: pip install numpy onnxruntime"),
    (1, "Traceback (most recent call last):\nKeyError: 'x'", ProbeFailed, "the probe failed (exit 1): KeyError: 'x'"),
    (127, "sh: 1: python3: not found", DevicePythonMissing, "'python3' was not found on ssh://pi@10.0.0.7:22"),
    (137, "Killed", ProbeFailed, "the probe was killed by signal 9, out of memory?"),
])
def test_probe_failure_lines(rc, stderr, cls, text):
    err = probe_failure(Device("pi", "10.0.0.7"), "python3", "onnxruntime", rc, stderr)
    assert type(err) is cls and text in one_line(err)


# --------------------------------------------------------------------------------------- real sshd

def test_profile_on_the_device(sshd, tiny_onnx, tmp_path):
    python, log = recording_python(tmp_path, sys.executable)
    doc = run(sshd, tiny_onnx, python=python, runs=15, per_op=True)
    assert doc["schema"] == "edgehybrid.profile/1" and doc["device"] == sshd.device.url
    assert doc["device"] == f"ssh://{sshd.device.user}@127.0.0.1:{sshd.device.port}"
    assert doc["artifact"] == str(tiny_onnx) and doc["artifact_name"] == "tiny.onnx"
    assert doc["size_bytes"] == tiny_onnx.stat().st_size and doc["runtime"] == "onnxruntime"
    assert doc["threads"] == 1 and doc["warmup"] == 2 and doc["runs"] == 15 and len(doc["samples_ms"]) == 15
    lat = doc["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 1000
    assert doc["throughput_ips"] > 0 and doc["memory"]["peak_rss_mb"] >= doc["memory"]["baseline_rss_mb"] > 0
    assert doc["input"]["shape"] == [1, 3, 32, 32]
    assert doc["per_op"] and {o["op_type"] for o in doc["per_op"]["by_op_type"]} >= {"Conv"}
    # it ran on the copy in a private temporary folder, which is gone now
    args = log.read_text().splitlines()
    assert args[0] == "-" and Path(args[1]).name == "tiny.onnx"
    folder = Path(args[1]).parent
    assert folder.parent == sshd.remote_tmp and folder.name.startswith("edgehybrid-profile.")
    assert args[2:] == ["--runtime", "onnxruntime", "--threads", "1", "--warmup", "2", "--runs", "15", "--per-op"]
    assert leftovers(sshd) == []


def test_quoting_of_awkward_file_names(sshd, tiny_onnx, tmp_path):
    name = """it's a "tiny" $HOME `id`; model.onnx"""
    artifact = tmp_path / name
    shutil.copy(tiny_onnx, artifact)
    doc = run(sshd, artifact, runtime="auto", runs=None, min_time=0.2)
    # any shell expansion on the way would have changed the name or lost the file
    assert doc["artifact_name"] == name and doc["artifact"] == str(artifact)
    assert doc["min_time_s"] == pytest.approx(0.2) and doc["runs"] >= 1
    assert leftovers(sshd) == []


def test_folder_artifact_goes_as_a_tar_stream(sshd, tmp_path):
    package = tmp_path / "my model.mlpackage"
    (package / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(os.urandom(4096))
    python, log = recording_python(tmp_path, sys.executable)
    try:
        run(sshd, package, runtime="coreml", python=python)
    except ProbeFailed as exc:  # Core ML cannot run here (Linux, or coremltools absent): its own line
        assert one_line(exc).startswith(sshd.device.url)
    lines = log.read_text().splitlines()
    assert Path(lines[1]).name == "my model.mlpackage"
    assert "./Data/com.apple.CoreML/model.mlmodel" in lines and "./Manifest.json" in lines
    assert leftovers(sshd) == []


def test_closed_port_is_one_line(sshd, tiny_onnx):
    closed = Server(Device(sshd.device.user, "127.0.0.1", free_port()), sshd.key, sshd.other_key,
                    sshd.remote_tmp, sshd.root)
    with pytest.raises(ConnectionFailed) as err:
        run(closed, tiny_onnx)
    assert one_line(err.value) == (f"cannot connect to 127.0.0.1:{closed.device.port}: connection refused "
                                   "(is sshd running there, on that port?)")


def test_refused_key_is_one_line_naming_the_key(sshd, tiny_onnx):
    with pytest.raises(AuthenticationFailed) as err:
        run(sshd, tiny_onnx, identity=sshd.other_key)
    text = one_line(err.value)
    assert str(sshd.other_key) in text and "permission denied" in text and "authorized_keys" in text


@pytest.fixture(scope="session")
def python_without_runtime(tmp_path_factory) -> str:
    """The system Python when it lacks ONNX Runtime, else a bare venv (no pip, no packages)."""
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK) and subprocess.run([system, "-c", "import onnxruntime"],
                                                     capture_output=True).returncode != 0:
        return system
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


@pytest.fixture(scope="session")
def python_with_numpy_only(tmp_path_factory) -> str:
    """A venv with numpy (linked from ours) and nothing else: the probe starts and reports the runtime."""
    venv = tmp_path_factory.mktemp("numpy-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    here = Path(np.__file__).parent.parent
    for name in ("numpy", "numpy.libs"):  # numpy.libs: the wheel's bundled BLAS, when it has one
        if (here / name).exists():
            (site / name).symlink_to(here / name)
    return str(venv / "bin" / "python")


def test_device_without_numpy_or_the_runtime(sshd, tiny_onnx, python_without_runtime):
    with pytest.raises(RuntimeMissing) as err:
        run(sshd, tiny_onnx, python=python_without_runtime)
    text = one_line(err.value)
    assert text.startswith(sshd.device.url) and "onnxruntime" in text and "pip install" in text
    assert leftovers(sshd) == []


def test_device_without_the_runtime(sshd, tiny_onnx, python_with_numpy_only):
    with pytest.raises(RuntimeMissing) as err:
        run(sshd, tiny_onnx, python=python_with_numpy_only)
    text = one_line(err.value)  # the probe's own line, from the device
    assert text.startswith(f"{sshd.device.url}: onnxruntime is not installed") and "pip install onnxruntime" in text
    assert leftovers(sshd) == []


def test_device_without_python(sshd, tiny_onnx):
    with pytest.raises(DevicePythonMissing) as err:
        run(sshd, tiny_onnx, python="/opt/no such/python3")
    assert "'/opt/no such/python3' was not found" in one_line(err.value)
    assert leftovers(sshd) == []


def test_timeout_is_one_line_and_cleans_up(sshd, tiny_onnx, tmp_path):
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nsleep 4\n")  # a device that hangs; short, so nothing lingers after the test
    slow.chmod(0o755)
    with pytest.raises(remote.RemoteError, match=r"did not finish within 2 s") as err:
        run(sshd, tiny_onnx, python=str(slow), timeout=2)
    one_line(err.value)
    assert leftovers(sshd) == []  # removed by the clean-up connection, not by the hung run


def test_missing_artifact_and_identity(sshd, tiny_onnx, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run(sshd, tmp_path / "nope.onnx")
    with pytest.raises(InputError, match="identity file"):
        run(sshd, tiny_onnx, identity=tmp_path / "no_key")


def test_errors_are_edgehybrid_errors():
    for cls in (ConnectionFailed, AuthenticationFailed, DevicePythonMissing, ProbeFailed, RuntimeMissing,
                remote.RemoteError):
        assert issubclass(cls, EdgeHybridError)


# ----------------------------------------------------------------- --optimize latency on the device

def _conv_model(path: Path, size: int, channels: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, channels])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


def test_artifacts_are_timed_side_by_side_on_the_device(sshd, tmp_path):
    # two artifacts with the same file name, as a latency search writes them, one about 50x the other's work
    light = _conv_model((tmp_path / "a").mkdir() or tmp_path / "a" / "trial.onnx", 32, 8)
    heavy = _conv_model((tmp_path / "b").mkdir() or tmp_path / "b" / "trial.onnx", 128, 32)
    broken = (tmp_path / "c").mkdir() or tmp_path / "c" / "trial.onnx"
    broken.write_bytes(b"not a model" * 10)  # a candidate the device's runtime refuses: named, the rest timed
    timed = remote.time_side_by_side_remote(sshd.device, {"FP32": light, "every kind": heavy, "broken": broken},
                                            "onnxruntime", 1, python=sys.executable, identity=sshd.key,
                                            ssh_options=NO_HOST_KEYS, sessions=2)
    assert set(timed) == {"FP32", "every kind", "broken"}
    assert 0 < timed["FP32"]["ms"] < timed["every kind"]["ms"]
    assert all(t["spread"] >= 1 and min(t["rounds"]) == t["ms"] for n, t in timed.items() if n != "broken")
    assert "not a valid ONNX model" in timed["broken"]["error"]
    assert leftovers(sshd) == []


def test_optimize_latency_times_the_candidate_plans_on_the_device(sshd, tmp_path):
    from edgehybrid.int8 import Int8Request
    from edgehybrid.pipeline import ExportRequest, run_export
    from edgehybrid.targets import Precision
    from exporters.base import ExportOptions

    tiny = f"{Path(__file__).parent / 'user_models' / 'tiny_hybrid.py'}:build"
    int8 = Int8Request(calib_size=32, optimize="latency", device=sshd.device.url, device_python=sys.executable,
                       identity=sshd.key, ssh_options=tuple(NO_HOST_KEYS), sensitivity=True)
    lines: list[str] = []
    m = run_export(ExportRequest(model=tiny, target="onnx", out_dir=tmp_path / "out", int8=int8,
                                 options=ExportOptions(precision=Precision.INT8)), log=lines.append)
    search = m["quantization"]["latency_search"]
    assert search["device"] == sshd.device.url and search["runtime"] == "onnxruntime"
    assert len(search["candidates"]) == 6 and all(r["p50_ms"] > 0 for r in search["candidates"])
    assert search["fp32_ms"] > 0 and m["validation"]["passed"]
    # timed again with 1 thread on the device, in a second probe
    assert [f["threads"] for f in search["fewer_threads"]] == [1] and search["fewer_threads"][0]["int8_ms"] > 0
    assert leftovers(sshd) == []
    # --sensitivity's per-layer times come from the profiler here, and say so rather than pass for the device's
    assert m["quantization"]["layer_latency"]["measured_on"] == "this machine"
    timed = next(line for line in lines if line.startswith("timed each layer"))
    assert "on this machine" in timed and f"not on {sshd.device.url}" in timed, timed
    table = (tmp_path / "out" / (Path(m["artifact"]).name + ".sensitivity.md")).read_text()
    assert "on onnxruntime on this machine" in table


@pytest.mark.parametrize("args, words", [
    (dict(device="ssh://pi@board"), "add --optimize latency"),
    (dict(device="http://pi@board", optimize="latency"), "is not an SSH address"),
    (dict(device="ssh://pi@board", optimize="latency", identity=Path("/no/such/key")), "identity file"),
])
def test_device_options_are_refused_before_any_work(args, words):
    from edgehybrid.int8 import Int8Request

    with pytest.raises(InputError, match=words) as info:
        Int8Request(**args).check()
    one_line(info.value)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
def test_an_unreachable_device_is_refused_before_any_export(cli, tmp_path):
    tiny = f"{Path(__file__).parent / 'user_models' / 'tiny_hybrid.py'}:build"
    t = time.monotonic()
    code, _, err = cli("export", tiny, "-t", "onnx", "--int8", "--optimize", "latency", "--device",
                       f"ssh://nobody@127.0.0.1:{free_port()}", "-o", tmp_path / "out")
    assert code == 2 and "cannot connect to 127.0.0.1" in err and "Traceback" not in err
    assert time.monotonic() - t < 20 and not (tmp_path / "out").exists()  # no calibration, no export, no folder
