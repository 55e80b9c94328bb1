"""Deterministic checkpoints in the reference library's key layout, shared by the tests and
scripts/make_timm_reference.py.

The reference outputs in ``tests/data/timm_reference.npz`` were computed by the reference library's own
implementation of each model (timm's; transformers' for CvT; ``computed_by`` in the keys file says which),
loaded with the state dict that :func:`deterministic_state_dict` makes from that library's keys. The tests
make the same state dict from OUR model's keys, save it as a published-layout checkpoint, load it through
edgehybrid's weight path and compare logits: equal keys, shapes and math give equal outputs.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

REFERENCE_NPZ = "timm_reference.npz"
REFERENCE_KEYS = "timm_reference_keys.json.gz"


def _values(key: str, shape: tuple[int, ...]) -> np.ndarray:
    # one PCG64 stream per key, seeded by the key's name: independent of iteration order and torch version
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape)
    if leaf == "running_mean":
        return rng.standard_normal(shape) * 0.1
    if leaf == "gamma" or "layer_scale" in key:
        # residual branch scales: small, as trained ones are, so deep residual stacks keep their scale
        return rng.uniform(0.05, 0.2, shape)
    if len(shape) <= 1:
        if leaf == "bias" or "bias" in leaf:
            return rng.standard_normal(shape) * 0.1
        # norm weights, layer scales and the like: around one so signals keep their size
        return 1.0 + rng.standard_normal(shape) * 0.1
    if "pos_embed" in key or "cls_token" in key or "dist_token" in key:
        return rng.standard_normal(shape) * 0.02
    if "attention_bias" in key:
        return rng.standard_normal(shape) * 0.1
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape) * (1.0 / np.sqrt(max(fan_in, 1)))


def deterministic_state_dict(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of ``reference`` and deterministic float values.

    Integer tensors (BatchNorm's counters, index tables) keep the reference's own values: they are part
    of the architecture, not of the weights.
    """
    out = {}
    for key, tensor in reference.items():
        if tensor.is_floating_point():
            out[key] = torch.from_numpy(_values(key, tuple(tensor.shape)).astype(np.float32))
        else:
            out[key] = tensor.clone()
    return out


def deterministic_input(height: int, width: int, batch: int = 2) -> torch.Tensor:
    """Inputs of the size and spread a normalized image has."""
    rng = np.random.default_rng(12345)
    return torch.from_numpy((rng.standard_normal((batch, 3, height, width)) * 0.8).astype(np.float32))
