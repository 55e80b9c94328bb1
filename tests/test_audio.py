"""Speech: the Conformer's parity with torchaudio, the log-mel front end against numpy's FFT, reading sound files
(and refusing bad ones), and the bundled keyword-spotting fixture through export, INT8 and check."""

from __future__ import annotations

import json
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import save_file

from calibration.audio import fit, load_clip
from calibration.sources import open_source
from edgehybrid.errors import InputError
from models_zoo import get_spec, load_model
from models_zoo.frontend import LogMel, log_mel
from tests.timm_layout import deterministic_state_dict

DATA = Path(__file__).parent / "data"
REFERENCE = np.load(DATA / "conformer_reference.npz")
META = json.loads(REFERENCE["meta"].tobytes())
FE = get_spec("conformer_kws").preprocessing
FIXTURE = "conformer_kws.spoken_commands"
EVAL = "bundled:speech/eval"


# --------------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("name", ["conformer_kws", pytest.param("conformer_s", marks=pytest.mark.slow)])
def test_encoder_matches_torchaudio_on_its_own_key_layout(name):
    # the reference was computed by torchaudio's own Conformer (scripts/make_conformer_reference.py)
    assert META["computed_by"].startswith("torchaudio ")
    encoder = get_spec(name).build().encoder
    ours = {k: list(v.shape) for k, v in encoder.state_dict().items()}
    assert ours == META["keys"][name], "the encoder's keys or shapes differ from torchaudio's"
    encoder.load_state_dict(deterministic_state_dict(encoder.state_dict()), strict=True)
    ref = REFERENCE[f"{name}.output"]
    with torch.no_grad():
        y = encoder.double()(torch.from_numpy(REFERENCE[f"{name}.input"]).double()).float().numpy()
    assert ref.std() > 0.1, "degenerate reference"
    assert np.abs(y - ref).max() < 1e-4, f"max-abs difference to torchaudio {np.abs(y - ref).max():.2e}"


def test_published_layout_checkpoint_loads_strictly_and_a_stray_key_is_named(tmp_path, cli):
    state = deterministic_state_dict(get_spec("conformer_kws").build().state_dict())
    good = tmp_path / "kws.safetensors"
    save_file(state, str(good))
    loaded = load_model("conformer_kws", weights=str(good))
    assert loaded.weights.kind == "file"
    torch.testing.assert_close(loaded.model.encoder.conformer_layers[0].self_attn.in_proj_weight,
                               state["encoder.conformer_layers.0.self_attn.in_proj_weight"])
    bad = dict(state)
    bad["encoder.conformer_layers.0.self_attn.in_proj_w"] = bad.pop("encoder.conformer_layers.0.self_attn.in_proj_weight")
    save_file(bad, str(tmp_path / "bad.safetensors"))
    code, _out, err = cli("info", "conformer_kws", "--weights", tmp_path / "bad.safetensors")
    assert code == 2 and "in_proj_w" in err and "Traceback" not in err


def test_front_end_in_the_graph_matches_a_numpy_fft_reference():
    # an independent reference: numpy's rfft of Hann-windowed frames, and HTK mel triangles written out here
    rng = np.random.default_rng(0)
    t = np.arange(FE.clip_samples) / FE.sample_rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(FE.clip_samples)).astype(np.float32)
    frames = np.stack([x[i * FE.hop_length: i * FE.hop_length + FE.n_fft] for i in range(FE.frames)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FE.n_fft) / FE.n_fft)
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2  # (frames, bins)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(FE.f_min), mel(FE.f_max), FE.n_mels + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(FE.n_fft, 1 / FE.sample_rate)
    bank = np.stack([np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
                     for lo, c, hi in zip(edges[:-2], edges[1:-1], edges[2:])])  # (mels, bins)
    expected = np.log(bank @ power.T + FE.log_offset)  # (mels, frames)
    with torch.no_grad():
        graph = LogMel(FE)(torch.from_numpy(x)[None]).numpy()[0]
    outside = log_mel(x[None], FE)[0]
    loud = expected > np.log(1e-2)  # where there is energy, the log is stable to compare
    assert loud.mean() > 0.5
    assert np.abs(graph - expected)[loud].max() < 1e-3, np.abs(graph - expected)[loud].max()
    assert np.abs(outside - expected)[loud].max() < 1e-3
    assert np.abs(graph - outside).max() < 1e-2  # the two implementations the product ships agree everywhere


