"""Compute the Conformer parity reference with torchaudio's own implementation (dev-time only).

torchaudio's wheel from PyPI does not import beside edgehybrid's CPU build of torch (it is built for CUDA), but
its ``torchaudio/models/conformer.py`` imports nothing but torch. This script loads that one file on its own,
straight from a torchaudio wheel (never copied into the repository), builds ``torchaudio.models.Conformer``
with the dims of each zoo Conformer's encoder, loads the deterministic state dict of tests/timm_layout.py in
torchaudio's key layout, runs a fixed (B, T, D) input at full length in float64 and stores the output, the
key -> shape listing and torchaudio's version in tests/data/conformer_reference.npz:

    pip download torchaudio==2.9.1 --no-deps -d /tmp/ta
    PYTHONPATH=. python scripts/make_conformer_reference.py /tmp/ta/torchaudio-2.9.1-*.whl
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from tests.timm_layout import deterministic_state_dict

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
OUT = DATA / "conformer_reference.npz"
#: zoo model -> torchaudio.models.Conformer arguments of its encoder (the zoo file's dims)
ENCODERS = {
    "conformer_kws": dict(input_dim=64, num_heads=4, ffn_dim=256, num_layers=4, depthwise_conv_kernel_size=15),
    "conformer_s": dict(input_dim=144, num_heads=4, ffn_dim=576, num_layers=16, depthwise_conv_kernel_size=31),
}
FRAMES = 23  # what the zoo's subsampling makes of one second


def reference_input(name: str, dim: int, batch: int = 2) -> np.ndarray:
    rng = np.random.default_rng(2020 + len(name))
    return rng.standard_normal((batch, FRAMES, dim)).astype(np.float32)


def load_torchaudio_conformer(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("torchaudio/models/conformer.py")
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        version = next(line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                       if line.startswith("Version:"))
    path = Path(tempfile.mkdtemp()) / "torchaudio_conformer.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("torchaudio_conformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Conformer, f"torchaudio {version} (models/conformer.py)"


def main(wheel: str) -> None:
    conformer_cls, computed_by = load_torchaudio_conformer(Path(wheel))
    arrays, keys = {}, {}
    for name, dims in ENCODERS.items():
        model = conformer_cls(**dims).eval()
        state = model.state_dict()
        model.load_state_dict(deterministic_state_dict(state), strict=True)
        x = torch.from_numpy(reference_input(name, dims["input_dim"]))
        lengths = torch.full((x.shape[0],), FRAMES)
        with torch.no_grad():
            y, out_lengths = model.double()(x.double(), lengths)
        assert out_lengths.tolist() == lengths.tolist()
        arrays[f"{name}.input"] = x.numpy()
        arrays[f"{name}.output"] = y.numpy().astype(np.float32)
        keys[name] = {k: list(v.shape) for k, v in state.items()}
        print(f"{name}: output std {y.std().item():.4f}, {len(state)} keys", flush=True)
    arrays["meta"] = np.frombuffer(json.dumps({"computed_by": computed_by, "keys": keys}).encode(), dtype=np.uint8)
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB), computed by {computed_by}")


if __name__ == "__main__":
    main(sys.argv[1])
