"""BoTNet: a ResNet whose last bottlenecks replace their 3x3 convolution by global self-attention.

"Bottleneck Transformers for Visual Recognition", A. Srinivas, T.-Y. Lin, N. Parmar, J. Shlens, P. Abbeel,
A. Vaswani, CVPR 2021, arXiv:2101.11605. The variant is timm's ``botnet26t_256`` (a 26-layer, tiered-stem
ResNet with BoTNet blocks in its last two stages; ``timm/models/byoanet.py`` on ``byobnet.py`` and
``layers/bottleneck_attn.py``): its key layout, so timm checkpoints load with ``strict=True``; timm is the
parity reference.

Where the attention sits and what it costs: stages 1-2 and the first block of stage 3 are plain bottlenecks;
the second block of stage 3 and both blocks of stage 4 run multi-head self-attention over all 16x16 (then
8x8) positions, with 2-D relative-position logits. Attention cost grows with the square of the positions,
which is why it only appears at 1/16 and 1/32 resolution, and why the input size is fixed (the relative
position tables are sized for it).

Written for export: the reference turns relative logits into absolute ones by padding, flattening and
slicing (``rel_logits_1d``); here one gather with a constant index does the same selection, and the width and
height logits are added by broadcasting, so every tensor stays at rank 4 or less.
"""

from __future__ import annotations

import torch
from torch import nn

from models_zoo.layers import ClassifierHead, ConvNormAct
from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, register


class BatchNormReLU(nn.BatchNorm2d):
    """BatchNorm2d then ReLU, with BatchNorm's own keys (timm's ``post_attn``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


def _rel_to_abs_index(size: int) -> torch.Tensor:
    """Positions into a flattened [size, 2*size-1] table of relative logits: row ``i``, column ``j - i + size - 1``
    for every key position ``j``, so gathering them gives the [size, size] absolute logits."""
    i = torch.arange(size).view(-1, 1)
    j = torch.arange(size).view(1, -1)
    return (i * (2 * size - 1) + j - i + size - 1).reshape(-1)


class PosEmbedRel(nn.Module):
    """2-D relative position logits ``q . r[x'-x] + q . r[y'-y]`` (keys ``height_rel``, ``width_rel``)."""

    def __init__(self, size: int, dim_head: int):
        super().__init__()
        self.size = size
        self.height_rel = nn.Parameter(torch.zeros(2 * size - 1, dim_head))
        self.width_rel = nn.Parameter(torch.zeros(2 * size - 1, dim_head))
        self.register_buffer("index", _rel_to_abs_index(size), persistent=False)

    def _one_axis(self, q: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        # q: [N, S, S, d] with the axis of interest third -> logits [N, S, S, S] (last axis: key position on it)
        n, s = q.shape[0], self.size
        full = (q @ rel.transpose(0, 1)).reshape(n, s, s * (2 * s - 1))
        return full.index_select(-1, self.index).reshape(n, s, s, s)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        n, hw, d = q.shape
        s = self.size
        q = q.reshape(n, s, s, d)  # [N, y, x, d]
        lw = self._one_axis(q, self.width_rel)  # [N, y, x, x']
        lh = self._one_axis(q.transpose(1, 2), self.height_rel).transpose(1, 2)  # [N, y, x, y']
        # logits[(y, x), (y', x')] = lh[y, x, y'] + lw[y, x, x']
        return (lh.reshape(n, hw, s, 1) + lw.reshape(n, hw, 1, s)).reshape(n, hw, hw)


class BottleneckAttn(nn.Module):
    """All-to-all multi-head self-attention over the feature map, then a 2x2 average pool when strided."""

    def __init__(self, dim: int, size: int, stride: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.dim_head = dim // num_heads
        self.scale = self.dim_head**-0.5
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.pos_embed = PosEmbedRel(size, self.dim_head)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = b * self.num_heads
        q, k, v = self.qkv(x).split(c, dim=1)
        q = q.reshape(n, self.dim_head, h * w).transpose(-1, -2)
        k = k.reshape(n, self.dim_head, h * w)
        v = v.reshape(n, self.dim_head, h * w).transpose(-1, -2)
        attn = ((q @ k) * self.scale + self.pos_embed(q)).softmax(dim=-1)
        return self.pool((attn @ v).transpose(-1, -2).reshape(b, c, h, w))


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    return ConvNormAct(in_chs, out_chs, 1, stride, act=None) if in_chs != out_chs or stride != 1 else None


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (``stride``), 1x1 expand, residual, ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        mid = out_chs // 4
        self.shortcut = _shortcut(in_chs, out_chs, stride)
        self.conv1_1x1 = ConvNormAct(in_chs, mid, 1, act=nn.ReLU)
        self.conv2_kxk = ConvNormAct(mid, mid, 3, stride, act=nn.ReLU)
        self.conv3_1x1 = ConvNormAct(mid, out_chs, 1, act=None)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x))) + shortcut)


class SelfAttnBlock(nn.Module):
    """The BoTNet block: the bottleneck's 3x3 convolution replaced by self-attention over ``size`` x ``size``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, size: int):
        super().__init__()
        mid = out_chs // 4
        self.shortcut = _shortcut(in_chs, out_chs, stride)
        self.conv1_1x1 = ConvNormAct(in_chs, mid, 1, act=nn.ReLU)
        self.self_attn = BottleneckAttn(mid, size, stride)
        self.post_attn = BatchNormReLU(mid)
        self.conv3_1x1 = ConvNormAct(mid, out_chs, 1, act=None)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        y = self.conv3_1x1(self.post_attn(self.self_attn(self.conv1_1x1(x))))
        return self.act(y + shortcut)


