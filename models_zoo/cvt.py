"""CvT: a vision transformer whose token embedding and q/k/v projections are convolutions.

"CvT: Introducing Convolutions to Vision Transformers", H. Wu, B. Xiao, N. Codella, M. Liu, X. Dai, L. Yuan,
L. Zhang, ICCV 2021, arXiv:2103.15808. Official code: github.com/microsoft/CvT. The key layout is Hugging Face
transformers' ``CvtForImageClassification`` (``microsoft/cvt-13``, ``microsoft/cvt-21``), so those checkpoints
load with ``strict=True``; transformers' own implementation is the parity reference.

Where the attention sits and what it costs: every block attends, over all tokens of its stage (56x56, 28x28,
14x14 at 224 px), but each stage starts with an overlapping strided convolution (the token embedding), and q,
k and v come from depthwise 3x3 convolutions with BatchNorm; k and v at stride 2, so each query attends over
a quarter of the tokens. The last stage carries a class token, which skips the convolutions and is
concatenated back before the attention.

Written for export: attention is plain matmul + softmax (the reference uses einsum), and tensors stay at
rank 4.
"""

from __future__ import annotations

import torch
from torch import nn

from models_zoo.registry import Checkpoint, ModelSpec, Preprocessing, Published, register


class ConvEmbedding(nn.Module):
    """Overlapping strided convolution, then LayerNorm over channels (keys ``projection``, ``normalization``)."""

    def __init__(self, in_chs: int, dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.projection = nn.Conv2d(in_chs, dim, kernel, stride, padding)
        self.normalization = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x)
        b, c, h, w = x.shape
        x = self.normalization(x.reshape(b, c, h * w).transpose(1, 2))
        return x.transpose(1, 2).reshape(b, c, h, w)


