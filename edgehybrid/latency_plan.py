"""``--optimize latency``: the INT8 plan chosen by time measured on the target's runtime, within a drift budget.

The default plan is decided without a clock: each target's :class:`~calibration.ops.QuantPolicy` records which
op kinds its runtime measured faster in float, and ``--max-drift`` moves layers to float by error per MAC. That
holds at the sizes it was measured on, and not everywhere: at 64x64 the quantize/dequantize pairs around small
ops can cost more than the int8 kernels save. With ``--optimize latency`` the plan is measured instead:

1. a few whole-model candidates are built from the one calibration (:func:`candidates`): the target's own
   policy, only the weighted ops in int8, weighted ops and matmuls, every kind, the target's policy with
   the light layers (under 2% of the MACs each) in float, and the target's policy with the convolutional stem
   in float (the layers before the first linear, matmul or normalization: a hybrid's high-resolution part,
   where at 64x64 ONNX Runtime's int8 convolutions save nothing and the int8 SiLU takes two kernels to
   float's one);
2. each is scored for drift on the held-out samples (the simulator, one forward pass each) and exported to the
   target; the FP32 model is exported too;
3. all of them are timed side by side in one process on the target's runtime, with the export's thread count,
   in alternating rounds (:func:`time_side_by_side`). A candidate's time is the minimum of its round medians
   (a burst cannot lower it); its speed against FP32 is the median of the rounds' ratios (:func:`paired_ratio`:
   the machine's speed level moves between rounds, and a round's two figures share one). Where a session keeps
   its own threads (ONNX Runtime, LiteRT) each artifact is opened in ``latency_trials.SESSIONS`` sessions and
   the fastest counts each round, since sessions of one file settle at different levels.
   A candidate the target's converter refuses (LiteRT's needs one scale across an int8 concatenation), or
   whose program its runtime will not load (XNNPACK under ExecuTorch), is recorded and skipped;
4. the fastest candidate (against FP32) within the budget wins. The budget is ``--max-drift`` when given, and
   otherwise the target's own plan's drift (plus 10%, the simulator's run-to-run noise on 8 samples): latency mode never
   buys speed with fidelity nobody offered.

When no candidate beats FP32 the log says so in one plain sentence and the manifest records
``int8_faster_than_fp32: false``: the artifact is still INT8 (smaller), and never reported as a speed-up.

5. with more than one thread, FP32 and the chosen plan are timed again, side by side, at fewer threads
   (:func:`fewer_threads`): a model this small can run faster on fewer. ONNX Runtime's int8 kernels on 64x64
   inputs gain nothing from a second thread while its float kernels do, so INT8 and FP32 tie at 2 threads and
   INT8 leads at 1. The figures are recorded (``fewer_threads``), and the verdict names the fastest setting
   when it uses fewer threads than asked; ``int8_faster_than_fp32`` stays the comparison at the asked count.
A search costs one export and a few seconds of timing per candidate, so it is an option, not the default.
"""

from __future__ import annotations

import enum
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from calibration.ops import UNWEIGHTED, OpKind, QuantPolicy
from edgehybrid.errors import EdgeHybridError, UnknownNameError
from edgehybrid.manifest import artifact_digest
from edgehybrid.profiling.probe import ROUND_S, ROUNDS, paired_ratio, time_side_by_side  # noqa: F401  (re-exported)

#: a layer under this share of the model's MACs is "light": its int8 kernel saves less than its Q/DQ costs
LIGHT_SHARE = 0.02
#: the kinds that end a convolutional stem: a hybrid's token mixing and its normalization
STEM_ENDS = frozenset({OpKind.LINEAR, OpKind.MATMUL, OpKind.LAYER_NORM})
#: without --max-drift, a candidate may drift this much more than the target's own plan (simulator noise)
NOISE = 1.10
#: where the candidates are timed when no --device is given
HERE = "this machine"
#: a setting at fewer threads is named the fastest only when it beats the asked count's best by this factor: the
#: two are timed seconds apart, not in the same rounds
MARGIN = 1.03


