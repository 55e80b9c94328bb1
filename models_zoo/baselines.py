"""Baselines for the attention-vs-convolution trade-off: two pure convnets and one pure transformer.

* MobileNetV2 -- "MobileNetV2: Inverted Residuals and Linear Bottlenecks", M. Sandler, A. Howard, M. Zhu,
  A. Zhmoginov, L.-C. Chen, CVPR 2018, arXiv:1801.04381. Official code: tensorflow/models
  ``research/slim/nets/mobilenet``.
* MobileNetV3-Large -- "Searching for MobileNetV3", A. Howard, M. Sandler, G. Chu, L.-C. Chen, B. Chen,
  M. Tan, W. Wang, Y. Zhu, R. Pang, V. Vasudevan, Q. V. Le, H. Adam, ICCV 2019, arXiv:1905.02244. Official
  code: tensorflow/models ``research/slim/nets/mobilenet``. Its squeeze-and-excitation units are channel
  attention (a pooled gate per channel), not token attention, so the model counts as a convolution model.
* DeiT-Tiny -- "Training data-efficient image transformers & distillation through attention", H. Touvron,
  M. Cord, M. Douze, F. Massa, A. Sablayrolles, H. Jegou, ICML 2021, arXiv:2012.12877. Official code:
  facebookresearch/deit.

The implementations follow timm (huggingface/pytorch-image-models): ``timm/models/efficientnet.py`` with
``_efficientnet_blocks.py`` / ``_efficientnet_builder.py`` for MobileNetV2, ``timm/models/mobilenetv3.py``
for MobileNetV3 and ``timm/models/vision_transformer.py`` / ``deit.py`` for DeiT. State-dict keys are
timm's, so timm checkpoints load with ``strict=True``; the generic block builders are replaced by explicit
tables.
"""

from __future__ import annotations

import torch
from torch import nn

from models_zoo.layers import Attention, Mlp, make_divisible
from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, cifar10_fixture, register

