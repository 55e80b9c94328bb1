"""Export wall time per target, and fp32 artifact latency on ONNX Runtime and LiteRT next to eager PyTorch.

All figures come from one run on one machine, with the same thread count for every runtime, so the ratios
are what to read (absolute milliseconds depend on the machine). Core ML artifacts are exported and timed
for conversion; their latency needs macOS and is reported as not measurable elsewhere.

    python benchmarks/export_bench.py                       # mobilevit_s and efficientformer_l1, 2 threads
    python benchmarks/export_bench.py --models mobilevit_xxs --threads 1 --min-time 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgehybrid.pipeline import ExportRequest, run_export  # noqa: E402
from edgehybrid.runtimes import RuntimeUnavailable, get_runtime  # noqa: E402
from exporters.base import ExportOptions  # noqa: E402
from models_zoo import load_model  # noqa: E402


def time_it(fn, warmup: int, min_time: float, min_runs: int) -> list[float]:
    """Latencies in ms after ``warmup`` calls, for at least ``min_time`` seconds and ``min_runs`` calls."""
    for _ in range(warmup):
        fn()
    out, start = [], time.perf_counter()
    while len(out) < min_runs or time.perf_counter() - start < min_time:
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilevit_s", "efficientformer_l1"])
    ap.add_argument("--targets", nargs="+", default=["onnx", "tflite", "coreml"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--min-runs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# export benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"{args.threads} threads, warm-up {args.warmup}, >= {args.min_time}s and >= {args.min_runs} runs each")
    print(f"# torch {torch.__version__}; weights random (latency does not depend on weight values)\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            loaded = load_model(name, weights="random")
            x = torch.randn(1, 3, *loaded.spec.input_size)
            with torch.inference_mode():
                eager = time_it(lambda: loaded.model(x), args.warmup, args.min_time, args.min_runs)
            eager_p50 = statistics.median(eager)
            rows.append((name, "pytorch eager", "-", eager_p50, 1.0))
            for target in args.targets:
                m = run_export(ExportRequest(model=name, target=target, out_dir=Path(tmp), weights="random",
                                             options=ExportOptions(), threads=args.threads))
                # conversion alone (trace, convert, simplify), then the whole command with load and validation
                export_s = f"{m['timings_s']['export']:.1f}/{m['timings_s']['total']:.1f}"
                try:
                    sess = get_runtime(m["validation"]["runtime"]).load(Path(tmp) / Path(m["artifact"]).name,
                                                                         threads=args.threads)
                except RuntimeUnavailable as exc:
                    rows.append((name, f"{target} ({m['validation']['runtime']})", export_s, None, None))
                    print(f"  {name} {target}: latency not measurable here: {exc}")
                    continue
                inp = m["inputs"][0]
                feed_x = x.numpy() if inp["layout"] != "NHWC" else x.numpy().transpose(0, 2, 3, 1)
                feed = {inp["name"]: np.ascontiguousarray(feed_x)}
                lat = time_it(lambda: sess.run(feed), args.warmup, args.min_time, args.min_runs)
                p50 = statistics.median(lat)
                rows.append((name, f"{target} ({m['validation']['runtime']})", export_s, p50, eager_p50 / p50))
    print(f"\n{'model':24s} {'runtime':28s} {'export/total s':>14s} {'p50 ms':>9s} {'speed-up vs eager':>18s}")
    for name, rt, exp_s, p50, ratio in rows:
        p50_s = f"{p50:9.2f}" if p50 is not None else f"{'n/a':>9s}"
        ratio_s = f"{ratio:17.2f}x" if ratio is not None else f"{'n/a (no runtime)':>18s}"
        print(f"{name:24s} {rt:28s} {exp_s:>14s} {p50_s} {ratio_s}")


if __name__ == "__main__":
    main()
