"""Compute the timm reference outputs the zoo's parity tests compare against.

Dev-time only: needs timm, which edgehybrid does not depend on. Run from the repo root with a Python that
has timm installed (any torch version):

    PYTHONPATH=. python scripts/make_timm_reference.py

For every zoo model it loads timm's implementation with a deterministic checkpoint in timm's own key layout
(tests/timm_layout.py), runs a fixed input and stores the logits plus the key -> shape listing in
tests/data/. Outputs are computed in float64 to keep the reference itself free of rounding noise.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch

from tests.timm_layout import REFERENCE_KEYS, REFERENCE_NPZ, deterministic_input, deterministic_state_dict

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main(names: list[str]) -> None:
    from models_zoo import registered

    specs = registered()
    names = names or list(specs)
    outputs, keys = {}, {}
    for name in names:
        spec = specs[name]
        model = timm.create_model(name, pretrained=False).eval()
        ref_state = model.state_dict()
        model.load_state_dict(deterministic_state_dict(ref_state), strict=True)
        x = deterministic_input(*spec.input_size)
        with torch.no_grad():
            y = model.double()(x.double())
        outputs[name] = y.numpy().astype(np.float32)
        keys[name] = {k: list(v.shape) for k, v in ref_state.items()}
        print(f"{name:28s} logits std {y.std().item():8.4f} max|y| {y.abs().max().item():8.4f}", flush=True)
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA / REFERENCE_NPZ, **outputs)
    with gzip.open(DATA / REFERENCE_KEYS, "wt") as fh:
        json.dump({"timm_version": timm.__version__, "keys": keys}, fh, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
