"""The INT8 step of an export: calibration source -> calibrated plan -> (sensitivity, drift budget) ->
the quantized graph for one target, plus the report the manifest carries.

One calibration serves every target; a target only chooses, through its exporter's typed
:class:`~calibration.ops.QuantPolicy`, which op kinds it runs in float because its int8 kernel is slower
and whether quantized weights stay folded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from calibration.annotate import DEFAULT_METHOD, CalibrationMethod
from calibration.ops import op_name, unplanned_ops
from calibration.quantize import apply_float_layers, calibrate, capture, finalize, isolate_unaccelerated
from calibration.sensitivity import (
    Simulator,
    drift_of,
    guard_kinds,
    measure_sensitivity,
    meet_budget,
)
from calibration.sources import check_size, open_source
from edgehybrid.errors import InputError
from edgehybrid.latency_plan import HERE, Optimize, candidates, search
from models_zoo.registry import ModelSpec

@dataclass(frozen=True)
class Int8Request:
    """What ``--int8`` and its companion options asked for; ``None`` (or empty) means not given, so an option
    that the chosen precision would ignore can be named and refused (:meth:`given`)."""

    calib: str | None = None  # folder, .npy/.npz, "synthetic", or None for the checkpoint's bundled photos
    calib_size: int | None = None
    seed: int | None = None  # default 0
    method: CalibrationMethod | str | None = None  # default histogram (calibration.annotate.DEFAULT_METHOD)
    sensitivity: bool = False
    max_drift: float | None = None
    float_layers: tuple[str, ...] = ()
    holdout: int = 8
    optimize: Optimize | str | None = None  # default accuracy; latency: candidate plans timed on the target
    #: ``--optimize latency`` on a device: ``ssh://user@host[:port]``, its Python and the SSH key
    device: str | None = None
    device_python: str = "python3"
    identity: Path | None = None
    ssh_options: tuple[str, ...] = ()  # extra ``ssh`` arguments (Python API only: a test's throwaway host key)

    #: option -> CLI spelling, for messages
    _FLAGS = {"calib": "--calib", "calib_size": "--calib-size", "seed": "--seed", "method": "--calib-method",
              "sensitivity": "--sensitivity", "max_drift": "--max-drift", "float_layers": "--float-layers",
              "optimize": "--optimize", "device": "--device"}

    def given(self) -> list[str]:
        """The options set, as the CLI spells them."""
        return [flag for key, flag in self._FLAGS.items() if getattr(self, key) not in (None, False, ())]

    @property
    def calib_method(self) -> CalibrationMethod:
        return CalibrationMethod.parse(self.method if self.method is not None else DEFAULT_METHOD)

    @property
    def optimize_for(self) -> Optimize:
        return Optimize.parse(self.optimize)

    @property
    def calib_seed(self) -> int:
        return 0 if self.seed is None else int(self.seed)

    def check(self) -> None:
        """Cheap checks of the options, before any model is loaded."""
        self.calib_method  # noqa: B018  an unknown method: a did-you-mean
        self.optimize_for  # noqa: B018
        check_size(self.calib_size)
        if self.max_drift is not None and not (0 < self.max_drift < 1):
            raise InputError(f"--max-drift is a relative logit error between 0 and 1 (0.05 = 5%), got {self.max_drift}")
        if self.holdout < 0:
            raise InputError(f"the held-out sample count cannot be negative, got {self.holdout}")
        if self.device is not None:
            from edgehybrid.profiling.remote import check_identity

            if self.optimize_for is not Optimize.LATENCY:
                raise InputError("--device times --optimize latency's candidate plans on a device (the export "
                                 "itself runs here); add --optimize latency, or drop --device")
            self.ssh_device  # noqa: B018  a malformed URL: one line, before any work
            check_identity(self.identity)

    @property
    def ssh_device(self):
        """``--device`` parsed (:class:`edgehybrid.profiling.remote.Device`), or None for this machine."""
        from edgehybrid.profiling.remote import parse_device

        return None if self.device is None else parse_device(self.device)


@dataclass
class Trials:
    """What a latency search needs from the export around it (``--optimize latency``): ``export(graph, folder,
    int8)`` writes an artifact of ``graph`` for the target; ``time_all({name: artifact}, threads)`` times them
    side by side on the target's runtime with that many threads, on ``where`` (this machine or a device);
    ``fp32_graph`` is the model as FP32 exports it."""

    export: Callable
    time_all: Callable
    fp32_graph: nn.Module
    runtime: str
    threads: int
    where: str = HERE
    #: whether sessions can be timed at fewer threads in the same process (not ExecuTorch's one pool)
    vary_threads: bool = True


@dataclass
class Int8Result:
    graph: nn.Module
    report: dict
    sensitivity: list[tuple[str, float]] = field(default_factory=list)


def quantize_for_target(model: nn.Module, spec: ModelSpec, example: torch.Tensor, exporter, req: Int8Request,
                        log: Callable[[str], None], progress=None, bundled_calib: str | None = None,
                        trials: Trials | None = None) -> Int8Result:
    """Calibrate ``model`` and return the quantized graph for ``exporter``'s target with its report.
    ``bundled_calib``: the checkpoint's own bundled calibration images, used when ``req.calib`` is None.
    ``trials``: how to export and time candidate plans, for ``--optimize latency``."""
    policy = exporter.quant_policy
    method, seed = req.calib_method, req.calib_seed
    source = open_source(req.calib, spec.preprocessing, tuple(example.shape[1:]), req.calib_size, seed, log,
                         bundled=bundled_calib)
    total = len(source)
    holdout = min(req.holdout, total // 4) // example.shape[0] * example.shape[0]
    gm = capture(model, example)
    unplanned = unplanned_ops(gm)
    if unplanned:
        log(f"{sum(r['count'] for r in unplanned)} op(s) the INT8 plan has no int8 rule for stay in float (named in "
            "the manifest): " + ", ".join(f"{r['op']} in {r['layer']}" for r in unplanned[:4])
            + (f" and {len(unplanned) - 4} more" if len(unplanned) > 4 else ""))
    advance = progress(total) if progress else None
    try:
        cal = calibrate(gm, source.batches(16), batch_size=int(example.shape[0]), method=method,
                        holdout=holdout, progress=advance or (lambda _n: None))
    finally:
        if advance is not None:
            advance.close()
    skipped = getattr(source, "skipped", None) or []
    if skipped:
        log(f"skipped {len(skipped)} unreadable calibration file(s), e.g. {skipped[0]!r}")
    log(f"calibrated {len(cal.layers)} layers ({method}) on {cal.samples} samples"
        + (f"; {holdout} held out for measurement" if holdout else ""))
    apply_float_layers(cal.layers, req.float_layers, "kept in float by --float-layers")
    for prefix, reason in spec.float_modules:  # the model's own rule (a speech front end), said in the manifest
        apply_float_layers(cal.layers, [n for n in cal.layers if n == prefix or n.startswith(prefix + ".")], reason)
    isolated = isolate_unaccelerated(cal, policy, exporter.name)
    if isolated:
        log(f"{len(isolated)} layer(s) kept in float on {exporter.name} beside ops its runtime does not accelerate "
            f"in int8 ({', '.join(sorted({op_name(op) for op, _ in policy.unaccelerated_int8}))}"
            f"; reasons in the manifest): " + ", ".join(isolated[:3]) + (" ..." if len(isolated) > 3 else ""))

    ranking: list[tuple[str, float]] = []
    steps: list[dict] = []
    search_report = None
    measured: dict = {"held_out_samples": holdout}
    latency = req.optimize_for is Optimize.LATENCY
    if cal.held_out is not None:
        sim = Simulator(cal, cal.held_out, policy)
        planned = sim.plan_sqnr()
        measured["all_int8_sqnr_db"] = _db(planned)
        guard = guard_kinds(sim, policy, planned)
        measured["kind_guard"] = guard
        if guard["kinds"]:
            raised = ", ".join(f"{e['drift']:.4f} ({e['kind']})" for e in guard["kinds"])
            log(f"kept {', '.join(e['kind'] for e in guard['kinds'])} in float: each alone in int8 beside the "
                f"weighted ops raises the held-out drift from {guard['weighted_only_drift']:.4f} to {raised} "
                f"(the full plan: {guard['plan_drift']:.4f})")
        if req.sensitivity or req.max_drift is not None:
            ranking = measure_sensitivity(sim)
        if req.max_drift is not None:
            steps = meet_budget(sim, req.max_drift)
        if latency:
            policy, search_report = _latency_search(cal, sim, policy, trials, req.max_drift, log)
        final = sim.candidate_sqnr(policy)  # the plan as it now stands: after the budget and the search
        measured.update(plan_sqnr_db=_db(final), plan_drift=round(drift_of(final), 5))
        if req.max_drift is not None:
            measured["budget_met"] = drift_of(final) <= req.max_drift
            if not measured["budget_met"]:
                log(f"warning: --max-drift {req.max_drift:g} not reached: drift is {drift_of(final):.4f} with "
                    f"{sum(1 for x in cal.layers.values() if x.precision == 'float')} layers in float")
    elif req.sensitivity or req.max_drift is not None or latency:
        raise InputError("--sensitivity / --max-drift / --optimize latency need held-out samples: pass at least "
                         f"{4 * example.shape[0]} calibration samples (--calib, --calib-size)")

    graph = finalize(cal, policy)
    float_kinds = policy.float_kind_names()
    on_target = layers_on_target(cal.layers.values(), policy)
    log(plan_line(on_target, exporter.name)
        + (f"; held-out output SQNR {measured['plan_sqnr_db']} dB (drift {measured['plan_drift']})"
           if "plan_sqnr_db" in measured else ""))
    report = {
        "mode": "full",
        "scheme": "int8 weights per-channel symmetric; int8 activations per-tensor affine"
                  + ("" if policy.activation_storage == "int8" else f" (stored as {policy.activation_storage})"),
        "calibration": {"source": source.description, "samples": cal.samples, "method": method.value,
                        "seed": seed, "requested_size": req.calib_size, "skipped_files": len(skipped)},
        "target_float_kinds": float_kinds,
        "unplanned_ops": unplanned,  # computing ops with no int8 rule: float, with their module
        "max_drift": req.max_drift,
        "drift_metric": "relative RMS error of the logits against FP32 on held-out calibration samples",
        "measured": measured,
        "budget_steps": steps,
        "layers_on_target": on_target,
        "layers": cal.report(policy.float_kinds),
    }
    if search_report is not None:
        report["optimize"] = "latency"
        report["latency_search"] = search_report
    if ranking:
        report["sensitivity"] = [{"layer": n, "sqnr_db": _db(v)} for n, v in ranking]
    return Int8Result(graph, report, ranking)


def _latency_search(cal, sim: Simulator, policy, trials: Trials | None, max_drift: float | None, log):
    """``--optimize latency``: time the candidate plans on the target; mark the chosen one's extra float layers
    in the plan; return the chosen policy and the search's report (see :mod:`edgehybrid.latency_plan`)."""
    if trials is None:
        raise InputError("--optimize latency needs the export around it to time candidate plans on the target's "
                         "runtime; use edgehybrid export (or edgehybrid.api.export)")
    choice = search(candidates(cal.layers, policy),
                    lambda c: drift_of(sim.candidate_sqnr(c.policy, c.float_layers)),
                    lambda c: finalize(cal, c.policy, c.float_layers), trials.export, trials.fp32_graph,
                    trials.time_all, max_drift, trials.runtime, trials.threads, log, trials.where,
                    trials.vary_threads)
    chosen = choice.candidate
    share = next(r["vs_fp32"] for r in choice.report["candidates"] if r["plan"] == chosen.name)
    for name in chosen.float_layers:
        cal.layers[name].precision = "float"
        cal.layers[name].reason = (f"kept in float by --optimize latency: '{chosen.name}' measured fastest "
                                   f"within the drift budget ({share:.2f}x FP32 on {trials.runtime})")
    return chosen.policy, choice.report


