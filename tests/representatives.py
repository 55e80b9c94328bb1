"""One representative (the smallest variant) of every zoo family runs in the default test run; the larger
variants of the costlier per-model tests (torch.export, parity on a checkpoint) run with --runslow, as CI's
25-minute budget asks."""

from __future__ import annotations

import pytest

from models_zoo import get_spec, list_models

REPRESENTATIVES = {
    "mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1", "efficientformerv2_s0", "mobilenetv2_100",
    "mobilenetv3_large_100", "deit_tiny_patch16_224", "cvt_13", "botnet26t_256", "efficientvit_b0", "conformer_kws",
}


def every_model(kind: str | None = None) -> list:
    """Every zoo name (of one input ``kind``: "image" or "audio", if given) as a parameter; the
    non-representatives marked slow."""
    return [pytest.param(name, id=name, marks=() if name in REPRESENTATIVES else pytest.mark.slow)
            for name in list_models() if kind is None or get_spec(name).input_kind == kind]
