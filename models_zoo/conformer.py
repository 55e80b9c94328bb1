"""Conformer: self-attention and a depthwise-convolution module in every layer, for speech.

"Conformer: Convolution-augmented Transformer for Speech Recognition", A. Gulati, J. Qin, C.-C. Chiu, N. Parmar,
Y. Zhang, J. Yu, W. Han, S. Wang, Z. Zhang, Y. Wu, R. Pang, Interspeech 2020, arXiv:2005.08100. The encoder
layers follow torchaudio's ``torchaudio.models.Conformer`` (``torchaudio/models/conformer.py``): its key layout
under ``encoder.``, so a torchaudio encoder's state dict loads with ``strict=True``, and torchaudio computed the
parity reference (``scripts/make_conformer_reference.py``).

The keyword-spotting model around the encoder (``ConformerKWS``):

    samples (N, 16000) -> log-mel front end (models_zoo.frontend, in the graph) -> (N, 40, 98)
      -> convolutional subsampling: two 3x3 stride-2 convolutions with ReLU, then a linear to the model width
         (time 98 -> 23 frames of 40 ms) -> N Conformer layers -> mean over time -> linear classifier

Where the attention sits and what it costs: every layer has one multi-head self-attention over all 23 frames
(cost quadratic in frames, small at 1 s) beside a depthwise convolution over time (kernel 15: 600 ms of
context, linear in frames); the front end's DFT convolution is the largest single op.

Written for export, with the same numbers as torchaudio:
- fixed-length input and no padding mask: torchaudio builds a key-padding mask from ``lengths``, which is data
  dependent and fails ``torch.export``; a fixed-length clip has no padding, so the mask is all false and
  leaving it out changes nothing. The spec says so: the model takes exactly one second.
- batch first: torchaudio runs (T, B, D) through ``nn.MultiheadAttention``; here the attention is written as
  its parameters' own linear, matmuls and softmax on (B, T, D), under the same parameter names
  (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), so converters and the INT8 plan see plain ops.
- GLU as ``a * sigmoid(b)``: the plan has int8 rules for both, none for ``glu``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models_zoo.frontend import LogMel
from models_zoo.registry import AudioFrontEnd, Checkpoint, ModelSpec, Published, register

SPEECH_COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
FRONT_END = AudioFrontEnd()


class FeedForward(nn.Module):
    """LayerNorm, linear, SiLU, linear (torchaudio's ``_FeedForwardModule``: keys ``sequential.{0,1,4}``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.sequential = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequential(x)


class GLU(nn.Module):
    """Gated linear unit over channels (dim 1): first half times the sigmoid of the second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


class ConvolutionModule(nn.Module):
    """LayerNorm, pointwise conv to 2C, GLU, depthwise conv, BatchNorm, SiLU, pointwise conv."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("the depthwise kernel must be odd ('same' padding)")
        self.layer_norm = nn.LayerNorm(dim)
        self.sequential = nn.Sequential(
            nn.Conv1d(dim, 2 * dim, 1), GLU(),
            nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim), nn.BatchNorm1d(dim), nn.SiLU(),
            nn.Conv1d(dim, dim, 1), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        return self.sequential(self.layer_norm(x).transpose(1, 2)).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters, batch first, no mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(y)


class ConformerLayer(nn.Module):
    """Half-step feed-forward, self-attention, convolution module, half-step feed-forward, LayerNorm."""

    def __init__(self, dim: int, ffn: int, heads: int, kernel: int):
        super().__init__()
        self.ffn1 = FeedForward(dim, ffn)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.self_attn_dropout = nn.Dropout(0.0)
        self.conv_module = ConvolutionModule(dim, kernel)
        self.ffn2 = FeedForward(dim, ffn)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.self_attn_dropout(self.self_attn(self.self_attn_layer_norm(x)))
        x = x + self.conv_module(x)
        x = x + 0.5 * self.ffn2(x)
        return self.final_layer_norm(x)


class ConformerEncoder(nn.Module):
    """torchaudio's ``Conformer`` on fixed-length (B, T, D) input: ``conformer_layers.{i}``."""

    def __init__(self, dim: int, heads: int, ffn: int, layers: int, kernel: int):
        super().__init__()
        self.conformer_layers = nn.ModuleList(ConformerLayer(dim, ffn, heads, kernel) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.conformer_layers:
            x = layer(x)
        return x


class Subsampling(nn.Module):
    """(N, mels, frames) -> (N, frames', dim): two 3x3 stride-2 convolutions with ReLU, then a linear."""

    def __init__(self, mels: int, channels: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU())
        freq = ((mels - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.conv(feats.transpose(1, 2).unsqueeze(1))  # (N, C, frames', mels')
        n, c, t, f = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(n, t, c * f))


class ConformerKWS(nn.Module):
    """Keyword spotting: front end (optional), subsampling, Conformer encoder, mean pooling, classifier."""

    def __init__(self, *, num_classes: int, dim: int, heads: int, ffn: int, layers: int, kernel: int,
                 channels: int, front_end: AudioFrontEnd = FRONT_END):
        super().__init__()
        self.frontend = LogMel(front_end) if front_end.features == "inside" else nn.Identity()
        self.subsample = Subsampling(front_end.n_mels, channels, dim)
        self.encoder = ConformerEncoder(dim, heads, ffn, layers, kernel)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.subsample(self.frontend(x)))
        return self.head(h.mean(dim=1))


def _builder(**dims):
    def build(*, num_classes: int, input_size: tuple[int, ...], front_end: AudioFrontEnd = FRONT_END) -> nn.Module:
        if tuple(input_size) != (front_end.clip_samples,):
            raise ValueError(f"the Conformer takes {front_end.clip_samples} samples, got input size {input_size}")
        return ConformerKWS(num_classes=num_classes, front_end=front_end, **dims)
    return build


conformer_kws = _builder(dim=64, heads=4, ffn=256, layers=4, kernel=15, channels=64)
# the paper's Conformer (S): 16 layers of width 144, 4 heads, FFN 576; torchaudio needs an odd kernel (31 for 32)
conformer_s = _builder(dim=144, heads=4, ffn=576, layers=16, kernel=31, channels=144)

_FLOAT = (("frontend", "log-mel front end: the log and the power spectrum span decades that one int8 scale "
                       "cannot hold; kept in float by the model's spec"),)

register(ModelSpec(
    name="conformer_kws",
    family="conformer",
    kind="hybrid",
    builder=conformer_kws,
    input_size=(FRONT_END.clip_samples,),
    preprocessing=FRONT_END,
    published=Published(
        params_m=0.46, gmacs=0.035, top1=None, latency_ms=None, latency_device=None,
        source="not a published model: edgehybrid's keyword-spotting size of the Conformer (width 64, 4 layers, "
               "4 heads, FFN 256, kernel 15); params and MACs are this implementation's own count, top-1 is the "
               "bundled fixture's (see conformer_kws.spoken_commands), no latency figure is published",
    ),
    num_classes=len(SPEECH_COMMANDS),
    input_divisor=None,
    float_modules=_FLOAT,
    checkpoints=(Checkpoint(tag="spoken_commands", bundled_file="conformer_kws.spoken_commands.safetensors",
                            num_classes=len(SPEECH_COMMANDS), classes=SPEECH_COMMANDS, calibration="speech/calib"),),
    default_tag="spoken_commands",
))

register(ModelSpec(
    name="conformer_s",
    family="conformer",
    kind="hybrid",
    builder=conformer_s,
    input_size=(FRONT_END.clip_samples,),
    preprocessing=FRONT_END,
    published=Published(
        params_m=8.15, gmacs=0.24, top1=None, latency_ms=None, latency_device=None,
        source="dims: Gulati et al. 2020, Table 1 (Conformer S: encoder dim 144, 16 layers, 4 heads, kernel 32, 10.3M "
               "params with its LSTM decoder); params (encoder, subsampling and a 10-word head) and MACs (1 s) are "
               "this implementation's own count; the paper reports LibriSpeech WER, so no top-1 or latency exists",
    ),
    num_classes=len(SPEECH_COMMANDS),
    input_divisor=None,
    float_modules=_FLOAT,
))
