"""Small building blocks shared by several zoo families.

Only blocks whose state-dict layout is the same in every family that uses them live here; a block whose
published keys differ between families (MobileNet's ``conv_pw``/``bn1`` vs byobnet's ``conv``/``bn``)
stays in its family file.
"""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10% of it.

    The rule every MobileNet-derived network uses for its width multipliers.
    """
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


class ConvNormAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation, keys ``conv.*`` and ``bn.*`` (timm's layout)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.SiLU,
        padding: int | None = None,
    ):
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Attention(nn.Module):
    """Multi-head self-attention over [B, N, C] tokens as plain matmul + softmax (timm's ``qkv``/``proj`` keys).

    No ``F.scaled_dot_product_attention``: every exporter sees the same plain ops. Tokens may also come flat,
    [B * N, C] with ``seq=N``: the linears then run on 2-D input, which every runtime takes without reshapes of
    its own (ONNX Runtime wraps a 3-D linear in two; in an int8 graph they cannot merge with the model's).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, seq: int | None = None) -> torch.Tensor:
        shape = x.shape
        n, c = (shape[1], shape[2]) if seq is None else (seq, shape[1])
        b = shape[0] if seq is None else shape[0] // seq
        # qkv features are ordered (q|k|v, head, head_dim); keep heads and q/k/v on one axis to stay rank 4
        qkv = self.qkv(x).reshape(b, n, 3 * self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.num_heads, dim=1)  # each [B, heads, N, head_dim]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(shape))


class Mlp(nn.Module):
    """Linear -> activation -> Linear on tokens (timm's ``Mlp`` keys ``fc1``, ``fc2``); exact GELU by default."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))



class ClassifierHead(nn.Module):
    """Global average pool -> linear (timm's ``head.fc``)."""

    def __init__(self, in_chs: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))
