"""EfficientViT (MIT): convolution stages, then stages that alternate ReLU linear attention with an MBConv.

"EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense Prediction", H. Cai, J. Li, M. Hu,
C. Gan, S. Han, ICCV 2023, arXiv:2205.14756. Official code: github.com/mit-han-lab/efficientvit. The key
layout and configurations follow timm's port (``timm/models/efficientvit_mit.py``), so timm checkpoints load
with ``strict=True``; timm is the parity reference.

Where the attention sits and what it costs: the first two stages are pure convolution (MBConv); the last two
put a multi-scale linear attention (LiteMLA) before every MBConv. LiteMLA replaces softmax by a ReLU kernel,
``out = ReLU(q) (ReLU(k)^T v) / (ReLU(q) sum ReLU(k))``, so its cost grows linearly with the number of tokens:
``k^T v`` is a [dim, dim] matrix whatever the resolution. Multi-scale: q, k and v are also aggregated by a 5x5
depthwise + grouped 1x1 convolution, and both scales attend.

Written for export: the reference pads v with a column of ones and slices the result apart; here the
normalizer ``q (sum k)^T`` is one more matmul, which is the same numbers without pad and slice. Tensors stay
at rank 4.
"""

from __future__ import annotations

import torch
from torch import nn

from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, register