def layers_on_target(layers, policy) -> dict:
    """How the plan's layers run on the target: wholly int8, partly (some of their ops are kinds the target
    runs in float), or in float (every op such a kind, or kept in float by the plan), with the kinds."""
    fk = set(policy.float_kinds)
    counts = {"int8": 0, "partly_float": 0, "float_on_target": 0, "float_by_plan": 0}
    kinds: set[str] = set()
    for layer in layers:
        own = set(layer.kinds)
        if layer.precision == "float":
            counts["float_by_plan"] += 1
        elif own and own <= fk:
            counts["float_on_target"] += 1
        elif own & fk:
            counts["partly_float"] += 1
        else:
            counts["int8"] += 1
        if layer.precision != "float":
            kinds |= {k.value for k in own & fk}
    return {**counts, "total": sum(counts.values()), "kinds_in_float": sorted(kinds)}


def plan_line(c: dict, target: str) -> str:
    """One plain sentence of :func:`layers_on_target`: what runs in int8 and what in float, once."""
    text = f"INT8 plan on {target}: {c['int8']} of {c['total']} layers run wholly in int8"
    if c["partly_float"]:
        text += f", {c['partly_float']} partly"
    floats = c["float_on_target"] + c["float_by_plan"]
    if floats:
        why = [f"{c['float_on_target']} whose ops {target} runs faster in float"] if c["float_on_target"] else []
        why += [f"{c['float_by_plan']} kept in float by the plan"] if c["float_by_plan"] else []
        text += f", {floats} in float ({'; '.join(why)})"
    if c["kinds_in_float"]:
        kinds = c["kinds_in_float"]
        text += f"; {', '.join(kinds)} {'stays' if len(kinds) == 1 else 'stay'} float on {target}"
    return text


