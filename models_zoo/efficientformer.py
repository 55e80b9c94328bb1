"""EfficientFormer (v1): ``efficientformer_l1``, ``efficientformer_l3``, ``efficientformer_l7``.

Paper: "EfficientFormer: Vision Transformers at MobileNet Speed", Yanyu Li, Geng Yuan, Yang Wen, Ju Hu,
Georgios Evangelidis, Sergey Tulyakov, Yanzhi Wang, Jian Ren. NeurIPS 2022, arXiv:2206.01191.

Reference implementations: the official code at https://github.com/snap-research/EfficientFormer
(``models/efficientformer.py``) and timm's port, ``timm/models/efficientformer.py``
(https://github.com/huggingface/pytorch-image-models), whose names and state-dict keys this file reproduces
so that the ``timm/efficientformer_*.snap_dist_in1k`` checkpoints load with strict matching.

The network is a 4-stage pyramid: a stride-4 conv stem, then "Meta4D" blocks (3x3 average-pool token
mixer + 1x1-conv MLP, on NCHW maps) and, in the last stage only, a flatten to tokens followed by "Meta3D"
blocks (multi-head self-attention with a learned relative-position bias + MLP). Two linear heads (class and
distillation) read the mean token and their logits are averaged, as timm does outside distilled training.

Export notes: attention is a plain matmul + softmax; the relative-position bias is gathered from its table
with a precomputed index buffer (a single Gather with a constant index); all token counts are fixed at build
time from ``input_size`` (the last stage runs at input/32), so the graph has static shapes and rank <= 4.
"""

from __future__ import annotations

import torch
from torch import nn

from models_zoo.layers import Mlp
from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, register

# (depths, widths, number of Meta3D (attention) blocks at the end of the last stage), per timm / the paper
_CONFIGS = {
    "l1": ((3, 2, 6, 4), (48, 96, 224, 448), 1),
    "l3": ((4, 4, 12, 6), (64, 128, 320, 512), 4),
    "l7": ((6, 6, 18, 8), (96, 192, 384, 768), 8),
}
_REDUCTION = 32  # stem /4, then three stride-2 downsamples


class LayerScale(nn.Module):
    """Learned per-channel scale (key ``gamma``), for token (B, N, C) or NCHW (B, C, H, W) tensors."""

    def __init__(self, dim: int, init_value: float = 1e-5, nchw: bool = False):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))
        self.nchw = nchw

    def forward(self, x):
        gamma = self.gamma.view(1, -1, 1, 1) if self.nchw else self.gamma
        return x * gamma


class Attention(nn.Module):
    """Multi-head self-attention over a fixed (H, W) token grid with a LeViT-style position bias.

    Each head owns a table of ``H * W`` learned biases, one per relative offset ``(|dy|, |dx|)``; the
    ``(N, N)`` index buffer ``attention_bias_idxs`` (persistent, as in timm) maps every query/key pair to
    its table entry. Queries and keys have ``key_dim`` channels per head, values ``attn_ratio * key_dim``.
    """

    def __init__(self, dim: int, resolution: tuple[int, int], key_dim: int = 32, num_heads: int = 8,
                 attn_ratio: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim ** -0.5
        self.num_tokens = resolution[0] * resolution[1]

        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, dim)

        rows, cols = torch.meshgrid(torch.arange(resolution[0]), torch.arange(resolution[1]), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        dy = (rows[:, None] - rows[None, :]).abs()
        dx = (cols[:, None] - cols[None, :]).abs()
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.num_tokens))
        self.register_buffer("attention_bias_idxs", dy * resolution[1] + dx)

    def position_bias(self) -> torch.Tensor:
        """The (heads, N, N) bias, gathered with one index_select on the flattened index buffer."""
        flat = torch.index_select(self.attention_biases, 1, self.attention_bias_idxs.reshape(-1))
        return flat.reshape(self.num_heads, self.num_tokens, self.num_tokens)

    def forward(self, x):  # (B, N, C)
        batch = x.shape[0]
        n = self.num_tokens
        qkv = self.qkv(x).reshape(batch, n, self.num_heads, 2 * self.key_dim + self.val_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)

        attn = (q @ k.transpose(-2, -1)) * self.scale + self.position_bias()
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, n, self.num_heads * self.val_dim)
        return self.proj(x)


class Stem4(nn.Sequential):
    """Two stride-2 3x3 conv + BN + ReLU layers: RGB -> ``out_chs`` at 1/4 resolution."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(out_chs // 2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU()


class Downsample(nn.Module):
    """Stride-2 3x3 conv + BN between stages (keys ``conv``, ``norm``)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        return self.norm(self.conv(x))


class Flat(nn.Module):
    """NCHW map -> (B, H*W, C) tokens, where the last stage switches from Meta4D to Meta3D blocks."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class Pooling(nn.Module):
    """PoolFormer's token mixer: 3x3 average (padding excluded from the count) minus the identity."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x):
        # the block adds x back, so subtracting it here makes the mixer a pure "neighbourhood minus centre"
        return self.pool(x) - x