class Embeddings(nn.Module):
    def __init__(self, in_chs: int, dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.convolution_embeddings = ConvEmbedding(in_chs, dim, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolution_embeddings(x)


class DepthwiseBN(nn.Module):
    """Depthwise 3x3 convolution (``stride``) and BatchNorm: CvT's convolutional projection."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.convolution = nn.Conv2d(dim, dim, 3, stride, 1, groups=dim, bias=False)
        self.normalization = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.convolution(x))


class ConvProjection(nn.Module):
    """[B, C, H, W] -> depthwise conv + BN -> [B, H'W', C] tokens."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.convolution_projection = DepthwiseBN(dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convolution_projection(x)
        b, c, h, w = x.shape
        return x.reshape(b, c, h * w).transpose(1, 2)


class ConvAttention(nn.Module):
    """Multi-head attention whose q (stride 1) and k, v (stride 2) come from convolutional projections."""

    def __init__(self, dim: int, num_heads: int, cls_token: bool):
        super().__init__()
        self.num_heads, self.cls_token = num_heads, cls_token
        self.scale = dim**-0.5  # CvT scales by the embedding width, not the head width
        self.convolution_projection_query = ConvProjection(dim, 1)
        self.convolution_projection_key = ConvProjection(dim, 2)
        self.convolution_projection_value = ConvProjection(dim, 2)
        self.projection_query = nn.Linear(dim, dim)
        self.projection_key = nn.Linear(dim, dim)
        self.projection_value = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if self.cls_token:
            cls, x = x[:, :1], x[:, 1:]
        b, n, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, h, w)
        q = self.convolution_projection_query(grid)
        k = self.convolution_projection_key(grid)
        v = self.convolution_projection_value(grid)
        if self.cls_token:  # the class token takes no convolution: it rejoins the tokens here
            q, k, v = (torch.cat((cls, t), dim=1) for t in (q, k, v))
        q = self._heads(self.projection_query(q))
        k = self._heads(self.projection_key(k))
        v = self._heads(self.projection_value(v))
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = attn @ v  # [B, heads, N, head_dim]
        return out.transpose(1, 2).reshape(b, out.shape[2], c)


class Dense(nn.Module):
    """A Linear under the key ``dense`` (with GELU for the MLP's first half)."""

    def __init__(self, cin: int, cout: int, gelu: bool = False):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.activation = nn.GELU() if gelu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, cls_token: bool):
        super().__init__()
        self.attention = ConvAttention(dim, num_heads, cls_token)
        self.output = Dense(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.output(self.attention(x, h, w))


class Layer(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, cls_token: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(dim)
        self.attention = Attention(dim, num_heads, cls_token)
        self.layernorm_after = nn.LayerNorm(dim)
        self.intermediate = Dense(dim, int(dim * mlp_ratio), gelu=True)
        self.output = Dense(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x), h, w)
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class Stage(nn.Module):
    def __init__(self, in_chs: int, dim: int, depth: int, num_heads: int, embed: tuple[int, int, int],
                 cls_token: bool):
        super().__init__()
        self.with_cls = cls_token
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.embedding = Embeddings(in_chs, dim, *embed)
        self.layers = nn.ModuleList([Layer(dim, num_heads, cls_token) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.embedding(x)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).transpose(1, 2)
        if self.with_cls:
            x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        for layer in self.layers:
            x = layer(x, h, w)
        cls = None
        if self.with_cls:
            cls, x = x[:, :1], x[:, 1:]
        return x.transpose(1, 2).reshape(b, c, h, w), cls


class Encoder(nn.Module):
    def __init__(self, depths: tuple[int, int, int]):
        super().__init__()
        dims, heads = (64, 192, 384), (1, 3, 6)
        embeds = ((7, 4, 2), (3, 2, 1), (3, 2, 1))  # kernel, stride, padding of each stage's token embedding
        self.stages = nn.ModuleList([
            Stage(3 if i == 0 else dims[i - 1], dims[i], depths[i], heads[i], embeds[i], cls_token=i == 2)
            for i in range(3)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = None
        for stage in self.stages:
            x, cls = stage(x)
        return cls


class CvtBody(nn.Module):
    """Keys under ``cvt.encoder``, as ``CvtModel`` lays them out."""

    def __init__(self, depths: tuple[int, int, int]):
        super().__init__()
        self.encoder = Encoder(depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class Cvt(nn.Module):
    def __init__(self, depths: tuple[int, int, int], num_classes: int = 1000):
        super().__init__()
        self.cvt = CvtBody(depths)
        self.layernorm = nn.LayerNorm(384)
        self.classifier = nn.Linear(384, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cvt(x)  # [B, 1, 384]: the class token of the last stage
        return self.classifier(self.layernorm(cls)[:, 0])


_DEPTHS = {"cvt_13": (1, 2, 10), "cvt_21": (1, 4, 16)}


def _builder(name: str):
    def build(*, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
        return Cvt(_DEPTHS[name], num_classes=num_classes)

    return build


_SOURCE = ("params: the {hub} checkpoint (config.json: embed_dim 64/192/384, depth {depth}); top-1 and GFLOPs: "
           "CvT paper Table 2 (ImageNet-1k, 224x224: {top1}%, {gmacs} GFLOPs); latency: the paper reports none "
           "on a mobile device, so None")

for _name, _hub, _params, _gmacs, _top1 in (("cvt_13", "microsoft/cvt-13", 20.0, 4.5, 81.6),
                                            ("cvt_21", "microsoft/cvt-21", 31.6, 7.1, 82.5)):
    register(ModelSpec(
        name=_name,
        family="cvt",
        kind="hybrid",
        builder=_builder(_name),
        input_size=(224, 224),
        preprocessing=Preprocessing(resize=256, crop=(224, 224)),  # crop_pct 0.875, bicubic, ImageNet mean/std
        published=Published(params_m=_params, gmacs=_gmacs, top1=_top1, latency_ms=None, latency_device=None,
                            source=_SOURCE.format(hub=_hub, depth=_DEPTHS[_name], top1=_top1, gmacs=_gmacs)),
        input_divisor=16,
        checkpoints=(Checkpoint(tag="in1k", hf_hub_id=_hub),),
        default_tag="in1k",
    ))