def fewer_threads(threads: int) -> list[int]:
    """The thread counts below ``threads`` a search also times FP32 and its chosen plan at: half, and one."""
    return sorted({1, threads // 2} - {threads}, reverse=True) if threads > 1 else []


class Optimize(str, enum.Enum):
    """What the INT8 plan is chosen for: ``accuracy`` (the default: the target's measured policy, --max-drift
    by error per MAC) or ``latency`` (candidate plans timed on the target's runtime)."""

    ACCURACY = "accuracy"
    LATENCY = "latency"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str | Optimize | None) -> Optimize:
        if text is None:
            return cls.ACCURACY
        if isinstance(text, Optimize):
            return text
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise UnknownNameError.for_choice("--optimize", str(text), [o.value for o in cls]) from None


@dataclass(frozen=True)
class Candidate:
    """One whole-model plan: a policy for the target, and layers it keeps in float beyond the plan's own."""

    name: str
    policy: QuantPolicy
    float_layers: frozenset[str] = frozenset()

    def key(self) -> tuple:
        p = self.policy
        return p.float_kinds, p.float_output_kinds, self.float_layers


def candidates(layers: dict, policy: QuantPolicy) -> list[Candidate]:
    """The plans a latency search times, the target's own first; duplicates (a target whose policy already
    is "weighted ops only") are dropped."""
    int8 = [layer for layer in layers.values() if layer.precision == "int8"]
    total = sum(layer.macs for layer in int8) or 1
    light = frozenset(layer.name for layer in int8 if layer.macs / total < LIGHT_SHARE)
    kinds = {
        "target's plan": policy.float_kinds,
        "weighted ops only": UNWEIGHTED,
        "weighted ops and matmuls": UNWEIGHTED - {OpKind.MATMUL},
        "every kind": frozenset(),
    }
    out = [Candidate(name, replace(policy, float_kinds=frozenset(fk))) for name, fk in kinds.items()]
    if light and len(light) < len(int8):
        out.append(Candidate(f"heavy layers only (layers under {LIGHT_SHARE:.0%} of the MACs in float)", policy,
                             light))
    stem = conv_stem(layers)
    if stem and len(stem) < len(int8):
        out.append(Candidate("conv stem in float (before the first linear/matmul/norm)", policy, stem))
    seen, unique = set(), []
    for cand in out:
        if cand.key() not in seen:
            seen.add(cand.key())
            unique.append(cand)
    return unique


def conv_stem(layers: dict) -> frozenset[str]:
    """The int8 layers (in graph order) before the first layer holding a :data:`STEM_ENDS` kind: empty for a
    model that starts with one (a ViT's patch embedding is a convolution, then normalization)."""
    stem = []
    for name, layer in layers.items():
        if STEM_ENDS & set(layer.kinds):
            return frozenset(stem)
        if layer.precision == "int8":
            stem.append(name)
    return frozenset()  # a convolutional network: no hybrid's stem to separate


@dataclass
class Choice:
    """The search's outcome: the chosen candidate, and the report the manifest records."""

    candidate: Candidate
    report: dict = field(default_factory=dict)


def search(cands: list[Candidate], drift: Callable[[Candidate], float], build: Callable[[Candidate], object],
           export: Callable[[object, Path], object], fp32_graph,
           time_all: Callable[[dict[str, object], int], dict[str, dict]], budget: float | None, runtime: str,
           threads: int, log: Callable[[str], None], where: str = HERE, vary_threads: bool = True) -> Choice:
    """Measure every candidate and choose. ``drift(c)``: its drift on held-out samples; ``build(c)``: its
    quantized graph; ``export(graph, folder, int8)``: an artifact on the target; ``time_all({name: artifact},
    threads)``: every artifact's ``{"ms", "spread", "rounds"}`` timed side by side with that many threads (here, or on a
    device: ``where``). ``budget`` None: the first candidate's drift plus noise. ``vary_threads`` False: the
    runtime keeps one thread pool per process (ExecuTorch), so nothing is timed at fewer threads."""
    drifts = {c.name: drift(c) for c in cands}
    limit = budget if budget is not None else drifts[cands[0].name] * NOISE + 1e-4
    artifacts, sizes, refused = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="edgehybrid-latency-") as tmp:
        for i, cand in enumerate([None, *cands]):
            graph = fp32_graph if cand is None else build(cand)
            name = "FP32" if cand is None else cand.name
            try:
                artifact = export(graph, Path(tmp) / f"trial{i}", cand is not None)
            except EdgeHybridError as exc:
                # e.g. LiteRT's converter needs one scale across an int8 concatenation
                _refuse(refused, name, str(exc), cand is None or cand is cands[0], log)
                continue
            artifacts[name] = artifact
            sizes[name] = artifact_digest(artifact.path)[1]
        log(f"timing {len(artifacts) - 1} INT8 plans against FP32 on {runtime} on {where} ({threads} threads, "
            f"{ROUNDS} alternating rounds)")
        timed = time_all(artifacts, threads)
        for name, t in timed.items():  # a device's runtime refused it: only its probe could load it
            if "error" in t:
                _refuse(refused, name, f"{runtime} on {where} cannot load it: {t['error']}",
                        name in ("FP32", cands[0].name), log)
        cands = [c for c in cands if c.name in artifacts and "error" not in timed[c.name]]
        rows, best = _rank(cands, timed, drifts, sizes, limit)
        fewer = []
        for count in fewer_threads(threads) if vary_threads else []:
            at = time_all({"FP32": artifacts["FP32"], best["plan"]: artifacts[best["plan"]]}, count)
            fewer.append({"threads": count, "fp32_ms": at["FP32"]["ms"], "int8_ms": at[best["plan"]]["ms"],
                          "vs_fp32": round(paired_ratio(at["FP32"]["rounds"], at[best["plan"]]["rounds"]), 3)})
    fp32_ms = timed["FP32"]["ms"]
    chosen = next(c for c in cands if c.name == best["plan"])
    faster = best["vs_fp32"] > 1.0
    report = {"runtime": runtime, "device": where, "threads": threads, "rounds": ROUNDS,
              "statistic": "minimum of round medians; vs_fp32: median of the rounds' ratios",
              "fp32_ms": fp32_ms, "fp32_rounds_ms": timed["FP32"]["rounds"], "fp32_size_bytes": sizes["FP32"],
              "drift_budget": round(limit, 5),
              "budget_from": "--max-drift" if budget is not None else "the target's own plan (+10% noise)",
              "candidates": rows, "not_convertible": refused, "chosen": chosen.name,
              "int8_faster_than_fp32": faster, "fewer_threads": fewer,
              "fastest": _fastest(best, fp32_ms, threads, fewer)}
    for r in rows:
        log(f"  {r['plan']:<60s} {r['p50_ms']:8.3f} ms  {r['vs_fp32']:5.2f}x FP32  drift {r['drift']:.4f}"
            + ("" if r["within_budget"] else "  (over budget)"))
    for f in fewer:
        log(f"  with {_threads(f['threads'])}: FP32 {f['fp32_ms']:.3f} ms, '{best['plan']}' {f['int8_ms']:.3f} ms "
            f"({f['vs_fp32']:.2f}x FP32)")
    log(verdict(report))
    return Choice(chosen, report)