# --------------------------------------------------------------------------------------------- sound files


def _write(path: Path, samples: np.ndarray, rate: int, fmt: str = "WAV") -> Path:
    soundfile.write(str(path), samples, rate, format=fmt, subtype="PCM_16")
    return path


def test_wav_and_flac_at_any_rate_and_channel_count_become_the_models_window(tmp_path):
    t = np.arange(22050) / 44100  # 0.5 s at 44.1 kHz
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone * 0.5], axis=1)
    clip = load_clip(_write(tmp_path / "a.wav", stereo, 44100), FE)
    assert clip.shape == (FE.clip_samples,) and clip.dtype == np.float32
    voiced = np.flatnonzero(np.abs(clip) > 1e-3)
    assert 3900 < voiced[0] < 4100 and 11900 < voiced[-1] < 12100  # 8000 samples, centred in 16000
    assert abs(np.abs(clip).max() - 0.375) < 0.01  # channels averaged: (0.5 + 0.25) / 2
    long = load_clip(_write(tmp_path / "b.flac", np.sin(np.arange(8000 * 3) * 0.1) * 0.2, 8000, "FLAC"), FE)
    assert long.shape == (FE.clip_samples,) and np.abs(long).min() < 0.2 and np.count_nonzero(long) > 15000
    assert fit(np.arange(1.0, 6.0), 8).tolist() == [0, 1, 2, 3, 4, 5, 0, 0]  # padded both sides, odd one at the end
    assert fit(np.arange(10.0), 4).tolist() == [3, 4, 5, 6]  # the centre kept


