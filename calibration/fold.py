"""Graph rewrites before calibration that keep the numbers and make int8 cheaper on every target.

* SiLU is split into ``x * sigmoid(x)``, because both halves have int8 kernels (ONNX Runtime QLinearSigmoid /
  QLinearMul, TFLite LOGISTIC / MUL) while a SiLU with quantized edges runs in float between a dequantize and
  a quantize: on ``mobilevit_s`` those islands cost half the INT8 latency.
* Eval-mode dropout is removed (:func:`drop_eval_dropout`): it is the identity, but as a node it hides what
  follows from what precedes (a Conformer's ``0.5 * ffn(x)`` behind the feed-forward's dropout).
* Eval-mode BatchNorm and per-channel or scalar constant scales (LayerScale, a Conformer's half-step
  ``0.5 * ffn(x)``) are folded into the conv / linear before them (:func:`fold_channel_scales`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from calibration.ops import PASSTHROUGH

_A = torch.ops.aten


class SiLUAsSigmoidMul(nn.Module):
    """``x * sigmoid(x)``: SiLU in two ops that every int8 runtime has kernels for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def split_silu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.SiLU`` replaced by :class:`SiLUAsSigmoidMul` (same numbers)."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        for cname, sub in list(child.named_children()):
            if isinstance(sub, nn.SiLU):
                setattr(child, cname, SiLUAsSigmoidMul())
    return model


_BN = _A.batch_norm.default
_CONVS = (_A.conv2d.default, _A.conv1d.default)  # channels on axis 1 (a Conformer's depthwise conv is 1-D)


def drop_eval_dropout(gm: torch.fx.GraphModule) -> int:
    """Remove ``aten.dropout(x, p, train=False)`` (and ``p == 0``): the identity, which ``torch.export`` keeps
    as a node. Left in, it stands between a linear and the multiply or add after it, so neither the folding
    below nor the int8 rescale of ``x * c`` sees the linear. Returns how many were removed."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not _A.dropout.default:
            continue
        x, p, train = node.args[0], _arg(node, 1, "p"), _arg(node, 2, "train")
        if train and p != 0:
            continue
        bypass(gm, node, x)
        dropped += 1
    return tidy(gm, dropped)


def _arg(node: torch.fx.Node, index: int, name: str):
    return node.args[index] if len(node.args) > index else node.kwargs[name]


def bypass(gm: torch.fx.GraphModule, node: torch.fx.Node, replacement: torch.fx.Node) -> None:
    """Remove ``node``; its users read ``replacement``."""
    node.replace_all_uses_with(replacement)
    gm.graph.erase_node(node)


def tidy(gm: torch.fx.GraphModule, changed: int) -> int:
    """After a pass that rewired ``changed`` nodes: drop what no longer has users and recompile; returns
    ``changed``. Shared by every graph rewrite before and after conversion."""
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed


def fold_channel_scales(gm: torch.fx.GraphModule) -> int:
    """Fold eval-mode BatchNorm and per-channel constant scales (LayerScale's ``x * gamma``) into the conv or
    linear that feeds them, when that conv / linear has no other user. Returns how many ops were folded.

    Same numbers (to float rounding), fewer ops on every target. It also keeps the conv int8 on LiteRT:
    a float ``MUL`` by a constant behind an int8 conv's QUANTIZE / DEQUANTIZE is folded back into the conv by
    the converter, which then runs the conv in float on dequantized weights."""
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (*_CONVS, _A.linear.default):
            continue
        if len(node.args) < 2 or _constant(gm, node.args[1]) is None or (
                len(node.args) > 2 and node.args[2] is not None and _constant(gm, node.args[2]) is None):
            continue  # weights computed at run time: nothing to fold into
        while len(node.users) == 1:
            user = next(iter(node.users))
            scale_shift = _bn_affine(gm, user, node) or _scale_affine(gm, user, node)
            if scale_shift is None:
                break
            _fold_affine(gm, node, *scale_shift)
            bypass(gm, user, node)
            folded += 1
    return tidy(gm, folded)


def _channels(node: torch.fx.Node) -> int | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        return None
    return int(val.shape[1] if node.target in _CONVS else val.shape[-1])


def _bn_affine(gm, user: torch.fx.Node, prod: torch.fx.Node):
    """(scale, shift) of an eval-mode BatchNorm right after a conv, else None."""
    if (user.target is not _BN or prod.target not in _CONVS or len(user.args) < 8
            or user.args[0] is not prod):
        return None
    _, w, b, mean, var, training, _momentum, eps = user.args[:8]
    if training or mean is None or var is None:
        return None
    consts = [_constant(gm, a) if a is not None else None for a in (w, b, mean, var)]
    if any(c is None for c, a in zip(consts, (w, b, mean, var)) if a is not None):
        return None
    w, b, mean, var = consts
    scale = torch.rsqrt(var.double() + eps) * (w.double() if w is not None else 1.0)
    shift = (b.double() if b is not None else 0.0) - mean.double() * scale
    return scale, shift


def _scale_affine(gm, user: torch.fx.Node, prod: torch.fx.Node):
    """(scale, 0) of ``prod * c`` / ``c * prod`` with ``c`` a constant of one value per output channel, or a
    Python number."""
    if user.target is not _A.mul.Tensor or len(user.args) != 2 or prod not in user.args:
        return None
    other = user.args[1] if user.args[0] is prod else user.args[0]
    channels, out = _channels(prod), prod.meta["val"]
    if isinstance(other, (int, float)) and not isinstance(other, bool) and channels is not None:
        return torch.full((channels,), float(other), dtype=torch.float64), 0.0
    c = _constant(gm, other) if isinstance(other, torch.fx.Node) else None
    if c is None or channels is None or c.dim() > out.dim():
        return None
    shape = [1] * (out.dim() - c.dim()) + list(c.shape)
    axis = 1 if prod.target in _CONVS else out.dim() - 1
    if any(n != 1 for i, n in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return c.reshape(-1).double().expand(channels), 0.0


def _constant(gm, node: torch.fx.Node, depth: int = 0) -> torch.Tensor | None:
    """The value of a parameter / buffer, or of views of one; None for anything computed from the input."""
    if node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, torch.Tensor) else None
    if depth > 4 or node.op != "call_function" or node.target not in PASSTHROUGH:
        return None
    src = _constant(gm, node.args[0], depth + 1) if isinstance(node.args[0], torch.fx.Node) else None
    return None if src is None else node.target(src, *node.args[1:], **node.kwargs)


def _fold_affine(gm, node: torch.fx.Node, scale: torch.Tensor, shift) -> None:
    """Rewrite conv / linear ``node`` to compute ``node(x) * scale + shift`` (per output channel)."""
    args = list(node.args) + [None] * (3 - len(node.args))
    weight = _constant(gm, args[1])
    bias = _constant(gm, args[2]) if args[2] is not None else None
    scale = scale.to(torch.float64)
    new_w = (weight.double() * scale.reshape(-1, *[1] * (weight.dim() - 1))).to(weight.dtype)
    new_b = (bias.double() if bias is not None else torch.zeros_like(scale)) * scale + shift
    with gm.graph.inserting_before(node):
        for i, value in ((1, new_w), (2, new_b.to(weight.dtype))):
            name = f"_folded_{node.name}_{'weight' if i == 1 else 'bias'}"
            gm.register_buffer(name, value.contiguous())
            args[i] = gm.graph.get_attr(name)
            args[i].meta["val"] = value
    node.args = tuple(args)
