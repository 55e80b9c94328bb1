"""Every input class of every command, fed bad through the CLI: the promise holds for each case.

The promise: exit code 1 or 2, exactly one ``error:`` line, no traceback, and the folder the case lives in
(its inputs and any ``--out``) unchanged. Cases are generated, not stored: each class is a table of
builders, and a fixed-seed sample of each runs by default (``--runslow`` runs them all).

Classes: images (format, mode, size, depth; a declared decompression bomb), tensors files (dtype, shape,
finiteness, pickled objects), weights (truncated, random, wrong model, pickles), manifests (schema
violations), ci configs, paths (missing, too long, file vs folder, non-UTF-8) and device strings.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.preprocess import load_pixels
from models_zoo.registry import Preprocessing
from models_zoo.zoo import FIXTURES_DIR
from tests.manifests import DROP, valid_manifest

FIXTURE = "mobilevit_xxs.cifar10"
SAMPLE_PER_CLASS = 3  # the default run's share of each class; the slow sweep runs every case
SEED = 20261129


# ------------------------------------------------------------------------------------------ builders

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (a decompression bomb's header) and holds one tiny row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


BAD_IMAGES = {
    "empty.jpg": lambda: b"",
    "random.png": lambda: random.Random(1).randbytes(3000),
    "truncated.jpg": lambda: _jpeg_bytes()[:200],
    "text.webp": lambda: b"not an image at all\n" * 20,
    "bomb.png": lambda: _png_header_only(40000, 40000),
    "png-named.bmp": lambda: _png_header_only(8, 8)[:40],
}


def _array(kind: str):
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    if kind == "nan":
        x[2, 1, 5, 5] = np.nan
    elif kind == "inf":
        x[0, 0, 0, 0] = -np.inf
    elif kind == "int":
        return x.astype(np.int32)
    elif kind == "complex":
        return x.astype(np.complex64)
    elif kind == "shape":
        return x[:, :, :32, :32]
    elif kind == "ndim":
        return x[0]
    elif kind == "empty":
        return x[:0]
    elif kind == "object":
        return np.array([{"a": 1}, None], dtype=object)
    return x


def _tensor_file(tmp: Path, case: str) -> Path:
    if case.startswith("npz-"):
        path = tmp / "calib.npz"
        kind = case[4:]
        if kind == "two":
            np.savez(path, a=_array("ok"), b=_array("ok"))
        elif kind == "none":
            np.savez(path)
        else:
            np.savez(path, input=_array(kind))
        return path
    path = tmp / "calib.npy"
    if case == "random":
        path.write_bytes(random.Random(2).randbytes(5000))
    elif case == "truncated":
        np.save(path, _array("ok"))
        path.write_bytes(path.read_bytes()[:300])
    else:
        np.save(path, _array(case), allow_pickle=True)
    return path


def _weights_file(tmp: Path, case: str) -> Path:
    from safetensors.torch import save_file

    fixture = FIXTURES_DIR / f"{FIXTURE}.safetensors"
    if case == "random-pth":
        (p := tmp / "w.pth").write_bytes(random.Random(3).randbytes(4000))
    elif case == "random-safetensors":
        (p := tmp / "w.safetensors").write_bytes(random.Random(4).randbytes(4000))
    elif case == "truncated-safetensors":
        (p := tmp / "w.safetensors").write_bytes(fixture.read_bytes()[:5000])
    elif case == "empty-pth":
        (p := tmp / "w.pth").write_bytes(b"")
    elif case == "wrong-model":
        save_file({"foo.weight": torch.zeros(3, 3)}, str(p := tmp / "w.safetensors"))
    elif case == "pickled-code":
        torch.save({"model": _Evil()}, p := tmp / "w.pth")
    elif case == "folder":
        (p := tmp / "w.safetensors").mkdir()
    elif case == "unknown-suffix":
        (p := tmp / "w.ckpt").write_bytes(b"\0" * 10)
    else:
        raise AssertionError(case)
    return p


class _Evil:
    def __reduce__(self):  # what a hostile checkpoint carries: loading it must never call this
        return (os.system, ("touch /tmp/edgehybrid-fuzz-pwned",))


MANIFESTS = {
    "no-sha": {"sha256": DROP}, "sha-short": {"sha256": "abc"}, "target-number": {"target": 3},
    "target-unknown": {"target": "tensorrt"}, "inputs-empty": {"inputs": []}, "inputs-dict": {"inputs": {}},
    "shape-text": {"inputs.0.shape": "1x3x64x64"}, "shape-negative": {"inputs.0.shape": [1, 3, -64, 64]},
    "layout-odd": {"inputs.0.layout": "CHWN"}, "scale-text": {"inputs.0.scale": "0.1"},
    "crop-three": {"preprocessing.crop": [64, 64, 3]}, "std-zero": {"preprocessing.std": [0.25, 0, 0.25]},
    "mean-nan": {"preprocessing.mean": [0.5, "nan", 0.5]}, "order-odd": {"preprocessing.channel_order": "GBR"},
    "batch-zero": {"batch": 0}, "classes-numbers": {"classes": [1, 2]}, "requires-number": {"requires": {"onnxruntime": 1.14}},
    "preprocessing-missing": {"preprocessing": DROP}, "model-empty": {"model": ""},
}

CONFIGS = {
    "not-toml": "this is = = not toml",
    "binary": "\x00\x01\x02",
    "empty": "",
    "models-string": 'models = "mobilevit_xxs"\n',
    "unknown-key": '[ci]\nbogus = 1\n[[model]]\nname = "mobilevit_xxs.cifar10"\n',
    "threads-text": '[ci]\nthreads = "two"\n[[model]]\nname = "mobilevit_xxs.cifar10"\ndata = "bundled:cifar10/eval"\n',
    "max-images-list": '[[model]]\nname = "mobilevit_xxs.cifar10"\ndata = "bundled:cifar10/eval"\nmax_images = [1]\n',
    "targets-string": '[[model]]\nname = "mobilevit_xxs.cifar10"\ndata = "bundled:cifar10/eval"\ntargets = "onnx"\n',
    "target-unknown": '[[model]]\nname = "mobilevit_xxs.cifar10"\ntargets = ["tensorrt"]\n',
    "precision-unknown": '[[model]]\nname = "mobilevit_xxs.cifar10"\nprecisions = ["int4"]\n',
}

DEVICES = ["ssh://;rm -rf /", "http://pi@host", "ssh://", "ssh://pi@", "ssh://pi@host:99999", "ssh://p i@host",
           "ssh://-oProxyCommand=x@host", "ssh://pi@-host", "ssh://pi:pw@host", "ssh://pi@host/path", "$(reboot)"]


# export and check options whose values are refused before any work
OPTIONS = {
    "opset-low": ["-t", "onnx", "--opset", "12"], "opset-high": ["-t", "onnx", "--opset", "99"],
    "opset-not-onnx": ["-t", "tflite", "--opset", "17"], "opset-too-low-for-model": ["-t", "onnx", "--opset", "13"],
    "min-runtime-garbage": ["-t", "onnx", "--min-runtime", "latest"],
    "min-runtime-wrong-runtime": ["-t", "onnx", "--min-runtime", "iOS16"],
    "min-runtime-too-old": ["-t", "onnx", "--min-runtime", "1.0"],
    "min-runtime-below-opset": ["-t", "onnx", "--min-runtime", "1.10", "--opset", "18"],
    "check-no-verify-missing-artifact": None,
    "optimize-typo": ["-t", "onnx", "--int8", "--optimize", "latncy"],
    "optimize-without-int8": ["-t", "onnx", "--optimize", "latency"],
    "optimize-with-int8-weights": ["-t", "onnx", "--int8", "weights", "--optimize", "latency"],
    "device-without-optimize": ["-t", "onnx", "--int8", "--device", "ssh://pi@board"],
    "device-not-ssh-export": ["-t", "onnx", "--int8", "--optimize", "latency", "--device", "pi@board"],
    "device-without-int8": ["-t", "onnx", "--device", "ssh://pi@board"],
    "device-identity-missing": ["-t", "onnx", "--int8", "--optimize", "latency", "--device", "ssh://pi@board",
                                "--identity", "/nonexistent/key"],
}
if sys.platform != "darwin":  # Core ML executes on macOS only: a latency search cannot time it elsewhere
    OPTIONS["optimize-latency-off-its-platform"] = ["-t", "coreml", "--int8", "--optimize", "latency"]


SPEECH = "conformer_kws.spoken_commands"


def _wav(samples, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.asarray(samples, dtype=np.float32), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _rate_zero() -> bytes:
    data = bytearray(_wav(np.zeros(1600)))
    data[24:28] = (0).to_bytes(4, "little")  # the fmt chunk's sample rate
    return bytes(data)


#: sound files a speech model refuses, by name (suffix included)
BAD_CLIPS = {
    "corrupt.wav": lambda: b"RIFF\x10\x00\x00\x00WAVEnot really",
    "empty.wav": lambda: b"",
    "rate-zero.wav": _rate_zero,
    "nan.wav": lambda: _wav(np.full(800, np.nan), subtype="FLOAT"),
    "text.flac": lambda: b"hello, this is not FLAC",
    "no-samples.wav": lambda: _wav(np.zeros(0)),
}

#: speech options refused before any work: (model, extra arguments)
SPEECH_OPTIONS = {
    "features-on-an-image-model": (FIXTURE, ["--features", "outside"]),
    "features-typo": (SPEECH, ["--features", "insde"]),
    "normalize-in-graph-on-audio": (SPEECH, ["--normalize-in-graph"]),
    "input-size-on-audio": (SPEECH, ["--input-size", "1", "8000"]),
    "calib-npz-of-images-for-audio": (SPEECH, ["--int8", "--calib", "IMAGES_NPZ"]),
}


def _cases() -> list[tuple[str, str, object]]:
    cases = [("image", name, name) for name in BAD_IMAGES]
    cases += [("calib-images", name, name) for name in BAD_IMAGES]
    cases += [("tensors", c, c) for c in ("nan", "inf", "int", "complex", "shape", "ndim", "empty", "object",
                                          "random", "truncated", "npz-two", "npz-none", "npz-nan", "npz-object")]
    cases += [("weights", c, c) for c in ("random-pth", "random-safetensors", "truncated-safetensors", "empty-pth",
                                          "wrong-model", "pickled-code", "folder", "unknown-suffix")]
    cases += [("manifest-check", name, name) for name in MANIFESTS] + [("manifest-check", "not-json", None)]
    cases += [("manifest-profile", name, name) for name in list(MANIFESTS)[1:]]
    cases += [("config", name, name) for name in CONFIGS]
    cases += [("path", c, c) for c in ("out-too-long", "out-under-a-file", "out-is-a-file", "images-missing",
                                       "artifact-missing", "artifact-non-utf8", "data-a-file", "junit-no-folder",
                                       "report-too-long")]
    cases += [("device", d, d) for d in DEVICES]
    cases += [("option", name, name) for name in OPTIONS]
    cases += [("compare", name, name) for name in COMPARE]
    cases += [("clip", name, name) for name in BAD_CLIPS] + [("calib-clips", name, name) for name in BAD_CLIPS]
    cases += [("speech-option", name, name) for name in SPEECH_OPTIONS]
    return cases


#: edgehybrid compare, refused before any work: (extra arguments, models)
COMPARE = {
    "budget-zero": ["--budget-ms", "0"], "budget-negative-mb": ["--budget-mb", "-1"], "budget-nan": ["--budget-ms", "nan"],
    "budget-inf": ["--budget-ms", "inf"], "unknown-model": ["mobilevit_xxx.cifar10"], "given-twice": [FIXTURE],
    "classes-differ": ["mobilevit_s", "--data", "bundled:cifar10/eval"], "data-missing": ["--data", "/nonexistent"],
    "report-suffix": ["--report", "compare.txt"], "target-typo": ["--target", "tflit"],
    "device-not-ssh": ["--device", "http://pi@host"], "precision-typo": ["--precision", "fp32,int4"],
    "out-is-a-file": ["--out", "AFILE"],
}


def _sampled():
    rng = random.Random(SEED)
    by_class: dict[str, list] = {}
    for case in _cases():
        by_class.setdefault(case[0], []).append(case)
    params = []
    for cls, cases in by_class.items():
        chosen = set(map(id, rng.sample(cases, min(SAMPLE_PER_CLASS, len(cases)))))
        for case in cases:
            marks = () if id(case) in chosen else (pytest.mark.slow,)
            params.append(pytest.param(*case, id=f"{cls}-{case[1]}"[:60], marks=marks))
    return params


# ------------------------------------------------------------------------------------------- the promise

def _tree(root: Path) -> dict[str, tuple[bool, int]]:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0)
            for p in sorted(root.rglob("*"))}


def _args(cls: str, case, tmp: Path) -> list:
    out = tmp / "out"
    if cls in ("image", "calib-images"):
        folder = tmp / "imgs"
        folder.mkdir()
        (folder / case).write_bytes(BAD_IMAGES[case]())
        if cls == "image":
            return ["export", FIXTURE, "-t", "onnx", "--images", folder, "-o", out]
        return ["export", FIXTURE, "-t", "onnx", "--int8", "--calib", folder, "--calib-size", "1", "-o", out]
    if cls in ("clip", "calib-clips"):
        folder = tmp / "clips"
        folder.mkdir()
        (folder / case).write_bytes(BAD_CLIPS[case]())
        if cls == "clip":
            return ["export", SPEECH, "-t", "onnx", "--images", folder, "-o", out]
        return ["export", SPEECH, "-t", "onnx", "--int8", "--calib", folder, "--calib-size", "1", "-o", out]
    if cls == "speech-option":
        model, extra = SPEECH_OPTIONS[case]
        np.savez(tmp / "images.npz", input=np.zeros((4, 3, 64, 64), dtype=np.float32))
        extra = [tmp / "images.npz" if a == "IMAGES_NPZ" else a for a in extra]
        return ["export", model, "-t", "onnx", *extra, "-o", out]
    if cls == "tensors":
        return ["export", FIXTURE, "-t", "onnx", "--int8", "--calib", _tensor_file(tmp, case), "-o", out]
    if cls == "weights":
        return ["export", "mobilevit_xxs", "-t", "onnx", "--weights", _weights_file(tmp, case), "--num-classes",
                "10", "--input-size", "64", "64", "-o", out]
    if cls.startswith("manifest"):
        artifact = tmp / "model.onnx"
        artifact.write_bytes(b"\x08\x07" + bytes(64))
        text = "{not json" if case is None else json.dumps(valid_manifest(**MANIFESTS[case]))
        (tmp / "model.onnx.manifest.json").write_text(text)
        if cls == "manifest-check":
            return ["check", artifact, "--data", "bundled:cifar10/eval"]
        return ["profile", artifact, "--runs", "1", "--warmup", "0"]
    if cls == "config":
        (tmp / "ci.toml").write_text(CONFIGS[case])
        return ["ci", "--config", tmp / "ci.toml", "--out", out]
    if cls == "option":
        if OPTIONS[case] is None:
            return ["check", tmp / "nope.onnx", "--data", "bundled:cifar10/eval", "--no-verify"]
        return ["export", FIXTURE, *OPTIONS[case], "-o", out]
    if cls == "compare":
        (tmp / "afile").write_text("a file")
        extra = [tmp / "afile" if a == "AFILE" else a for a in COMPARE[case]]
        return ["compare", FIXTURE, "-t", "onnx", "-o", out, *extra]
    if cls == "device":
        artifact = tmp / "model.onnx"
        artifact.write_bytes(b"\0" * 16)
        return ["profile", artifact, "--device", case, "--runs", "1"]
    return _path_args(case, tmp, out)


def _path_args(case: str, tmp: Path, out: Path) -> list:
    long_name = "x" * 300
    (tmp / "afile").write_text("a file")
    if case == "out-too-long":
        return ["export", FIXTURE, "-t", "onnx", "-o", tmp / long_name]
    if case == "out-under-a-file":
        return ["export", FIXTURE, "-t", "onnx", "-o", tmp / "afile" / "sub"]
    if case == "out-is-a-file":
        return ["export", FIXTURE, "-t", "onnx", "-o", tmp / "afile"]
    if case == "images-missing":
        return ["export", FIXTURE, "-t", "onnx", "--images", tmp / "nope", "-o", out]
    if case == "artifact-missing":
        return ["check", tmp / "nope.onnx", "--data", "bundled:cifar10/eval"]
    if case == "artifact-non-utf8":
        return ["check", os.fsdecode(bytes(tmp / "caf") + b"\xe9.onnx"), "--data", "bundled:cifar10/eval"]
    if case == "data-a-file":
        (tmp / "m.onnx").write_bytes(b"\0")
        (tmp / "m.onnx.manifest.json").write_text(json.dumps(valid_manifest()))
        return ["check", tmp / "m.onnx", "--data", tmp / "afile", "--no-verify"]
    if case == "junit-no-folder":
        return ["check", tmp / "nope.onnx", "--data", "bundled:cifar10/eval", "--junit", tmp / "no" / "r.xml"]
    if case == "report-too-long":
        return ["profile", tmp / "afile", "--report", tmp / (long_name + ".md")]
    raise AssertionError(case)


@pytest.mark.parametrize("cls, name, case", _sampled())
def test_every_bad_input_keeps_the_promise(cli, tmp_path, cls, name, case):
    args = _args(cls, case, tmp_path)
    before = _tree(tmp_path)
    code, out, err = cli(*args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code in (1, 2), f"exit {code}: {err[-600:]}"
    assert len(errors) == 1, err[-600:]
    assert "Traceback" not in err and "internal error" not in err, err[-600:]
    assert _tree(tmp_path) == before, "the command changed the folder"
    assert not Path("/tmp/edgehybrid-fuzz-pwned").exists(), "a pickled checkpoint ran code"


# ------------------------------------------------------------------------------- images that must decode

PRE = Preprocessing(resize=64, crop=(64, 64), interpolation="bilinear")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16"])
@pytest.mark.parametrize("size", [(1, 1), (7, 300)])
def test_odd_but_valid_images_decode_to_the_models_input(tmp_path, mode, size):
    from PIL import Image

    img = Image.new(mode, size)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    pixels = load_pixels(path, PRE)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    pixels = load_pixels(tmp_path / "g16.png", PRE)
    assert pixels[0].min() == 0 and pixels[0].max() == 255
    assert 120 < float(np.median(pixels[0])) < 136  # mid-grey stays mid-grey (clipping made it 255)
    assert (pixels[0] == pixels[1]).all() and (pixels[1] == pixels[2]).all()
