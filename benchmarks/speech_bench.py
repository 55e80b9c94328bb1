"""Speech: INT8 vs FP32 for the keyword-spotting Conformer, side by side in one run, same runtime and threads.

For the bundled fixture ``conformer_kws.spoken_commands`` (1 s of 16 kHz samples in, log-mel front end in the
graph): our FP32 and INT8 ONNX artifacts and ONNX Runtime's own ``quantize_static`` (QDQ, per-channel, calibrated
on the same clips) on ONNX Runtime; our FP32 and INT8 TFLite artifacts and litert-torch's default full-int8
recipe on LiteRT; our FP32 and INT8 ExecuTorch programs on ExecuTorch with XNNPACK (its own XNNPACKQuantizer
recipe is not loadable on this model: XNNPACK fails to create a static slice node). Latency is int8_bench.py's:
alternating rounds, fastest of ``--sessions`` sessions per artifact in each round, speed-ups paired by round;
accuracy is top-1 on
the 200 bundled labelled clips (voices never heard in training), with the agreement and cosine to the same
runtime's FP32 beside it.

    python benchmarks/speech_bench.py [--threads 2] [--runs 50] [--rounds 7] [--sessions 3]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

from int8_bench import _at_least_one, latency, litert_default, naive_ort, p50  # noqa: E402

from calibration.preprocess import find_inputs, load_batch  # noqa: E402
from calibration.sources import DATA_DIR  # noqa: E402
from edgehybrid.drift import compare  # noqa: E402
from edgehybrid.drift_check import read_dataset  # noqa: E402
from edgehybrid.int8 import Int8Request  # noqa: E402
from edgehybrid.pipeline import ExportRequest, run_export  # noqa: E402
from edgehybrid.profiling.probe import paired_ratio  # noqa: E402
from edgehybrid.runtimes import get_runtime  # noqa: E402
from exporters.base import ExportOptions  # noqa: E402
from models_zoo import load_model  # noqa: E402

FIXTURE = "conformer_kws.spoken_commands"
RUNTIME = {"onnx": "onnxruntime", "tflite": "litert", "executorch": "executorch"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sessions", type=_at_least_one, default=3,
                   help="sessions per artifact; its figure is the fastest's")
    args = p.parse_args()
    loaded = load_model(FIXTURE)
    fe = loaded.spec.preprocessing
    calib = load_batch(find_inputs(DATA_DIR / "speech" / "calib", fe), fe)
    data = read_dataset(DATA_DIR / "speech" / "eval", list(loaded.classes), fe)
    clips, labels = load_batch(data.paths, fe), data.labels
    with torch.no_grad():
        torch_top1 = float((loaded.model(torch.from_numpy(clips)).argmax(1).numpy() == labels).mean())
    arts = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for target in RUNTIME:
            for precision in ("fp32", "int8"):
                m = run_export(ExportRequest(model=FIXTURE, target=target, out_dir=tmp, threads=args.threads,
                                             options=ExportOptions(precision=precision),
                                             int8=Int8Request() if precision == "int8" else None))
                arts[target, precision] = Path(m["artifact"])
        arts["onnx", "ort quantize_static"] = naive_ort(arts["onnx", "fp32"], calib, tmp / "ort_static.onnx")
        arts["tflite", "litert-torch default"] = litert_default(loaded.model, torch.from_numpy(clips[:1]), calib,
                                                                tmp / "litert_default.tflite")
        sessions, outputs = {}, {}
        for (target, kind), path in arts.items():
            session = get_runtime(RUNTIME[target]).load(path, threads=args.threads)
            name = session.inputs[0].name
            outputs[target, kind] = np.concatenate([next(iter(session.run({name: clips[i:i + 1]}).values()))
                                                    for i in range(len(clips))])
            feed = {name: clips[:1]}
            sessions[target, kind] = [(session, feed)] + [
                (get_runtime(RUNTIME[target]).load(path, threads=args.threads), feed) for _ in range(args.sessions - 1)]
        lat = latency(sessions, args.runs, args.rounds)
    print(f"# {FIXTURE}: {args.threads} threads, {args.rounds} alternating rounds x {args.runs} runs, fastest of "
          f"{args.sessions} sessions a round; p50: median over rounds, vs fp32: median of the rounds' ratios; "
          f"top-1 on {len(clips)} labelled clips of unheard voices (PyTorch FP32: {torch_top1:.2%})")
    print(f"{'runtime':12s} {'artifact':22s} {'p50 ms':>8s} {'vs fp32':>8s} {'top-1':>7s} {'agr fp32':>9s} "
          f"{'cosine':>8s}")
    for (target, kind), rounds in lat.items():
        c = compare(outputs[target, "fp32"], outputs[target, kind])
        top1 = float((outputs[target, kind].argmax(1) == labels).mean())
        print(f"{RUNTIME[target]:12s} {kind:22s} {p50(rounds):8.3f} {paired_ratio(lat[target, 'fp32'], rounds):7.2f}x "
              f"{top1:7.2%} {c.top1_agreement:8.1%} {c.cosine:8.5f}")


if __name__ == "__main__":
    main()