class ConvMlpWithNorm(nn.Module):
    """1x1 conv -> BN -> GELU -> 1x1 conv -> BN, on NCHW maps."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))


class MetaBlock2d(nn.Module):
    """Meta4D block: ``x + ls1 * pool(x)``, then ``x + ls2 * mlp(x)``; BN lives inside the MLP."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.token_mixer = Pooling()
        self.ls1 = LayerScale(dim, nchw=True)
        self.mlp = ConvMlpWithNorm(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, nchw=True)

    def forward(self, x):
        x = x + self.ls1(self.token_mixer(x))
        return x + self.ls2(self.mlp(x))


class MetaBlock1d(nn.Module):
    """Meta3D block: pre-LayerNorm transformer block (attention + MLP) with layer scale, on tokens."""

    def __init__(self, dim: int, resolution: tuple[int, int], mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, resolution)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.token_mixer(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class EfficientFormerStage(nn.Module):
    """Optional downsample, then ``depth`` blocks of which the last ``num_vit`` are Meta3D.

    ``Flat`` sits in ``blocks`` right before the first Meta3D block, so block indices (and therefore the
    state-dict keys) match timm's: e.g. l1's last stage is ``blocks.0-2`` Meta4D, ``blocks.3`` Flat,
    ``blocks.4`` Meta3D.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, downsample: bool, num_vit: int,
                 resolution: tuple[int, int]):
        super().__init__()
        self.downsample = Downsample(dim, dim_out) if downsample else nn.Identity()
        num_conv = depth - num_vit
        blocks: list[nn.Module] = [MetaBlock2d(dim_out) for _ in range(num_conv)]
        if num_vit:
            blocks.append(Flat())
            blocks += [MetaBlock1d(dim_out, resolution) for _ in range(num_vit)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(self.downsample(x))


class EfficientFormer(nn.Module):
    """EfficientFormer classifier with timm's module names (``stem``, ``stages``, ``norm``, ``head``,
    ``head_dist``).

    ``input_size`` fixes the last stage's token grid (input / 32), which sizes the attention-bias tables;
    both sides must be multiples of 32. The output is the mean of the class and distillation heads.
    """

    def __init__(self, depths: tuple[int, ...], widths: tuple[int, ...], num_vit: int, *,
                 num_classes: int = 1000, input_size: tuple[int, int] = (224, 224), in_chans: int = 3):
        super().__init__()
        height, width = input_size
        if height % _REDUCTION or width % _REDUCTION or height <= 0 or width <= 0:
            raise ValueError(f"EfficientFormer needs an input size that is a multiple of {_REDUCTION}, "
                             f"got {height}x{width}")
        resolution = (height // _REDUCTION, width // _REDUCTION)
        self.num_classes = num_classes

        self.stem = Stem4(in_chans, widths[0])
        last = len(depths) - 1
        self.stages = nn.Sequential(*[
            EfficientFormerStage(
                widths[max(i - 1, 0)], widths[i], depths[i],
                downsample=i > 0,
                num_vit=num_vit if i == last else 0,
                resolution=resolution,
            )
            for i in range(len(depths))
        ])
        self.num_features = widths[-1]
        self.norm = nn.LayerNorm(self.num_features)
        # the released checkpoints are all distilled: a class head and a distillation head
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        return self.norm(self.stages(self.stem(x)))  # (B, N, C) tokens of the last stage

    def forward_head(self, x):
        x = x.mean(dim=1)
        return (self.head(x) + self.head_dist(x)) / 2

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _builder(variant: str):
    depths, widths, num_vit = _CONFIGS[variant]

    def build(*, num_classes: int, input_size: tuple[int, int]) -> EfficientFormer:
        return EfficientFormer(depths, widths, num_vit, num_classes=num_classes, input_size=tuple(input_size))

    build.__name__ = f"efficientformer_{variant}"
    return build


# timm's pretrained cfg (all three variants): 224x224, crop_pct 0.95 -> resize floor(224 / 0.95) = 235,
# bicubic, ImageNet mean/std
_PREPROCESSING = Preprocessing(resize=235, crop=(224, 224), interpolation="bicubic")
_SOURCE = (
    "params/GMACs: timm model card hf.co/timm/efficientformer_{v}.snap_dist_in1k; top-1: timm "
    "results/results-imagenet.csv (efficientformer_{v}.snap_dist_in1k, 224px, crop 0.95); latency: "
    "EfficientFormer paper (arXiv:2206.01191) Table 1 / official README, iPhone 12, Core ML"
)
# variant -> (params M, GMACs, top-1, latency ms), figures as published in the sources above
_PUBLISHED = {
    "l1": (12.3, 1.3, 80.498, 1.6),
    "l3": (31.4, 3.9, 82.550, 3.0),
    "l7": (82.2, 10.2, 83.382, 7.0),
}

for _variant, (_params, _gmacs, _top1, _latency) in _PUBLISHED.items():
    _name = f"efficientformer_{_variant}"
    register(ModelSpec(
        name=_name,
        family="efficientformer",
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
            source=_SOURCE.format(v=_variant),
        ),
        input_divisor=_REDUCTION,
        checkpoints=(Checkpoint(tag="snap_dist_in1k", hf_hub_id=f"timm/{_name}.snap_dist_in1k"),),
        default_tag="snap_dist_in1k",
    ))