def _refuse(refused: list[dict], name: str, error: str, needed: bool, log: Callable[[str], None]) -> None:
    """Record a candidate the target's converter or runtime refused; FP32 and the target's own plan must not be."""
    if needed:
        raise EdgeHybridError(f"--optimize latency: '{name}' is needed for the comparison and was refused: "
                              f"{error.splitlines()[0]}")
    refused.append({"plan": name, "error": error.splitlines()[0][:300]})
    log(f"  {name}: refused by the target's converter or runtime, skipped ({refused[-1]['error'][:120]})")


def _rank(cands: list[Candidate], timed: dict, drifts: dict, sizes: dict, limit: float):
    """Every candidate's row, and the fastest within the budget (or, if none is, the least drifting)."""
    fp32 = timed["FP32"]
    rows = [{"plan": c.name, "float_kinds": c.policy.float_kind_names(), "float_layers": len(c.float_layers),
             "p50_ms": timed[c.name]["ms"], "spread": timed[c.name]["spread"],
             "vs_fp32": round(paired_ratio(fp32["rounds"], timed[c.name]["rounds"]), 3),
             "rounds_ms": timed[c.name]["rounds"], "drift": round(drifts[c.name], 5),
             "within_budget": drifts[c.name] <= limit, "size_bytes": sizes[c.name]} for c in cands]
    eligible = [r for r in rows if r["within_budget"]] or [min(rows, key=lambda r: r["drift"])]
    return rows, max(eligible, key=lambda r: r["vs_fp32"])


