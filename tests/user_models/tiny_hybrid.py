"""A research-style hybrid the zoo does not know: a convolution stem, one transformer block over the feature
map's tokens, and a classifier head, written as a paper's repository would write it. Its MLP uses an
erf-based GELU spelled out by hand, an op the INT8 plan has no rule for (it must stay float, and be named)."""

import math

import torch
from torch import nn


class ErfGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class Attention(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), ErfGELU(), nn.Linear(dim * 2, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyHybrid(nn.Module):
    def __init__(self, num_classes=10, dim=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU(),
                                  nn.Conv2d(16, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.SiLU())
        self.block = Block(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x)  # B, C, H/4, W/4
        x = self.block(x.flatten(2).transpose(1, 2))
        return self.head(self.norm(x.mean(dim=1)))


def build(num_classes: int = 10, dim: int = 32, seed: int = 0) -> nn.Module:
    """The factory edgehybrid calls: seeded weights, so every run builds the same model."""
    torch.manual_seed(seed)
    return TinyHybrid(num_classes=num_classes, dim=dim)


class FixedSize(TinyHybrid):
    """With a learned position table for the 8x8 tokens of a 32x32 input: other sizes are rejected."""

    def __init__(self, dim=32):
        super().__init__(dim=dim)
        self.pos = nn.Parameter(torch.zeros(1, 64, dim))

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.block(x).mean(dim=1)))


def fixed_size() -> nn.Module:
    torch.manual_seed(0)
    return FixedSize()


def broken():
    raise RuntimeError("checkpoint 'runs/best.ckpt' not found")


def not_a_model():
    return {"state_dict": {}}
