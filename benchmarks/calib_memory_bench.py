"""Calibration streams: peak memory does not grow with the number of calibration images.

Writes N real-photo JPEGs (random crops and flips of the bundled calibration photos, 288 px) to a
temporary folder, then, for each size, calibrates the same model on that many images in a fresh Python
process (so each peak RSS belongs to one run alone) through the library path ``--calib DIR`` takes:
``open_source`` -> ``capture`` -> ``calibrate``. Prints both peaks and their ratio side by side.

    python benchmarks/calib_memory_bench.py [--model mobilevit_xxs] [--sizes 100 1000] [--method minmax]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import torch
from calibration.quantize import calibrate, capture
from calibration.sources import open_source
from models_zoo import load_model

model_name, folder, size, method = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
loaded = load_model(model_name, weights="random")
spec = loaded.spec
source = open_source(folder, spec.preprocessing, (3, *spec.input_size), size, 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
gm = capture(loaded.model, torch.zeros(1, 3, *spec.input_size))
cal = calibrate(gm, source.batches(16), batch_size=1, method=method, holdout=8)
print(json.dumps({"samples": cal.samples, "seconds": time.perf_counter() - t,
                  "rss_before_calibration_mb": before / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    from calibration.preprocess import find_images
    from calibration.sources import CALIB_DIR

    photos = [Image.open(p).convert("RGB") for p in find_images(CALIB_DIR)]
    rng = np.random.default_rng(0)
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        s = int(min(w, h) * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        crop = img.crop((x, y, x + s, y + s))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"img_{i:05d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilevit_xxs")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "histogram"])
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "calib"
        folder.mkdir()
        t = time.perf_counter()
        make_images(folder, max(args.sizes))
        print(f"# wrote {max(args.sizes)} JPEGs in {time.perf_counter() - t:.1f}s; model {args.model}, "
              f"--calib-method {args.method}, one fresh process per size")
        rows = []
        for size in args.sizes:
            env = {**os.environ, "OMP_NUM_THREADS": "2"}
            proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), args.model, str(folder), str(size),
                                   args.method], check=False, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"calibration on {size} images failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first = rows[0]["peak_rss_mb"]
    print(f"{'images':>7s} {'observed':>9s} {'seconds':>8s} {'RSS before MB':>14s} {'peak RSS MB':>12s} {'vs first':>9s}")
    for size, r in zip(args.sizes, rows):
        print(f"{size:7d} {r['samples']:9d} {r['seconds']:8.1f} {r['rss_before_calibration_mb']:14.0f} "
              f"{r['peak_rss_mb']:12.0f} {r['peak_rss_mb'] / first:8.3f}x")


if __name__ == "__main__":
    main()
