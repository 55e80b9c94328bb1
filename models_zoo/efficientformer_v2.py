"""EfficientFormerV2: a hybrid of depthwise-conv FFNs and 4D (NCHW) multi-head attention with talking heads.

Paper: "Rethinking Vision Transformers for MobileNet Size and Speed", Yanyu Li, Ju Hu, Yang Wen,
Georgios Evangelidis, Kamyar Salahi, Yanzhi Wang, Sergey Tulyakov, Jian Ren; ICCV 2023, arXiv:2212.08059.

Reference implementations: the official code at https://github.com/snap-research/EfficientFormer
(``models/efficientformer_v2.py``) and timm's refactor ``timm/models/efficientformer_v2.py``, whose
state-dict layout this file reproduces key for key so the ``timm/efficientformerv2_*.snap_dist_in1k``
checkpoints load strictly.

Layout: a stride-4 conv stem, four stages (stride 4, 8, 16, 32). Every block has a conv FFN with a 3x3
depthwise conv in the middle; the last ``num_vit`` blocks of stages 2 and 3 also have an attention token
mixer. Stage 2 attends on a stride-2 depthwise-downsampled map and upsamples the result back; stage 3's
downsample adds an attention branch whose queries come from a stride-2 grid. Every attention adds a learned
relative-position bias per head, gathered from a small table with an index computed for the input size,
which is why the model is built for one input size (a multiple of 32) and cannot take another.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, cifar10_fixture, register

# per variant: widths, depths, attention blocks at the end of stages 2 and 3, per-block FFN ratios
_ARCHS = {
    "s0": dict(
        widths=(32, 48, 96, 176),
        depths=(2, 2, 6, 4),
        num_vit=2,
        mlp_ratios=((4,) * 2, (4,) * 2, (4, 3, 3, 3, 4, 4), (4, 3, 3, 4)),
    ),
    "s1": dict(
        widths=(32, 48, 120, 224),
        depths=(3, 3, 9, 6),
        num_vit=2,
        mlp_ratios=((4,) * 3, (4,) * 3, (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
    ),
    "s2": dict(
        widths=(32, 64, 144, 288),
        depths=(4, 4, 12, 8),
        num_vit=4,
        mlp_ratios=((4,) * 4, (4,) * 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4)),
    ),
    "l": dict(
        widths=(40, 80, 192, 384),
        depths=(5, 5, 15, 10),
        num_vit=6,
        mlp_ratios=(
            (4,) * 5,
            (4,) * 5,
            (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4),
            (4, 4, 4, 3, 3, 3, 3, 4, 4, 4),
        ),
    ),
}


def _half(size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size after a 3x3 stride-2 conv with padding 1."""
    return (math.ceil(size[0] / 2), math.ceil(size[1] / 2))


def _bias_index(key_size: tuple[int, int], query_step: int = 1) -> torch.Tensor:
    """Index into a per-head bias table of ``H*W`` entries for every (query, key) pair.

    Keys sit on the full ``key_size`` grid; queries on every ``query_step``-th point of it. A pair's entry
    is ``|dy| * W + |dx|``, so the table is shared by all pairs with the same absolute offset.
    """
    h, w = key_size
    ky, kx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    qy, qx = torch.meshgrid(torch.arange(0, h, query_step), torch.arange(0, w, query_step), indexing="ij")
    dy = (qy.reshape(-1, 1) - ky.reshape(1, -1)).abs()
    dx = (qx.reshape(-1, 1) - kx.reshape(1, -1)).abs()
    return dy * w + dx