def _db(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 2)


def sensitivity_markdown(model: str, report: dict) -> str:
    """The ranked sensitivity table, most harmful first, as Markdown; with each layer's measured time in the
    FP32 and INT8 artifacts where the run could time them (:mod:`edgehybrid.layer_latency`)."""
    by = {row["layer"]: row for row in report["layers"]}
    timed = report.get("layer_latency") or {}
    has_times = "fp32_total_ms" in timed
    lines = [f"# INT8 sensitivity of {model}", "",
             "Output SQNR against FP32 when only this layer runs in int8 (held-out calibration samples); "
             "lowest first: the layers INT8 hurts most.", ""]
    if has_times:
        lines += [f"Time: the layer's kernels per inference on {timed['runtime']} on "
                  f"{timed['measured_on']} ({timed['threads']} threads, "
                  f"per-op profiler, {timed['runs']} runs) in the FP32 and the INT8 artifact; whole model "
                  f"{timed['fp32_total_ms']:.3f} ms FP32, {timed['int8_total_ms']:.3f} ms INT8. A sensitive layer "
                  "that saves little time in int8 is the one to keep in float; `-`: no kernel of its own there (the "
                  "runtime fused it into a neighbour, as FP32 Conv + SiLU).", ""]
    elif timed.get("unavailable"):
        lines += [f"No per-layer time: {timed['unavailable']}.", ""]
    lines += ["| rank | layer | ops | SQNR dB | MACs | plan |" + (" FP32 ms | INT8 ms |" if has_times else ""),
              "| ---: | --- | --- | ---: | ---: | --- |" + (" ---: | ---: |" if has_times else "")]
    for i, entry in enumerate(report.get("sensitivity") or [], 1):
        name, db = entry["layer"], entry["sqnr_db"]
        row = by.get(name, {})
        line = (f"| {i} | `{name}` | {', '.join(row.get('ops', []))} | {'inf' if db is None else f'{db:.1f}'} | "
                f"{row.get('macs', 0):,} | {row.get('precision', '?')} |")
        if has_times:
            line += "".join(f" {'-' if entry.get(k) is None else f'{entry[k]:.3f}'} |" for k in ("fp32_ms", "int8_ms"))
        lines.append(line)
    return "\n".join(lines) + "\n"
