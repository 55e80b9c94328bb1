"""Per-layer latency beside INT8 sensitivity: what each layer costs on the target's runtime, in FP32 and in INT8.

``--sensitivity`` ranks layers by the error INT8 adds to them alone; a layer worth keeping in float is one that
hurts accuracy *and* saves little time in int8. So the table carries each layer's measured kernel time in the
FP32 artifact and in the INT8 artifact, both profiled per op on the target's runtime on this machine, with the
export's thread count, in one process, one after the other:

* the runtime's profiler gives time per executed kernel; :mod:`edgehybrid.profiling.probe` joins kernels to the
  module path the exporter recorded (``by_path``), and a layer's time is the sum over the kernels whose module
  path is the layer (the plan's layers are innermost modules), quantize/dequantize kernels included where the
  runtime left them in that module;
* only ONNX Runtime exposes per-op timing to Python (``Target.per_op_timing``); on other targets, and where the
  runtime cannot execute here, the table says so in one line instead of a column of guesses;
* the figures are kernel times under the profiler, summed over the profiled runs and divided by their number:
  good for ranking layers against each other, not a latency claim (``edgehybrid profile`` makes those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgehybrid.latency_plan import HERE  # the per-op profiler runs here, even when the search ran on --device
from edgehybrid.targets import Target

__all__ = ["LayerTimes", "layer_times", "measure", "unavailable_reason"]

#: profiled runs per artifact: enough for a stable per-layer sum on models this size, a few seconds in all
RUNS = 20
WARMUP = 5


@dataclass
class LayerTimes:
    """Kernel milliseconds per inference of each plan layer, in the FP32 and INT8 artifacts."""

    runtime: str
    threads: int
    fp32_total_ms: float
    int8_total_ms: float
    fp32: dict[str, float] = field(default_factory=dict)
    int8: dict[str, float] = field(default_factory=dict)

    def row(self, layer: str) -> dict:
        a, b = self.fp32.get(layer), self.int8.get(layer)
        return {"fp32_ms": None if a is None else round(a, 4), "int8_ms": None if b is None else round(b, 4)}

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "threads": self.threads, "runs": RUNS, "measured_on": HERE,
                "source": "per-op profiler, kernel time joined to module paths",
                "fp32_total_ms": round(self.fp32_total_ms, 4), "int8_total_ms": round(self.int8_total_ms, 4)}


def unavailable_reason(target: Target) -> str | None:
    """Why this machine cannot time layers for ``target``, in one sentence; None when it can."""
    if not target.per_op_timing:
        return (f"{target.runtime} exposes no per-op timing to Python; export with --target onnx --sensitivity "
                "for each layer's measured time")
    if not target.executes_here():
        return f"{target.title} cannot execute on this machine (it runs on {target.runs_on})"
    return None


def _by_layer(by_path: dict[str, float], layers: list[str]) -> dict[str, float]:
    """Sum kernel times per plan layer. A path matches a layer when it is the layer, or the layer inside the
    ``model`` wrapper an export adds when normalization is in the graph (``model.stages.0.conv``)."""
    wanted = set(layers)
    out: dict[str, float] = {}
    for path, ms in by_path.items():
        name = path if path in wanted else path[len("model."):] if path.startswith("model.") else None
        if name in wanted:
            out[name] = out.get(name, 0.0) + ms
    return out


def _profile(path: Path, threads: int) -> dict:
    from edgehybrid.profiling import probe

    p = probe.OnnxProbe()
    p.load(str(path), threads)
    p.prepare(probe.seeded_feeds(p.inputs))
    return p.per_op(str(path), threads, WARMUP, RUNS)


def layer_times(target: Target, fp32_artifact: Path, int8_artifact: Path, layers: list[str],
                threads: int) -> LayerTimes:
    """Profile both artifacts per op on ``target``'s runtime and sum each plan layer's kernels."""
    fp32, int8 = _profile(fp32_artifact, threads), _profile(int8_artifact, threads)
    return LayerTimes(target.runtime, threads, fp32["total_ms"], int8["total_ms"],
                      _by_layer(fp32.get("by_path") or {}, layers), _by_layer(int8.get("by_path") or {}, layers))


def measure(target: Target, export_fp32, int8_artifact: Path, report: dict, threads: int, log,
            device: str | None = None) -> LayerTimes | None:
    """``--sensitivity``'s latency: export FP32 with ``export_fp32(folder)`` (an artifact), profile it and
    ``int8_artifact`` per layer, and add each layer's ``fp32_ms`` / ``int8_ms`` to ``report["sensitivity"]``
    and the run's figures to ``report["layer_latency"]``. Where this machine cannot, the report says why. With
    ``device`` (``--device``, where the latency search timed whole plans) the log says these times are not it."""
    import shutil
    import tempfile

    reason = unavailable_reason(target)
    if reason is not None:
        report["layer_latency"] = {"unavailable": reason}
        log(f"no per-layer latency beside the sensitivity: {reason}")
        return None
    rows = report.get("sensitivity") or []
    folder = Path(tempfile.mkdtemp(prefix="edgehybrid-layer-times-", dir=int8_artifact.parent))
    try:
        fp32 = export_fp32(folder / "fp32")
        times = layer_times(target, fp32.path, int8_artifact, [r["layer"] for r in rows], threads)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for r in rows:
        r.update(times.row(r["layer"]))
    report["layer_latency"] = times.to_dict()
    log(f"timed each layer on {target.runtime} on {HERE} ({threads} threads, per-op profiler): kernel time "
        f"{times.fp32_total_ms:.2f} ms FP32, {times.int8_total_ms:.2f} ms INT8"
        + (f"; not on {device}: the per-op profiler runs here" if device else ""))
    return times
