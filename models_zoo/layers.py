"""Small building blocks shared by several zoo families.

Only blocks whose state-dict layout is the same in every family that uses them live here; a block whose
published keys differ between families (MobileNet's ``conv_pw``/``bn1`` vs byobnet's ``conv``/``bn``)
stays in its family file.
"""

from __future__ import annotations

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
