"""MobileViT v2: MobileViT with separable (linear-complexity) self-attention.

Paper: "Separable Self-attention for Mobile Vision Transformers", Sachin Mehta and Mohammad Rastegari,
TMLR 2023, arXiv:2206.02680.

Reference implementations: the official apple/ml-cvnets (``cvnets/models/classification/mobilevit_v2.py``,
``cvnets/modules/mobilevit_block.py``, ``cvnets/layers/linear_attention.py``) and timm's port
(``timm/models/mobilevit.py``, built by ``timm/models/byobnet.py``). Module names here are timm's, so
``timm/mobilevitv2_*`` checkpoints load with strict key matching.

v2 keeps v1's network (shared from ``mobilevit.py``) but replaces each MobileViT block: a depthwise local
conv, and transformers whose attention is one softmax over patches of a single learned query score, so it
needs only 1x1 convs and elementwise ops. Tokens stay channels-first ([B, C, P, N]) throughout, with
GroupNorm(1, C) as the layer norm. Inputs must be multiples of 64, as for v1 (timm resamples other sizes
with ``align_corners=True`` interpolation; we refuse them).
"""

from __future__ import annotations

import torch
from torch import nn

from models_zoo.layers import ConvNormAct, make_divisible
from models_zoo.mobilevit import (
    INPUT_DIVISOR,
    PATCH_SIZE,
    TRANSFORMER_DEPTHS,
    MobileViT,
    check_input_size,
    fold_patches,
    unfold_patches,
)
from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, register


