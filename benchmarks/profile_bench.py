"""Are `edgehybrid profile`'s numbers trustworthy? Checked against independent measurements, in one run.

For each artifact (fp32 ONNX and TFLite exports of mobilevit_s and efficientformer_l1 by default):

- latency: the profiler's p50 (a fresh process running probe.py) against a bare timing loop written here
  with the runtime's own API (an identically configured session, the same thread count, warm-up and run
  count), also in a fresh process so both start equal (no torch thread pool left spinning by the export),
  bracketing the profiler: bare, profiler, bare. Agreement means |profiler/bare - 1| <= 10%.
- memory: probe.py run under ``/usr/bin/time -v`` for the same work; the profiler's peak resident size
  (VmHWM, read inside the process) against time's "Maximum resident set size". Agreement within 10%.

    python benchmarks/profile_bench.py
    python benchmarks/profile_bench.py --artifacts exports/mobilevit_s.onnx --runs 200
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBE = ROOT / "edgehybrid" / "profiling" / "probe.py"


def bare_loop(artifact: Path, runtime: str, threads: int, warmup: int, runs: int) -> float:
    """p50 in ms of a plain perf_counter_ns loop around the runtime's own run call."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(str(artifact), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = {inp.name: np.random.default_rng(0).uniform(-1, 1, inp.shape).astype(np.float32)}

        def run():
            sess.run(None, feed)
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(artifact), num_threads=threads)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.random.default_rng(0).uniform(-1, 1, d["shape"]).astype(np.float32))

        def run():
            it.invoke()
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - t) / 1e6)
    return statistics.median(times)


def bare_loop_fresh(artifact: Path, runtime: str, threads: int, warmup: int, runs: int) -> float:
    """:func:`bare_loop` in a fresh interpreter that imports nothing but numpy and the runtime."""
    cmd = [sys.executable, __file__, "--bare", str(artifact), runtime, str(threads), str(warmup), str(runs)]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())


def time_v_peak_mb(artifact: Path, runtime: str, threads: int, warmup: int, runs: int) -> tuple[float, float]:
    """(probe's own peak RSS, /usr/bin/time -v's maximum RSS) in MB for one probe.py process."""
    cmd = ["/usr/bin/time", "-v", sys.executable, str(PROBE), str(artifact), "--runtime", runtime,
           "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    probe = json.loads(res.stdout)
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return probe["memory"]["peak_rss_mb"], kb / 1024


def main() -> None:
    # imported here, not at the top: the --bare child process must hold only numpy and the runtime
    from edgehybrid.pipeline import ExportRequest, run_export
    from edgehybrid.profiling.local import profile_local
    from edgehybrid.runtimes import runtime_for

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", nargs="*", type=Path)
    ap.add_argument("--models", nargs="+", default=["mobilevit_s", "efficientformer_l1"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7, help="alternating bare/profiler rounds per artifact")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        sys.exit("needs GNU time at /usr/bin/time (Debian package 'time')")
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = list(args.artifacts or [])
        if not artifacts:
            for name in args.models:
                for target in ("onnx", "tflite"):
                    m = run_export(ExportRequest(model=name, target=target, out_dir=Path(tmp), weights="random"))
                    artifacts.append(Path(tmp) / Path(m["artifact"]).name)
        print(f"# profile trust benchmark: {args.threads} threads, warm-up {args.warmup}, {args.runs} runs, "
              f"{args.rounds} alternating fresh-process rounds (medians of round p50s)\n")
        print(f"{'artifact':28s} {'bare p50':>9s} {'profile p50':>12s} {'ratio':>7s} "
              f"{'probe peak MB':>14s} {'time -v MB':>11s} {'ratio':>7s}  verdict")
        for art in artifacts:
            rt = runtime_for(art)
            bares, profs = [], []
            for _ in range(args.rounds):
                bares.append(bare_loop_fresh(art, rt, args.threads, args.warmup, args.runs))
                profs.append(profile_local(art, rt, args.threads, args.warmup, args.runs, None, False)
                             ["latency_ms"]["p50"])
            bare, p50 = statistics.median(bares), statistics.median(profs)
            probe_mb, timev_mb = time_v_peak_mb(art, rt, args.threads, args.warmup, args.runs)
            lat_ok = abs(p50 / bare - 1) <= 0.10
            mem_ok = abs(probe_mb / timev_mb - 1) <= 0.10
            verdict = "agree" if lat_ok and mem_ok else ("LATENCY DIFFERS" if not lat_ok else "MEMORY DIFFERS")
            # the spread of the rounds shows how noisy the machine was while measuring
            spread = f"round p50 ranges: bare {min(bares):.1f}-{max(bares):.1f}, profiler {min(profs):.1f}-{max(profs):.1f} ms"
            print(f"{art.name:28s} {bare:9.2f} {p50:12.2f} {p50 / bare:7.3f} {probe_mb:14.1f} {timev_mb:11.1f} "
                  f"{probe_mb / timev_mb:7.3f}  {verdict} ({spread})")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--bare":
        _, _, path, rt_name, n_threads, n_warmup, n_runs = sys.argv
        print(bare_loop(Path(path), rt_name, int(n_threads), int(n_warmup), int(n_runs)))
    else:
        main()