class Stem(nn.Module):
    """Tiered stem: 3x3 convolutions to 24 (stride 2), 32 and 64 channels, then a 3x3 stride-2 max pool."""

    def __init__(self):
        super().__init__()
        self.conv1 = ConvNormAct(3, 24, 3, 2, act=nn.ReLU)
        self.conv2 = ConvNormAct(24, 32, 3, act=nn.ReLU)
        self.conv3 = ConvNormAct(32, 64, 3, act=nn.ReLU)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv3(self.conv2(self.conv1(x))))


class BotNet26t(nn.Module):
    """Stages of (block type, channels, stride): the last three blocks attend."""

    STAGES = (
        (("bottle", 256, 1), ("bottle", 256, 1)),
        (("bottle", 512, 2), ("bottle", 512, 1)),
        (("bottle", 1024, 2), ("attn", 1024, 1)),
        (("attn", 2048, 2), ("attn", 2048, 1)),
    )

    def __init__(self, num_classes: int = 1000, input_size: tuple[int, int] = (256, 256)):
        super().__init__()
        self.stem = Stem()
        size, chs, stages = input_size[0] // 4, 64, []
        for blocks in self.STAGES:
            stage = []
            for kind, out, stride in blocks:
                if kind == "attn":
                    stage.append(SelfAttnBlock(chs, out, stride, size))  # attends at the block's input size
                else:
                    stage.append(BottleneckBlock(chs, out, stride))
                chs, size = out, size // stride
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.final_conv = nn.Identity()
        self.head = ClassifierHead(chs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def botnet26t_256(*, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    return BotNet26t(num_classes=num_classes, input_size=input_size)


register(ModelSpec(
    name="botnet26t_256",
    family="botnet",
    kind="hybrid",
    builder=botnet26t_256,
    input_size=(256, 256),
    preprocessing=Preprocessing(resize=269, crop=(256, 256)),  # crop_pct 0.95, bicubic, ImageNet mean/std
    published=Published(
        params_m=12.49, gmacs=3.32, top1=None, latency_ms=None, latency_device=None,
        source="params, GMACs: timm model card hf.co/timm/botnet26t_256.c1_in1k; top-1: not on the model card and "
               "timm's results CSV was not at hand to verify, so None; latency: no mobile figure is published for "
               "this variant, so None",
    ),
    input_divisor=None,  # relative position tables are sized for 16x16 and 8x8 feature maps: 256x256 in
    checkpoints=(Checkpoint(tag="c1_in1k", hf_hub_id="timm/botnet26t_256.c1_in1k"),),
    default_tag="c1_in1k",
))
