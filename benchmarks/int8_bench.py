"""INT8 vs FP32, side by side in one run, on the same runtime and thread count.

For each model: our FP32 and INT8 ONNX artifacts and the naive ONNX Runtime ``quantize_static`` (QDQ,
per-channel, int8/int8 defaults, calibrated on the same images) on ONNX Runtime; our FP32 and INT8 TFLite
artifacts and litert-torch's default full-int8 PT2E recipe on LiteRT (and, on both, our ``--optimize latency``
plan, ``int8-latency``: its own search's figures are printed as it runs); our FP32 and INT8 ExecuTorch programs and
ExecuTorch's documented recipe (``XNNPACKQuantizer``, default symmetric per-channel config, calibrated on the same
images) on the ExecuTorch runtime with XNNPACK. Latency is measured by the loop ``--optimize latency`` uses
(``probe.time_side_by_side``), in alternating rounds (each round: every artifact, warm-up then timed runs); an
artifact's figure in a round is the median of the fastest of its ``--sessions`` sessions, because ONNX Runtime
sessions of one file in one process settle on small VMs at levels up to 1.5x apart (``mobilevit_xxs.cifar10``
FP32: 0.97 and 1.42 ms, interleaved). Its p50 is the median over rounds; its speed-up over FP32 is the median of
the rounds' ratios (``probe.paired_ratio``). Drift: each INT8 artifact
against FP32 on held-out real inputs. A zoo name runs at its own full size with seeded random weights, calibrated on the bundled
calibration photos, drift on the separate bundled sample photos; a trained fixture (``mobilevit_xxs.cifar10``)
runs at its own input size with its weights, calibrated on its own bundled calibration images, drift on
``--held-out`` of its own validation images (evenly over the classes).

    python benchmarks/int8_bench.py [--models mobilevit_s efficientformer_l1 mobilevit_xxs.cifar10
                                     efficientformerv2_s0.cifar10] [--targets onnx tflite executorch]
                                    [--threads 2] [--runs 20] [--rounds 7] [--held-out 100] [--max-drift 0.01]

``--max-drift X`` adds one more INT8 plan per target, ``int8-drift<X>``: the default plan with layers moved
to float (most error per MAC first) until the drift on the held-out calibration samples is at most X, to
show what a fidelity budget costs in speed beside the peer recipes.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from calibration.preprocess import find_inputs, load_batch, sample_images
from calibration.sources import BUNDLED, CALIB_DIR, data_path
from edgehybrid.drift import compare
from edgehybrid.errors import EdgeHybridError
from edgehybrid.int8 import Int8Request
from edgehybrid.pipeline import ExportRequest, run_export
from edgehybrid.profiling.probe import paired_ratio, time_side_by_side
from edgehybrid.runtimes import get_runtime
from exporters.base import ExportOptions
from models_zoo import load_model
from models_zoo.zoo import parse_ref


def naive_ort(fp32: Path, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return out


def litert_default(model, example: torch.Tensor, calib: np.ndarray, out: Path) -> Path:
    """litert-torch's documented full-int8 recipe (PT2EQuantizer, symmetric per-channel) on ``model``, fed NHWC
    like our artifacts when it takes images (4-D), as it is otherwise (a speech model's samples)."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    image = example.ndim == 4

    def feed(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).contiguous() if image else x

    class NHWC(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input):
            return {"logits": self.m(input.permute(0, 3, 1, 2) if image else input)}

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    nhwc = feed(example)
    gm = torch.export.export(NHWC(model).eval(), (nhwc,)).module()
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(feed(torch.from_numpy(calib[i:i + 1])))
    converted = convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(converted, (nhwc,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(str(out))
    return out


def executorch_default(model, example: torch.Tensor, calib: np.ndarray, out: Path) -> Path:
    """ExecuTorch's documented XNNPACK recipe: XNNPACKQuantizer, symmetric per-channel, then lower."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model.eval(), (example,)).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i:i + 1]))
    converted = convert_pt2e(prepared)
    edge = to_edge_transform_and_lower(torch.export.export(converted, (example,)), partitioner=[XnnpackPartitioner()])
    out.write_bytes(edge.to_executorch().buffer)
    return out


RUNTIME = {"onnx": "onnxruntime", "tflite": "litert", "executorch": "executorch"}
#: targets whose artifacts also get an --optimize latency export (its own search's figures are logged)
LATENCY_SEARCH = ("onnx", "tflite")


def _quiet(_line: str) -> None:
    pass


def _search_log(name: str, target: str):
    def log(line: str) -> None:
        if line.startswith(("  ", "chose", "no INT8 plan")):
            print(f"[{name} {target} --optimize latency] {line.strip()}", flush=True)
    return log
RECIPES = {"onnx": ("naive", naive_ort), "tflite": ("litert-default", litert_default),
           "executorch": ("xnnpack-default", executorch_default)}


def _held_out(calib_dir: Path, trained: bool, count: int, pre) -> list[Path]:
    """The inputs drift is measured on: for a trained fixture, its own validation images or clips (beside its
    bundled calibration folder ``calib_dir``: photos of another domain say little about a CIFAR-10 model); for a
    zoo name, the bundled photos (or clips)."""
    if not trained:
        return sample_images(pre)
    paths = find_inputs(calib_dir.parent / "eval", pre)
    return paths[:: max(1, len(paths) // count)][:count]  # evenly over the (class-sorted) folder


def latency(sessions: dict, runs: int, rounds: int) -> dict:
    """``sessions``: each artifact's loaded sessions (several of the same file) with its feed. Timed by the loop
    ``--optimize latency`` uses (:func:`~edgehybrid.profiling.probe.time_side_by_side`): every session of every
    artifact runs ``runs`` calls in every round, alternating. Returns, per artifact, its figure in each round: the
    median of its fastest session that round (ONNX Runtime sessions of one file in one process settle at levels up
    to 1.5x apart on small VMs, which no number of rounds averages away)."""
    calls = {name: [functools.partial(session.run, feed) for session, feed in loaded]
             for name, loaded in sessions.items()}
    return {name: t["rounds"] for name, t in time_side_by_side(calls, rounds=rounds, calls=runs).items()}


def p50(rounds: list[float]) -> float:
    return float(np.median(rounds))


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs a whole number of 1 or more, e.g. 3 (got {text!r})")
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mobilevit_s", "efficientformer_l1"])
    p.add_argument("--targets", nargs="+", default=["onnx", "tflite", "executorch"], choices=sorted(RUNTIME))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sessions", type=_at_least_one, default=3,
                   help="sessions per artifact; its figure is the fastest's")
    p.add_argument("--calib-size", type=int, default=32)
    p.add_argument("--held-out", type=int, default=100, help="a trained fixture's validation images for drift")
    p.add_argument("--max-drift", type=float, default=None, help="also export each target's plan at this budget")
    args = p.parse_args()
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            # a trained fixture (name.tag) at its own input size, with its own calibration images; a zoo name:
            # one seeded random model for every artifact, so drift compares the same weights throughout
            trained = "." in name
            torch.manual_seed(0)
            loaded = load_model(name) if trained else load_model(name, weights="random")
            weights = None
            if not trained:
                weights = tmp / f"{name}.safetensors"
                save_file(loaded.model.state_dict(), weights)
            arts = {}
            for target in args.targets:
                plans = [("fp32", None), ("int8", Int8Request(calib_size=args.calib_size))]
                if target in LATENCY_SEARCH:
                    plans.append(("int8-latency", Int8Request(calib_size=args.calib_size, optimize="latency")))
                if args.max_drift is not None:
                    plans.append((f"int8-drift{args.max_drift:g}",
                                  Int8Request(calib_size=args.calib_size, max_drift=args.max_drift)))
                for kind, int8 in plans:
                    req = ExportRequest(model=name, target=target, out_dir=tmp / name / kind,
                                        weights=None if weights is None else str(weights),
                                        options=ExportOptions(precision="fp32" if int8 is None else "int8"),
                                        threads=args.threads, int8=int8)
                    try:
                        m = run_export(req, log=_search_log(name, target) if kind == "int8-latency" else _quiet)
                    except EdgeHybridError as exc:  # a check that failed or a converter that refused: reported,
                        # not hidden, and the other artifacts are still timed
                        failed.append(f"{name} {target} {kind}: {exc}")
                        continue
                    arts[(target, kind)] = Path(m["artifact"])
            spec = loaded.spec
            calib_dir = data_path(BUNDLED + parse_ref(name)[1].calibration) if trained else CALIB_DIR
            pre = spec.preprocessing
            calib = load_batch(find_inputs(calib_dir, pre)[: args.calib_size], pre)
            held_out = load_batch(_held_out(Path(calib_dir), trained, args.held_out, pre), pre)
            for target in args.targets:
                if (target, "fp32") not in arts:
                    continue
                kind, recipe = RECIPES[target]
                suffix = {"onnx": ".onnx", "tflite": ".tflite", "executorch": ".pte"}[target]
                out = tmp / f"{name}_{kind}{suffix}"
                source = arts[("onnx", "fp32")] if target == "onnx" else loaded.model
                example = torch.from_numpy(held_out[:1])
                try:
                    arts[(target, kind)] = recipe(source, calib, out) if target == "onnx" else recipe(
                        source, example, calib, out)
                except Exception as exc:  # the peer's own converter refused the model: said, not hidden
                    failed.append(f"{name} {target} {kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            sessions, outputs = {}, {}
            for (target, kind), path in arts.items():
                rt = get_runtime(RUNTIME[target])
                try:
                    session = rt.load(path, threads=args.threads)
                except EdgeHybridError as exc:  # written, but its runtime cannot load it (a peer recipe's program
                    # that needs a kernel the runtime lacks): said, and the others are still timed
                    failed.append(f"{name} {target} {kind}: {exc}")
                    continue
                nhwc = target == "tflite" and held_out.ndim == 4  # our .tflite takes images NHWC, sound as is
                x = held_out.transpose(0, 2, 3, 1) if nhwc else held_out
                feed_name = session.inputs[0].name  # litert-torch's default recipe names its input args_0
                outputs[(target, kind)] = np.concatenate(
                    [next(iter(session.run({feed_name: np.ascontiguousarray(x[i:i + 1])}).values()))
                     for i in range(len(x))])
                feed = {feed_name: np.ascontiguousarray(x[:1])}
                sessions[(target, kind)] = [(session, feed)] + [
                    (rt.load(path, threads=args.threads), feed) for _ in range(args.sessions - 1)]
            lat = latency(sessions, args.runs, args.rounds)
            for (target, kind), rounds in lat.items():
                if (target, "fp32") not in lat:
                    continue
                c = compare(outputs[(target, "fp32")], outputs[(target, kind)])
                rows.append((name, target, kind, p50(rounds), paired_ratio(lat[(target, "fp32")], rounds),
                             c.top1_agreement, c.cosine))
    print(f"# INT8 benchmark: {args.threads} threads, {args.rounds} alternating rounds x {args.runs} runs, fastest of "
          f"{args.sessions} sessions per artifact in each round; p50: median over rounds; vs fp32: median of the "
          "rounds' ratios;\n# "
          "drift vs the same runtime's FP32: a zoo name on the 8 bundled photos (seeded random weights,\n"
          "# the same for every artifact: near-flat logits, so top-1 agreement is a weak signal), a trained "
          f"fixture on {args.held_out} of its own validation images")
    print(f"{'model':30s} {'runtime':12s} {'artifact':16s} {'p50 ms':>8s} {'vs fp32':>8s} {'top-1 agr':>10s} {'cosine':>9s}")
    for name, target, kind, ms, speed, agree, cos in rows:
        rt = RUNTIME[target]
        print(f"{name:30s} {rt:12s} {kind:16s} {ms:8.3f} {speed:7.2f}x {agree:9.0%} {cos:9.4f}")

    for line in failed:
        print(f"not measured: {line}")


if __name__ == "__main__":
    main()
