"""``edgehybrid ci``'s latency gate: a ratio to a fixed reference workload on the same runtime that holds on a
busy machine, and an honest "inconclusive" when it cannot.

The reference is one fixed artifact per target: :data:`REFERENCE_MODEL` (a small hybrid: convolutions,
attention, normalization) in FP32 at 64x64, exported by ci itself into ``OUT/reference/<target>/`` and reused
while it is up to date. PyTorch eager is no longer the reference: its thread pool fought the runtime's
spinning threads, and its time swung 35x between two runs of the same job.

How it is timed, and why (measured with two busy loops on the 2 cores of the development machine, ONNX
Runtime, four models of 0.6x to 2.2x the reference's time):

- **One thread.** With 2 threads under load a parallel op waits for its descheduled half: the ratio of
  MobileViT-XS to the reference moved +33% and EfficientFormerV2 +32%. Single-threaded, every model shares the
  CPU alike. The gate checks what the artifact computes; the job's own thread count is what ``check`` and
  ``profile`` run.
- **The calling thread's CPU time.** With one thread the runtimes compute on the caller, so the CPU time of
  that thread (``time.thread_time``) is the inference's time without the waits a busy machine inserts. Wall
  time under two busy loops: the reference's median 1.35 -> 1.58 ms, worst call 6.3 ms; its CPU time 1.34 ->
  1.47 ms, worst 1.8 ms (what remains is shared caches and cores). In a full test run wall time let a 1.9x
  slower model pass as +23% on the pair ratio. A runtime that computes on threads of its own shows almost
  no CPU time on the caller; then the gate falls back to wall time, and the measurement says which
  (``clock``).
- **A calibrated reference.** The reference is called as many times per timed call as makes it last as long
  as one artifact call, so both are as exposed to preemption (a 1 ms call dodges what a 10 ms call meets).
- **Adjacent pairs.** Artifact and reference calls alternate (A B, B A, ...); each pair meets the same load.
  The ratio is the median over the pairs.
- **A second estimate.** The calls are also grouped into ``rounds`` of ``runs``; the minimum round median
  of each (a burst only adds time) gives ``min_ratio``.

A job fails only when both estimates grew past the tolerance; when one did and the other did not, the
machine was too unsteady to tell, and the job is ``inconclusive`` (``ci`` exits 4 when nothing failed).
Under load, 12 measurements of unchanged artifacts moved the pair ratio by -6% to +27% and the min ratio by
-27% to +28%, never both past 25% in the same direction; a 1.9x slower model moved both by about +90%.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np

REFERENCE_MODEL = "mobilevit_xxs"
REFERENCE_SIZE = (64, 64)
GATE_THREADS = 1
#: the clock the gate times with when the runtime computes on the calling thread (see the module's docstring)
CPU_CLOCK = "thread cpu"
WALL_CLOCK = "wall"
#: what the baseline records beside the ratios: a baseline timed against another reference is not compared
REFERENCE_ID = f"{REFERENCE_MODEL} fp32 {REFERENCE_SIZE[0]}x{REFERENCE_SIZE[1]}, same runtime, 1 thread"


def reference_artifact(target: str, out: Path, threads: int) -> tuple[Path, dict]:
    """The reference workload's artifact for ``target`` in ``out/reference/<target>``: reused when up to date,
    else exported now (seeded random weights: its speed, not its answers, is what counts)."""
    import torch

    from edgehybrid.comparison import reusable
    from edgehybrid.pipeline import ExportRequest, run_export

    request = ExportRequest(model=REFERENCE_MODEL, target=target, out_dir=Path(out) / "reference" / target,
                            weights="random", input_size=REFERENCE_SIZE, num_classes=10, threads=threads)
    found = reusable(request, random=True)
    if isinstance(found, tuple):
        return found
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        manifest = run_export(request)
    return Path(request.out_dir) / Path(manifest["artifact"]).name, manifest


def _feeds(manifest: dict) -> dict:
    from edgehybrid.runtimes import nchw_shape, to_layout

    info = manifest["inputs"][0]
    nchw = np.random.default_rng(0).standard_normal(nchw_shape(info)).astype(np.float32)
    return {info["name"]: to_layout(nchw, info.get("layout"))}


def measure(artifact: Path, manifest: dict, reference: Path, ref_manifest: dict, *, rounds: int, runs: int) -> dict:
    """The artifact's time against the reference's: the median pair ratio and the min-round ratio (see above)."""
    from edgehybrid.drift_check import open_session

    session, _, _, _ = open_session(manifest, artifact, GATE_THREADS)
    ref_session, _, _, _ = open_session(ref_manifest, reference, GATE_THREADS)
    feed, ref_feed = _feeds(manifest), _feeds(ref_manifest)

    def run_artifact():
        session.run(feed)

    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        run_artifact()
        ref_session.run(ref_feed)
    clock = _clock(run_artifact)
    timed = _timer(clock)
    one = statistics.median(timed(run_artifact) for _ in range(5))
    one_ref = statistics.median(timed(lambda: ref_session.run(ref_feed)) for _ in range(5))
    times = max(1, round(one / one_ref))

    def run_reference():
        for _ in range(times):
            ref_session.run(ref_feed)

    art, ref = [], []
    for k in range(rounds * runs):
        if k % 2 == 0:
            a, r = timed(run_artifact), timed(run_reference)
        else:
            r, a = timed(run_reference), timed(run_artifact)
        art.append(a * 1e3)
        ref.append(r * 1e3 / times)
    pair = statistics.median(a / r for a, r in zip(art, ref, strict=True))
    art_rounds = [statistics.median(art[i * runs:(i + 1) * runs]) for i in range(rounds)]
    ref_rounds = [statistics.median(ref[i * runs:(i + 1) * runs]) for i in range(rounds)]
    return {"artifact_ms": round(min(art_rounds), 4), "reference_ms": round(min(ref_rounds), 4),
            "ratio": round(pair, 4), "min_ratio": round(min(art_rounds) / min(ref_rounds), 4),
            "reference": REFERENCE_ID, "reference_calls_per_pair": times,
            "reference_spread": round(max(ref_rounds) / min(ref_rounds), 3),
            "rounds": rounds, "runs_per_round": runs, "threads": GATE_THREADS, "clock": clock}


def _timer(clock: str):
    now = time.thread_time if clock == CPU_CLOCK else time.perf_counter

    def timed(call) -> float:
        t = now()
        call()
        return now() - t
    return timed


def _clock(call) -> str:
    """:data:`CPU_CLOCK` when the runtime computes on the calling thread (its CPU time is then the inference's
    time, whoever else wants the cores), else wall-clock time: a runtime that hands work to threads of its own
    despite one thread would show almost no CPU time on the caller."""
    cpu, wall = _timer(CPU_CLOCK), _timer(WALL_CLOCK)
    return CPU_CLOCK if statistics.median(cpu(call) for _ in range(5)) >= 0.8 * min(wall(call) for _ in range(5)) \
        else WALL_CLOCK


def judge(now: dict | None, base: dict | None, tolerance: float) -> dict:
    """The latency part of a job's verdict against its baseline entry: ``{"status": compared | inconclusive |
    not-compared, "failures": [...], "change": growth or None, "note": text}``."""
    if now is None or base is None or "latency_ratio" not in base:
        return {"status": "not-compared", "failures": [], "change": None, "note": None}
    if base.get("latency_reference") != REFERENCE_ID or "latency_min_ratio" not in base:
        return {"status": "not-compared", "failures": [], "change": None,
                "note": "the baseline's latency was timed against another reference; record it again with "
                        "--update-baseline"}
    pair = now["ratio"] / base["latency_ratio"] - 1
    low = now["min_ratio"] / base["latency_min_ratio"] - 1
    if min(pair, low) > tolerance:
        return {"status": "compared", "change": round(pair, 4), "note": None, "failures": [
            f"latency regression: {now['ratio']:.3f}x the reference workload's time vs baseline "
            f"{base['latency_ratio']:.3f}x (+{pair:.0%}; fastest rounds +{low:.0%}; > {tolerance:.0%})"]}
    if max(pair, low) > tolerance:
        return {"status": "inconclusive", "failures": [], "change": round(pair, 4),
                "note": (f"latency inconclusive: the pair ratio changed {pair:+.0%} and the fastest rounds "
                         f"{low:+.0%} against the baseline, on either side of the {tolerance:.0%} tolerance: too "
                         "unsteady a machine to tell; rerun on a quieter runner or with more latency_rounds")}
    return {"status": "compared", "failures": [], "change": round(pair, 4), "note": None}


def steady(now: dict, tolerance: float) -> bool:
    """Whether a measurement is fit to record as a baseline: its two estimates agree within the tolerance."""
    return abs(now["ratio"] / now["min_ratio"] - 1) <= tolerance
