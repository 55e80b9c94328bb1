"""FP32 vs INT8 accuracy of a trained fixture on every executable target, side by side in one run.

Exports the fixture (default ``mobilevit_xxs.cifar10``) to ONNX and TFLite in FP32 and INT8 (calibrated on
its bundled training images), runs each artifact on its runtime over the bundled labelled validation
images (never trained on, never calibrated on), and prints top-1 per artifact next to the FP32 PyTorch
model's, the INT8 drop, and the ONNX-vs-TFLite INT8 top-1 agreement on the same images.

Beside that agreement it prints each INT8 file's *kernel floor*: the same file run with its runtime's other
kernels (LiteRT's builtin kernels instead of XNNPACK; ONNX Runtime's QDQ unfused instead of fused int8
kernels), and how often the two agree on top-1. Two kernel sets differ only in integer rounding, so this is
how far the quantization plan alone decides an INT8 model's answers; two different runtimes cannot be
expected to agree more closely than one runtime agrees with itself.

    python benchmarks/fixture_accuracy_bench.py [--model mobilevit_xxs.cifar10] [--data DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from calibration.preprocess import load_pixels, normalize
from calibration.sources import DATA_DIR
from edgehybrid.drift_check import preprocessing_of, read_dataset, read_manifest
from edgehybrid.int8 import Int8Request
from edgehybrid.pipeline import ExportRequest, run_export
from edgehybrid.runtimes import get_runtime, open_session, run_batched
from edgehybrid.targets import get_target
from exporters.base import ExportOptions
from models_zoo import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilevit_xxs.cifar10")
    p.add_argument("--data", type=Path, default=DATA_DIR / "cifar10" / "eval")
    p.add_argument("--targets", nargs="+", default=["onnx", "tflite"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-method", default=None, help="activation observer (export's --calib-method)")
    p.add_argument("--holdout", type=int, default=8, help="calibration samples held out to measure drift")
    p.add_argument("--max-drift", type=float, default=None, help="the INT8 plan's drift budget (export's --max-drift)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    data = read_dataset(args.data, list(loaded.classes))
    logits: dict[tuple[str, str], np.ndarray] = {}
    floors: dict[str, tuple[str, str, np.ndarray]] = {}  # target -> (default kernels, other kernels, logits)
    decoded: dict[str, np.ndarray] = {}  # every artifact of one model shares its preprocessing: decode once
    int8 = Int8Request(method=args.calib_method, max_drift=args.max_drift, holdout=args.holdout)
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            for precision in ("fp32", "int8"):
                req = ExportRequest(model=args.model, target=target, out_dir=Path(tmp) / target,
                                    options=ExportOptions(precision=precision), threads=args.threads,
                                    int8=int8 if precision == "int8" else None)
                manifest = run_export(req)
                artifact = Path(tmp) / target / Path(manifest["artifact"]).name
                manifest = read_manifest(artifact)
                pre, in_graph = preprocessing_of(manifest)
                session = open_session(target, artifact, args.threads).session
                key = repr(pre)
                if key not in decoded:
                    decoded[key] = np.stack([load_pixels(f, pre) for f in data.paths])
                pixels = decoded[key]
                x = normalize(pixels, pre)
                if ("pytorch", "fp32") not in logits:
                    with torch.no_grad():
                        logits[("pytorch", "fp32")] = loaded.model(torch.from_numpy(x)).numpy()
                inp, out = manifest["inputs"][0], manifest["outputs"][0]
                feed = pixels if in_graph else x
                layout = inp.get("layout")
                logits[(target, precision)] = run_batched(session, feed, manifest["batch"], inp["name"], out["name"],
                                                           layout)
                runtime = get_runtime(get_target(target).runtime)
                variants = tuple(getattr(runtime, "kernels", ()))
                if precision == "int8" and len(variants) > 1:
                    other = runtime.load(artifact, threads=args.threads, kernels=variants[1])
                    floors[target] = (variants[0], variants[1],
                                      run_batched(other, feed, manifest["batch"], inp["name"], out["name"], layout))
    labels = data.labels
    ref = float((logits[("pytorch", "fp32")].argmax(1) == labels).mean() * 100)
    print(f"# {args.model} on {len(labels)} labelled validation images ({args.data}), {args.threads} threads")
    fp32 = logits[("pytorch", "fp32")].argmax(1)
    print(f"{'artifact':18s} {'top-1 %':>8s} {'vs PyTorch FP32':>16s} {'agrees with FP32':>17s}")
    print(f"{'pytorch fp32':18s} {ref:8.2f}")
    for (target, precision), out in logits.items():
        if target == "pytorch":
            continue
        acc = float((out.argmax(1) == labels).mean() * 100)
        agree = float((out.argmax(1) == fp32).mean() * 100)
        print(f"{target + ' ' + precision:18s} {acc:8.2f} {acc - ref:+12.2f} pts {agree:16.2f}%")
    if ("onnx", "int8") in logits and ("tflite", "int8") in logits:
        agree = float((logits[("onnx", "int8")].argmax(1) == logits[("tflite", "int8")].argmax(1)).mean() * 100)
        print(f"ONNX vs TFLite INT8 top-1 agreement: {agree:.2f}%")
    for target, (default, other, out) in floors.items():
        same = float((out.argmax(1) == logits[(target, "int8")].argmax(1)).mean() * 100)
        diff = float(np.abs(out - logits[(target, "int8")]).max())
        print(f"kernel floor: the same {target} INT8 file, {default} vs {other} kernels: top-1 agreement "
              f"{same:.2f}%, max |logit difference| {diff:.3f}")
    top2 = np.sort(logits[("pytorch", "fp32")], axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    print("FP32 top-2 logit margin below 0.05 / 0.1 / 0.2: "
          + " / ".join(f"{float((margin < t).mean() * 100):.1f}%" for t in (0.05, 0.1, 0.2)) + " of the images")


if __name__ == "__main__":
    main()