def _fastest(best: dict, fp32_ms: float, threads: int, fewer: list[dict]) -> dict:
    """The fastest (precision, threads) setting measured. At one thread count INT8 and FP32 are compared by their
    paired ratio; across counts, timed seconds apart, by time, and a count below the asked one wins only by
    :data:`MARGIN`."""
    def winner(count: int, vs_fp32: float, int8_ms: float, fp32: float) -> tuple:
        return ("int8", count, int8_ms) if vs_fp32 > 1.0 else ("fp32", count, fp32)

    top = winner(threads, best["vs_fp32"], best["p50_ms"], fp32_ms)
    others = [winner(f["threads"], f["vs_fp32"], f["int8_ms"], f["fp32_ms"]) for f in fewer]
    if others and min(s[2] for s in others) * MARGIN < top[2]:
        top = min(others, key=lambda s: s[2])
    return {"precision": top[0], "threads": top[1], "ms": top[2]}


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def verdict(report: dict) -> str:
    """The search's result in one plain sentence: what was chosen and whether INT8 is faster here at all."""
    best = next(r for r in report["candidates"] if r["plan"] == report["chosen"])
    device = report.get("device", HERE)
    where = f"on {report['runtime']}{'' if device == HERE else ' on ' + device} with {_threads(report['threads'])}"
    fastest = report.get("fastest") or {"threads": report["threads"]}
    fewer = fastest["threads"] < report["threads"]  # a smaller thread count beat every setting at the asked one
    if fewer:
        at = next(f for f in report["fewer_threads"] if f["threads"] == fastest["threads"])
        setting = (f"{fastest['precision'].upper()} with {_threads(fastest['threads'])} ({fastest['ms']:.3f} ms, INT8 "
                   f"{at['vs_fp32']:.2f}x FP32 at that count: this model is too small for {report['runtime']} to gain "
                   f"from {_threads(report['threads'])})")
    if report["int8_faster_than_fp32"]:
        return (f"chose '{best['plan']}': {best['vs_fp32']:.2f}x FP32's speed {where} ({best['p50_ms']:.3f} vs "
                f"{report['fp32_ms']:.3f} ms), drift {best['drift']:.4f}"
                + (f". Fastest here: {setting}" if fewer else ""))
    sizes = f"{best['size_bytes'] / 1e6:.2f} vs {report['fp32_size_bytes'] / 1e6:.2f} MB"
    ship = f"run {setting}" if fewer else "ship FP32"
    size = (f"The INT8 artifact is written for its size ({sizes}); for speed here, {ship}"
            if best["size_bytes"] < report["fp32_size_bytes"] else
            f"It is not smaller either ({sizes}: on a model this small the quantization parameters outweigh the "
            f"int8 weights): {ship}")
    return (f"no INT8 plan is faster than FP32 {where}: the fastest within the drift budget, '{best['plan']}', "
            f"runs at {best['vs_fp32']:.2f}x FP32's speed ({best['p50_ms']:.3f} vs {report['fp32_ms']:.3f} ms). "
            + size)


def feed_for(info, example: np.ndarray) -> np.ndarray:
    """``example`` (the model's NCHW batch, or a clip batch) in an artifact input's layout."""
    from edgehybrid.runtimes import to_layout

    return to_layout(example, info.layout) if example.ndim == 4 else np.ascontiguousarray(example, np.float32)