class ConvNorm(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d -> optional GELU; keys ``conv.*`` and ``bn.*`` as in timm."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=groups)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class LayerScale2d(nn.Module):
    """Per-channel learned scale of a residual branch (key ``gamma``)."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class Attention2d(nn.Module):
    """Multi-head self-attention on an NCHW map, with talking heads and a relative-position bias.

    With ``stride=2`` the map is first reduced by a depthwise stride-2 conv and the output upsampled back
    (bilinear x2), which needs the input side to be even. ``v_local`` (a depthwise 3x3 on the values) adds a
    local term to the attention output.
    """

    def __init__(self, dim: int, size: tuple[int, int], key_dim: int = 32, num_heads: int = 8,
                 attn_ratio: int = 4, stride: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        if stride is not None:
            size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
            self.stride_conv = ConvNorm(dim, dim, 3, stride=stride, groups=dim)
            self.upsample = nn.Upsample(scale_factor=stride, mode="bilinear")
        else:
            self.stride_conv = None
            self.upsample = None
        self.resolution = size
        self.N = size[0] * size[1]
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads

        kh = key_dim * num_heads
        self.q = ConvNorm(dim, kh)
        self.k = ConvNorm(dim, kh)
        self.v = ConvNorm(dim, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, groups=self.dh)
        # 1x1 convs across the head axis of the (B, heads, N, N) attention map, before and after softmax
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.act = nn.GELU()
        self.proj = ConvNorm(self.dh, dim)

        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        # rebuilt from the size at construction, so not saved (timm does the same)
        self.register_buffer("attention_bias_idxs", _bias_index(size).flatten(), persistent=False)

    def forward(self, x):
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        h, w = self.resolution
        q = self.q(x).reshape(-1, self.num_heads, self.key_dim, self.N).transpose(2, 3)
        k = self.k(x).reshape(-1, self.num_heads, self.key_dim, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(-1, self.num_heads, self.d, self.N).transpose(2, 3)

        bias = self.attention_biases.index_select(1, self.attention_bias_idxs).reshape(1, -1, self.N, self.N)
        attn = (q @ k) * self.scale + bias
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))

        x = (attn @ v).transpose(2, 3).reshape(-1, self.dh, h, w) + v_local
        if self.upsample is not None:
            x = self.upsample(x)
        return self.proj(self.act(x))


class LocalGlobalQuery(nn.Module):
    """Stride-2 queries: a depthwise 3x3 stride-2 conv plus a stride-2 subsample, then a 1x1 projection."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Conv2d(in_dim, in_dim, 3, stride=2, padding=1, groups=in_dim)
        self.proj = ConvNorm(in_dim, out_dim)

    def forward(self, x):
        return self.proj(self.local(x) + self.pool(x))


class Attention2dDownsample(nn.Module):
    """Attention whose queries sit on a stride-2 grid: keys/values at ``size``, output at half of it."""

    def __init__(self, dim: int, out_dim: int, size: tuple[int, int], key_dim: int = 16, num_heads: int = 8,
                 attn_ratio: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.resolution = size
        self.resolution2 = _half(size)
        self.N = size[0] * size[1]
        self.N2 = self.resolution2[0] * self.resolution2[1]
        self.d = attn_ratio * key_dim
        self.dh = self.d * num_heads

        kh = key_dim * num_heads
        self.q = LocalGlobalQuery(dim, kh)
        self.k = ConvNorm(dim, kh)
        self.v = ConvNorm(dim, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, stride=2, groups=self.dh)
        self.act = nn.GELU()
        self.proj = ConvNorm(self.dh, out_dim)

        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.register_buffer("attention_bias_idxs", _bias_index(size, query_step=2).flatten(), persistent=False)

    def forward(self, x):
        q = self.q(x).reshape(-1, self.num_heads, self.key_dim, self.N2).transpose(2, 3)
        k = self.k(x).reshape(-1, self.num_heads, self.key_dim, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(-1, self.num_heads, self.d, self.N).transpose(2, 3)

        bias = self.attention_biases.index_select(1, self.attention_bias_idxs).reshape(1, -1, self.N2, self.N)
        attn = ((q @ k) * self.scale + bias).softmax(dim=-1)

        h, w = self.resolution2
        x = (attn @ v).transpose(2, 3).reshape(-1, self.dh, h, w) + v_local
        return self.proj(self.act(x))


class Downsample(nn.Module):
    """Stride-2 3x3 conv between stages, plus an attention branch in the last stage."""

    def __init__(self, in_chs: int, out_chs: int, size: tuple[int, int], use_attn: bool):
        super().__init__()
        self.conv = ConvNorm(in_chs, out_chs, 3, stride=2)
        self.attn = Attention2dDownsample(in_chs, out_chs, size) if use_attn else None

    def forward(self, x):
        out = self.conv(x)
        if self.attn is not None:
            out = out + self.attn(x)
        return out


class ConvMlpWithNorm(nn.Module):
    """The FFN: 1x1 expand -> depthwise 3x3 -> 1x1 project, each conv followed by BatchNorm."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden, act=True)
        self.mid = ConvNorm(hidden, hidden, 3, groups=hidden, act=True)
        self.fc2 = ConvNorm(hidden, dim)

    def forward(self, x):
        return self.fc2(self.mid(self.fc1(x)))


class EfficientFormerV2Block(nn.Module):
    """Residual (optional) attention then residual FFN, each branch scaled by a LayerScale."""

    def __init__(self, dim: int, mlp_ratio: float, size: tuple[int, int], use_attn: bool,
                 stride: int | None = None):
        super().__init__()
        if use_attn:
            self.token_mixer = Attention2d(dim, size, stride=stride)
            self.ls1 = LayerScale2d(dim)
        else:
            self.token_mixer = None
            self.ls1 = None
        self.mlp = ConvMlpWithNorm(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale2d(dim)

    def forward(self, x):
        if self.token_mixer is not None:
            x = x + self.ls1(self.token_mixer(x))
        return x + self.ls2(self.mlp(x))


class Stem4(nn.Sequential):
    """Two 3x3 stride-2 conv-BN-GELU layers (stride 4 in all)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs // 2, 3, stride=2, act=True)
        self.conv2 = ConvNorm(out_chs // 2, out_chs, 3, stride=2, act=True)


class EfficientFormerV2Stage(nn.Module):
    """Optional downsample, then ``depth`` blocks; the last ``num_vit`` use attention when allowed."""

    def __init__(self, dim: int, dim_out: int, depth: int, size: tuple[int, int], mlp_ratios: tuple,
                 downsample: bool, downsample_attn: bool, block_attn: bool, num_vit: int,
                 block_stride: int | None):
        super().__init__()
        if downsample:
            self.downsample = Downsample(dim, dim_out, size, use_attn=downsample_attn)
            size = _half(size)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            EfficientFormerV2Block(
                dim_out, mlp_ratios[i], size, use_attn=block_attn and i >= depth - num_vit, stride=block_stride
            )
            for i in range(depth)
        ])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2 classifier for a fixed input size; eval output is the mean of its two heads.

    ``head_dist`` is the distillation head of the DeiT-style training recipe; as in timm, inference
    averages it with ``head``.
    """

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], num_vit: int, mlp_ratios: tuple,
                 num_classes: int = 1000, input_size: tuple[int, int] = (224, 224), in_chans: int = 3):
        super().__init__()
        h, w = (int(v) for v in input_size)
        if h % 32 or w % 32:
            # stage 2's strided attention upsamples x2 and adds the result to its input: sides must be even there
            raise ValueError(f"EfficientFormerV2 needs an input size that is a multiple of 32, got {h}x{w}")
        self.num_classes = num_classes
        self.stem = Stem4(in_chans, widths[0])
        size = (h // 4, w // 4)
        stages = []
        for i, depth in enumerate(depths):
            stages.append(EfficientFormerV2Stage(
                widths[i - 1] if i else widths[0], widths[i], depth, size, mlp_ratios[i],
                downsample=i > 0, downsample_attn=i == 3, block_attn=i >= 2, num_vit=num_vit,
                block_stride=2 if i == 2 else None,
            ))
            if i > 0:
                size = _half(size)
        self.stages = nn.Sequential(*stages)
        self.num_features = widths[-1]
        self.norm = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        return self.norm(self.stages(self.stem(x)))

    def forward(self, x):
        x = self.forward_features(x).mean(dim=(2, 3))
        return (self.head(x) + self.head_dist(x)) / 2


def _builder(variant: str):
    def build(*, num_classes: int, input_size: tuple[int, int]) -> EfficientFormerV2:
        return EfficientFormerV2(**_ARCHS[variant], num_classes=num_classes, input_size=input_size)

    build.__name__ = f"efficientformerv2_{variant}"
    return build


# timm's pretrained cfg: 224 crop at crop_pct 0.95 -> resize floor(224 / 0.95) = 235, bicubic, ImageNet stats
_PREPROCESSING = Preprocessing(resize=235, crop=(224, 224), interpolation="bicubic")

# params (M) and top-1: timm results/results-imagenet.csv (param_count, top1 of the .snap_dist_in1k
# checkpoint); GMACs and latency: the official README's EfficientFormerV2 table (snap-research/EfficientFormer),
# latency on iPhone 12 (iOS 16, Core ML, measured with the XCode 14 benchmark tool).
_PUBLISHED = {
    "s0": (3.60, 0.40, 76.118, 0.9),
    "s1": (6.19, 0.65, 79.688, 1.1),
    "s2": (12.71, 1.25, 82.166, 1.6),
    "l": (26.32, 2.56, 83.632, 2.7),
}
_SOURCE = (
    "params, top-1: timm results/results-imagenet.csv, row {name}.snap_dist_in1k; GMACs, latency: "
    "snap-research/EfficientFormer README, EfficientFormerV2 table (iPhone 12, Core ML)"
)

for _variant, (_params, _gmacs, _top1, _latency) in _PUBLISHED.items():
    _name = f"efficientformerv2_{_variant}"
    register(ModelSpec(
        name=_name,
        family="efficientformerv2",
        kind="hybrid",
        builder=_builder(_variant),
        input_size=(224, 224),
        preprocessing=_PREPROCESSING,
        published=Published(
            params_m=_params,
            gmacs=_gmacs,
            top1=_top1,
            latency_ms=_latency,
            latency_device="iPhone 12 (Core ML)",
            source=_SOURCE.format(name=_name),
        ),
        input_divisor=32,
        checkpoints=(Checkpoint(tag="snap_dist_in1k", hf_hub_id=f"timm/{_name}.snap_dist_in1k"),)
        + ((cifar10_fixture(_name, _PREPROCESSING),) if _variant == "s0" else ()),
        default_tag="snap_dist_in1k",
    ))