# --------------------------------------------------------------------------------------------- convnets


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> 1x1 reduce -> ReLU -> 1x1 expand -> hard-sigmoid (MobileNetV3)."""

    def __init__(self, chs: int):
        super().__init__()
        rd_chs = make_divisible(chs * 0.25)
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class DepthwiseSeparable(nn.Module):
    """Depthwise conv -> BN -> act -> pointwise conv -> BN (linear output), residual when shapes match."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel, stride, kernel // 2, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act = act()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.has_skip = stride == 1 and in_chs == out_chs

    def forward(self, x):
        y = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> [SE] -> project 1x1 (linear bottleneck), residual when shapes match."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expand: float,
                 act: type[nn.Module], se: bool):
        super().__init__()
        mid = make_divisible(in_chs * expand)
        self.conv_pw = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = act()
        self.conv_dw = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = act()
        self.se = SqueezeExcite(mid) if se else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.has_skip = stride == 1 and in_chs == out_chs

    def forward(self, x):
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.se(self.act2(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


class ConvBnAct(nn.Module):
    """Plain conv -> BN -> act; keys ``conv``/``bn1`` as in timm's efficientnet blocks (not ``bn``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act = act()

    def forward(self, x):
        return self.act(self.bn1(self.conv(x)))


# One row: (block, repeats, kernel, stride of the first repeat, expansion, out channels, SE, activation).
# A stage is a list of rows; its blocks are numbered consecutively (timm's ``blocks.<stage>.<i>``).
Row = tuple[str, int, int, int, float, int, bool, type[nn.Module]]

R6, RE, HS = nn.ReLU6, nn.ReLU, nn.Hardswish

MOBILENETV2_STAGES: list[list[Row]] = [
    [("ds", 1, 3, 1, 1, 16, False, R6)],
    [("ir", 2, 3, 2, 6, 24, False, R6)],
    [("ir", 3, 3, 2, 6, 32, False, R6)],
    [("ir", 4, 3, 2, 6, 64, False, R6)],
    [("ir", 3, 3, 1, 6, 96, False, R6)],
    [("ir", 3, 3, 2, 6, 160, False, R6)],
    [("ir", 1, 3, 1, 6, 320, False, R6)],
]

MOBILENETV3_LARGE_STAGES: list[list[Row]] = [
    [("ds", 1, 3, 1, 1, 16, False, RE)],
    [("ir", 1, 3, 2, 4, 24, False, RE), ("ir", 1, 3, 1, 3, 24, False, RE)],
    [("ir", 3, 5, 2, 3, 40, True, RE)],
    [("ir", 1, 3, 2, 6, 80, False, HS), ("ir", 1, 3, 1, 2.5, 80, False, HS), ("ir", 2, 3, 1, 2.3, 80, False, HS)],
    [("ir", 2, 3, 1, 6, 112, True, HS)],
    [("ir", 3, 5, 2, 6, 160, True, HS)],
    [("cn", 1, 1, 1, 1, 960, False, HS)],
]


def _make_block(kind: str, in_chs: int, out_chs: int, kernel: int, stride: int, expand: float, se: bool, act):
    if kind == "ds":
        return DepthwiseSeparable(in_chs, out_chs, kernel, stride, act)
    if kind == "ir":
        return InvertedResidual(in_chs, out_chs, kernel, stride, expand, act, se)
    return ConvBnAct(in_chs, out_chs, kernel, stride, act)


class MobileNet(nn.Module):
    """Stem conv -> stages of mobile blocks -> 1x1 head conv -> global pool -> linear classifier.

    Two head layouts, as timm has them: MobileNetV2 (``head_norm=True``) applies ``conv_head`` + ``bn2`` on
    the feature map and pools afterwards; MobileNetV3 pools first and applies a biased ``conv_head``
    without normalization. Five stride-2 steps: inputs must be multiples of 32 (32x32 gives a 1x1 map).
    """

    def __init__(self, stages: list[list[Row]], *, stem_chs: int, stem_act: type[nn.Module], head_chs: int,
                 head_act: type[nn.Module], head_norm: bool, num_classes: int):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, stem_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = stem_act()
        chs, seq = stem_chs, []
        for stage in stages:
            blocks = []
            for kind, repeats, kernel, stride, expand, out_chs, se, act in stage:
                for i in range(repeats):
                    blocks.append(_make_block(kind, chs, out_chs, kernel, stride if i == 0 else 1, expand, se, act))
                    chs = out_chs
            seq.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*seq)
        self.head_norm = head_norm
        self.conv_head = nn.Conv2d(chs, head_chs, 1, bias=not head_norm)
        if head_norm:
            self.bn2 = nn.BatchNorm2d(head_chs)
        self.act2 = head_act()
        self.classifier = nn.Linear(head_chs, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # TF-style fan-out init, as the reference implementations use
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        if self.head_norm:
            x = self.act2(self.bn2(self.conv_head(x))).mean((2, 3))
        else:
            x = self.act2(self.conv_head(x.mean((2, 3), keepdim=True))).flatten(1)
        return self.classifier(x)


def mobilenetv2_100(*, num_classes: int = 1000, input_size: tuple[int, int] = (224, 224)) -> MobileNet:
    """MobileNetV2, width 1.0: ReLU6 everywhere, linear bottlenecks, 1280-channel head."""
    del input_size  # fully convolutional
    return MobileNet(MOBILENETV2_STAGES, stem_chs=32, stem_act=R6, head_chs=1280, head_act=R6,
                     head_norm=True, num_classes=num_classes)


def mobilenetv3_large_100(*, num_classes: int = 1000, input_size: tuple[int, int] = (224, 224)) -> MobileNet:
    """MobileNetV3-Large, width 1.0: hard-swish in the later stages, SE (hard-sigmoid gate) in some blocks."""
    del input_size  # fully convolutional
    return MobileNet(MOBILENETV3_LARGE_STAGES, stem_chs=16, stem_act=HS, head_chs=1280, head_act=HS,
                     head_norm=False, num_classes=num_classes)


# ------------------------------------------------------------------------------------------ transformer


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; (B, 3, H, W) -> (B, H/p * W/p, dim)."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT/DeiT classifier with a class token and a learned position table sized for ``input_size``.

    The table has ``1 + (H/patch) * (W/patch)`` rows, so a checkpoint trained at 224 only loads into a
    model built for 224.
    """

    def __init__(self, *, input_size: tuple[int, int], patch: int, dim: int, depth: int, num_heads: int,
                 num_classes: int):
        super().__init__()
        h, w = input_size
        if h % patch or w % patch:
            raise ValueError(f"input size {input_size} is not a multiple of the patch size {patch}")
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (h // patch) * (w // patch), dim))
        self.blocks = nn.Sequential(*[Block(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def deit_tiny_patch16_224(*, num_classes: int = 1000, input_size: tuple[int, int] = (224, 224)):
    """DeiT-Tiny: ViT with 12 blocks of width 192, 3 heads, 16x16 patches."""
    return VisionTransformer(input_size=tuple(input_size), patch=16, dim=192, depth=12, num_heads=3,
                             num_classes=num_classes)


# -------------------------------------------------------------------------------------------- registry

_IMAGENET_224 = Preprocessing(resize=256, crop=(224, 224))  # crop_pct 0.875, bicubic, ImageNet mean/std
_MIIL = Preprocessing(resize=256, crop=(224, 224), interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                      std=(1.0, 1.0, 1.0))
_TIMM_CSV = "timm results/results-imagenet.csv (github.com/huggingface/pytorch-image-models)"
_TF_SLIM = "github.com/tensorflow/models research/slim/nets/mobilenet/README.md"

register(ModelSpec(
    name="mobilenetv2_100",
    family="mobilenetv2",
    kind="convolution",
    builder=mobilenetv2_100,
    input_size=(224, 224),
    preprocessing=_IMAGENET_224,
    published=Published(
        params_m=3.5, gmacs=0.3, top1=72.976, latency_ms=73.8,
        latency_device="Google Pixel 1 CPU, TF-Lite float (mobilenet_v2_1.0_224)",
        source=f"params, top-1: {_TIMM_CSV}, mobilenetv2_100.ra_in1k; GMACs (300M MACs) and latency: "
               f"{_TF_SLIM} (official TF checkpoint of the same architecture)",
    ),
    input_divisor=32,
    # .cifar10: the convolution baseline for the trained hybrid fixtures (edgehybrid compare's other side)
    checkpoints=(Checkpoint(tag="ra_in1k", hf_hub_id="timm/mobilenetv2_100.ra_in1k"),
                 cifar10_fixture("mobilenetv2_100", _IMAGENET_224)),
    default_tag="ra_in1k",
))

register(ModelSpec(
    name="mobilenetv3_large_100",
    family="mobilenetv3",
    kind="convolution",
    kind_note="with squeeze-and-excitation channel attention",
    builder=mobilenetv3_large_100,
    input_size=(224, 224),
    preprocessing=_IMAGENET_224,
    published=Published(
        params_m=5.48, gmacs=0.217, top1=75.766, latency_ms=51.2,
        latency_device="Google Pixel 1 CPU (large core), TF-Lite float (Large dm=1)",
        source=f"params, top-1: {_TIMM_CSV}, mobilenetv3_large_100.ra_in1k; GMACs (217M MACs) and latency: "
               f"{_TF_SLIM} (official TF checkpoint of the same architecture)",
    ),
    input_divisor=32,
    checkpoints=(
        Checkpoint(tag="ra_in1k", hf_hub_id="timm/mobilenetv3_large_100.ra_in1k"),
        # timm also evaluates this one at 256 (test_input_size, crop_pct 1.0); the training size is 224.
        Checkpoint(tag="ra4_e3600_r224_in1k", hf_hub_id="timm/mobilenetv3_large_100.ra4_e3600_r224_in1k",
                   preprocessing=Preprocessing(resize=235, crop=(224, 224), mean=(0.5, 0.5, 0.5),
                                               std=(0.5, 0.5, 0.5))),
        Checkpoint(tag="miil_in21k_ft_in1k", hf_hub_id="timm/mobilenetv3_large_100.miil_in21k_ft_in1k",
                   preprocessing=_MIIL),
        Checkpoint(tag="miil_in21k", hf_hub_id="timm/mobilenetv3_large_100.miil_in21k", num_classes=11221,
                   preprocessing=_MIIL),
    ),
    default_tag="ra_in1k",
))

register(ModelSpec(
    name="deit_tiny_patch16_224",
    family="deit",
    kind="attention",
    builder=deit_tiny_patch16_224,
    input_size=(224, 224),
    preprocessing=Preprocessing(resize=248, crop=(224, 224)),  # crop_pct 0.9
    published=Published(
        params_m=5.7, gmacs=1.3, top1=72.172, latency_ms=None, latency_device=None,
        source=f"params, GMACs: timm model card hf.co/timm/deit_tiny_patch16_224.fb_in1k; top-1: {_TIMM_CSV} "
               "(DeiT paper Table 1: 72.2); latency: the DeiT paper reports V100 throughput only, and no "
               "mobile latency for DeiT-Ti could be verified, so None",
    ),
    input_divisor=16,
    checkpoints=(Checkpoint(tag="fb_in1k", hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k"),),
    default_tag="fb_in1k",
))