class ConvNormAct(nn.Module):
    """Conv2d -> optional BatchNorm2d -> optional activation; timm EfficientViT's keys ``conv`` and ``norm``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: bool = True, act: type[nn.Module] | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_chs) if norm else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DSConv(nn.Module):
    """Depthwise 3x3 (with activation) then pointwise 1x1 (linear): the stem's residual block."""

    def __init__(self, chs: int, act: type[nn.Module]):
        super().__init__()
        self.depth_conv = ConvNormAct(chs, chs, 3, groups=chs, act=act)
        self.point_conv = ConvNormAct(chs, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise (``stride``), 1x1 project. ``fewer_norm`` (the attention
    stages): the first two convolutions carry a bias and no BatchNorm."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: float, act: type[nn.Module],
                 fewer_norm: bool = False):
        super().__init__()
        mid = round(in_chs * expand_ratio)
        self.inverted_conv = ConvNormAct(in_chs, mid, 1, bias=fewer_norm, norm=not fewer_norm, act=act)
        self.depth_conv = ConvNormAct(mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm, act=act)
        self.point_conv = ConvNormAct(mid, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class Residual(nn.Module):
    """``main(x) + x`` (or ``main(x)`` alone for a downsampling block); timm's ``ResidualBlock`` keys."""

    def __init__(self, main: nn.Module, shortcut: bool = True):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.shortcut else self.main(x)


class LinearAttention(nn.Module):
    """LiteMLA: multi-scale ReLU linear attention over the feature map's H*W tokens."""

    def __init__(self, chs: int, dim: int, scales: tuple[int, ...] = (5,), eps: float = 1e-5):
        super().__init__()
        heads = chs // dim
        total = heads * dim
        self.dim, self.eps = dim, eps
        self.qkv = ConvNormAct(chs, 3 * total, 1, norm=False)
        self.aggreg = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        ])
        self.kernel_func = nn.ReLU()
        self.proj = ConvNormAct(total * (1 + len(scales)), chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        # [B, groups * 3 * dim, H, W] -> [B, groups, H*W, 3 * dim]: each group's q | k | v on the last axis
        qkv = qkv.reshape(b, -1, 3 * self.dim, h * w).transpose(-1, -2)
        q, k, v = qkv.split(self.dim, dim=-1)
        q, k = self.kernel_func(q), self.kernel_func(k)
        kv = k.transpose(-1, -2) @ v  # [B, groups, dim, dim]: the cost that does not grow with H*W
        num = q @ kv  # [B, groups, N, dim]
        den = q @ k.sum(dim=-2, keepdim=True).transpose(-1, -2)  # [B, groups, N, 1] = q . sum_n k_n
        out = num / (den + self.eps)
        return self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


class EfficientVitBlock(nn.Module):
    """Attention (context) then an MBConv (local), each residual."""

    def __init__(self, chs: int, dim: int, expand_ratio: float, act: type[nn.Module]):
        super().__init__()
        self.context_module = Residual(LinearAttention(chs, dim))
        self.local_module = Residual(MBConv(chs, chs, 1, expand_ratio, act, fewer_norm=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class Stage(nn.Module):
    """A stride-2 MBConv, then MBConvs (convolution stages) or EfficientViT blocks (attention stages)."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, expand_ratio: float, dim: int, act: type[nn.Module],
                 attention: bool):
        super().__init__()
        blocks = [Residual(MBConv(in_chs, out_chs, 2, expand_ratio, act, fewer_norm=attention), shortcut=False)]
        if attention:
            blocks += [EfficientVitBlock(out_chs, dim, expand_ratio, act) for _ in range(depth)]
        else:
            blocks += [Residual(MBConv(out_chs, out_chs, 1, expand_ratio, act)) for _ in range(depth - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """1x1 conv to ``widths[0]``, global average pool, Linear -> LayerNorm -> Hardswish -> Linear."""

    def __init__(self, in_chs: int, widths: tuple[int, int], num_classes: int, act: type[nn.Module]):
        super().__init__()
        self.in_conv = ConvNormAct(in_chs, widths[0], 1, act=act)
        self.classifier = nn.Sequential(
            nn.Linear(widths[0], widths[1], bias=False), nn.LayerNorm(widths[1]), act(), nn.Dropout(0.0),
            nn.Linear(widths[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.in_conv(x).mean(dim=(2, 3)))


class Stem(nn.Sequential):
    """3x3 stride-2 convolution, then ``depth`` residual depthwise-separable blocks (keys ``in_conv``, ``res0``)."""

    def __init__(self, out_chs: int, depth: int, act: type[nn.Module]):
        super().__init__()
        self.add_module("in_conv", ConvNormAct(3, out_chs, 3, 2, act=act))
        for i in range(depth):
            self.add_module(f"res{i}", Residual(DSConv(out_chs, act)))


class EfficientVit(nn.Module):
    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], head_dim: int, head_widths: tuple[int, int],
                 num_classes: int = 1000, expand_ratio: float = 4, act: type[nn.Module] = nn.Hardswish):
        super().__init__()
        self.stem = Stem(widths[0], depths[0], act)
        self.stages = nn.Sequential(*[
            Stage(cin, cout, d, expand_ratio, head_dim, act, attention=i >= 2)
            for i, (cin, cout, d) in enumerate(zip(widths[:-1], widths[1:], depths[1:]))
        ])
        self.head = ClassifierHead(widths[-1], head_widths, num_classes, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


_CONFIGS = {
    "efficientvit_b0": dict(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16, head_widths=(1024, 1280)),
    "efficientvit_b1": dict(widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16,
                            head_widths=(1536, 1600)),
}


def _builder(name: str):
    def build(*, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
        return EfficientVit(**_CONFIGS[name], num_classes=num_classes)

    return build


_CARD = "timm model card hf.co/timm/{}.r224_in1k"
_NO_TOP1 = ("top-1: not stated on timm's model card, and timm's results CSV was not at hand to verify, so None; "
            "latency: the paper's mobile figures are for its segmentation models, so None")

for _name, _params, _gmacs in (("efficientvit_b0", 3.41, 0.1), ("efficientvit_b1", 9.1, 0.53)):
    register(ModelSpec(
        name=_name,
        family="efficientvit",
        kind="hybrid",
        builder=_builder(_name),
        input_size=(224, 224),
        preprocessing=Preprocessing(resize=235, crop=(224, 224)),  # crop_pct 0.95, bicubic, ImageNet mean/std
        published=Published(params_m=_params, gmacs=_gmacs, top1=None, latency_ms=None, latency_device=None,
                            source=f"params, GMACs: {_CARD.format(_name)}; {_NO_TOP1}"),
        input_divisor=32,
        checkpoints=(Checkpoint(tag="r224_in1k", hf_hub_id=f"timm/{_name}.r224_in1k"),),
        default_tag="r224_in1k",
    ))
