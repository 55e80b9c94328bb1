"""The log-mel front end of the speech models, written in ops every target converts.

An STFT is a strided convolution whose kernels are the windowed DFT basis (cosine and negative sine rows),
the power spectrum is ``re * re + im * im``, the mel filterbank is one matmul and the last step a log. No
``torch.stft`` (complex tensors, which neither TFLite nor Core ML take), no FFT: the same numbers as the
textbook definition, which ``tests/test_audio.py`` checks against ``numpy.fft.rfft`` on framed samples.

The same basis and filterbank, as numpy arrays, give :func:`log_mel` for models that take features computed
outside the graph (``--features outside``) and for the app that has to reproduce them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models_zoo.registry import AudioFrontEnd


def hz_to_mel(f: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    if scale != "htk":
        raise ValueError(f"mel scale {scale!r} is not supported (htk only)")
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    if scale != "htk":
        raise ValueError(f"mel scale {scale!r} is not supported (htk only)")
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(fe: AudioFrontEnd) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters, peak 1, centres evenly spaced on the mel scale."""
    freqs = np.linspace(0.0, fe.sample_rate / 2, fe.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fe.f_min, fe.mel_scale), hz_to_mel(fe.f_max, fe.mel_scale),
                                  fe.n_mels + 2), fe.mel_scale)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (centre - lower)
    down = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).T.astype(np.float32)


def window(fe: AudioFrontEnd) -> np.ndarray:
    """The periodic analysis window, zero-padded to ``n_fft`` in the centre (as ``torch.stft`` does)."""
    if fe.window != "hann":
        raise ValueError(f"window {fe.window!r} is not supported (hann only)")
    n = np.arange(fe.win_length)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / fe.win_length)
    left = (fe.n_fft - fe.win_length) // 2
    return np.pad(w, (left, fe.n_fft - fe.win_length - left))


def dft_basis(fe: AudioFrontEnd) -> np.ndarray:
    """(2 * (n_fft // 2 + 1), n_fft) rows: windowed cosines, then windowed negative sines."""
    k = np.arange(fe.n_fft // 2 + 1)[:, None]
    n = np.arange(fe.n_fft)[None, :]
    angle = 2.0 * np.pi * k * n / fe.n_fft
    w = window(fe)[None, :]
    return np.concatenate([np.cos(angle) * w, -np.sin(angle) * w]).astype(np.float32)


def log_mel(samples: np.ndarray, fe: AudioFrontEnd) -> np.ndarray:
    """(N, clip_samples) float samples -> (N, n_mels, frames) float32 log-mel features, in numpy."""
    x = np.asarray(samples, dtype=np.float32)
    starts = np.arange(fe.frames) * fe.hop_length
    frames = x[:, starts[:, None] + np.arange(fe.n_fft)[None, :]]  # (N, frames, n_fft)
    spec = frames @ dft_basis(fe).T  # (N, frames, 2F)
    half = spec.shape[-1] // 2
    power = spec[..., :half] ** 2 + spec[..., half:] ** 2
    mel = power @ mel_filterbank(fe)  # (N, frames, n_mels)
    return np.ascontiguousarray(np.log(mel + fe.log_offset).transpose(0, 2, 1), dtype=np.float32)


class LogMel(nn.Module):
    """(N, clip_samples) samples -> (N, n_mels, frames) log-mel features, inside the graph.

    The basis and filterbank are constants, not parameters or buffers: they follow from the spec's
    parameters, so a checkpoint never carries them and cannot disagree with them (and ExecuTorch's lowering
    refuses non-persistent buffers)."""

    def __init__(self, fe: AudioFrontEnd):
        super().__init__()
        if fe.power != 2.0 or fe.normalization != "none":
            raise ValueError("the in-graph front end computes the power spectrum with no normalization")
        self.hop, self.offset = fe.hop_length, fe.log_offset
        self.bins = fe.n_fft // 2 + 1
        self.basis = torch.from_numpy(dft_basis(fe)).unsqueeze(1)
        self.mel = torch.from_numpy(mel_filterbank(fe)).T.contiguous()

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(samples.unsqueeze(1), self.basis, stride=self.hop)  # (N, 2F, frames)
        re, im = spec[:, : self.bins], spec[:, self.bins:]
        power = re * re + im * im  # (N, F, frames)
        return torch.log(torch.matmul(self.mel, power) + self.offset)  # (N, n_mels, frames)
