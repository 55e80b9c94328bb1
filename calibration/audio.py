"""Turning sound files into what a speech model takes, exactly as its :class:`AudioFrontEnd` says.

Two steps, as for images: :func:`load_clip` reads a file (WAV, FLAC, OGG and the rest of what libsndfile
reads, through ``soundfile``) as mono float samples at the model's rate, fitted to its window; and
:func:`features` turns samples into the model's input: the samples themselves when the front end is inside
the graph, the log-mel features when it is outside. A ``.npy`` / ``.npz`` of samples is read with
``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehybrid.errors import InputError, first_line
from models_zoo.registry import AudioFrontEnd

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
#: longer files are refused rather than decoded into memory: a clip for a 1 s model is not an hour of audio
MAX_SECONDS = 600


def load_clip(path: Path, fe: AudioFrontEnd) -> np.ndarray:
    """One sound file as float32 samples of ``fe.clip_samples`` at ``fe.sample_rate``: channels averaged,
    resampled, then centre-cropped or zero-padded on both sides. Anything the decoder refuses (a corrupt,
    empty or truncated file, a rate of 0, NaN samples) is an :class:`InputError` naming the file; callers
    skip and count it."""
    import soundfile

    try:
        info = soundfile.info(str(path))
        if info.samplerate <= 0:
            raise InputError(f"cannot read audio {str(path)!r}: sample rate {info.samplerate}")
        if info.frames > MAX_SECONDS * info.samplerate:
            raise InputError(f"cannot read audio {str(path)!r}: {info.frames / info.samplerate:.0f} s is longer "
                             f"than {MAX_SECONDS} s; cut it into clips")
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(f"cannot read audio {str(path)!r}: too large to decode in memory") from exc
    except Exception as exc:  # noqa: BLE001 - every decoder refusal (LibsndfileError, RuntimeError, ...) is the file's
        reason = first_line(exc) or type(exc).__name__
        raise InputError(f"cannot read audio {str(path)!r}: not a readable WAV/FLAC/OGG file ({reason})") from exc
    if data.size == 0:
        raise InputError(f"cannot read audio {str(path)!r}: it holds no samples")
    return prepare(data.mean(axis=1), rate, fe, str(path))


def prepare(samples: np.ndarray, rate: int, fe: AudioFrontEnd, what: str = "the clip") -> np.ndarray:
    """Mono samples at ``rate`` -> float32 samples at the model's rate, fitted to its window."""
    x = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"cannot use audio {what}: it holds NaN or Inf samples")
    if rate != fe.sample_rate:
        x = resample(x, rate, fe.sample_rate)
    return fit(x, fe.clip_samples).astype(np.float32)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling of a whole clip (its spectrum truncated or zero-extended, as
    ``scipy.signal.resample`` does): exact for a band-limited signal, no aliasing when going down."""
    n = max(1, int(round(len(x) * target / rate)))
    spec = np.fft.rfft(x)
    out = np.zeros(n // 2 + 1, dtype=complex)
    keep = min(len(spec), len(out))
    out[:keep] = spec[:keep]
    if n % 2 == 0 and keep == len(out):  # the Nyquist bin of an even length is real
        out[-1] = out[-1].real
    return np.fft.irfft(out, n) * (n / len(x))


def fit(x: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop a longer clip; zero-pad a shorter one on both sides (the odd sample at the end)."""
    if len(x) >= length:
        start = (len(x) - length) // 2
        return x[start:start + length]
    left = (length - len(x)) // 2
    return np.pad(x, (left, length - len(x) - left))


def features(samples: np.ndarray, fe: AudioFrontEnd) -> np.ndarray:
    """(N, clip_samples) samples -> the model's input: the samples when the front end is in the graph, else the
    (N, n_mels, frames) log-mel features, computed as the graph would (``models_zoo.frontend.log_mel``)."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if fe.features == "inside":
        return x
    from models_zoo.frontend import log_mel

    return log_mel(x, fe)


def seconds(fe: AudioFrontEnd) -> float:
    return fe.clip_samples / fe.sample_rate


def describe(fe: AudioFrontEnd) -> str:
    """The front end as one line a reader can follow."""
    sec = seconds(fe)
    head = f"{fe.sample_rate / 1000:g} kHz mono, {sec:g} s ({fe.clip_samples} samples; centre crop / zero pad)"
    mel = (f"log-mel: {fe.n_mels} mels ({fe.mel_scale}, {fe.f_min:g}-{fe.f_max:g} Hz), n_fft {fe.n_fft}, "
           f"{fe.window} window {1000 * fe.win_length / fe.sample_rate:g} ms, hop "
           f"{1000 * fe.hop_length / fe.sample_rate:g} ms, log(x + {fe.log_offset:g})")
    where = "inside the graph" if fe.features == "inside" else "computed by the app (the model takes features)"
    return f"{head}; {mel}, {where}"


__all__ = ["AUDIO_SUFFIXES", "describe", "features", "fit", "load_clip", "prepare", "resample", "seconds"]
