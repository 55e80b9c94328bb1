"""Compute the reference outputs the zoo's parity tests compare against, with each model's reference library.

Dev-time only: needs timm (and transformers for CvT), which edgehybrid does not depend on. Run from the repo
root with a Python that has them installed (any torch version):

    PYTHONPATH=. python scripts/make_timm_reference.py [NAME ...]

Naming models recomputes only those and keeps every other model's stored reference.

For every zoo model it loads the reference implementation (timm's; transformers' CvtForImageClassification for
CvT) with a deterministic checkpoint in that library's own key layout (tests/timm_layout.py), runs a fixed input
and stores the logits plus the key -> shape listing in tests/data/, and which library and version computed
them. Outputs are computed in float64 to keep the reference itself free of rounding noise.
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


#: models whose reference is Hugging Face transformers: the config of the published checkpoint
TRANSFORMERS = {"cvt_13": dict(depth=[1, 2, 10]), "cvt_21": dict(depth=[1, 4, 16])}


def _reference(name: str):
    if name in TRANSFORMERS:
        import transformers
        from transformers import CvtConfig, CvtForImageClassification

        model = CvtForImageClassification(CvtConfig(num_labels=1000, **TRANSFORMERS[name]))
        return model.eval(), f"transformers {transformers.__version__}"
    return timm.create_model(name, pretrained=False).eval(), f"timm {timm.__version__}"


def main(names: list[str]) -> None:
    from models_zoo import registered

    specs = registered()
    names = names or list(specs)
    outputs, keys, versions = {}, {}, {}
    for name in names:
        spec = specs[name]
        model, versions[name] = _reference(name)
        ref_state = model.state_dict()
        model.load_state_dict(deterministic_state_dict(ref_state), strict=True)
        x = deterministic_input(*spec.input_size)
        with torch.no_grad():
            y = model.double()(x.double())
            y = getattr(y, "logits", y)  # transformers returns an output object
        outputs[name] = y.numpy().astype(np.float32)
        keys[name] = {k: list(v.shape) for k, v in ref_state.items()}
        print(f"{name:28s} logits std {y.std().item():8.4f} max|y| {y.abs().max().item():8.4f}", flush=True)
    DATA.mkdir(parents=True, exist_ok=True)
    if (DATA / REFERENCE_NPZ).exists() and (DATA / REFERENCE_KEYS).exists():  # keep the models not recomputed
        stored = np.load(DATA / REFERENCE_NPZ)
        outputs = {**{k: stored[k] for k in stored.files}, **outputs}
        with gzip.open(DATA / REFERENCE_KEYS, "rt") as fh:
            old = json.load(fh)
        before = old.get("computed_by") or {k: f"timm {old['timm_version']}" for k in old["keys"]}
        keys, versions = {**old["keys"], **keys}, {**before, **versions}
    np.savez_compressed(DATA / REFERENCE_NPZ, **outputs)
    with gzip.open(DATA / REFERENCE_KEYS, "wt") as fh:  # which library computed each model's reference
        json.dump({"computed_by": versions, "keys": keys}, fh, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
