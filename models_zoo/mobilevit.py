"""MobileViT (v1): inverted-residual convolutions with transformers that attend across 2x2 patches.

Paper: "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer",
Sachin Mehta and Mohammad Rastegari, ICLR 2022, arXiv:2110.02178.

Reference implementations: the official apple/ml-cvnets (``cvnets/models/classification/mobilevit.py``,
``cvnets/modules/mobilevit_block.py``) and timm's port (``timm/models/mobilevit.py``, built by
``timm/models/byobnet.py``). Module names here are timm's, so ``timm/mobilevit_*.cvnets_in1k`` checkpoints
load with strict key matching; the code itself is a plain re-implementation without timm's generic builder.

Export notes. Patches are unfolded and folded back with reshape/permute on tensors of rank 5 at most
(Core ML's limit), never ``F.unfold``/``F.fold``. The stem and four stages halve the resolution five times
and the last MobileViT block cuts its H/32 x W/32 map into 2x2 patches, so inputs must be multiples of 64
(:data:`INPUT_DIVISOR`). timm bilinearly resamples maps that do not divide; this file refuses them instead,
so an exported graph never holds a hidden interpolation. 64x64 inputs work (the last map is one patch).

The pieces shared with MobileViT v2 (``mobilevit_v2.py``) live here: :class:`InvertedResidual`,
:func:`unfold_patches`/:func:`fold_patches` (channels first, as v2's attention wants them) and the
:class:`MobileViT` network skeleton; v1's transformer takes flat channels-last tokens (:func:`patch_tokens`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models_zoo.layers import Attention, ClassifierHead, ConvNormAct, Mlp, make_divisible
from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, cifar10_fixture, register

PATCH_SIZE = 2
INPUT_DIVISOR = 32 * PATCH_SIZE  # total stride 32, then whole patches on the last map

# Stride of each of the five stages of every MobileViT (v1 and v2), carried by the stage's first block.
STAGE_STRIDES = (1, 2, 2, 2, 2)
# Transformer depth of the MobileViT block that closes stages 2, 3 and 4.
TRANSFORMER_DEPTHS = (2, 4, 3)


def check_input_size(input_size: tuple[int, int]) -> None:
    """Refuse sizes whose MobileViT maps would not divide into whole patches (timm would resample them)."""
    h, w = (int(v) for v in input_size)
    if h <= 0 or w <= 0 or h % INPUT_DIVISOR or w % INPUT_DIVISOR:
        raise ValueError(f"MobileViT input size must be a positive multiple of {INPUT_DIVISOR}, got {h}x{w}")


def _patch_grid(h: int, w: int, patch: int) -> tuple[int, int]:
    """(n_h, n_w): how many ``patch`` x ``patch`` patches an h x w map holds; refuses maps that do not divide."""
    if h % patch or w % patch:
        raise ValueError(f"feature map {h}x{w} does not divide into {patch}x{patch} patches")
    return h // patch, w // patch


def unfold_patches(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, int, int]:
    """[B, C, H, W] -> [B, C, P, N] with P = patch * patch pixels per patch and N patches.

    Returns the patch grid (n_h, n_w) too, for :func:`fold_patches`. Every tensor is rank 5 at most.
    """
    b, c, h, w = x.shape
    n_h, n_w = _patch_grid(h, w, patch)
    x = x.reshape(b * c, n_h, patch, n_w, patch)
    x = x.permute(0, 2, 4, 1, 3)  # [B*C, p_h, p_w, n_h, n_w]
    return x.reshape(b, c, patch * patch, n_h * n_w), n_h, n_w


def fold_patches(x: torch.Tensor, patch: int, n_h: int, n_w: int) -> torch.Tensor:
    """Inverse of :func:`unfold_patches`: [B, C, P, N] -> [B, C, H, W]."""
    b, c = x.shape[0], x.shape[1]
    x = x.reshape(b * c, patch, patch, n_h, n_w)
    x = x.permute(0, 3, 1, 4, 2)  # [B*C, n_h, p_h, n_w, p_w]
    return x.reshape(b, c, n_h * patch, n_w * patch)


def patch_tokens(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, int, int]:
    """[B, C, H, W] -> tokens [P * B * N, C]: one sequence of the N patches per (pixel position in the patch,
    image), flat (the transformer's linears then run on 2-D input), channels last. Returns the patch grid
    (n_h, n_w) for :func:`tokens_to_map`; N = n_h * n_w.

    The channels go innermost first, so the permute that gathers the patches moves whole C-wide rows: on int8
    tensors a permute of single bytes (the channels-first layout, inner dimension 2) cost ONNX Runtime 1.7 ms
    of MobileViT-S; and a runtime that convolves channels last (ONNX Runtime's int8 kernels, LiteRT) cancels
    the first permute against its own. The sequences are independent, so their order (P before B) is free.
    """
    b, c, h, w = x.shape
    n_h, n_w = _patch_grid(h, w, patch)
    x = x.permute(0, 2, 3, 1).reshape(b * n_h, patch, n_w, patch, c)
    x = x.permute(1, 3, 0, 2, 4)  # [p_h, p_w, B*n_h, n_w, C]: every tensor rank 5 at most
    return x.reshape(patch * patch * b * n_h * n_w, c), n_h, n_w


def tokens_to_map(x: torch.Tensor, patch: int, n_h: int, n_w: int) -> torch.Tensor:
    """Inverse of :func:`patch_tokens`: [P * B * N, C] -> [B, C, H, W]."""
    c = x.shape[-1]
    b = x.shape[0] // (patch * patch * n_h * n_w)
    x = x.reshape(patch, patch, b * n_h, n_w, c).permute(2, 0, 3, 1, 4)  # [B*n_h, p_h, n_w, p_w, C]
    return x.reshape(b, n_h * patch, n_w * patch, c).permute(0, 3, 1, 2)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> depthwise kxk (carries the stride) -> 1x1 linear projection.

    timm builds it as a byobnet ``BottleneckBlock`` (``bottle_in=True``, ``linear_out=True``), hence the
    ``conv1_1x1``/``conv2_kxk``/``conv3_1x1`` names. The residual is used only when shapes allow it.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expansion: float = 4.0):
        super().__init__()
        mid_chs = make_divisible(in_chs * expansion)
        self.conv1_1x1 = ConvNormAct(in_chs, mid_chs, 1)
        self.conv2_kxk = ConvNormAct(mid_chs, mid_chs, 3, stride=stride, groups=mid_chs)
        self.conv3_1x1 = ConvNormAct(mid_chs, out_chs, 1, act=None)
        self.has_skip = in_chs == out_chs and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))
        return out + x if self.has_skip else out


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder layer (timm's ViT ``Block`` without layer scale or drop-path), on flat
    tokens [B * seq, C]."""

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=nn.SiLU)

    def forward(self, x: torch.Tensor, seq: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), seq)
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    """Local kxk conv, then transformers across patches, then a fusion conv with the block input.

    Tokens are the pixels at the same position in every 2x2 patch: the P positions of a patch become the
    batch axis and the N patches the sequence the transformer attends over.
    """

    def __init__(self, chs: int, transformer_dim: int, transformer_depth: int, patch_size: int = PATCH_SIZE):
        super().__init__()
        self.patch_size = patch_size
        self.conv_kxk = ConvNormAct(chs, chs, 3)
        self.conv_1x1 = nn.Conv2d(chs, transformer_dim, 1, bias=False)
        self.transformer = nn.Sequential(*[TransformerBlock(transformer_dim) for _ in range(transformer_depth)])
        self.norm = nn.LayerNorm(transformer_dim)
        self.conv_proj = ConvNormAct(transformer_dim, chs, 1)
        self.conv_fusion = ConvNormAct(2 * chs, chs, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))

        x, n_h, n_w = patch_tokens(x, self.patch_size)  # [P*B*N, C]
        for block in self.transformer:
            x = block(x, n_h * n_w)
        x = self.norm(x)
        x = tokens_to_map(x, self.patch_size, n_h, n_w)

        x = self.conv_proj(x)
        return self.conv_fusion(torch.cat((shortcut, x), dim=1))