class LinearSelfAttention(nn.Module):
    """Separable self-attention on [B, C, P, N] tokens (N patches per patch position P).

    A 1x1 conv gives one query score plus keys and values per token; the scores, softmaxed over the N
    patches, weight the keys into one context vector per patch position, which gates ReLU(values).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.qkv_proj = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.out_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv_proj(x).split([1, self.dim, self.dim], dim=1)
        scores = query.softmax(dim=-1)  # [B, 1, P, N]
        context = (key * scores).sum(dim=-1, keepdim=True)  # [B, C, P, 1]
        return self.out_proj(torch.relu(value) * context)


class ConvMlp(nn.Module):
    """1x1 conv -> SiLU -> 1x1 conv (timm's ``ConvMlp``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LinearTransformerBlock(nn.Module):
    """Pre-norm transformer layer on [B, C, P, N]; GroupNorm(1, C) normalises over (C, P, N) per image."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = LinearSelfAttention(dim)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTV2Block(nn.Module):
    """Depthwise 3x3 + 1x1 to the transformer width, linear transformers across patches, 1x1 back (no fusion)."""

    def __init__(self, chs: int, transformer_dim: int, transformer_depth: int, patch_size: int = PATCH_SIZE):
        super().__init__()
        self.patch_size = patch_size
        self.conv_kxk = ConvNormAct(chs, chs, 3, groups=chs)
        self.conv_1x1 = nn.Conv2d(chs, transformer_dim, 1, bias=False)
        self.transformer = nn.Sequential(*[LinearTransformerBlock(transformer_dim) for _ in range(transformer_depth)])
        self.norm = nn.GroupNorm(1, transformer_dim)
        self.conv_proj = ConvNormAct(transformer_dim, chs, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_1x1(self.conv_kxk(x))
        x, n_h, n_w = unfold_patches(x, self.patch_size)  # [B, C, P, N]
        x = self.norm(self.transformer(x))
        x = fold_patches(x, self.patch_size, n_h, n_w)
        return self.conv_proj(x)


def build_mobilevitv2(multiplier: float, *, num_classes: int, input_size: tuple[int, int]) -> MobileViT:
    """A MobileViT v2 of width ``multiplier``; ``input_size`` is only checked."""
    check_input_size(input_size)
    stage_chs = tuple(int(c * multiplier) for c in (64, 128, 256, 384, 512))

    def vit_block(stage: int, chs: int) -> nn.Module:
        return MobileViTV2Block(chs, make_divisible(0.5 * chs), TRANSFORMER_DEPTHS[stage - 2])

    return MobileViT(
        stem_chs=int(32 * multiplier),
        stage_chs=stage_chs,
        ir_depths=(1, 2, 1, 1, 1),
        expansion=2.0,
        vit_block=vit_block,
        num_features=None,
        num_classes=num_classes,
    )


def _builder(multiplier: float, name: str):
    def build(*, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
        return build_mobilevitv2(multiplier, num_classes=num_classes, input_size=input_size)

    build.__name__ = f"build_{name}"
    return build


# timm's pretrained cfgs: pixels in [0, 1] (mean 0, std 1), bicubic; 256x256 tags use crop_pct 0.888
# (resize floor(256 / 0.888) = 288), the 384x384 fine-tunes crop_pct 1.0.
_NO_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
_PREPROCESSING = Preprocessing(resize=288, crop=(256, 256), **_NO_NORM)
_PREPROCESSING_384 = Preprocessing(resize=384, crop=(384, 384), **_NO_NORM)

# name -> (width multiplier, params M, GMACs at 256, ImageNet-1k top-1 of the default cvnets_in1k checkpoint).
# params and top-1 are timm's evaluation (results/results-imagenet.csv); the ml-cvnets model zoo states
# 1.4 / 2.9 / 4.9 / 7.5 / 10.6 / 14.3 / 18.4 M and 70.18 / 75.56 / 78.09 / 79.65 / 80.38 / 80.84 / 81.17.
_VARIANTS = {
    "mobilevitv2_050": (0.50, 1.37, 0.5, 70.138),
    "mobilevitv2_075": (0.75, 2.87, 1.1, 75.608),
    "mobilevitv2_100": (1.00, 4.90, 1.8, 78.076),
    "mobilevitv2_125": (1.25, 7.48, 2.9, 79.680),
    "mobilevitv2_150": (1.50, 10.59, None, 80.370),
    "mobilevitv2_175": (1.75, 14.25, 5.5, 80.860),
    "mobilevitv2_200": (2.00, 18.45, None, 81.134),
}
_IN22K_VARIANTS = ("mobilevitv2_150", "mobilevitv2_175", "mobilevitv2_200")

_GMACS_SOURCE = {
    "mobilevitv2_150": "GMACs at 256: not found on a card (hf.co/timm/mobilevitv2_150.cvnets_in22k_ft_in1k_384 "
    "states 9.2 at 384), left None",
    "mobilevitv2_175": "GMACs: timm model card hf.co/timm/mobilevitv2_175.cvnets_in22k_ft_in1k (same network at 256)",
    "mobilevitv2_200": "GMACs at 256: not found on a card (hf.co/timm/mobilevitv2_200.cvnets_in22k_ft_in1k_384 "
    "states 16.2 at 384), left None",
}


def _checkpoints(name: str) -> tuple[Checkpoint, ...]:
    ckpts = [Checkpoint(tag="cvnets_in1k", hf_hub_id=f"timm/{name}.cvnets_in1k")]
    if name in _IN22K_VARIANTS:
        ckpts.append(Checkpoint(tag="cvnets_in22k_ft_in1k", hf_hub_id=f"timm/{name}.cvnets_in22k_ft_in1k"))
        ckpts.append(
            Checkpoint(
                tag="cvnets_in22k_ft_in1k_384",
                hf_hub_id=f"timm/{name}.cvnets_in22k_ft_in1k_384",
                input_size=(384, 384),
                preprocessing=_PREPROCESSING_384,
            )
        )
    return tuple(ckpts)


for _name, (_mult, _params, _gmacs, _top1) in _VARIANTS.items():
    register(
        ModelSpec(
            name=_name,
            family="mobilevitv2",
            kind="hybrid",
            builder=_builder(_mult, _name),
            input_size=(256, 256),
            preprocessing=_PREPROCESSING,
            published=Published(
                params_m=_params,
                gmacs=_gmacs,
                top1=_top1,
                latency_ms=None,
                latency_device=None,
                source="; ".join(
                    (
                        "params, top-1: timm results/results-imagenet.csv (huggingface/pytorch-image-models)",
                        _GMACS_SOURCE.get(_name, f"GMACs: timm model card hf.co/timm/{_name}.cvnets_in1k"),
                        "latency: no figure we could verify, left None",
                    )
                ),
            ),
            input_divisor=INPUT_DIVISOR,
            checkpoints=_checkpoints(_name),
            default_tag="cvnets_in1k",
        )
    )
