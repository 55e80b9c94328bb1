"""ci's latency gate on a quiet and on a loaded machine, side by side in one run.

For each model (FP32 ONNX at 64x64: MobileViT-XXS trained, MobileViT-XS, MobileNetV2, EfficientFormerV2-S0),
the gate's two estimates against the reference workload (:mod:`edgehybrid.ci_latency`) are measured quietly,
then again with a busy loop spinning on every core, and the change is printed beside the verdict the gate
would give with the baseline from the quiet run. An unchanged artifact must never fail; the last line checks
that MobileViT-XS (about 1.9x MobileViT-XXS's work) measured loaded against MobileViT-XXS's quiet baseline is
caught as a regression.

    python benchmarks/ci_gate_bench.py [--tolerance 0.25] [--rounds 7] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from edgehybrid import ci_latency  # noqa: E402
from edgehybrid.ci_latency import REFERENCE_ID, judge  # noqa: E402
from edgehybrid.pipeline import ExportRequest, run_export  # noqa: E402

MODELS = [("mobilevit_xxs.cifar10", None), ("mobilevit_xs", "random"), ("mobilenetv2_100.cifar10", None),
          ("efficientformerv2_s0.cifar10", None)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tolerance", type=float, default=0.25)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ci-gate-bench-"))
    ref = ci_latency.reference_artifact("onnx", out, 2)
    arts = {}
    for name, weights in MODELS:
        m = run_export(ExportRequest(model=name, target="onnx", out_dir=out / name, weights=weights,
                                     num_classes=10 if weights else None, input_size=(64, 64) if weights else None))
        arts[name] = (out / name / Path(m["artifact"]).name, m)

    def measure(name):
        return ci_latency.measure(*arts[name], *ref, rounds=args.rounds, runs=args.runs)

    quiet = {n: measure(n) for n in arts}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        loaded = {n: measure(n) for n in arts}
    finally:
        for h in hogs:
            h.kill()
    print(f"{'model':30} {'quiet pair/min':>16} {'loaded pair/min':>16} {'pair':>6} {'min':>6}  verdict")
    for n in arts:
        q, lo = quiet[n], loaded[n]
        base = {"latency_ratio": q["ratio"], "latency_min_ratio": q["min_ratio"], "latency_reference": REFERENCE_ID}
        v = judge(lo, base, args.tolerance)
        verdict = "FAIL (false)" if v["failures"] else v["status"]
        print(f"{n:30} {q['ratio']:7.3f}/{q['min_ratio']:<7.3f} {lo['ratio']:7.3f}/{lo['min_ratio']:<7.3f} "
              f"{lo['ratio'] / q['ratio'] - 1:+6.0%} {lo['min_ratio'] / q['min_ratio'] - 1:+6.0%}  {verdict}")
    base = {"latency_ratio": quiet[MODELS[0][0]]["ratio"], "latency_min_ratio": quiet[MODELS[0][0]]["min_ratio"],
            "latency_reference": REFERENCE_ID}
    v = judge(loaded["mobilevit_xs"], base, args.tolerance)
    print(f"regression: mobilevit_xs loaded vs mobilevit_xxs.cifar10's quiet baseline -> "
          f"{'caught' if v['failures'] else 'MISSED (' + v['status'] + ')'}: "
          f"{(v['failures'] or [v['note']])[0]}")


if __name__ == "__main__":
    main()