class MobileViT(nn.Module):
    """The MobileViT network shared by v1 and v2.

    A stride-2 3x3 stem, five stages of inverted residuals (the first block of each carries its stride),
    a MobileViT block closing each of the last three stages, an optional 1x1 conv, and a linear classifier.
    ``vit_block(stage_index, chs)`` makes the MobileViT block of stages 2-4 (v1 and v2 differ only there).
    """

    def __init__(
        self,
        *,
        stem_chs: int,
        stage_chs: tuple[int, int, int, int, int],
        ir_depths: tuple[int, int, int, int, int],
        expansion: float,
        vit_block: Callable[[int, int], nn.Module],
        num_features: int | None,
        num_classes: int,
    ):
        super().__init__()
        self.stem = ConvNormAct(3, stem_chs, 3, stride=2)
        stages, in_chs = [], stem_chs
        for i, (chs, depth, stride) in enumerate(zip(stage_chs, ir_depths, STAGE_STRIDES)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(InvertedResidual(in_chs, chs, stride if j == 0 else 1, expansion))
                in_chs = chs
            if i >= 2:
                blocks.append(vit_block(i, chs))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        if num_features:
            self.final_conv = ConvNormAct(in_chs, num_features, 1)
            in_chs = num_features
        else:
            self.final_conv = nn.Identity()
        self.num_features = in_chs
        self.head = ClassifierHead(in_chs, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# name -> (stage channels, transformer dims of stages 2-4, inverted-residual expansion, final conv channels)
_V1_CONFIGS = {
    "mobilevit_xxs": ((16, 24, 48, 64, 80), (64, 80, 96), 2.0, 320),
    "mobilevit_xs": ((32, 48, 64, 80, 96), (96, 120, 144), 4.0, 384),
    "mobilevit_s": ((32, 64, 96, 128, 160), (144, 192, 240), 4.0, 640),
}


def build_mobilevit(name: str, *, num_classes: int, input_size: tuple[int, int]) -> MobileViT:
    """A MobileViT v1 variant; ``input_size`` is only checked (nothing in the network depends on it)."""
    check_input_size(input_size)
    stage_chs, dims, expansion, num_features = _V1_CONFIGS[name]

    def vit_block(stage: int, chs: int) -> nn.Module:
        return MobileViTBlock(chs, dims[stage - 2], TRANSFORMER_DEPTHS[stage - 2])

    return MobileViT(
        stem_chs=16,
        stage_chs=stage_chs,
        ir_depths=(1, 3, 1, 1, 1),
        expansion=expansion,
        vit_block=vit_block,
        num_features=num_features,
        num_classes=num_classes,
    )


def _builder(name: str):
    def build(*, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
        return build_mobilevit(name, num_classes=num_classes, input_size=input_size)

    build.__name__ = f"build_{name}"
    return build


# timm's pretrained cfg: 256x256, crop_pct 0.9 (resize floor(256 / 0.9) = 284), bicubic, no mean/std
# normalisation (mean 0, std 1: pixels in [0, 1]).
_PREPROCESSING = Preprocessing(resize=284, crop=(256, 256), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

# params and top-1: timm's own evaluation of the cvnets_in1k checkpoints (results/results-imagenet.csv, at
# 256 with the preprocessing above; the ml-cvnets model zoo gives 69.0 / 74.7 / 78.3); GMACs: timm model cards.
_PUBLISHED = {
    "mobilevit_xxs": (1.27, 0.4, 68.932),
    "mobilevit_xs": (2.32, 1.1, 74.636),
    "mobilevit_s": (5.58, 2.0, 78.312),
}

for _name, (_params, _gmacs, _top1) in _PUBLISHED.items():
    register(
        ModelSpec(
            name=_name,
            family="mobilevit",
            kind="hybrid",
            builder=_builder(_name),
            input_size=(256, 256),
            preprocessing=_PREPROCESSING,
            published=Published(
                params_m=_params,
                gmacs=_gmacs,
                top1=_top1,
                latency_ms=None,
                latency_device=None,
                source=(
                    "params, top-1: timm results/results-imagenet.csv (huggingface/pytorch-image-models); "
                    f"GMACs: timm model card hf.co/timm/{_name}.cvnets_in1k; "
                    "latency: no figure we could verify, left None"
                ),
            ),
            input_divisor=INPUT_DIVISOR,
            checkpoints=(Checkpoint(tag="cvnets_in1k", hf_hub_id=f"timm/{_name}.cvnets_in1k"),)
            + ((cifar10_fixture(_name, _PREPROCESSING),) if _name == "mobilevit_xxs" else ()),
            default_tag="cvnets_in1k",
        )
    )