def _rate_zero_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(1600, dtype=np.int16).tobytes())
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", ["corrupt", "empty", "rate0", "nan"])
def test_bad_sound_files_are_one_line_errors(tmp_path, case):
    path = tmp_path / "x.wav"
    if case == "corrupt":
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "rate0":
        _rate_zero_wav(path)
    else:
        path = tmp_path / "x.flac"
        soundfile.write(str(path), np.full(100, np.nan, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")
        path = path.rename(tmp_path / "x.wav")
    with pytest.raises(InputError) as err:
        load_clip(path, FE)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_calibration_on_clips_skips_and_counts_bad_files_and_refuses_nan_arrays(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(5):
        _write(folder / f"c{i}.flac", np.sin(np.arange(8000) * (0.05 + 0.01 * i)) * 0.3, 16000, "FLAC")
    (folder / "broken.wav").write_bytes(b"RIFF....WAVE")
    src = open_source(folder, FE, (FE.clip_samples,))
    batches = list(src.batches(4))
    assert [b.shape for b in batches] == [(4, FE.clip_samples), (1, FE.clip_samples)] and src.skipped == ["broken.wav"]
    arr = np.zeros((3, FE.clip_samples), dtype=np.float32)
    arr[1, 10] = np.nan
    np.savez(tmp_path / "c.npz", input=arr)
    with pytest.raises(InputError, match="NaN or Inf"):
        open_source(tmp_path / "c.npz", FE, (FE.clip_samples,))
    np.savez(tmp_path / "wrong.npz", input=np.zeros((3, 3, 8, 8), dtype=np.float32))
    with pytest.raises(InputError, match=r"\(N, 16000\)"):
        open_source(tmp_path / "wrong.npz", FE, (FE.clip_samples,))


# --------------------------------------------------------------------------------------------- the fixture


def _export(cli, out: Path, target: str, *args: str) -> dict:
    code, text, err = cli("export", FIXTURE, "--target", target, "-o", out, *args, "--json")
    assert code == 0, err[-800:]
    return json.loads(text)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """INT8 of the fixture on the two runtimes that execute here and the FP32 ONNX file, exported once for the
    tests below (``check`` measures each against the FP32 PyTorch model)."""
    from edgehybrid.cli import main

    out = tmp_path_factory.mktemp("kws")
    made = {}
    for target, extra in (("onnx", []), ("onnx", ["--int8"]), ("tflite", ["--int8"])):
        code = main(["export", FIXTURE, "--target", target, "-o", str(out), *extra, "--json"])
        assert code == 0
        made[(target, "int8" if extra else "fp32")] = out / f"{FIXTURE}{'_int8' if extra else ''}.{target}"
    return made


@pytest.mark.parametrize("target", ["coreml", "executorch"])
def test_fixture_exports_to_the_other_targets_validated_on_real_clips(cli, tmp_path, target):
    m = _export(cli, tmp_path, target)
    v = m["validation"]
    metrics = next(iter(v["metrics"].values()))
    assert v["passed"] and metrics["cosine"] > 0.9999 and metrics["samples"] == 8
    assert m["inputs"][0]["shape"] == [1, FE.clip_samples] and m["preprocessing"]["kind"] == "audio"
    if target == "coreml":  # honest about Linux: the MIL program was interpreted, not run by Core ML
        assert v["executed"] is False and "Linux" in v["reason"]
    else:
        assert v["executed"] is True


def test_int8_keeps_the_front_end_float_and_stays_within_half_a_point_of_fp32(artifacts, cli):
    for target in ("onnx", "tflite"):
        path = artifacts[target, "int8"]
        code, text, err = cli("check", path, "--data", EVAL, "--json")
        assert code == 0, err[-600:]
        doc = json.loads(text)
        assert doc["data"] == {**doc["data"], "labelled": True, "images": 200, "kind": "audio"}
        m = doc["metrics"]  # the reference is the FP32 PyTorch model, run on the same 200 clips
        assert m["reference_top1_pct"] >= 95.0
        assert m["artifact_top1_pct"] >= m["reference_top1_pct"] - 0.5, m
        manifest = json.loads(Path(f"{path}.manifest.json").read_text())
        front = [x for x in manifest["quantization"]["layers"] if x["layer"].startswith("frontend")]
        assert front and all(x["precision"] == "float" and "front end" in x["reason"] for x in front)


def test_check_on_labelled_clips_exits_1_when_a_threshold_fails_and_2_on_bad_data(artifacts, cli, tmp_path):
    int8 = artifacts["onnx", "int8"]
    code, _out, err = cli("check", int8, "--data", EVAL, "--min-cosine", "0.999999")
    assert code == 1 and "200 clips" in err and "Traceback" not in err
    wrong = tmp_path / "wrong" / "maybe"
    wrong.mkdir(parents=True)
    _write(wrong / "a.wav", np.zeros(1600), 16000)
    code, _out, err = cli("check", int8, "--data", wrong.parent)
    assert code == 2 and "'maybe' in" in err and "not one of the model's classes" in err
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8")
    code, _out, err = cli("check", int8, "--data", photos)
    assert code == 2 and "holds no WAV/FLAC" in err


def test_features_outside_exports_the_encoder_and_the_manifest_says_how_to_make_its_input(cli, tmp_path):
    m = _export(cli, tmp_path, "onnx", "--features", "outside")
    pre = m["preprocessing"]
    assert m["inputs"][0]["shape"] == [1, FE.n_mels, FE.frames] and pre["features"] == "outside"
    assert {pre[k] for k in ("n_fft", "hop_length", "n_mels", "sample_rate")} == {400, 160, 40, 16000}
    code, text, err = cli("check", m["artifact"], "--data", EVAL, "--json")  # features computed the manifest's way
    assert code == 0, err[-600:]
    assert json.loads(text)["metrics"]["artifact_top1_pct"] >= 95.0
    code, _out, err = cli("export", "mobilevit_xxs", "--weights", "random", "--target", "onnx", "--features",
                          "outside", "-o", tmp_path / "no")
    assert code == 2 and "speech models" in err and not (tmp_path / "no").exists()


def test_profile_splits_time_into_front_end_attention_and_convolution(artifacts, cli):
    code, text, err = cli("profile", artifacts["onnx", "fp32"], "--per-op", "--runs", "5", "--json")
    assert code == 0, err[-600:]
    shares = json.loads(text)["profiles"][0]["per_op"]["by_category"]
    assert set(shares) == {"front_end", "attention", "convolution", "normalization", "other"}
    assert shares["front_end"] > 0.05 and shares["attention"] > 0.05 and abs(sum(shares.values()) - 1) < 1e-6


def test_the_python_api_takes_features_and_refuses_what_the_cli_refuses(tmp_path):
    import edgehybrid

    done = edgehybrid.export(FIXTURE, target="onnx", features="outside", out=tmp_path)
    assert done.manifest["inputs"][0]["shape"] == [1, FE.n_mels, FE.frames] and done.path.is_file()
    with pytest.raises(InputError, match="speech models"):
        edgehybrid.export("mobilevit_xxs.cifar10", target="onnx", features="outside", out=tmp_path / "no")
    assert not (tmp_path / "no").exists()
